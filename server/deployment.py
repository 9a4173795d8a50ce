"""The ServerApp of a real deployment (``fedrec.server.deployment:server_app``).

Unlike the simulation's ServerApp (:mod:`fedrec.simulations.apps`), it knows no dataset: the
catalog (its size and item ids, public information) comes from the run config, ``catalog``
(a JSON file of item ids on the SuperLink's machine) or ``n-items``; it waits for
``min-nodes`` SuperNodes (at most ``wait-timeout`` seconds), and a round waits at most
``round-timeout`` seconds for replies, so that a device that dies mid-round cannot stall the
run; every later round again waits for ``min-nodes`` (:class:`DeploymentStrategy`), so a
device that restarts is back in the next round (see :mod:`fedrec.common.config` for the
keys, ``fedrec deploy-app`` to write them).

Every training request carries the catalog's fingerprint so that a device holding another
catalog refuses rather than training the wrong rows. Rounds, checkpoints and the final item
table go to the run directory (``run-dir``) as in a simulation, with the server's ledger when
the run adds user-level DP (``privacy = "user"``); the devices' ledgers stay on the devices (an
auditor collects them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedrec.common.config import (
    CATALOG_FINGERPRINT_KEY,
    catalog_fingerprint,
    split_run_config,
)
from fedrec.server.coordinator import Coordinator, make_coordinator
from fedrec.server.flower_transport import to_arrays
from fedrec.server.run_directory import RunDirectory, new_run_dir
from fedrec.server.strategy import ItemEmbeddingStrategy

__all__ = ["make_deployment_server_app", "DeploymentStrategy", "server_app"]

log = logging.getLogger("fedrec.server")


class DeploymentStrategy(ItemEmbeddingStrategy):
    """The item-table strategy, waiting for ``min_nodes`` devices before *every* round.

    Each wait lasts at most ``wait_timeout`` seconds. A device whose SuperNode restarts (a
    crash, a reboot, an app update) is thus back in the next round instead of being skipped
    because it was briefly offline when devices were sampled.
    """

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - the base's
        kwargs.setdefault("quorum_every_round", True)
        super().__init__(*args, **kwargs)


def make_deployment_server_app(
    *,
    on_round: Callable[[dict[str, object]], None] | None = None,
    on_finish: Callable[[Coordinator, RunDirectory], None] | None = None,
) -> ServerApp:
    """A ServerApp whose catalog and timeouts come from the run config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg, settings = split_run_config(dict(context.run_config))
        n_items, item_ids = settings.load_catalog()
        run_dir = RunDirectory(cfg.run_dir or new_run_dir())
        run_dir.write_json(
            "config.json",
            {
                **cfg.to_flat(),
                "catalog": settings.catalog,
                "n-items": n_items,
                "min-nodes": settings.min_nodes,
                "wait-timeout": settings.wait_timeout,
                "round-timeout": settings.round_timeout,
                "runtime": "deployment",
                "run-id": int(context.run_id),
                "started-at": time.time(),
            },
        )
        coordinator = make_coordinator(cfg, n_items, ledger_dir=run_dir.ledger_dir)
        state = coordinator.state
        strategy = DeploymentStrategy(
            cfg,
            coordinator,
            run_dir=run_dir,
            on_round=on_round,
            min_nodes=settings.min_nodes,
            wait_timeout=settings.wait_timeout,
        )
        strategy.summary()
        log.info(
            "deployment: %d items (catalog %s), waiting for %d devices",
            n_items,
            settings.catalog or "rows 0..n-1",
            settings.min_nodes,
        )
        train_config = ConfigRecord({CATALOG_FINGERPRINT_KEY: catalog_fingerprint(item_ids)})
        strategy.start(
            grid,
            to_arrays(state),
            num_rounds=cfg.num_rounds,
            timeout=settings.round_timeout,
            train_config=train_config,
        )
        run_dir.save_final(coordinator.state, item_ids)
        if on_finish is not None:
            on_finish(coordinator, run_dir)

    return app


#: For ``flwr run`` against a SuperLink (``fedrec deploy-app`` writes the app naming it).
server_app = make_deployment_server_app()
