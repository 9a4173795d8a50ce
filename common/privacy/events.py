"""The one privacy event type: a (Poisson-subsampled) Gaussian mechanism, run ``steps`` times.

Devices and servers describe every release they make with a :class:`PrivacyEvent`; ledgers
record it (:class:`~fedrec.common.audit.ledger.Ledger`), Opacus and ``dp_accounting``
accountants compose it (:meth:`PrivacyEvent.history_entry`, :meth:`PrivacyEvent.to_dp_event`),
and the audit replays it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PrivacyEvent", "merge_history"]


@dataclass(frozen=True)
class PrivacyEvent:
    """One differentially private release: a Gaussian mechanism run ``steps`` times.

    The one privacy event type of fedrec, from the device (or server) that makes the release,
    to its ledger, to every accountant that replays it (in the manner of ``dp_accounting``'s
    ``DpEvent``: :meth:`to_dp_event`). Equality compares what accounting depends on (noise
    multiplier, sampling, steps); the descriptive fields travel with it.

    Attributes:
        noise_multiplier: Noise standard deviation divided by the sensitivity (the clipping
            norm). ``0`` means no noise: ε is infinite.
        sampling_probability: Poisson sampling rate ``q`` of each step, or ``None`` for no
            sampling (full batch; ``1.0`` means the same and is normalized to ``None``).
        steps: How many times the (sampled) mechanism ran.
        max_grad_norm: The sensitivity (the clipping norm): the noise std is
            ``noise_multiplier × max_grad_norm``.
        unit: Unit of privacy: ``"example"`` (one interaction) or ``"user"`` (one device).
        purpose: What the release was for (``"dp-sgd"``, ``"evaluation"``, …).
        randomness: Where its noise came from: ``"os-entropy"`` or ``"seeded"``.
    """

    noise_multiplier: float
    sampling_probability: float | None = None
    steps: int = 1
    max_grad_norm: float = field(default=1.0, compare=False)
    unit: str = field(default="example", compare=False)
    purpose: str = field(default="dp-sgd", compare=False)
    randomness: str = field(default="os-entropy", compare=False)

    def __post_init__(self) -> None:
        sigma = float(self.noise_multiplier)
        if not (sigma >= 0 and math.isfinite(sigma)):
            raise ValueError(
                f"noise_multiplier must be a finite number >= 0, got {self.noise_multiplier!r}."
            )
        object.__setattr__(self, "noise_multiplier", sigma)
        q = self.sampling_probability
        if q is not None:
            q = float(q)
            if not 0.0 <= q <= 1.0:
                raise ValueError(
                    f"sampling_probability must be in [0, 1] or None (no sampling), got {q!r}."
                )
            if q == 1.0:
                q = None
        object.__setattr__(self, "sampling_probability", q)
        if isinstance(self.steps, bool) or int(self.steps) != self.steps or self.steps < 0:
            raise ValueError(f"steps must be a whole number >= 0, got {self.steps!r}.")
        object.__setattr__(self, "steps", int(self.steps))

    @property
    def sampled(self) -> bool:
        """Whether the release claims amplification by Poisson sampling."""
        return self.sampling_probability is not None

    @property
    def is_noop(self) -> bool:
        """Whether the release touches no data (no steps, or sampling probability 0)."""
        return self.steps == 0 or self.sampling_probability == 0.0

    @property
    def history_entry(self) -> tuple[float, float, int]:
        """``(noise_multiplier, sampling rate, steps)`` as Opacus accountants keep history."""
        q = self.sampling_probability
        return (self.noise_multiplier, 1.0 if q is None else q, self.steps)

    def to_dp_event(self) -> Any:
        """The ``dp_accounting`` event: ``SelfComposed(PoissonSampled(q, Gaussian(σ)), steps)``."""
        import dp_accounting as dpa

        inner: Any = dpa.GaussianDpEvent(self.noise_multiplier)
        if self.sampled:
            inner = dpa.PoissonSampledDpEvent(self.sampling_probability, inner)
        return dpa.SelfComposedDpEvent(inner, self.steps)


def merge_history(history: Iterable[Sequence[float]]) -> tuple[tuple[float, float, int], ...]:
    """An accountant history with consecutive equal ``(σ, q)`` entries merged (same ε)."""
    out: list[tuple[float, float, int]] = []
    for sigma, q, steps in history:
        if out and out[-1][0] == float(sigma) and out[-1][1] == float(q):
            out[-1] = (out[-1][0], out[-1][1], out[-1][2] + int(steps))
        else:
            out.append((float(sigma), float(q), int(steps)))
    return tuple(out)
