"""Where a simulated device's own state lives between messages: one SQLite file per run.

A Flower ``ClientApp`` is stateless between messages; a device is not: its user embedding, its
accountant, its round count (and, in a reproducible run, its generator) must survive from one
round to the next, and never travel to the server. :class:`DeviceStateStore` keeps them in one
SQLite file (WAL, so that the simulation's worker processes and the simulator itself can use
it at once), keyed by device id. Every save writes a fresh random token, so a process that
cached a device object can tell cheaply whether another process moved its state on.

The simulator reads the same file to *measure* quality after (or during) a run, as a
researcher holding every device's data may: nothing read here crosses the federation (see
:func:`fedrec.simulations.measure.measure_quality`). A deployed device keeps its state in its
own SDK store instead (:mod:`fedrec.client.storage`).
"""

from __future__ import annotations

import io
import json
import secrets
import sqlite3
import threading
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DeviceStateStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS device_state (
    device_id TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    user_embedding BLOB NOT NULL,
    generator BLOB,
    accountant TEXT NOT NULL,
    rounds_trained INTEGER NOT NULL
)
"""


def _to_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def _from_bytes(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(blob), allow_pickle=False)


class DeviceStateStore:
    """Device states of one simulation, in an SQLite file.

    Args:
        path: the file (created with its folder).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._local = threading.local()

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_SCHEMA)
            self._local.db = db
        return db

    def __getstate__(self) -> dict[str, Any]:  # shipped to simulation workers by path only
        return {"path": str(self.path)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]

    def token(self, device_id: str) -> str | None:
        """The token of the device's last save, or None if it has none."""
        row = self._db().execute("SELECT token FROM device_state WHERE device_id = ?",
                                 (str(device_id),)).fetchone()
        return None if row is None else str(row[0])

    def load(self, device_id: str) -> tuple[str, dict[str, object]] | None:
        """``(token, state)`` as :meth:`~fedrec.client.device.Device.load_state_dict` takes it."""
        row = self._db().execute(
            "SELECT token, user_embedding, generator, accountant, rounds_trained "
            "FROM device_state WHERE device_id = ?", (str(device_id),)).fetchone()
        if row is None:
            return None
        token, emb, gen, acc, rounds = row
        return str(token), {"user_embedding": _from_bytes(emb),
                            "generator": None if gen is None else _from_bytes(gen),
                            "accountant": str(acc), "rounds_trained": int(rounds)}

    def save(self, device_id: str, state: dict[str, object]) -> str:
        """Store what :meth:`~fedrec.client.device.Device.state_dict` returned; its new token."""
        token = secrets.token_hex(8)
        gen = state.get("generator")
        self._db().execute(
            "INSERT OR REPLACE INTO device_state (device_id, token, user_embedding, generator, "
            "accountant, rounds_trained) VALUES (?, ?, ?, ?, ?, ?)",
            (str(device_id), token, _to_bytes(np.asarray(state["user_embedding"])),
             None if gen is None else _to_bytes(np.asarray(gen)),
             str(state["accountant"]) if not isinstance(state["accountant"], dict)
             else json.dumps(state["accountant"]), int(state["rounds_trained"])))  # type: ignore[call-overload]
        return token

    def clear(self) -> None:
        """Forget every device's state (a new run in the same folder)."""
        self._db().execute("DELETE FROM device_state")

    def device_ids(self) -> list[str]:
        """Every device with a stored state."""
        return [r[0] for r in self._db().execute(
            "SELECT device_id FROM device_state ORDER BY device_id")]
