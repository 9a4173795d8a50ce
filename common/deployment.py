"""What the server and the devices of a real deployment agree on, without Flower.

A deployment's run config (the ``[tool.flwr.app.config]`` of the app that ``flwr run``
submits, see ``fedrec deploy-app``) holds every :class:`~fedrec.common.config.RunConfig` key
plus the *deployment keys* below; :func:`split_run_config` separates them. Dataset keys of
:class:`RunConfig` are ignored: in a deployment the data stays on the devices.

=============== ======================================================================
key             meaning
=============== ======================================================================
catalog         JSON file with the item ids in item-table row order (a list, or an
                object with ``item_ids``), read by the ServerApp; ``""``: use n-items
n-items         catalog size when there is no catalog file (items are rows ``0..N-1``)
min-nodes       devices the ServerApp waits for before round 1
wait-timeout    seconds to wait for them (then start with those connected)
round-timeout   seconds a round waits for replies (a dead device must not stall the run)
=============== ======================================================================

The catalog is public. The server sends its fingerprint (:func:`catalog_fingerprint`) with
every training request so that a device whose catalog differs refuses instead of training
the wrong rows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - imported lazily: it pulls in torch via fedrec.common.dp
    from fedrec.common.config import RunConfig

__all__ = [
    "DeploymentSettings",
    "DEPLOYMENT_DEFAULTS",
    "split_run_config",
    "load_catalog_file",
    "catalog_fingerprint",
    "CATALOG_FINGERPRINT_KEY",
    "NODE_ID_META",
]

#: The train-request config key carrying :func:`catalog_fingerprint` of the server's catalog.
CATALOG_FINGERPRINT_KEY = "catalog-sha256"
#: Device-store meta key: the Flower node id of the device's last SuperLink session. The
#: ClientApp records it; ``fedrec supernode`` reads it after a crash to close that session.
NODE_ID_META = "deployment.flower_node_id"

DEPLOYMENT_DEFAULTS: dict[str, object] = {
    "catalog": "",
    "n-items": 0,
    "min-nodes": 1,
    "wait-timeout": 300.0,
    "round-timeout": 600.0,
}
#: RunConfig keys that describe a simulated dataset: meaningless (and ignored) in deployment.
_DATASET_KEYS = ("dataset", "data-dir", "synthetic-users", "synthetic-items", "split")


@dataclass(frozen=True)
class DeploymentSettings:
    """The deployment keys of a run config, typed."""

    catalog: str = ""
    n_items: int = 0
    min_nodes: int = 1
    wait_timeout: float = 300.0
    round_timeout: float = 600.0

    def __post_init__(self) -> None:
        if not self.catalog and self.n_items < 1:
            raise ValueError("the deployment's catalog is unknown: set the run-config key "
                             "'catalog' (a JSON file of item ids) or 'n-items' (>= 1)")
        if self.min_nodes < 1:
            raise ValueError(f"min-nodes must be >= 1, got {self.min_nodes}")
        if self.wait_timeout < 0 or self.round_timeout <= 0:
            raise ValueError("wait-timeout must be >= 0 and round-timeout > 0")

    def load_catalog(self) -> tuple[int, list[str]]:
        """``(n_items, item ids)``: from the catalog file, else ``n-items`` row numbers."""
        if self.catalog:
            ids = load_catalog_file(self.catalog)
            if self.n_items and self.n_items != len(ids):
                raise ValueError(f"n-items = {self.n_items} but the catalog {self.catalog} "
                                 f"has {len(ids)} items")
            return len(ids), ids
        return self.n_items, [str(i) for i in range(self.n_items)]


def split_run_config(flat: Mapping[str, object]) -> tuple[RunConfig, DeploymentSettings]:
    """A deployment's run config as ``(RunConfig, DeploymentSettings)``.

    Raises:
        ValueError: an unknown key, or a value of the wrong type.
    """
    from fedrec.common.config import RunConfig

    run: dict[str, object] = {}
    dep = dict(DEPLOYMENT_DEFAULTS)
    for key, value in flat.items():
        if key in DEPLOYMENT_DEFAULTS:
            dep[key] = value
        elif key not in _DATASET_KEYS:
            run[key] = value
    try:
        settings = DeploymentSettings(
            catalog=str(dep["catalog"] or ""), n_items=int(dep["n-items"]),  # type: ignore[call-overload]
            min_nodes=int(dep["min-nodes"]),  # type: ignore[call-overload]
            wait_timeout=float(dep["wait-timeout"]),  # type: ignore[arg-type]
            round_timeout=float(dep["round-timeout"]))  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad deployment run-config: {exc}") from None
    return RunConfig.from_flat(run), settings


def load_catalog_file(path: str | Path) -> list[str]:
    """Item ids, in item-table row order, from a JSON catalog file.

    The file holds a list of ids, or an object whose ``item_ids`` is that list (the form
    :meth:`fedrec.client.sdk.Catalog.to_json` writes; other fields are ignored here).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"catalog file {p} does not exist")
    value = json.loads(p.read_text(encoding="utf-8"))
    ids = value.get("item_ids") if isinstance(value, Mapping) else value
    if not isinstance(ids, list) or not ids:
        raise ValueError(f"{p}: expected a non-empty JSON list of item ids (or "
                         '{"item_ids": [...]})')
    out = [str(i) for i in ids]
    if len(set(out)) != len(out):
        raise ValueError(f"{p}: item ids must be unique")
    return out


def catalog_fingerprint(item_ids: Sequence[str]) -> str:
    """SHA-256 of the item ids in row order (the catalog both sides must share)."""
    h = hashlib.sha256()
    for item_id in item_ids:
        h.update(str(item_id).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()
