"""User-level DP on the server: DP-FedAvg with fixed clipping (McMahan et al., ICLR 2018).

Each round the server

1. samples every device independently with probability ``q`` (Poisson sampling: the
   amplification the accountant claims is the sampling actually used);
2. clips each reply's whole delta to L2 norm ``S`` (one device's whole data is the unit);
3. sums, adds Gaussian noise ``N(0, (z·S)²)`` to every coordinate, and divides by the
   *expected* number of devices ``q·N`` (a fixed denominator, so the sensitivity of the mean
   is ``S / (q·N)``);
4. records the release in the server's signed ledger before the new table is sent anywhere.

The guarantee, against anyone who sees the published item tables: (ε, δ)-DP with respect to
adding or removing one device's entire data, accounted as a Poisson-sampled Gaussian
mechanism composed over rounds (PLD via ``dp_accounting``; the audit replays the ledger).
The server itself is trusted with individual updates in this mode (no secure aggregation).

Why not Flower's ``DifferentialPrivacyServerSideFixedClipping``: it wraps strategies whose
replies are full model weights and whose sampling is a fixed fraction; fedrec's replies are
item-table *deltas* and user-level accounting needs Poisson sampling, so the same maths
(clip to a norm, Gaussian noise of std ``z·S``) is written here in numpy instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedrec.common.privacy.randomness import NoiseSource

__all__ = ["UserLevelDP", "clip_delta", "noisy_mean"]


def clip_delta(delta: Mapping[str, np.ndarray], clip: float) -> tuple[dict[str, np.ndarray], float]:
    """Scale ``delta`` so that its global L2 norm is at most ``clip``; returns it and the norm."""
    norm = float(np.sqrt(sum(float(np.square(v, dtype=np.float64).sum())
                             for v in delta.values())))
    factor = min(1.0, clip / norm) if norm > 0 else 1.0
    return {k: (v * factor).astype(np.float32) for k, v in delta.items()}, norm


def noisy_mean(deltas: Sequence[Mapping[str, np.ndarray]], reference: Mapping[str, np.ndarray],
               *, clip: float, noise_multiplier: float, expected_count: float,
               noise: NoiseSource) -> dict[str, np.ndarray]:
    """``(Σ clip(δ_i) + N(0, (z·S)²)) / expected_count`` over every coordinate.

    ``expected_count = 1`` gives the noisy sum. The noise comes from ``noise`` (OS entropy
    unless the run is seeded for reproducibility).
    """
    total = {k: np.zeros_like(v, dtype=np.float64) for k, v in reference.items()}
    for d in deltas:
        clipped, _ = clip_delta(d, clip)
        for k in total:
            total[k] += clipped[k]
    std = noise_multiplier * clip
    return {k: ((v + noise.normal(std, v.shape)) / expected_count).astype(np.float32)
            for k, v in total.items()}


@dataclass
class UserLevelDP:
    """Settings and ledger of server-side user-level DP.

    Attributes:
        sampling_probability: Poisson probability ``q`` of each device per round.
        clip: per-device L2 clipping norm ``S`` of the whole delta.
        noise_multiplier: ``z``; the noise std on the sum is ``z·S``.
        target_delta: δ (well below 1/number of devices).
        budget_epsilon: the declared user-level budget (recorded; the run stops before it).
        ledger_dir: where ``server.jsonl`` and the server's public key go (``None``: nowhere).
        randomness: where the noise comes from (``"os-entropy"`` or ``"seeded"``), recorded.
    """

    sampling_probability: float
    clip: float
    noise_multiplier: float
    target_delta: float
    budget_epsilon: float
    ledger_dir: Path | None = None
    randomness: str = "os-entropy"

    def __post_init__(self) -> None:
        if not 0 < self.sampling_probability <= 1:
            raise ValueError("sampling_probability must lie in (0, 1]")
        if self.clip <= 0:
            raise ValueError("The clipping norm should be a positive value.")
        if self.noise_multiplier <= 0:
            raise ValueError("user-level DP needs a positive noise multiplier")
        self._ledger = None
        self.rounds = 0
        self.history: list[float] = []  # the noise multiplier of each recorded release

    def sample(self, nodes: Sequence[int], rng: np.random.Generator) -> list[int]:
        """Each node independently with probability ``q`` (may be empty)."""
        pool = sorted(int(n) for n in nodes)
        keep = rng.random(len(pool)) < self.sampling_probability
        return [n for n, k in zip(pool, keep, strict=True) if k]

    def epsilon(self, rounds: int | None = None) -> float:
        """User-level ε after ``rounds`` rounds (PLD accountant)."""
        from fedrec.common.privacy.accounting import DpRelease, epsilon

        if rounds is None:
            if not self.history:
                return 0.0
            return epsilon([DpRelease(z, self.sampling_probability, 1) for z in self.history],
                           target_delta=self.target_delta, accountant="pld")
        if rounds == 0:
            return 0.0
        return epsilon([DpRelease(self.noise_multiplier, self.sampling_probability, rounds)],
                       target_delta=self.target_delta, accountant="pld")

    def record(self, server_round: int, *, noise_multiplier: float | None = None,
               purpose: str = "dp-fedavg") -> None:
        """Count the round and write it to the server's signed ledger.

        ``noise_multiplier`` overrides the configured one for this release (the spectral
        algorithm's two releases carry different noise).
        """
        z = self.noise_multiplier if noise_multiplier is None else float(noise_multiplier)
        self.rounds += 1
        self.history.append(z)
        if self.ledger_dir is None:
            return
        if self._ledger is None:
            from fedrec.common.audit.ledger import DeviceKey, Ledger

            key_path = Path(self.ledger_dir).parent / "server" / "ledger-key.pem"
            key = DeviceKey.load_or_generate(key_path, public_path=key_path.with_suffix(".pub.pem"))
            key.save_public(Path(self.ledger_dir) / "keys" / "server.pub.pem")
            self._ledger = Ledger(Path(self.ledger_dir) / "server.jsonl", key,
                                  device_id="server")
        self._ledger.append(
            round=server_round, noise_multiplier=z,
            max_grad_norm=self.clip, sampling_probability=self.sampling_probability, steps=1,
            target_delta=self.target_delta, unit="user", budget_epsilon=self.budget_epsilon,
            claimed_epsilon=self.epsilon(), accountant="pld", purpose=purpose,
            randomness=self.randomness,
        )
