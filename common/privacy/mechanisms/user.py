"""``user``: user-level DP (DP-FedAvg, McMahan et al., ICLR 2018) with the noise on the server.

Each round the server samples every device independently with probability ``q``
(``fraction-train``: Poisson sampling, the amplification the accountant claims is the sampling
actually used), bounds each device's whole contribution to L2 norm ``S`` (one device's whole
data is the unit), adds Gaussian noise ``N(0, (z·S)²)`` to the sum, and records the release in
its own signed ledger (``ledgers/server.jsonl``) before the new table goes anywhere.

A release is kept (``checkpoints/releases/``) before it is ledgered, until the round's
checkpoint is written. A run stopped between the two and resumed runs that round again and
publishes the kept release, not a fresh one (:meth:`UserLevel.replay_from`): the ledger counts
each release once, and re-running a round costs no budget. No release can take the server's
ε over the run's budget (:meth:`UserLevel.check_budget` refuses it).

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

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

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
        #: releases already made and ledgered in rounds a resumed run runs again, by round
        self.replay: dict[int, list[dict[str, np.ndarray]]] = {}

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
        kept = self.replay.get(server_round)
        if kept:  # made before the run stopped: published again, not drawn and counted again
            noisy = kept.pop(0)
        else:
            noisy = {k: np.asarray(v, dtype=np.float64) for k, v in total.items()}
            for k in noisy:
                noisy[k] = noisy[k] + self.noise.normal(
                    spec.noise_multiplier * self.clip(spec), spec.shapes[k]
                )
            purpose = "dp-fedavg" if spec.aggregate == "mean" else spec.purpose
            claimed = self.check_budget(spec)
            self._keep(server_round, noisy)
            self.record(server_round, spec, purpose, claimed)
        if spec.aggregate == "mean":
            expected = max(1e-9, self.cfg.fraction_train * self.pool_size)
            mean = {k: (v / expected).astype(np.float32) for k, v in noisy.items()}
            return Aggregate(count=len(included), mean=mean), []
        return Aggregate(count=len(included), total=noisy), []

    def check_budget(self, spec: ContributionSpec) -> float:
        """The server's ε with this release; refused if over the run's budget."""
        eps = self.epsilon(spec.noise_multiplier)
        if eps > self.cfg.epsilon + 1e-12:  # as the audit checks it
            raise RuntimeError(
                f"user-level release {len(self.history) + 1} would spend ε {eps:.4f}, over the "
                f"run's budget {self.cfg.epsilon:g}: the server stops instead"
            )
        return eps

    def _releases(self) -> Path | None:
        d = self.ledgers.ledger_dir
        return None if d is None else d.parent / "checkpoints" / "releases"

    def _keep(self, server_round: int, noisy: Mapping[str, np.ndarray]) -> None:
        """Write release ``len(history)`` (of ``server_round``) before it is ledgered."""
        folder = self._releases()
        if folder is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{len(self.history):06d}-round-{server_round:06d}.npz"
        tmp = target.with_name(target.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, **{k: np.asarray(v) for k, v in noisy.items()})
        os.replace(tmp, target)

    def forget_releases(self, server_round: int) -> None:
        """Drop the kept releases of rounds up to ``server_round`` (its checkpoint is written)."""
        folder = self._releases()
        if folder is None or not folder.is_dir():
            return
        for path in folder.glob("*-round-*.npz"):
            if int(path.stem.rsplit("-", 1)[1]) <= server_round:
                path.unlink(missing_ok=True)

    def replay_from(self, records: Sequence[Mapping[str, object]], first_round: int) -> None:
        """Restore the ledgered releases (``records``: the server ledger's) on resume.

        Releases of rounds from ``first_round`` on were made before the run stopped and after
        its checkpoint: their rounds are run again and publish these (:attr:`replay`).

        Raises:
            ValueError: such a release is ledgered but not kept (the run cannot go on within
                the budget it recorded).
        """
        self.history = [float(r["mechanism"]["noise_multiplier"]) for r in records]  # type: ignore[index]
        self.replay = {}
        folder = self._releases()
        for i, r in enumerate(records):
            rnd = int(r["round"])  # type: ignore[arg-type]
            if rnd < first_round:
                continue
            path = None if folder is None else folder / f"{i:06d}-round-{rnd:06d}.npz"
            if path is None or not path.is_file():
                raise ValueError(
                    f"the server's ledger records release {i + 1} (round {rnd}) after the "
                    f"checkpoint, but {path} does not hold it: resuming would release again"
                )
            with np.load(path) as z:
                self.replay.setdefault(rnd, []).append({k: z[k] for k in z.files})

    def record(
        self,
        server_round: int,
        spec: ContributionSpec,
        purpose: str,
        claimed: float | None = None,
    ) -> None:
        """Count the release and write it to the server's signed ledger.

        ``claimed``: the ε with this release, where :meth:`check_budget` computed it already.
        """
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
            claimed_epsilon=self.epsilon() if claimed is None else claimed,
            accountant="pld",
        )

    def epsilon(self, *pending: float) -> float:
        """User-level ε of the releases so far (PLD), with ``pending`` noise multipliers."""
        from fedrec.common.privacy.accountant import epsilon_of

        q = self.cfg.fraction_train
        releases = [(z, q, 1) for z in [*self.history, *pending]]
        return epsilon_of("pld", releases, self.cfg.delta)

    def metrics(self, included: Sequence[int]) -> dict[str, float]:
        """The user-level ε so far."""
        return {"epsilon_user": self.epsilon()}
