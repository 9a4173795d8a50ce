"""Flower ``ServerApp`` glue: builds the coordinator and strategy, runs the rounds.

The app needs the catalog (its size and item ids: public, no user data), which a
*catalog provider* gives; the simulation passes one that reads the dataset's item map.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedrec.common.config import RunConfig
from fedrec.server.coordinator import Coordinator, make_coordinator
from fedrec.server.countersign import CountersigningGrid
from fedrec.server.flower_transport import to_arrays
from fedrec.server.resume import Checkpointer, NodeMap, receipts_sealed
from fedrec.server.run_directory import RunDirectory, RunExistsError, holds_run, new_run_dir
from fedrec.server.strategy import ItemEmbeddingStrategy, TransportFactory

__all__ = ["make_server_app", "CatalogProvider"]

log = logging.getLogger("fedrec.server")

#: Returns ``(n_items, item ids)`` for a run configuration.
CatalogProvider = Callable[[RunConfig], tuple[int, list[str] | None]]
#: Returns the catalog's public item features (``algorithm = "features"``).
FeatureProvider = Callable[[RunConfig], np.ndarray]
#: Returns how many devices to wait for before the first round.
NodeCountProvider = Callable[[RunConfig], int]
#: Returns a simulation's own quality measurement of an item table (releases nothing).
MeasureProvider = Callable[[RunConfig], Callable[[dict[str, np.ndarray]], dict[str, float]]]


def make_server_app(
    catalog: CatalogProvider,
    *,
    config: RunConfig | None = None,
    on_round: Callable[[dict[str, object]], None] | None = None,
    on_finish: Callable[[Coordinator, RunDirectory], None] | None = None,
    expected_nodes: NodeCountProvider | None = None,
    item_features: FeatureProvider | None = None,
    measure: MeasureProvider | None = None,
    resume: bool = False,
    nodes: NodeMap | None = None,
    transport: TransportFactory | None = None,
) -> ServerApp:
    """A ``ServerApp`` running fedrec's rounds.

    Args:
        catalog: gives the catalog size and item ids of a configuration.
        config: the run configuration; ``None`` parses ``context.run_config`` (``flwr run``).
        on_round: called with each round's record (progress displays).
        on_finish: called with the coordinator and run directory after the last round.
        expected_nodes: how many devices to wait for before round 1 (default 1).
        item_features: gives the catalog's public item features (needed by
            ``algorithm = "features"``; public metadata, never interaction data).
        measure: a simulation's own measurement of quality at evaluation rounds
            (:func:`fedrec.simulations.measure.measure_quality`); ``None`` in a deployment.
        resume: continue the run in ``run-dir`` from its checkpoint
            (:class:`~fedrec.server.resume.Checkpointer`).
        nodes: the node id -> device index map of this start (a simulation's SuperNodes),
            so that what the server keeps per device survives new node ids on resume.
        transport: builds the round loop's transport (default: one device per node; see
            :class:`~fedrec.server.strategy.ItemEmbeddingStrategy`).
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = config if config is not None else RunConfig.from_flat(context.run_config)
        if config is None and cfg.run_dir and holds_run(cfg.run_dir):  # `flwr run`
            raise RunExistsError(
                f"run directory {cfg.run_dir} already holds a run: give this one a new folder "
                f"(flwr run . --run-config \"run-dir='runs/NAME'\") or move the old one away"
            )
        run_dir = RunDirectory(cfg.run_dir or new_run_dir())
        checkpointer = Checkpointer(run_dir, nodes=nodes, resume=resume)
        n_items, item_ids = catalog(cfg)
        features = (
            item_features(cfg)  # make_coordinator says so if features lack one
            if cfg.algorithm == "features" and item_features is not None
            else None
        )
        coordinator = make_coordinator(
            cfg, n_items, ledger_dir=run_dir.ledger_dir, item_features=features
        )
        state = coordinator.state
        strategy = ItemEmbeddingStrategy(
            cfg,
            coordinator,
            run_dir=run_dir,
            on_round=on_round,
            min_nodes=expected_nodes(cfg) if expected_nodes is not None else 1,
            measure=measure(cfg) if measure is not None else None,
            checkpointer=checkpointer,
            transport=transport,
        )
        strategy.summary()
        receipts = coordinator.mechanism.ledgers.receipts() if cfg.privacy != "off" else None
        if receipts is not None:  # the server countersigns every release it receives
            grid = CountersigningGrid(grid, receipts)  # type: ignore[assignment]
        strategy.start(grid, to_arrays(state), num_rounds=cfg.num_rounds)
        if receipts is not None and not receipts_sealed(run_dir.path):
            receipts.seal(cfg.num_rounds)
        run_dir.save_final(coordinator.state, item_ids)
        if on_finish is not None:
            on_finish(coordinator, run_dir)

    return app
