"""Distributed DP: devices add shares of the noise, the secure sum carries all of it.

In ``--privacy distributed`` every sampled device runs example-level DP-SGD (Opacus) on its own
interactions, but adds to its **item-table** gradients only a share ``1/√k`` of the noise std
that centralized DP-SGD would add, where ``k`` is the number of devices the round is
provisioned to aggregate (the sampled count less the configured dropout tolerance). Flower's
SecAgg+ (:mod:`fedrec.server.secure_aggregation`) lets the server see only the *sum* of the
updates, in which ``n`` surviving shares add up to noise of std ``σ·√(n/k)·C``.

Why the sum is DP with the full noise (the neighbouring relation is one interaction of one
device): within a round a device's item tables stay at the server's values, and only its user
embedding moves (with the *full* noise σ on its own gradient, as it never leaves the device).
Each local step ``t`` is then a Gaussian mechanism on the device's Poisson-sampled, clipped
per-example gradients ``(g_user, g_items)`` (joint norm ≤ C): the user part with noise σC, the
summed item parts of all devices with noise ``σ_eff·C``. Its privacy is at least that of noise
``min(σ, σ_eff)`` on the whole gradient, and what the server receives, the sum over steps and
devices of the item parts, is a post-processing of those per-step releases. So each
participation of a device costs ``steps`` Poisson-subsampled Gaussian steps at
``σ_eff = σ · min(1, √(n/k))``: exactly the full σ when no more devices dropped out than
provisioned, less when more did. :class:`DistributedDP` records that effective noise for every
device in every round it was summed in (a ledger per device, signed by the server), which is
what the run reports and what an auditor replays; each device's own ledger records the σ it
provisioned for.

What is trusted: the server is honest-but-curious (follows the protocol, sees only sums); the
sampled devices do not collude with it to reveal their noise shares. SecAgg+'s quantization
and per-coordinate clipping range are applied per device before the sum; the clipping range is
set so that values essentially never reach it (the count is reported when they do), and the DP
analysis treats the dequantized sum as the real-valued sum (stochastic rounding error is
measured, not accounted, as in most deployments of distributed DP with SecAgg).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DistributedDP", "RoundPlan"]


@dataclass(frozen=True)
class RoundPlan:
    """What a round of distributed DP is provisioned for.

    Attributes:
        sampled: devices asked to take part.
        min_included: devices whose updates must reach the sum for the full noise.
        noise_share: the fraction of the noise std each device adds, ``1/√min_included``.
        clipping_range: the SecAgg+ range of the round's secure sum, sized from public
            quantities so that no noised share needs clipping
            (:func:`fedrec.common.privacy.secagg.secure_range`); 0 until the coordinator sets it.
    """

    sampled: int
    min_included: int
    noise_share: float
    clipping_range: float = 0.0


@dataclass
class DistributedDP:
    """Provisioning and accounting of distributed DP on the server.

    Attributes:
        noise_multiplier: σ, the noise multiplier the secure sum must carry.
        max_grad_norm: the devices' per-example clipping norm C.
        sample_rate: the devices' Poisson sampling rate of their examples per step.
        steps: local DP-SGD steps per participation.
        dropout_tolerance: fraction of sampled devices that may drop out with full noise kept.
        target_delta: δ.
        budget_epsilon: each device's declared example-level budget.
        accountant: ``"prv"`` or ``"rdp"`` (Opacus), as on the devices.
        ledger_dir: the run's ledger folder; effective-noise ledgers go to
            ``ledger_dir/secure-sum/`` (``None``: nowhere).
    """

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    dropout_tolerance: float
    target_delta: float
    budget_epsilon: float
    accountant: str = "prv"
    ledger_dir: Path | None = None
    randomness: str = "os-entropy"
    histories: dict[str, list[tuple[float, float, int]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.noise_multiplier <= 0:
            raise ValueError("distributed DP needs a positive noise multiplier")
        if not 0 <= self.dropout_tolerance < 1:
            raise ValueError(f"dropout_tolerance must lie in [0, 1), got {self.dropout_tolerance}")
        self._ledgers: dict[str, object] = {}
        self._key = None

    def plan(self, sampled: int) -> RoundPlan:
        """The provisioning of a round that samples ``sampled`` devices."""
        if sampled < 1:
            raise ValueError("a round needs at least one sampled device")
        k = max(1, math.ceil(sampled * (1.0 - self.dropout_tolerance) - 1e-9))
        return RoundPlan(sampled=sampled, min_included=k, noise_share=1.0 / math.sqrt(k))

    def effective_noise_multiplier(self, plan: RoundPlan, included: int, *,
                                   noise_multiplier: float | None = None) -> float:
        """The noise multiplier actually protecting a round in which ``included`` shares add up.

        ``σ·√(included/min_included)`` for the item sum, capped at σ because each device's user
        embedding step carries exactly σ; 0 when nothing was summed.
        """
        if included <= 0:
            return 0.0
        sigma = self.noise_multiplier if noise_multiplier is None else noise_multiplier
        return sigma * min(1.0, math.sqrt(included / plan.min_included))

    def record(self, server_round: int, plan: RoundPlan, included: Sequence[str], *,
               noise_multiplier: float | None = None, sensitivity: float | None = None,
               sample_rate: float | None = None, steps: int | None = None,
               purpose: str = "secure-sum-effective-noise") -> float:
        """Account the round for every included device; returns the effective σ.

        The keyword arguments override the configured release for this round (the spectral
        algorithm: one Gaussian release per round, of its own σ and sensitivity).
        """
        sigma = self.effective_noise_multiplier(plan, len(included),
                                                noise_multiplier=noise_multiplier)
        if sigma <= 0:
            return 0.0
        q = float(self.sample_rate if sample_rate is None else sample_rate)
        n_steps = int(self.steps if steps is None else steps)
        clip = float(self.max_grad_norm if sensitivity is None else sensitivity)
        entry = (sigma, q, n_steps)
        for device in included:
            history = self.histories.setdefault(str(device), [])
            history.append(entry)
            if self.ledger_dir is not None:
                self._ledger(str(device)).append(
                    round=server_round, noise_multiplier=sigma, max_grad_norm=clip,
                    sampling_probability=q, steps=n_steps,
                    target_delta=self.target_delta, unit="example",
                    budget_epsilon=self.budget_epsilon, claimed_epsilon=self.epsilon(device),
                    accountant=self.accountant, purpose=purpose, randomness=self.randomness,
                )
        return sigma

    def epsilon(self, device: str) -> float:
        """Example-level ε of one device from the noise actually present in its rounds."""
        from fedrec.common.privacy.dpsgd import epsilon_of_history

        return epsilon_of_history(self.accountant, self.histories.get(str(device), []),
                                  self.target_delta)

    def epsilons(self) -> dict[str, float]:
        """ε of every device that was summed at least once."""
        return {d: self.epsilon(d) for d in self.histories}

    def _ledger(self, device: str):
        from fedrec.common.audit.ledger import DeviceKey, Ledger

        if device not in self._ledgers:
            folder = Path(self.ledger_dir) / "secure-sum"  # type: ignore[arg-type]
            if self._key is None:  # the server's ledger key, shared with user-level DP
                key_path = Path(self.ledger_dir).parent / "server" / "ledger-key.pem"  # type: ignore[arg-type]
                self._key = DeviceKey.load_or_generate(
                    key_path, public_path=key_path.with_suffix(".pub.pem"))
            name = f"node-{device}"
            if not (folder / "keys" / f"{name}.pub.pem").exists():
                self._key.save_public(folder / "keys" / f"{name}.pub.pem")
            self._ledgers[device] = Ledger(folder / f"{name}.jsonl", self._key, device_id=name)
        return self._ledgers[device]
