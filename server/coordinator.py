"""The server's side of a round, independent of the transport.

:class:`Coordinator` holds the run's :class:`~fedrec.common.algorithms.base.Algorithm` (what
devices are asked and how the aggregate becomes the next item table) and its
:class:`~fedrec.common.privacy.mechanisms.base.PrivacyMechanism` (how devices are sampled,
where the noise goes, what the server sees and accounts). It validates every reply (or
secure sum) against the algorithm's public contribution shape before anything is used. The
round loop (:mod:`fedrec.server.round_loop`) drives it over a transport: Flower's Grid, or
devices called in-process.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedrec.common.algorithms.base import Aggregate, Algorithm, ContributionSpec, Task
from fedrec.common.algorithms.registry import create
from fedrec.common.algorithms.sgd import initial_item_table
from fedrec.common.config import RunConfig
from fedrec.common.evaluation.metrics import combine_metric_sums
from fedrec.common.privacy.mechanisms import (
    Contributed,
    PrivacyMechanism,
    RoundPlan,
    make_mechanism,
)
from fedrec.server.validation import (
    ReplyRules,
    check_evaluation,
    check_included,
    check_reply,
    validate_delta,
)

__all__ = ["Reply", "RoundReport", "Coordinator", "initial_global_state", "make_coordinator"]

log = logging.getLogger("fedrec.server")

#: The server's initial item table, seeded by the run's seed (no data involved).
initial_global_state = initial_item_table


@dataclass
class Reply:
    """A device's answer to a request, as the server sees it.

    Exactly one of ``arrays`` (a contribution), ``refusal`` (the device declined, with its
    code) or ``error`` (the transport or the device failed) is set.
    """

    node: int
    arrays: dict[str, np.ndarray] | None = None
    num_examples: float = 1.0
    metrics: dict[str, float] = field(default_factory=dict)
    refusal: str | None = None
    error: str | None = None


@dataclass
class RoundReport:
    """What happened in one training round (no per-device data)."""

    server_round: int
    sampled: int
    aggregated: int
    refused: int
    dropped: int
    drop_reasons: list[str]
    update_norm: float
    train_metrics: dict[str, float]

    def to_dict(self) -> dict[str, object]:
        """A JSON-able dict."""
        return {
            "round": self.server_round,
            "sampled": self.sampled,
            "aggregated": self.aggregated,
            "refused": self.refused,
            "dropped": self.dropped,
            "drop_reasons": self.drop_reasons,
            "update_norm": self.update_norm,
            **{f"train_{k}": v for k, v in self.train_metrics.items()},
        }


def make_coordinator(
    cfg: RunConfig,
    n_items: int,
    *,
    ledger_dir: Path | str | None = None,
    item_features: np.ndarray | None = None,
) -> Coordinator:
    """The run's coordinator: its algorithm (from the registry) wrapped by its mechanism.

    ``item_features`` is the catalog's public feature matrix, for algorithms that use it.
    """
    algorithm = create(cfg, n_items, item_features=item_features)
    mechanism = make_mechanism(cfg, algorithm, ledger_dir=ledger_dir, noise=cfg.noise_source())
    return Coordinator(cfg, algorithm, mechanism)


def _node_text(reply: object) -> str:
    node = getattr(reply, "node", None)
    text = repr(node)
    return text if len(text) <= 40 else text[:37] + "..."


def _norm(arrays: Mapping[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(float(np.square(v, dtype=np.float64).sum()) for v in arrays.values())))


class Coordinator:
    """Global state and round logic of the server.

    Args:
        cfg: the run configuration (sampling fraction, limits).
        algorithm: the run's algorithm (initial table, tasks, contribution shapes, update).
        mechanism: the run's privacy mechanism (sampling, noise, accounting); it draws
            sampling and server noise from its noise source (OS entropy unless the run is
            reproducible).
    """

    def __init__(self, cfg: RunConfig, algorithm: Algorithm, mechanism: PrivacyMechanism):
        self.cfg = cfg
        self.algorithm = algorithm
        self.mechanism = mechanism
        self.state = {
            k: np.asarray(v, dtype=np.float32).copy() for k, v in algorithm.initial_state().items()
        }
        self.noise = mechanism.noise
        self.rng = self.noise.rng
        self._participations: dict[int, int] = {}

    # --- sampling ----------------------------------------------------------------------------
    def sample(self, nodes: Sequence[int]) -> list[int]:
        """Devices for the next training round, as the mechanism samples them (no data used)."""
        return self.mechanism.sample(sorted(int(n) for n in nodes), self._participations, self.rng)

    def sample_evaluation(self, nodes: Sequence[int]) -> list[int]:
        """Devices asked to evaluate (a fixed fraction, all by default)."""
        pool = sorted(int(n) for n in nodes)
        want = math.ceil(self.cfg.fraction_evaluate * len(pool) - 1e-9)
        if want >= len(pool):
            return pool
        picked = self.rng.choice(len(pool), size=want, replace=False)
        return sorted(pool[int(i)] for i in picked)

    # --- the round's request -----------------------------------------------------------------
    def task(self, server_round: int) -> Task:
        """What round ``server_round`` asks of the sampled devices."""
        return self.algorithm.task(server_round)

    @property
    def secure(self) -> bool:
        """Whether contributions go through a secure sum (SecAgg+) instead of replies."""
        return self.mechanism.secure()

    def plan_round(self, sampled: int, server_round: int) -> RoundPlan:
        """A secure round's provisioning: the noise share and the SecAgg+ range."""
        if not self.secure:
            raise RuntimeError("plan_round is for rounds with a secure sum")
        return self.mechanism.plan(sampled, self.algorithm.contribution(self.task(server_round)))

    def reply_reference(
        self, server_round: int, noise_share: float | None = None
    ) -> tuple[dict[str, np.ndarray], float]:
        """The arrays every reply of a round must match, and one reply's largest norm.

        ``noise_share``: the share of the device noise in a reply (default: 1 when devices
        add noise, else 0).
        """
        task = self.task(server_round)
        spec = self.algorithm.contribution(task)
        share = (
            (1.0 if self.mechanism.device_noise else 0.0) if noise_share is None else noise_share
        )
        reference = {k: np.zeros(s, dtype=np.float32) for k, s in spec.shapes.items()}
        return reference, self.algorithm.reply_norm_bound(task, share)

    # --- aggregation -------------------------------------------------------------------------
    def _step(self, server_round: int, aggregate: Aggregate | None) -> float:
        """Update the table with an aggregate; returns the aggregate's norm."""
        if aggregate is None:
            return 0.0
        used = aggregate.mean if aggregate.mean is not None else aggregate.total
        self.state = {
            k: np.asarray(v, dtype=np.float32)
            for k, v in self.algorithm.update(server_round, self.state, aggregate).items()
        }
        return _norm(used or {})

    def reply_rules(self, server_round: int, sampled: Sequence[int] | None = None) -> ReplyRules:
        """What the replies of a training round must be (:func:`~.validation.check_reply`)."""
        from fedrec.common.config import DEVICE_DP_MODES

        reference, max_norm = self.reply_reference(server_round)
        device_dp = self.cfg.privacy in DEVICE_DP_MODES
        return ReplyRules(
            reference=reference,
            max_norm=max_norm,
            sampled=None if sampled is None else frozenset(int(n) for n in sampled),
            epsilon_limit=self.cfg.epsilon * (1 + 1e-6) if device_dp else None,
        )

    def aggregate(
        self, server_round: int, replies: Sequence[Reply], sampled: Sequence[int] | None = None
    ) -> RoundReport:
        """Validate individual replies, aggregate the good ones, update the table.

        Every field of every reply is checked (:func:`~fedrec.server.validation.check_reply`):
        a reply from a node not in ``sampled`` (when given) or from a node that already
        answered, a malformed contribution, example count or metric (a device's ``epsilon``
        outside ``[0, epsilon]``) is dropped with its reason and changes nothing.

        Raises:
            RuntimeError: the run's contributions may only be seen as secure sums.
        """
        if self.secure:
            raise RuntimeError(
                "this run's contributions go through the secure sum "
                "(aggregate_sum): the server must not receive them one by one"
            )
        spec = self.algorithm.contribution(self.task(server_round))
        rules = self.reply_rules(server_round, sampled)
        good: list[Reply] = []
        reasons: list[str] = []
        refused = 0
        seen: set[int] = set()
        for r in replies:
            verdict, why = check_reply(r, rules, seen)
            if verdict == "good":
                good.append(r)
            elif verdict == "refused":
                refused += 1
            else:
                reasons.append(f"node {_node_text(r)}: {why}")
        for reason in reasons:
            log.warning("round %d: dropped reply: %s", server_round, reason)
        aggregate = self._defended_aggregate(
            server_round, [Contributed(int(r.node), r.arrays, r.num_examples) for r in good], spec
        )
        if aggregate is None:
            log.warning("round %d: no contribution to use; the round changed nothing", server_round)
        norm = self._step(server_round, aggregate)
        train_metrics = self._reply_metrics(good)
        train_metrics.update(self.mechanism.metrics([int(r.node) for r in good]))
        return RoundReport(
            server_round=server_round,
            sampled=len(sampled) if sampled is not None else len(replies),
            aggregated=len(good),
            refused=refused,
            dropped=len(reasons),
            drop_reasons=reasons,
            update_norm=norm,
            train_metrics=train_metrics,
        )

    def _defended_aggregate(
        self, server_round: int, contributed: list[Contributed], spec: ContributionSpec
    ) -> Aggregate | None:
        """The mechanism's aggregate with the run's poisoning defences (``fedrec.common.robust``).

        ``row-clip`` clips every row of every update; ``robust-aggregation`` replaces the
        (weighted) mean by a coordinate-wise trimmed mean or median, every device weighing
        the same.
        """
        from fedrec.common.robust import clip_rows, robust_mean

        cfg = self.cfg
        if cfg.row_clip > 0:
            contributed = [
                Contributed(c.node, clip_rows(c.arrays, cfg.row_clip), c.num_examples)
                for c in contributed
            ]
        if cfg.robust_aggregation == "none" or not contributed:
            return self.mechanism.aggregate(server_round, contributed, spec)
        n = len(contributed)
        mean = robust_mean(
            [c.arrays for c in contributed], cfg.robust_aggregation, trim=cfg.robust_trim
        )
        if spec.aggregate == "mean":
            return Aggregate(count=n, mean=mean)
        return Aggregate(count=n, total={k: np.asarray(v, np.float64) * n for k, v in mean.items()})

    @staticmethod
    def _reply_metrics(good: Sequence[Reply]) -> dict[str, float]:
        out: dict[str, float] = {}
        keys = set().union(*(r.metrics for r in good)) if good else set()
        for k in sorted(keys):
            vals = [float(r.metrics[k]) for r in good if k in r.metrics]
            if k == "epsilon":
                out["epsilon_max"] = max(vals)
                out["epsilon_median"] = float(np.median(vals))
            else:
                out[k] = float(np.mean(vals))
        return out

    def aggregate_sum(
        self,
        server_round: int,
        plan: RoundPlan,
        total: Mapping[str, np.ndarray] | None,
        included: Sequence[int],
        *,
        refused: int = 0,
        drop_reasons: Sequence[str] = (),
        sampled: Sequence[int] | None = None,
    ) -> RoundReport:
        """Update with a secure sum of ``len(included)`` contributions.

        The server never holds an individual contribution here, only ``total``. It checks the
        sum (keys, shape, finite, norm at most ``len(included)`` times one reply's bound);
        the mechanism accounts the noise present (before the table changes) and turns the sum
        into the aggregate the algorithm uses. A sum that names a node twice, or (with
        ``sampled``) a node that was not asked, is rejected.
        """
        if not self.secure:
            raise RuntimeError("aggregate_sum is for rounds with a secure sum")
        spec: ContributionSpec = self.algorithm.contribution(self.task(server_round))
        reasons = list(drop_reasons)
        n = len(included)
        reference, max_norm = self.reply_reference(server_round, plan.noise_share)
        if total is not None and n > 0:
            why = check_included(included, sampled) or validate_delta(
                total, reference, max_norm=max_norm * n
            )
            if why is not None:
                reasons.append(f"secure sum rejected: {why}")
                n = 0
        aggregate = None
        if total is not None and n > 0:
            aggregate, why_not = self.mechanism.aggregate_sum(
                server_round, plan, total, included, spec
            )
            reasons += why_not
        for reason in reasons:
            log.warning("round %d: %s", server_round, reason)
        norm = self._step(server_round, aggregate)
        used = n if aggregate is not None else 0
        return RoundReport(
            server_round=server_round,
            sampled=plan.sampled,
            aggregated=used,
            refused=refused,
            dropped=plan.sampled - used - refused,
            drop_reasons=reasons,
            update_norm=norm,
            train_metrics=self.mechanism.metrics(list(included) if used else []),
        )

    def usable_evaluations(self, server_round: int, sums: Sequence[object]) -> list[dict]:
        """The evaluation replies that pass :func:`~fedrec.server.validation.check_evaluation`.

        Each must hold exactly the run's metric sums, finite, of magnitude at most 1 (one
        user's metrics) plus 20 standard deviations of the release's noise; others are
        dropped with a warning.
        """
        from fedrec.common.evaluation.metrics import evaluation_keys

        keys = evaluation_keys(self.cfg.k_values)
        std = 0.0
        if self.cfg.privacy != "off":
            std = float(self.cfg.eval_noise_multiplier) * math.sqrt(len(keys))
        good = []
        for s in sums:
            why = check_evaluation(s, keys, bound=1.0 + 20.0 * std)
            if why is None:
                good.append({k: float(v) for k, v in s.items()})  # type: ignore[attr-defined]
            else:
                log.warning("round %d: dropped evaluation reply: %s", server_round, why)
        return good

    @staticmethod
    def combine_evaluation(sums: Sequence[Mapping[str, float]]) -> dict[str, float]:
        """Means of the devices' metric sums (keys like ``ndcg@10``, plus ``users``)."""
        sums = [s for s in sums if s and s.get("users", 0) > 0]
        if not sums:
            return {}
        return combine_metric_sums(sums)
