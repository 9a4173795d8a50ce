"""A Flower strategy for item-embedding federation, on the Message API of flwr 1.42.

:class:`ItemEmbeddingStrategy` implements Flower's :class:`~flwr.serverapp.strategy.Strategy`
(``configure_train`` / ``aggregate_train`` / ``configure_evaluate`` / ``aggregate_evaluate``)
over a :class:`~fedrec.server.coordinator.Coordinator`. Unlike ``FedAvg`` it never lets a
malformed reply raise: every reply is checked (shape, dtype, finite, norm) and a bad one is
dropped with a logged reason while the round goes on. Devices reply with *deltas* of the item
table; refusals (a device over its budget) are counted, not aggregated.

:meth:`ItemEmbeddingStrategy.start` runs the rounds, writes one JSON line per round and a
checkpoint to the run directory, and reports progress through a callback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from fedrec.common.config import RunConfig
from fedrec.common.evaluation.metrics import combine_noisy_sums
from fedrec.server.coordinator import Coordinator, Reply, RoundReport
from fedrec.server.run_directory import RunDirectory

__all__ = ["ItemEmbeddingStrategy", "reply_from_message"]

log = logging.getLogger("fedrec.server")


def _to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def _to_arrays(state: dict[str, np.ndarray]) -> ArrayRecord:
    from flwr.app import Array

    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in state.items()})


def reply_from_message(msg: Message) -> Reply:
    """Turn a device's reply message into a :class:`Reply`, never raising."""
    node = int(msg.metadata.src_node_id)
    try:
        if msg.has_error():
            return Reply(node=node, error=str(msg.error.reason))
        content = msg.content
        if "refusal" in content:
            return Reply(node=node, refusal=str(content["refusal"].get("code", "refused")))
        if "arrays" not in content:
            return Reply(node=node, error="reply has neither 'arrays' nor 'refusal'")
        delta = _to_numpy(content["arrays"])  # type: ignore[arg-type]
        metrics = dict(content["metrics"]) if "metrics" in content else {}
        n = float(metrics.pop("num-examples", 1))
        return Reply(node=node, delta=delta, num_examples=n,
                     metrics={k: float(v) for k, v in metrics.items()
                              if isinstance(v, (int, float))})
    except Exception as exc:  # a malformed reply must not crash the server
        return Reply(node=node, error=f"unreadable reply: {type(exc).__name__}: {exc}")


class ItemEmbeddingStrategy(Strategy):
    """Server strategy: sample devices, aggregate item-table deltas, step, evaluate.

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
    """

    def __init__(self, cfg: RunConfig, coordinator: Coordinator, *,
                 run_dir: RunDirectory | None = None,
                 on_round: Callable[[dict[str, object]], None] | None = None,
                 min_nodes: int = 1, wait_timeout: float = 120.0,
                 measure: Callable[[dict[str, np.ndarray]], dict[str, float]] | None = None):
        self.cfg = cfg
        self.measure = measure
        self.min_nodes = min_nodes
        self.wait_timeout = wait_timeout
        self.coordinator = coordinator
        self.run_dir = run_dir
        self.on_round = on_round
        self.last_report: RoundReport | None = None

    def summary(self) -> None:
        """Log the strategy's settings."""
        log.info("ItemEmbeddingStrategy: %s, fraction-train %.3f, privacy %s",
                 self.cfg.server_optimizer, self.cfg.fraction_train, self.cfg.privacy)

    # --- Strategy API --------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Messages to the devices sampled for this round."""
        nodes = self.coordinator.sample(list(grid.get_node_ids()))
        config["server-round"] = server_round
        arrays = self._spectral_request(server_round, arrays, config)
        record = RecordDict({"arrays": arrays, "config": config})
        return [Message(content=record, message_type=MessageType.TRAIN, dst_node_id=n)
                for n in nodes]

    def _spectral_request(self, server_round: int, arrays: ArrayRecord,
                          config: ConfigRecord) -> ArrayRecord:
        """Spectral runs: name the round's phase and add the selected items to the request."""
        spectral = self.coordinator.spectral
        if spectral is None:
            return arrays
        config["spectral-phase"] = spectral.phase(server_round)
        extra = self.coordinator.round_arrays(server_round)
        return _to_arrays({**_to_numpy(arrays), **extra}) if extra else arrays

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate and aggregate the replies; returns the new global arrays and metrics."""
        report = self.coordinator.aggregate(server_round,
                                            [reply_from_message(m) for m in replies])
        self.last_report = report
        metrics = MetricRecord({
            "aggregated": report.aggregated, "refused": report.refused,
            "dropped": report.dropped, "update-norm": report.update_norm,
            **{k.replace("_", "-"): v for k, v in report.train_metrics.items()},
        })
        return _to_arrays(self.coordinator.state), metrics

    def secure_round(self, grid: Grid, server_round: int, arrays: ArrayRecord,
                     config: ConfigRecord, *, timeout: float | None = None
                     ) -> tuple[ArrayRecord, MetricRecord]:
        """A distributed-DP training round: noise shares on devices, SecAgg+ sum on the server.

        The sampled devices receive the item table and ``noise-share`` (``1/√k`` for the ``k``
        devices the round is provisioned to sum); Flower's SecAgg+ protocol
        (:func:`fedrec.server.secure_aggregation.secure_sum`) gives the server only the sum of
        their updates and who is in it. Devices that decline (budget) count as refusals, others
        that drop out as dropped; the coordinator accounts the noise that was actually present.
        """
        from fedrec.server.secure_aggregation import (
            DECLINED_PREFIX,
            SecAggConfig,
            SecureAggregationError,
            secure_sum,
        )

        coord = self.coordinator
        nodes = coord.sample(list(grid.get_node_ids()))
        if not nodes:
            self.last_report = RoundReport(server_round, 0, 0, 0, 0, ["no device left to ask"],
                                           0.0, {})
            return _to_arrays(coord.state), MetricRecord({"aggregated": 0})
        plan = coord.plan_round(len(nodes), server_round)
        config["server-round"] = server_round
        if coord.distributed is not None:
            config["noise-share"] = plan.noise_share
            config["min-included"] = plan.min_included
        arrays = self._spectral_request(server_round, arrays, config)
        reference, _ = coord.reply_reference(server_round)
        content = RecordDict({"arrays": arrays, "config": config})
        secagg = SecAggConfig(clipping_range=plan.clipping_range, timeout=timeout)
        total, included, reasons, declined = None, [], [], 0
        public: dict[str, float] = {}  # public quantities of the protocol (n · step)
        try:
            res = secure_sum(
                grid, nodes, content, config=secagg, group_id=str(server_round),
                shapes={k: tuple(v.shape) for k, v in reference.items()},
                min_included=plan.min_included if (self.cfg.dropout_policy == "abort"
                                                   and coord.distributed is not None) else None)
            total, included = res.total, list(res.included)
            declined = len(res.declined)
            reasons = [f"node {n}: {why}" for n, why in sorted(res.drop_reasons.items())
                       if n not in set(res.declined)]
            public = {"secagg_error_bound": float(res.error_bound),
                      "secagg_clipping_range": float(plan.clipping_range)}
        except (SecureAggregationError, ValueError) as exc:
            reasons = [f"secure aggregation failed: {exc}"]
            for node, why in sorted(getattr(exc, "drop_reasons", {}).items()):
                if DECLINED_PREFIX in why:
                    declined += 1
                reasons.append(f"node {node}: {why}")
        report = coord.aggregate_sum(server_round, plan, total, included, refused=declined,
                                     drop_reasons=reasons)
        report.train_metrics.update(public)
        self.last_report = report
        metrics = MetricRecord({
            "aggregated": report.aggregated, "refused": report.refused,
            "dropped": report.dropped, "update-norm": report.update_norm,
            **{k.replace("_", "-"): v for k, v in report.train_metrics.items()},
        })
        return _to_arrays(coord.state), metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Evaluation requests (every ``eval-every`` rounds and the last).

        In a private run devices answer with a DP release of their metric sums, so requests
        go out only when the run plans and accounts for them (``eval-noise-multiplier``,
        :attr:`RunConfig.federated_evaluation`), and carry the noise multiplier.
        """
        if server_round not in self.cfg.eval_rounds or not self.cfg.federated_evaluation:
            return []
        nodes = self.coordinator.sample_evaluation(list(grid.get_node_ids()))
        config["server-round"] = server_round
        config["ks"] = ",".join(map(str, self.cfg.k_values))
        if self.cfg.privacy != "off":
            config["eval-noise-multiplier"] = float(self.cfg.eval_noise_multiplier)
        record = RecordDict({"arrays": arrays, "config": config})
        return [Message(content=record, message_type=MessageType.EVALUATE, dst_node_id=n)
                for n in nodes]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        """Means of the devices' metric sums (noised sums in a private run)."""
        sums = []
        for m in replies:
            if m.has_error() or "metrics" not in m.content:
                continue
            try:
                values = {k: float(v) for k, v in m.content["metrics"].items()}
            except (TypeError, ValueError):
                log.warning("round %d: dropped an unreadable evaluation reply", server_round)
                continue
            if all(np.isfinite(v) for v in values.values()):
                sums.append(values)
        if self.cfg.privacy == "off":
            combined = self.coordinator.combine_evaluation(sums)
        else:
            combined = combine_noisy_sums(sums)
        return MetricRecord(combined) if combined else None

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

    def _evaluate(self, grid: Grid, rnd: int, arrays: ArrayRecord, result: Result,
                  evaluate_config: ConfigRecord | None, timeout: float) -> dict[str, object]:
        """A round's evaluations: federated (a release) and the simulator's measurement.

        Returns ``{"eval": ...}`` (the measurement when there is one, else the federated
        means) and ``{"federated_eval": ...}`` (the federated means, beside a measurement).
        """
        out: dict[str, object] = {}
        eval_msgs = list(self.configure_evaluate(
            rnd, arrays, ConfigRecord(dict(evaluate_config or {})), grid))
        if eval_msgs:
            ev = self.aggregate_evaluate(rnd, grid.send_and_receive(eval_msgs, timeout=timeout))
            if ev is not None:
                result.evaluate_metrics_clientapp[rnd] = ev
                out["federated_eval" if self.measure is not None else "eval"] = dict(ev)
        if self.measure is not None and rnd in self.cfg.eval_rounds:
            out["eval"] = self.measure(self.coordinator.state)
        return out

    # --- the rounds ----------------------------------------------------------------------------
    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
              ) -> Result:
        """Run ``num_rounds`` rounds; record and checkpoint each one."""
        result = Result()
        arrays = initial_arrays
        self.wait_for_nodes(grid)
        for rnd in range(1, num_rounds + 1):
            t0 = time.perf_counter()
            if self.coordinator.secure:
                new_arrays, train_metrics = self.secure_round(
                    grid, rnd, arrays, ConfigRecord(dict(train_config or {})), timeout=timeout)
            else:
                replies = grid.send_and_receive(
                    self.configure_train(rnd, arrays, ConfigRecord(dict(train_config or {})),
                                         grid),
                    timeout=timeout,
                )
                new_arrays, train_metrics = self.aggregate_train(rnd, replies)
            if new_arrays is not None:
                arrays = result.arrays = new_arrays
            if train_metrics is not None:
                result.train_metrics_clientapp[rnd] = train_metrics
            record: dict[str, object] = self.last_report.to_dict() if self.last_report else {}
            record.update(self._evaluate(grid, rnd, arrays, result, evaluate_config, timeout))
            record["seconds"] = time.perf_counter() - t0
            if self.run_dir is not None:
                self.run_dir.append_metrics(record)
                self.run_dir.checkpoint(rnd, self.coordinator.state,
                                        self.coordinator.optimizer.state_dict())
            if self.on_round is not None:
                self.on_round(record)
        return result
