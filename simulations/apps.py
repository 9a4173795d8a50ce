"""The simulation's Flower apps: cohort workers, or one SuperNode per user of a dataset.

``pyproject.toml`` registers :data:`server_app` and :data:`client_app` for ``flwr run .``
(configuration from ``[tool.flwr.app.config]``); ``fedrec simulate`` builds the same apps
with :func:`make_apps` around a resolved :class:`RunConfig` and runs them on Flower's
simulation engine (:mod:`fedrec.simulations.runner`).

A SuperNode's ``partition-id`` (from Flower's simulation engine) is the dense user index of
the device it simulates; with cohort workers (``make_apps(..., workers=W)``,
:mod:`fedrec.simulations.workers`) it is the worker's index, and the worker hosts a shard of
the devices.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedrec.client.client_app import make_client_app
from fedrec.client.device import Device
from fedrec.client.state_store import DeviceStateStore, StoredDevices
from fedrec.common.config import RunConfig
from fedrec.server.coordinator import Coordinator
from fedrec.server.flower_transport import CohortTransport
from fedrec.server.run_directory import RunDirectory
from fedrec.server.server_app import make_server_app
from fedrec.simulations.federation import federated_dataset, federated_features, make_device
from fedrec.simulations.measure import measure_quality

__all__ = [
    "make_apps",
    "server_app",
    "client_app",
    "simulated_device_factory",
    "simulated_devices",
    "simulated_states",
    "simulator_measure",
    "state_store",
    "catalog",
]

DEFAULT_FLWR_RUN_DIR = "runs/flwr-run"


def catalog(cfg: RunConfig) -> tuple[int, list[str]]:
    """Catalog size and item ids of the run's dataset (public information)."""
    data = federated_dataset(cfg).data
    return data.n_items, data.item_map.to_list()


def device_count(cfg: RunConfig) -> int:
    """Number of simulated devices (one per user)."""
    return federated_dataset(cfg).n_users


def _config(config: RunConfig | None, context: Context) -> RunConfig:
    return (
        config
        if config is not None
        else RunConfig.from_flat({"run-dir": DEFAULT_FLWR_RUN_DIR, **dict(context.run_config)})
    )


def state_store(cfg: RunConfig) -> DeviceStateStore:
    """The run's store of simulated device states (``RUN/devices/states.sqlite``)."""
    return _store(str(Path(cfg.run_dir) / "devices" / "states.sqlite"))


@functools.lru_cache(maxsize=8)
def _store(path: str) -> DeviceStateStore:
    return DeviceStateStore(path)


def simulated_device_factory(config: RunConfig | None = None) -> Callable[[Context], Device]:
    """A device factory serving user ``partition-id`` of the run's dataset."""

    def factory(context: Context) -> Device:
        cfg = _config(config, context)
        fed = federated_dataset(cfg)
        user = int(context.node_config["partition-id"])
        return make_device(fed, user, cfg, ledger_dir=Path(cfg.run_dir) / "ledgers")

    return factory


def simulated_states(config: RunConfig | None = None) -> Callable[[Context], DeviceStateStore]:
    """Where the simulated devices of a run keep their own state (:func:`state_store`)."""
    return lambda context: state_store(_config(config, context))


def simulated_devices(config: RunConfig | None = None) -> StoredDevices:
    """The device provider of a simulation: one user's device per SuperNode, state in a store."""
    return StoredDevices(simulated_device_factory(config), simulated_states(config))


def simulator_measure(
    cfg: RunConfig, *, fresh: bool = True
) -> Callable[[dict[str, np.ndarray]], dict[str, float]]:
    """The simulator's measurement of an item table on the run's real users.

    Called once, when the ServerApp starts the run, before any device has a message: device
    states an earlier run left in the same folder are removed, so that a new run's devices
    start fresh; a resumed run (``fresh=False``) keeps them.
    """
    store = state_store(cfg)
    if fresh:
        store.clear()
    else:
        store.device_ids()  # opened (and checked) before any device needs it
    return functools.partial(measure_quality, cfg, store=store)


def simulated_dropout_mod(config: RunConfig | None = None):
    """A client mod that takes a device offline mid-round with probability ``simulated-dropout``.

    In a distributed-DP (SecAgg+) round the device fails at the collect-masked-vectors stage,
    after key sharing, as a phone that loses its connection would: its update never reaches
    the sum and SecAgg+ removes its masks. The coin is a hash of the run's seed, the device
    and the round, so a run is reproducible. Other messages pass through.
    """
    import hashlib

    from flwr.app import Message
    from flwr.common.secure_aggregation.secaggplus_constants import (
        RECORD_KEY_CONFIGS,
        Key,
        Stage,
    )

    def mod(msg: Message, context: Context, call_next):
        cfg = (
            config
            if config is not None
            else RunConfig.from_flat({"run-dir": DEFAULT_FLWR_RUN_DIR, **dict(context.run_config)})
        )
        p = cfg.simulated_dropout
        if p > 0 and msg.has_content() and RECORD_KEY_CONFIGS in msg.content.config_records:
            stage = msg.content.config_records[RECORD_KEY_CONFIGS].get(Key.STAGE)
            if stage == Stage.COLLECT_MASKED_VECTORS:
                rnd = msg.content.config_records.get("config", {}).get("server-round", 0)
                part = context.node_config.get("partition-id", context.node_id)
                coin = hashlib.sha256(f"{cfg.seed}/{part}/{rnd}".encode()).digest()
                if int.from_bytes(coin[:8], "little") / 2**64 < p:
                    raise RuntimeError(f"simulated dropout of device {part} in round {rnd}")
        return call_next(msg, context)

    return mod


def make_apps(
    config: RunConfig,
    *,
    on_round: Callable[[dict[str, object]], None] | None = None,
    on_finish: Callable[[Coordinator, RunDirectory], None] | None = None,
    resume: bool = False,
    nodes: Callable[[], dict[int, int]] | None = None,
    workers: int = 0,
) -> tuple[ServerApp, ClientApp]:
    """Server and client apps bound to a resolved configuration.

    ``resume`` continues the run in ``config.run_dir`` (device states kept); ``nodes`` gives
    the SuperNodes' node id -> device index map (see :mod:`fedrec.server.resume`).
    ``workers`` > 0: the SuperNodes are that many cohort workers, each hosting a shard of
    the devices (:mod:`fedrec.simulations.workers`; run the engine with ``workers``
    SuperNodes); 0: one device per SuperNode, secure sums over Flower's SecAgg+.
    """
    if workers > 0:
        from fedrec.simulations.workers import make_worker_app

        return (
            make_server_app(
                catalog,
                config=config,
                on_round=on_round,
                on_finish=on_finish,
                item_features=federated_features,
                expected_nodes=lambda cfg: min(workers, device_count(cfg)),
                measure=functools.partial(simulator_measure, fresh=not resume),
                resume=resume,
                transport=cohort_transport,
            ),
            make_worker_app(config),
        )
    return (
        make_server_app(
            catalog,
            config=config,
            on_round=on_round,
            on_finish=on_finish,
            item_features=federated_features,
            expected_nodes=device_count,
            measure=functools.partial(simulator_measure, fresh=not resume),
            resume=resume,
            nodes=nodes,
        ),
        make_client_app(simulated_devices(config), mods=[simulated_dropout_mod(config)]),
    )


def cohort_transport(grid: Grid, coordinator: Coordinator, timeout: float) -> CohortTransport:
    """The round loop's transport to cohort workers; the server countersigns what it gets."""
    receipts = (
        coordinator.mechanism.ledgers.receipts() if coordinator.cfg.privacy != "off" else None
    )
    return CohortTransport(grid, timeout=timeout, receipts=receipts)


#: For ``flwr run .``: configuration from the run config.
server_app = make_server_app(
    catalog,
    expected_nodes=device_count,
    item_features=federated_features,
    measure=simulator_measure,
)
client_app = make_client_app(simulated_devices(), mods=[simulated_dropout_mod()])
