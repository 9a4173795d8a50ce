"""``user``: user-level DP (DP-FedAvg, McMahan et al., ICLR 2018) with the noise on the server.

Each round the server samples every device independently with probability ``q``
(``fraction-train``: Poisson sampling, the amplification the accountant claims is the sampling
actually used), bounds each device's whole contribution to L2 norm ``S`` (one device's whole
data is the unit), adds Gaussian noise ``N(0, (z·S)²)`` to the sum, and records the release in
its own signed ledger (``ledgers/server.jsonl``) before the new table goes anywhere.

Every contribution, whatever the algorithm, leaves the device only inside a secure sum
(SecAgg+ on Flower, the clear sum in-process): each device bounds its own contribution to norm
``S`` (``user-clip`` for table updates, 1 for statistics), the server adds the noise to the sum
and never sees one device's contribution. Table updates (``sgd``) are then divided by the
*expected* number of devices ``q·N`` (a fixed denominator, so the mean's sensitivity is
``S/(q·N)``). The device's clipping is on trust, as its honest participation in SecAgg+ is;
the sum's range bounds each coordinate whatever a device sends.

The guarantee holds against anyone who sees the published tables: (ε, δ)-DP w.r.t. adding or
removing one device's data, a Poisson-sampled Gaussian composed over rounds (PLD). Why not
Flower's ``DifferentialPrivacyServerSideFixedClipping``: it wraps strategies whose replies are
whole models and whose sampling is a fixed fraction; fedrec's are deltas, sampled by Poisson.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedrec.common.algorithms.base import Aggregate, ContributionSpec
from fedrec.common.privacy.events import PrivacyEvent
from fedrec.common.privacy.mechanisms.base import Contributed, PrivacyMechanism, RoundPlan

__all__ = ["UserLevel", "clip_delta"]


def clip_delta(delta: Mapping[str, np.ndarray], clip: float) -> tuple[dict[str, np.ndarray], float]:
    """Scale ``delta`` so that its global L2 norm is at most ``clip``; returns it and the norm."""
    norm = float(np.sqrt(sum(float(np.square(v, dtype=np.float64).sum()) for v in delta.values())))
    factor = min(1.0, clip / norm) if norm > 0 else 1.0
    return {k: (v * factor).astype(np.float32) for k, v in delta.items()}, norm


class UserLevel(PrivacyMechanism):
    """Poisson sampling, a bounded contribution per device, the noise added by the server."""

    name = "user"
    unit = "user"
    trust = (
        "the server sees only secure sums of contributions each device bounded itself, and "
        "adds the noise; everything it publishes is user-level DP"
    )

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - the base's
        super().__init__(*args, **kwargs)
        self.history: list[float] = []  # the noise multiplier of each recorded release

    def sample(
        self, pool: Sequence[int], participations: dict[int, int], rng: np.random.Generator
    ) -> list[int]:
        """Each device independently with probability ``fraction-train`` (may be empty)."""
        self.pool_size = len(pool)
        keep = rng.random(len(pool)) < self.cfg.fraction_train
        return [n for n, k in zip(pool, keep, strict=True) if k]

    def clip(self, spec: ContributionSpec) -> float:
        """The bound on one device's contribution (``user-clip``, or 1 for statistics)."""
        return spec.sensitivity

    def secure(self) -> bool:
        """Always: no contribution leaves a device outside a secure sum."""
        return True

    def aggregate(
        self, server_round: int, replies: Sequence[Contributed], spec: ContributionSpec
    ) -> Aggregate | None:
        """Never used: user-level contributions arrive only as a secure sum."""
        raise RuntimeError("user-level DP takes contributions only inside a secure sum")

    def aggregate_sum(
        self,
        server_round: int,
        plan: RoundPlan,
        total: Mapping[str, np.ndarray],
        included: Sequence[int],
        spec: ContributionSpec,
    ) -> tuple[Aggregate | None, list[str]]:
        """Add the noise to the secure sum of norm-bounded contributions; record it first.

        The noise is added (and ledgered) however many devices the sum holds: the release
        happens every round. A mean (table updates) divides by the expected count ``q·N``.
        """
        noisy = {k: np.asarray(v, dtype=np.float64) for k, v in total.items()}
        for k in noisy:
            noisy[k] = noisy[k] + self.noise.normal(
                spec.noise_multiplier * self.clip(spec), spec.shapes[k]
            )
        self.record(server_round, spec, "dp-fedavg" if spec.aggregate == "mean" else spec.purpose)
        if spec.aggregate == "mean":
            expected = max(1e-9, self.cfg.fraction_train * self.pool_size)
            mean = {k: (v / expected).astype(np.float32) for k, v in noisy.items()}
            return Aggregate(count=len(included), mean=mean), []
        return Aggregate(count=len(included), total=noisy), []

    def record(self, server_round: int, spec: ContributionSpec, purpose: str) -> None:
        """Count the release and write it to the server's signed ledger."""
        self.history.append(spec.noise_multiplier)
        ledger = self.ledgers.ledger("server")
        if ledger is None:
            return
        event = PrivacyEvent(
            spec.noise_multiplier,
            self.cfg.fraction_train,
            1,
            max_grad_norm=self.clip(spec),
            unit="user",
            purpose=purpose,
            randomness=self.noise.label,
        )
        ledger.append(
            event,
            round=server_round,
            target_delta=self.cfg.delta,
            budget_epsilon=self.cfg.epsilon,
            claimed_epsilon=self.epsilon(),
            accountant="pld",
        )

    def epsilon(self) -> float:
        """User-level ε of the releases so far (PLD)."""
        from fedrec.common.privacy.accountant import epsilon_of

        q = self.cfg.fraction_train
        return epsilon_of("pld", [(z, q, 1) for z in self.history], self.cfg.delta)

    def metrics(self, included: Sequence[int]) -> dict[str, float]:
        """The user-level ε so far."""
        return {"epsilon_user": self.epsilon()}
