"""A Flower strategy for item-table federation, on the Message API of flwr 1.42.

:class:`ItemEmbeddingStrategy` implements Flower's :class:`~flwr.serverapp.strategy.Strategy`
(``configure_train`` / ``aggregate_train`` / ``configure_evaluate`` / ``aggregate_evaluate``)
over a :class:`~fedrec.server.coordinator.Coordinator`, so a Flower user can drive fedrec's
rounds with Flower's own tools. :meth:`ItemEmbeddingStrategy.start` runs fedrec's one round
loop (:func:`~fedrec.server.round_loop.run_rounds`) over the Grid
(:class:`~fedrec.server.flower_transport.FlowerTransport`): secure rounds through SecAgg+,
every reply validated (a malformed one is dropped with a logged reason), one JSON line per
round and a checkpoint in the run directory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from fedrec.common.config import RunConfig
from fedrec.server.coordinator import Coordinator, RoundReport
from fedrec.server.flower_transport import (
    FlowerTransport,
    evaluation_from_message,
    reply_from_message,
    to_arrays,
    to_numpy,
)
from fedrec.server.resume import Checkpointer
from fedrec.server.round_loop import Request, Transport, run_rounds
from fedrec.server.run_directory import RunDirectory

__all__ = ["ItemEmbeddingStrategy", "TransportFactory", "reply_from_message"]

log = logging.getLogger("fedrec.server")

#: Builds the round loop's transport from the grid, the coordinator and the round timeout.
TransportFactory = Callable[[Grid, Coordinator, float], Transport]


class ItemEmbeddingStrategy(Strategy):
    """Server strategy: sample devices, aggregate their contributions, update, evaluate.

    Args:
        cfg: the run configuration.
        coordinator: holds the global state and the round logic.
        run_dir: where round records and checkpoints go (``None``: nowhere).
        on_round: called with each round's record (for progress displays).
        min_nodes: wait until this many devices are connected before the first round.
        wait_timeout: give up waiting after this many seconds (start with those present).
        measure: a simulation's own quality measurement of an item table
            (:func:`fedrec.simulations.measure.measure_quality`), called at every evaluation
            round; it releases nothing. ``None`` in a deployment.
        quorum_every_round: wait for ``min_nodes`` before *every* round (deployments: a
            device whose SuperNode restarted is back in the next round).
        checkpointer: saves the server after each round, and restores it to resume a run
            (:class:`~fedrec.server.resume.Checkpointer`; default: a fresh run's).
        transport: builds the round loop's transport from the grid, the coordinator and the
            timeout (default: :class:`~fedrec.server.flower_transport.FlowerTransport`, one
            device per node; a simulation's cohort workers pass
            :class:`~fedrec.server.flower_transport.CohortTransport`).
    """

    def __init__(
        self,
        cfg: RunConfig,
        coordinator: Coordinator,
        *,
        run_dir: RunDirectory | None = None,
        on_round: Callable[[dict[str, object]], None] | None = None,
        min_nodes: int = 1,
        wait_timeout: float = 120.0,
        measure: Callable[[dict[str, np.ndarray]], dict[str, float]] | None = None,
        quorum_every_round: bool = False,
        checkpointer: Checkpointer | None = None,
        transport: TransportFactory | None = None,
    ):
        self.cfg = cfg
        self.coordinator = coordinator
        self.run_dir = run_dir
        self.on_round = on_round
        self.min_nodes = min_nodes
        self.wait_timeout = wait_timeout
        self.measure = measure
        self.quorum_every_round = quorum_every_round
        self.checkpointer = checkpointer
        self.transport = transport
        self.last_report: RoundReport | None = None
        self._sampled: dict[int, list[int]] = {}

    def summary(self) -> None:
        """Log the strategy's settings."""
        log.info(
            "ItemEmbeddingStrategy: algorithm %s, privacy %s, fraction-train %.3f",
            self.cfg.algorithm,
            self.cfg.privacy,
            self.cfg.fraction_train,
        )

    # --- Strategy API (individual replies) ----------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Messages to the devices sampled for this round (rounds without a secure sum)."""
        if self.quorum_every_round and server_round > 1:
            self.wait_for_nodes(grid)
        coord = self.coordinator
        nodes = coord.sample(list(grid.get_node_ids()))
        self._sampled[server_round] = nodes  # replies from other nodes are dropped
        task = coord.task(server_round)
        request = Request(
            server_round,
            task,
            to_numpy(arrays),
            dict(config),
            coord.algorithm.contribution(task).shapes,
        )
        return FlowerTransport(grid).messages(request, nodes)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate and aggregate the replies; returns the new global arrays and metrics."""
        report = self.coordinator.aggregate(
            server_round,
            [reply_from_message(m) for m in replies],
            self._sampled.pop(server_round, None),
        )
        self.last_report = report
        return to_arrays(self.coordinator.state), MetricRecord(
            {
                "aggregated": report.aggregated,
                "refused": report.refused,
                "dropped": report.dropped,
                "update-norm": report.update_norm,
                **{k.replace("_", "-"): v for k, v in report.train_metrics.items()},
            }
        )

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Evaluation requests, when the run plans (and accounts for) federated evaluation."""
        cfg = self.cfg
        if server_round not in cfg.eval_rounds or not cfg.federated_evaluation:
            return []
        from fedrec.common.algorithms.base import Task

        extra = {"ks": ",".join(map(str, cfg.k_values))}
        if cfg.privacy != "off":
            extra["eval-noise-multiplier"] = float(cfg.eval_noise_multiplier)
        request = Request(
            server_round, Task("evaluate"), to_numpy(arrays), {**dict(config), **extra}
        )
        nodes = self.coordinator.sample_evaluation(list(grid.get_node_ids()))
        return FlowerTransport(grid).messages(request, nodes, MessageType.EVALUATE)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Means of the devices' metric sums (noised sums in a private run)."""
        from fedrec.common.evaluation.metrics import combine_noisy_sums

        sums = self.coordinator.usable_evaluations(
            server_round, [evaluation_from_message(m) for m in replies]
        )
        combined = (
            self.coordinator.combine_evaluation(sums)
            if self.cfg.privacy == "off"
            else combine_noisy_sums(sums)
        )
        return MetricRecord(combined) if combined else None

    # --- the rounds ----------------------------------------------------------------------------
    def wait_for_nodes(self, grid: Grid) -> int:
        """Block until ``min_nodes`` devices are connected (or the timeout); return the count."""
        deadline = time.monotonic() + self.wait_timeout
        while True:
            n = len(list(grid.get_node_ids()))
            if n >= self.min_nodes or time.monotonic() > deadline:
                if n < self.min_nodes:
                    log.warning("starting with %d of the %d expected devices", n, self.min_nodes)
                return n
            time.sleep(0.2)

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord | None = None,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Run ``num_rounds`` rounds of fedrec's round loop over the Grid."""
        transport: Transport = (
            FlowerTransport(grid, timeout=timeout)
            if self.transport is None
            else self.transport(grid, self.coordinator, timeout)
        )
        self.wait_for_nodes(grid)

        def before(rnd: int) -> None:
            if self.quorum_every_round and rnd > 1:
                self.wait_for_nodes(grid)

        def record(r: dict[str, object]) -> None:
            if self.on_round is not None:
                self.on_round(r)

        result = Result()
        for r in run_rounds(
            self.coordinator,
            transport,
            num_rounds=num_rounds,
            run_dir=self.run_dir,
            on_round=record,
            measure=self.measure,
            config=dict(train_config or {}),
            before_round=before,
            checkpointer=self.checkpointer,
        ):
            rnd = int(r["round"])  # type: ignore[call-overload]
            result.train_metrics_clientapp[rnd] = MetricRecord(
                {k: float(v) for k, v in r.items() if isinstance(v, (int, float))}
            )
            if "eval" in r:
                result.evaluate_metrics_clientapp[rnd] = MetricRecord(dict(r["eval"]))  # type: ignore[arg-type]
        result.arrays = to_arrays(self.coordinator.state)
        return result
