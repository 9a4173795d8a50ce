"""The ClientApp of a real SuperNode (``fedrec.client.deployment:client_app``).

In a simulation the device's state lives in Flower's in-memory ``context.state``
(:mod:`fedrec.client.client_app`). A real device must keep its state when the SuperNode
process restarts, the machine reboots or the battery dies, so here every message opens the
device's :class:`~fedrec.client.sdk.FedRecClient` store (one SQLite file: events, user
embedding, accountant, spend, signed ledger, last item table) and trains through
:meth:`FedRecClient.train_round`, which commits the intended privacy spend *before*
training and the ledger record before the reply leaves. Nothing is kept in ``context.state``.

The SuperNode's ``--node-config`` says where the store is and how the device behaves:

===================== ===================================================================
node-config key       meaning
===================== ===================================================================
store                 path of the device's SQLite store (required)
events                demo/tests: a JSON or CSV file of this user's events, imported once
                      (JSON: a list of ``{"kind", "item_id", "timestamp", "value"}``
                      objects, or ``{"events": [...]}``; CSV: a header with those columns)
catalog               JSON file of the item ids in row order (else the store's catalog,
                      else the ids are the row numbers ``"0" .. "n-1"``)
device-id             the device's id in its ledger (else stored, else generated)
epsilon-budget        this device's ε budget (else the one its store holds, else 8). The
                      server's ``epsilon`` only calibrates the noise, and a run whose
                      ``epsilon`` exceeds this budget is refused (``privacy-policy``)
delta                 the δ the device accounts at (default 1e-5); a run with a larger
                      ``delta`` is refused
accountant            the device's accountant, ``prv`` (default) or ``rdp``
max-steps-per-round,  resource ceilings (:class:`~fedrec.client.sdk.TrainingPolicy`); a
max-table-entries,    run asking for more is refused (``resources``)
max-memory-bytes
charging, on-wifi     the training policy's signals (default true: a plugged-in SuperNode;
                      an app passes the platform's real signals to the SDK)
battery-level         battery fraction in [0, 1] (optional)
require-charging,     the :class:`~fedrec.client.sdk.TrainingPolicy` (defaults: its
require-wifi,         defaults, e.g. at most 4 trainings a day; ``"none"`` lifts a limit)
min-battery-level,
max-rounds-per-day,
max-steps-per-day
allow-no-dp           accept a run without local DP: ``privacy = "off"``, or ``"user"`` (the
                      server adds user-level noise; the device must trust it). Default
                      false: refuse
seed                  seeds the device's sampling and noise (tests only: the device's
                      ledger then says its noise is NOT private against anyone who knows
                      the seed)
===================== ===================================================================

The device owns its privacy (:class:`~fedrec.common.privacy.policy.PrivacyPolicy`): its budget, δ,
accountant and ceilings come from the node config (and its store), never from the server.
The training *recipe* (local epochs, sampling rate, learning rate, noise multiplier, clipping
norm) comes from the run config the server published (``noise-multiplier = 0``: calibrated on
the device, from public inputs only, so that the run's ``epsilon`` is spent over the planned
participations); the device checks it against its policy before any work and refuses what
is looser (``privacy-policy``), larger (``resources``) or malformed (``bad-request``), spending
nothing. A refusal carries only its code. The device also records the node id of its Flower
session in the store, so that ``fedrec supernode`` can close a session a crash left open.

Wire contract: that of :mod:`fedrec.client.client_app` (reply ``arrays`` + ``metrics``, or
``refusal``). A training request may also carry the server catalog's fingerprint
(``catalog-sha256``); a device whose catalog differs refuses. An evaluation request keeps the
received item table for offline :meth:`~fedrec.client.sdk.FedRecClient.recommend` and
replies ``users = 0``: a deployed device holds no held-out split.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.clientapp import ClientApp

from fedrec.client.interactions import Event
from fedrec.client.sdk import FedRecClient, PolicySignals, TrainingPolicy
from fedrec.common.config import (
    CATALOG_FINGERPRINT_KEY,
    NODE_ID_META,
    catalog_fingerprint,
    load_catalog_file,
    split_run_config,
)

__all__ = [
    "open_device",
    "device_dp",
    "run_recipe",
    "import_events",
    "read_events_file",
    "make_deployment_client_app",
    "DeployedDevices",
    "DeployedSession",
    "client_app",
    "DeploymentDeviceFactory",
    "NODE_ID_META",
]

log = logging.getLogger("fedrec.client")

#: Opens this SuperNode's device from its context: returns the client (caller closes it)
#: and the policy signals to train with.
DeploymentDeviceFactory = Callable[[Context], tuple[FedRecClient, PolicySignals]]

_IMPORTED_META = "deployment.imported_event_files"
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


# --------------------------------------------------------------------------- node config


def _bool(config: Mapping[str, Any], key: str, default: bool) -> bool:
    if key not in config:
        return default
    value = config[key]
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"node-config {key!r} must be true or false, got {value!r}")


def _limit(config: Mapping[str, Any], key: str, default: float | None, kind: type) -> float | None:
    if key not in config:
        return default
    value = config[key]
    if isinstance(value, str) and value.strip().lower() in ("none", "", "inf"):
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"node-config {key!r} must be a number or 'none', got {value!r}") from None


def _policy(config: Mapping[str, Any]) -> tuple[TrainingPolicy, PolicySignals]:
    base = TrainingPolicy()
    policy = TrainingPolicy(
        require_charging=_bool(config, "require-charging", base.require_charging),
        require_wifi=_bool(config, "require-wifi", base.require_wifi),
        min_battery_level=_limit(config, "min-battery-level", base.min_battery_level, float),
        max_rounds_per_day=_limit(
            config,
            "max-rounds-per-day",  # type: ignore[arg-type]
            base.max_rounds_per_day,
            int,
        ),
        max_steps_per_day=_limit(
            config,
            "max-steps-per-day",  # type: ignore[arg-type]
            base.max_steps_per_day,
            int,
        ),
        max_steps_per_round=int(config.get("max-steps-per-round", base.max_steps_per_round)),
        max_table_entries=int(config.get("max-table-entries", base.max_table_entries)),
        max_memory_bytes=int(config.get("max-memory-bytes", base.max_memory_bytes)),
    )
    battery = _limit(config, "battery-level", None, float)
    signals = PolicySignals(
        charging=_bool(config, "charging", True),
        on_wifi=_bool(config, "on-wifi", True),
        battery_level=battery,
    )
    return policy, signals


def device_dp(
    node_config: Mapping[str, Any], stored_dp: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The device's own DP settings: budget, δ and accountant from its node config or store.

    Nothing here comes from the server. The budget is ``epsilon-budget``, else the stored
    one, else :data:`~fedrec.client.sdk.DEFAULT_DP`'s.
    """
    from fedrec.client.sdk import DEFAULT_DP

    stored = dict(stored_dp or {})
    budget = float(
        node_config.get(
            "epsilon-budget", stored.get("budget_epsilon", DEFAULT_DP["budget_epsilon"])
        )
    )
    if not (budget > 0 and math.isfinite(budget)):
        raise ValueError(f"the device's epsilon budget must be positive, got {budget}")
    return {
        **DEFAULT_DP,
        "budget_epsilon": budget,
        "target_delta": float(
            node_config.get("delta", stored.get("target_delta", DEFAULT_DP["target_delta"]))
        ),
        "accountant": str(
            node_config.get("accountant", stored.get("accountant", DEFAULT_DP["accountant"]))
        ),
    }


def run_recipe(run_config: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The run's privacy mode and the training recipe the server asks for.

    Raises:
        PolicyViolation: ``bad-request`` when the run config does not parse.
    """
    from fedrec.common.privacy.policy import PolicyViolation, RefusalCode

    try:
        cfg, _ = split_run_config(run_config)
    except (TypeError, ValueError) as exc:
        raise PolicyViolation(RefusalCode.BAD_REQUEST, f"bad run config: {exc}") from None
    return cfg.privacy, {
        "noise_multiplier": float(cfg.noise_multiplier),
        "max_grad_norm": float(cfg.max_grad_norm),
        "epsilon": float(cfg.epsilon),
        "delta": float(cfg.delta),
        "planned_participations": int(cfg.planned_participations),
        "local": cfg.local_config().to_dict(),
    }


# --------------------------------------------------------------------------- events


def read_events_file(path: str | Path) -> list[Event]:
    """Events from a JSON (list, or ``{"events": [...]}``) or CSV file (header row)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"events file {p} does not exist")
    rows: list[Mapping[str, Any]]
    if p.suffix.lower() == ".csv":
        with open(p, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    else:
        value = json.loads(p.read_text(encoding="utf-8"))
        rows = value.get("events", []) if isinstance(value, Mapping) else value
        if not isinstance(rows, list):
            raise ValueError(f'{p}: expected a JSON list of events or {{"events": [...]}}')
    events = []
    for i, row in enumerate(rows):
        try:
            raw_value = row.get("value")
            events.append(
                Event(
                    kind=str(row["kind"]),
                    item_id=str(row["item_id"]),
                    timestamp=float(row["timestamp"]),
                    value=None if raw_value in (None, "") else float(raw_value),
                    context=row.get("context") if isinstance(row.get("context"), dict) else None,
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{p}: event {i}: {exc}") from None
    return events


def import_events(client: FedRecClient, path: str | Path) -> int:
    """Import an events file into the store once (by content hash); returns events added."""
    p = Path(path).expanduser()
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    done = list(client.store.get_meta(_IMPORTED_META, []) or [])
    if digest in done:
        return 0
    events = read_events_file(p)
    client.record_many(events)
    client.store.set_meta(_IMPORTED_META, [*done, digest])
    log.info("imported %d events from %s", len(events), p)
    return len(events)


# --------------------------------------------------------------------------- the factory


def open_device(context: Context) -> tuple[FedRecClient, PolicySignals]:
    """Open this SuperNode's device from its node config (the deployment device factory).

    Returns the open client (the caller closes it) and the policy signals to train with. The
    device's DP settings come from its node config and store only (:func:`device_dp`); the
    run config decides only whether the device adds noise at all, and a run that asks for
    none is refused unless ``allow-no-dp``.

    Raises:
        PolicyViolation: ``privacy-policy`` for a run without device DP that the node does
            not allow; ``bad-request`` for a run config that does not parse.
    """
    from fedrec.common.privacy.policy import PolicyViolation, RefusalCode

    node = dict(context.node_config)
    if not node.get("store"):
        raise ValueError(
            "this SuperNode has no device store: start it with --node-config "
            "'store=\"/path/device.db\"' (see `fedrec supernode --help`)"
        )
    path = Path(str(node["store"])).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    privacy, _ = run_recipe(dict(context.run_config))
    dp: dict[str, Any] | None = device_dp(node, _stored_dp(path))
    if privacy != "local":
        if not _bool(node, "allow-no-dp", False):
            raise PolicyViolation(
                RefusalCode.PRIVACY_POLICY,
                f"the run (privacy = {privacy!r}) asks for updates without "
                "device noise; node-config allow-no-dp=true would allow it",
            )
        dp = None
    policy, signals = _policy(node)
    kwargs: dict[str, Any] = {}
    if "device-id" in node:
        kwargs["device_id"] = str(node["device-id"])
    if "seed" in node:
        kwargs["seed"] = int(node["seed"])  # type: ignore[call-overload]
    if dp is None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # allowed explicitly by the node config
            client = FedRecClient.open(path, dp=None, policy=policy, **kwargs)
    else:
        client = FedRecClient.open(path, dp=dp, policy=policy, **kwargs)
    try:
        if node.get("catalog"):
            ids = load_catalog_file(str(node["catalog"]))
            stored = client.store.get_json("catalog")
            if stored is None or list(stored.get("item_ids", [])) != ids:
                client.set_catalog(ids)
        if node.get("events"):
            import_events(client, str(node["events"]))
        node_id = int(context.node_id)
        if client.store.get_meta(NODE_ID_META) != node_id:
            client.store.set_meta(NODE_ID_META, node_id)
    except BaseException:
        client.close()
        raise
    return client, signals


def _stored_dp(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    from fedrec.client.storage import DeviceStore

    with DeviceStore(path) as store:
        value = store.get_meta("dp")
    return dict(value) if isinstance(value, Mapping) else None


def _device_fingerprint(client: FedRecClient, n_rows: int) -> str:
    catalog = client.store.get_json("catalog")
    ids = list(catalog["item_ids"]) if catalog else [str(i) for i in range(n_rows)]
    return catalog_fingerprint(ids)


class DeployedSession:
    """One message's handling by a deployed device (its SDK client, opened from its store)."""

    def __init__(self, client: FedRecClient, signals: PolicySignals, run_config: Mapping[str, Any]):
        self.client, self.signals, self.run_config = client, signals, run_config

    def contribute(self, request: Any, session: Any) -> tuple[Any, dict[str, float]]:
        """Train through the SDK under the device's own policy (SGD rounds, in the clear)."""
        from fedrec.common.privacy.policy import PolicyViolation, RefusalCode

        if request.task.name != "train" or request.task.arrays:
            raise PolicyViolation(
                RefusalCode.UNSUPPORTED,
                f"a deployed device answers train rounds, not {request.task.name!r}",
            )
        if session is not None or request.noise_share is not None:
            raise PolicyViolation(
                RefusalCode.UNSUPPORTED, "a deployed device does not take part in secure sums yet"
            )
        _, recipe = run_recipe(self.run_config)
        expected = request.config.get(CATALOG_FINGERPRINT_KEY)
        n_rows = int(np.asarray(next(iter(request.table.values()), np.zeros(0))).shape[0])
        if expected and _device_fingerprint(self.client, n_rows) != str(expected):
            raise PolicyViolation(
                RefusalCode.BAD_REQUEST,
                "this device's catalog differs from the server's; not training the wrong rows",
            )
        outcome = self.client.train_round(
            request.table, request.server_round, policy_signals=self.signals, recipe=recipe
        )
        report = self.client.privacy_report()
        if hasattr(outcome, "arrays"):
            log.info(
                "round %d: trained; epsilon spent %.4g of %s",
                request.server_round,
                report.epsilon_spent,
                report.budget_epsilon,
            )
        return outcome, ({"epsilon": float(report.epsilon_spent)} if report.dp_enabled else {})

    def evaluate(self, request: Any) -> Any:
        """Keep the table for offline recommendation; a deployed device has no held-out split."""
        from fedrec.common.privacy.policy import PolicyViolation, RefusalCode

        n_rows = int(np.asarray(next(iter(request.table.values()), np.zeros(0))).shape[0])
        if self.client.n_items in (None, n_rows):
            try:
                self.client.receive_model(request.table, server_round=request.server_round)
            except ValueError:
                log.info("evaluation request with a malformed table: not kept")
        raise PolicyViolation(RefusalCode.UNSUPPORTED, "no held-out interactions to evaluate")

    def close(self, changed: bool) -> None:
        """Close the store (the SDK committed everything as it went)."""
        self.client.close()


class DeployedDevices:
    """The device provider of a SuperNode: its SDK store, opened per message.

    Args:
        factory: opens the node's device from its context (default :func:`open_device`).
    """

    def __init__(self, factory: DeploymentDeviceFactory = open_device):
        self.factory = factory

    def __call__(self, context: Context) -> DeployedSession:
        """Open the node's device (``PolicyViolation`` when its policy refuses the run)."""
        run_recipe(dict(context.run_config))  # a run config that does not parse: refused
        client, signals = self.factory(context)
        return DeployedSession(client, signals, dict(context.run_config))


def make_deployment_client_app(factory: DeploymentDeviceFactory = open_device) -> ClientApp:
    """Fedrec's ClientApp over a SuperNode's SDK store (:class:`DeployedDevices`)."""
    from fedrec.client.client_app import make_client_app

    return make_client_app(DeployedDevices(factory))


#: For SuperNodes (``fedrec deploy-app`` writes the Flower App naming it).
client_app = make_deployment_client_app()
