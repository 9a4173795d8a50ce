"""The one round loop: every round of every run, whatever carries the messages.

:func:`run_rounds` drives a :class:`~fedrec.server.coordinator.Coordinator` over a
:class:`Transport`: sample devices, send the round's request, collect replies (or one secure
sum), aggregate, update the table, evaluate, record and checkpoint. Two transports implement
it: :class:`~fedrec.server.flower_transport.FlowerTransport` (Flower's Grid: the simulation
engine and real deployments, SecAgg+ for secure sums) and
:class:`~fedrec.simulations.in_process.InProcessTransport` (devices called directly in one
process, the secure sum computed in the clear with the same device-side checks).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fedrec.common.algorithms.base import Task
from fedrec.common.privacy.mechanisms import RoundPlan
from fedrec.server.coordinator import Coordinator, Reply, RoundReport
from fedrec.server.resume import Checkpointer
from fedrec.server.run_directory import RunDirectory

__all__ = ["Request", "SumResult", "Transport", "run_rounds", "run_round", "evaluate_round"]

log = logging.getLogger("fedrec.server")


@dataclass(frozen=True)
class Request:
    """What every device sampled for a round receives.

    Attributes:
        server_round: the round.
        task: what the algorithm asks (its name travels as ``task`` in the config).
        state: the item table.
        config: everything else the request's config carries (noise share, fingerprints).
        reply_shapes: the names and shapes of a contribution (replies that differ are
            dropped; a secure sum checks them on every masked vector).
    """

    server_round: int
    task: Task
    state: Mapping[str, np.ndarray]
    config: Mapping[str, Any] = field(default_factory=dict)
    reply_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def arrays(self) -> dict[str, np.ndarray]:
        """The table and the task's arrays (what the request's ``arrays`` record holds)."""
        return {**self.state, **self.task.arrays}

    def flat_config(self) -> dict[str, Any]:
        """The request's config: round, task name, the task's and the transport's settings."""
        return {
            "server-round": self.server_round,
            "task": self.task.name,
            **self.task.config,
            **self.config,
        }


@dataclass
class SumResult:
    """What a secure sum reveals: the total, who is in it, who declined, why others left."""

    total: dict[str, np.ndarray] | None
    included: list[int]
    declined: int = 0
    drop_reasons: list[str] = field(default_factory=list)
    public: dict[str, float] = field(default_factory=dict)


class Transport(Protocol):
    """How requests reach devices and replies come back."""

    def nodes(self) -> list[int]:
        """The devices currently reachable."""

    def train(self, request: Request, nodes: Sequence[int]) -> list[Reply]:
        """Send a request to each node; their individual replies."""

    def secure_sum(self, request: Request, nodes: Sequence[int], plan: RoundPlan) -> SumResult:
        """Send a request to each node; only the sum of their contributions comes back."""

    def evaluate(self, request: Request, nodes: Sequence[int]) -> list[object]:
        """Ask each node for its evaluation release; the replies' metric sums (unchecked)."""


def run_round(
    coordinator: Coordinator,
    transport: Transport,
    server_round: int,
    *,
    config: Mapping[str, Any] | None = None,
) -> RoundReport:
    """One training round over ``transport``; returns its report."""
    nodes = coordinator.sample(transport.nodes())
    task = coordinator.task(server_round)
    shapes = coordinator.algorithm.contribution(task).shapes
    request = Request(server_round, task, coordinator.state, dict(config or {}), shapes)
    if not coordinator.secure:
        return coordinator.aggregate(server_round, transport.train(request, nodes), nodes)
    if not nodes:
        return RoundReport(server_round, 0, 0, 0, 0, ["no device left to ask"], 0.0, {})
    plan = coordinator.plan_round(len(nodes), server_round)
    extra: dict[str, Any] = {}
    if coordinator.mechanism.device_noise:
        extra = {"noise-share": plan.noise_share, "min-included": plan.min_included}
    request = Request(server_round, task, coordinator.state, {**(config or {}), **extra}, shapes)
    result = transport.secure_sum(request, nodes, plan)
    report = coordinator.aggregate_sum(
        server_round,
        plan,
        result.total,
        result.included,
        refused=result.declined,
        drop_reasons=result.drop_reasons,
        sampled=nodes,
    )
    report.train_metrics.update(result.public)
    return report


def evaluate_round(
    coordinator: Coordinator,
    transport: Transport,
    server_round: int,
    *,
    measure: Callable[[dict[str, np.ndarray]], dict[str, float]] | None = None,
) -> dict[str, object]:
    """A round's evaluations: federated (a release, when planned) and the simulator's.

    Returns ``{"eval": …}`` (the simulator's measurement when there is one, else the federated
    means) and ``{"federated_eval": …}`` (the federated means, beside a measurement).
    """
    from fedrec.common.evaluation.metrics import combine_noisy_sums

    cfg = coordinator.cfg
    out: dict[str, object] = {}
    if server_round not in cfg.eval_rounds:
        return out
    if cfg.federated_evaluation and not (measure is not None and cfg.privacy == "off"):
        # (with privacy off, exact federated sums would only repeat the measurement)
        config: dict[str, Any] = {"ks": ",".join(map(str, cfg.k_values))}
        if cfg.privacy != "off":
            config["eval-noise-multiplier"] = float(cfg.eval_noise_multiplier)
        request = Request(server_round, Task("evaluate"), coordinator.state, config)
        nodes = coordinator.sample_evaluation(transport.nodes())
        sums = coordinator.usable_evaluations(server_round, transport.evaluate(request, nodes))
        means = (
            coordinator.combine_evaluation(sums)
            if cfg.privacy == "off"
            else combine_noisy_sums(sums)
        )
        if means:
            out["federated_eval" if measure is not None else "eval"] = means
    if measure is not None:
        out["eval"] = measure(coordinator.state)
    return out


def run_rounds(
    coordinator: Coordinator,
    transport: Transport,
    *,
    num_rounds: int,
    run_dir: RunDirectory | None = None,
    on_round: Callable[[dict[str, object]], None] | None = None,
    measure: Callable[[dict[str, np.ndarray]], dict[str, float]] | None = None,
    config: Mapping[str, Any] | None = None,
    before_round: Callable[[int], None] | None = None,
    checkpointer: Checkpointer | None = None,
    after_round: Callable[[int], None] | None = None,
) -> list[dict[str, object]]:
    """Run the rounds up to ``num_rounds``; record and checkpoint each; returns every record.

    Args:
        coordinator: the server's round logic.
        transport: how messages travel (Flower's Grid, or in-process calls).
        num_rounds: the run's last round.
        run_dir: where round records and checkpoints go (``None``: nowhere).
        on_round: called with each round's record (progress displays).
        measure: a simulation's own quality measurement (releases nothing).
        config: entries every training request's config carries (e.g. a catalog
            fingerprint).
        before_round: called before each round (e.g. waiting for a quorum of devices).
        checkpointer: saves the server after each round and, resuming, restores it before
            the first (default with ``run_dir``: a fresh run's :class:`Checkpointer`).
        after_round: called after each round's evaluation, before its checkpoint (the
            in-process simulation saves its devices' states there).

    A resumed run starts after the checkpoint's round; the records returned (and written to
    ``metrics.jsonl``) are the earlier rounds' and this run's.
    """
    if checkpointer is None and run_dir is not None:
        checkpointer = Checkpointer(run_dir)
    records: list[dict[str, object]] = []
    if checkpointer is not None:
        checkpointer.start(coordinator)
        records = list(checkpointer.records)
    first = checkpointer.first_round if checkpointer is not None else 1
    for rnd in range(first, num_rounds + 1):
        t0 = time.perf_counter()
        if before_round is not None:
            before_round(rnd)
        record: dict[str, object] = run_round(coordinator, transport, rnd, config=config).to_dict()
        record.update(evaluate_round(coordinator, transport, rnd, measure=measure))
        if after_round is not None:
            after_round(rnd)
        # the round's time includes saving the devices' states, wherever it happens (cohort
        # workers save theirs before replying; the in-process engine in ``after_round``)
        record["seconds"] = time.perf_counter() - t0
        records.append(record)
        if checkpointer is not None:  # the checkpoint first: it can rebuild metrics.jsonl
            checkpointer.save(coordinator, rnd, records)
            checkpointer.run_dir.append_metrics(record)
        if on_round is not None:
            on_round(record)
    return records
