"""The simulation's Flower apps: one SuperNode per user of a dataset.

``pyproject.toml`` registers :data:`server_app` and :data:`client_app` for ``flwr run .``
(configuration from ``[tool.flwr.app.config]``); ``fedrec simulate`` builds the same apps
with :func:`make_apps` around a resolved :class:`RunConfig` and runs them on Flower's
simulation engine (:mod:`fedrec.simulations.runner`).

A SuperNode's ``partition-id`` (from Flower's simulation engine) is the dense user index of
the device it simulates.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedrec.client.client_app import make_client_app
from fedrec.client.device import Device
from fedrec.common.config import RunConfig
from fedrec.server.coordinator import Coordinator
from fedrec.server.run_directory import RunDirectory
from fedrec.server.server_app import make_server_app
from fedrec.simulations.federation import federated_dataset, federated_features, make_device

__all__ = ["make_apps", "server_app", "client_app", "simulated_device_factory", "catalog"]

DEFAULT_FLWR_RUN_DIR = "runs/flwr-run"


def catalog(cfg: RunConfig) -> tuple[int, list[str]]:
    """Catalog size and item ids of the run's dataset (public information)."""
    data = federated_dataset(cfg).data
    return data.n_items, data.item_map.to_list()


def device_count(cfg: RunConfig) -> int:
    """Number of simulated devices (one per user)."""
    return federated_dataset(cfg).n_users


def simulated_device_factory(config: RunConfig | None = None) -> Callable[[Context], Device]:
    """A device factory serving user ``partition-id`` of the run's dataset."""

    def factory(context: Context) -> Device:
        cfg = config if config is not None else RunConfig.from_flat(
            {"run-dir": DEFAULT_FLWR_RUN_DIR, **dict(context.run_config)})
        fed = federated_dataset(cfg)
        user = int(context.node_config["partition-id"])
        return make_device(fed, user, cfg, ledger_dir=Path(cfg.run_dir) / "ledgers")

    return factory


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
        cfg = config if config is not None else RunConfig.from_flat(
            {"run-dir": DEFAULT_FLWR_RUN_DIR, **dict(context.run_config)})
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
) -> tuple[ServerApp, ClientApp]:
    """Server and client apps bound to a resolved configuration."""
    return (
        make_server_app(catalog, config=config, on_round=on_round, on_finish=on_finish,
                        item_features=federated_features,
                        expected_nodes=device_count),
        make_client_app(simulated_device_factory(config),
                        mods=[simulated_dropout_mod(config)]),
    )


#: For ``flwr run .``: configuration from the run config.
server_app = make_server_app(catalog, expected_nodes=device_count,
                             item_features=federated_features)
client_app = make_client_app(simulated_device_factory(), mods=[simulated_dropout_mod()])
