"""``distributed``: example-level DP with noise shares on devices and a secure sum.

Every sampled device adds only a share ``1/√k`` of the noise std a centralized release would
carry, where ``k`` is the number of devices the round is provisioned to sum (the sampled count
less the ``dropout-tolerance``); the secure sum (Flower's SecAgg+, or the same sum computed in
the clear in-process) shows the server only the total, in which ``n`` surviving shares add up
to noise of std ``σ·√(n/k)·Δ``.

Why the sum is DP with the full noise (one interaction of one device is the unit): with DP-SGD
a device's item tables stay at the server's values within the round and only its user
embedding moves (with the full noise σ, as it never leaves); each local step is a Gaussian
mechanism on the device's clipped per-example gradients whose item part, summed over devices,
carries ``σ_eff = σ·min(1, √(n/k))``, and what the server receives is a post-processing of
those steps. A release algorithm's contribution is one Gaussian release, the same argument
with one step. The mechanism records that effective noise for every device summed in every
round, in one signed ledger per device (``ledgers/secure-sum/``), which is what the run
reports and an auditor replays; each device's own ledger records the σ it provisioned for.

Trust: the server is honest-but-curious (follows the protocol, sees only sums); devices do
not collude with it to reveal their shares. SecAgg+'s range is sized so that no share is
clipped (:mod:`fedrec.common.privacy.secagg`); quantization error is measured, not accounted,
as in most deployments of distributed DP with SecAgg.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np

from fedrec.common.algorithms.base import Aggregate, ContributionSpec
from fedrec.common.privacy.events import PrivacyEvent
from fedrec.common.privacy.mechanisms.base import PrivacyMechanism, RoundPlan, _aggregate_of
from fedrec.common.privacy.secagg import secure_range

__all__ = ["Distributed"]

log = logging.getLogger("fedrec.server")


class Distributed(PrivacyMechanism):
    """Noise shares on devices; the server sees only secure sums carrying the full noise."""

    name = "distributed"
    unit = "example"
    device_noise = True
    trust = (
        "honest-but-curious server: SecAgg+ shows it only the sum of a round's "
        "updates, which carries the full noise; devices add 1/sqrt(k) of it each"
    )

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - the base's
        super().__init__(*args, **kwargs)
        self.histories: dict[str, list[tuple[float, float, int]]] = {}

    def secure(self) -> bool:
        """Always: a share is only DP inside a sum with the others."""
        return True

    def sample(
        self, pool: Sequence[int], participations: dict[int, int], rng: np.random.Generator
    ) -> list[int]:
        """Shuffled passes, never asking a device past its planned participations.

        Such a device would decline (budget) and take its share out of the sum; the plan is
        data-independent, so the server knows it in advance.
        """
        cap = self.cfg.planned_participations
        self.pool_size = len(pool)
        kept = [n for n in pool if participations.get(n, 0) < cap]
        if not kept:
            return []
        chosen = super().sample(kept, participations, rng)
        self.pool_size = len(pool)
        return chosen

    def plan(self, sampled: int, spec: ContributionSpec) -> RoundPlan:
        """Share ``1/√k`` for ``k`` = sampled less the dropout tolerance; the range to fit."""
        if sampled < 1:
            raise ValueError("a round needs at least one sampled device")
        k = max(1, math.ceil(sampled * (1.0 - self.cfg.dropout_tolerance) - 1e-9))
        share = 1.0 / math.sqrt(k)
        return RoundPlan(
            sampled=sampled,
            min_included=k,
            noise_share=share,
            clipping_range=secure_range(
                spec.coordinate_bound, spec.noise_per_coordinate * share, spec.size
            ),
            enforce_min=self.cfg.dropout_policy == "abort",
        )

    def effective_noise_multiplier(
        self, plan: RoundPlan, included: int, noise_multiplier: float
    ) -> float:
        """The noise multiplier protecting a round in which ``included`` shares add up.

        ``σ·√(included/min_included)``, capped at σ (each device's own step carries exactly
        σ); 0 when nothing was summed.
        """
        if included <= 0:
            return 0.0
        return noise_multiplier * min(1.0, math.sqrt(included / plan.min_included))

    def aggregate_sum(
        self,
        server_round: int,
        plan: RoundPlan,
        total: Mapping[str, np.ndarray],
        included: Sequence[int],
        spec: ContributionSpec,
    ) -> tuple[Aggregate | None, list[str]]:
        """Use the sum only with enough shares in it (or account the smaller noise)."""
        n = len(included)
        if 0 < n < plan.min_included and self.cfg.dropout_policy == "abort":
            return None, [
                f"secure sum not used: {n} devices summed, fewer than the "
                f"{plan.min_included} provisioned for the full noise"
            ]
        sigma = self.record(server_round, plan, included, spec)
        if sigma < spec.noise_multiplier:
            log.warning(
                "round %d: %d of %d devices summed (provisioned %d): the sum carried "
                "noise multiplier %.4g < %.4g, accounted as such",
                server_round,
                n,
                plan.sampled,
                plan.min_included,
                sigma,
                spec.noise_multiplier,
            )
        return _aggregate_of(spec, {k: np.asarray(v, np.float64) for k, v in total.items()}, n), []

    def record(
        self, server_round: int, plan: RoundPlan, included: Sequence[int], spec: ContributionSpec
    ) -> float:
        """Account the round for every included device at the noise present; returns it."""
        sigma = self.effective_noise_multiplier(plan, len(included), spec.noise_multiplier)
        if sigma <= 0:
            return 0.0
        event = PrivacyEvent(
            sigma,
            spec.sampling_probability,
            spec.steps,
            max_grad_norm=spec.sensitivity,
            unit="example",
            purpose=f"secure-sum-{spec.purpose}",
            randomness="seeded" if self.cfg.device_seed is not None else "os-entropy",
        )
        for device in map(str, included):
            self.histories.setdefault(device, []).append(event.history_entry)
            ledger = self.ledgers.ledger(f"node-{device}", "secure-sum")
            if ledger is not None:
                ledger.append(
                    event,
                    round=server_round,
                    target_delta=self.cfg.delta,
                    budget_epsilon=self.cfg.epsilon,
                    claimed_epsilon=self.epsilon(device),
                    accountant=self.cfg.accountant,
                )
        return sigma

    def epsilon(self, device: str) -> float:
        """Example-level ε of one device from the noise actually present in its rounds."""
        from fedrec.common.privacy.accountant import epsilon_of

        return epsilon_of(self.cfg.accountant, self.histories.get(str(device), []), self.cfg.delta)

    def metrics(self, included: Sequence[int]) -> dict[str, float]:
        """The ε of the devices summed this round, from the noise present."""
        eps = [self.epsilon(str(i)) for i in included]
        return {"epsilon_max": max(eps), "epsilon_median": float(np.median(eps))} if eps else {}
