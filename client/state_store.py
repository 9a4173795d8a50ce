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
import logging
import secrets
import sqlite3
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedrec.client.storage import check_readable, open_error, refuse_empty

if TYPE_CHECKING:
    from fedrec.client.device import Device

__all__ = ["DeviceStateStore", "StoredDevices", "reconcile_with_ledger"]

log = logging.getLogger("fedrec.client")

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


_INSERT = (
    "INSERT OR REPLACE INTO device_state (device_id, token, user_embedding, generator, "
    "accountant, rounds_trained) VALUES (?, ?, ?, ?, ?, ?)"
)


def _row(device_id: str, token: str, state: dict[str, object]) -> tuple[object, ...]:
    gen = state.get("generator")
    acc = state["accountant"]
    return (
        str(device_id),
        token,
        _to_bytes(np.asarray(state["user_embedding"])),
        None if gen is None else _to_bytes(np.asarray(gen)),
        json.dumps(acc) if isinstance(acc, dict) else str(acc),
        int(state["rounds_trained"]),  # type: ignore[call-overload]
    )


#: A stored array: this tag, the dtype string's length and the number of dimensions (one
#: byte each), the dtype string (``'<f4'``), the shape (little-endian int64s), the raw data.
#: About 3 us to write or read a user embedding, against np.save's 23 and np.load's 93.
_ARRAY_TAG = b"FRA1"
_NPY_MAGIC = b"\x93NUMPY"


def _to_bytes(array: np.ndarray) -> bytes:
    a = np.asarray(array)
    if not a.flags.c_contiguous:
        a = a.copy(order="C")
    if a.dtype.hasobject:
        raise ValueError("a device state array holds Python objects")
    dtype = a.dtype.str.encode()
    head = struct.pack(f"<BB{len(dtype)}s{a.ndim}q", len(dtype), a.ndim, dtype, *a.shape)
    return _ARRAY_TAG + head + a.tobytes()


def _from_bytes(blob: bytes) -> np.ndarray:
    if blob[:6] == _NPY_MAGIC:  # a store written before the compact format
        return np.load(io.BytesIO(blob), allow_pickle=False)
    if blob[:4] != _ARRAY_TAG:
        raise ValueError("not a stored array")
    n_dtype, ndim = blob[4], blob[5]
    dtype = np.dtype(blob[6 : 6 + n_dtype].decode())
    if dtype.hasobject:
        raise ValueError("a stored array of Python objects")
    start = 6 + n_dtype + 8 * ndim
    shape = struct.unpack(f"<{ndim}q", blob[6 + n_dtype : start])
    return np.frombuffer(blob, dtype=dtype, offset=start).reshape(shape).copy()


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
            refuse_empty(self.path)  # an empty file is a store cut to nothing, not a new one
            db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            try:
                check_readable(db, self.path)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute(_SCHEMA)
            except BaseException as exc:
                db.close()
                locked = isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)
                if isinstance(exc, sqlite3.DatabaseError) and not locked:
                    raise open_error(self.path, exc) from None
                raise
            self._local.db = db
        return db

    def __getstate__(self) -> dict[str, Any]:  # shipped to simulation workers by path only
        return {"path": str(self.path)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]

    def token(self, device_id: str) -> str | None:
        """The token of the device's last save, or None if it has none."""
        row = (
            self._db()
            .execute("SELECT token FROM device_state WHERE device_id = ?", (str(device_id),))
            .fetchone()
        )
        return None if row is None else str(row[0])

    def load(self, device_id: str) -> tuple[str, dict[str, object]] | None:
        """``(token, state)`` as :meth:`~fedrec.client.device.Device.load_state_dict` takes it."""
        row = (
            self._db()
            .execute(
                "SELECT token, user_embedding, generator, accountant, rounds_trained "
                "FROM device_state WHERE device_id = ?",
                (str(device_id),),
            )
            .fetchone()
        )
        if row is None:
            return None
        token, emb, gen, acc, rounds = row
        return str(token), {
            "user_embedding": _from_bytes(emb),
            "generator": None if gen is None else _from_bytes(gen),
            "accountant": str(acc),
            "rounds_trained": int(rounds),
        }

    def save(self, device_id: str, state: dict[str, object]) -> str:
        """Store what :meth:`~fedrec.client.device.Device.state_dict` returned; its new token."""
        token = secrets.token_hex(8)
        self._db().execute(_INSERT, _row(device_id, token, state))
        return token

    def save_many(self, states: dict[str, dict[str, object]]) -> None:
        """Store several devices' states in one transaction (all or none)."""
        if not states:
            return
        db = self._db()
        rows = [_row(d, secrets.token_hex(8), st) for d, st in states.items()]
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(_INSERT, rows)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def clear(self) -> None:
        """Forget every device's state (a new run in the same folder)."""
        self._db().execute("DELETE FROM device_state")

    def device_ids(self) -> list[str]:
        """Every device with a stored state."""
        return [
            r[0]
            for r in self._db().execute("SELECT device_id FROM device_state ORDER BY device_id")
        ]


class StoredDevices:
    """A device provider for :func:`~fedrec.client.client_app.make_client_app`.

    Devices are built by ``factory`` from a node's context and restored from the store
    ``states`` gives; a device whose stored state is unchanged since this process last saved
    it is reused (tokens tell: another process may have served it in between).

    Args:
        factory: builds a node's device (its data, its algorithm, its ledger writer).
        states: gives the store of device states for a context.
        max_devices: devices kept built in this process.
    """

    def __init__(
        self,
        factory: Callable[[Any], Device],
        states: Callable[[Any], DeviceStateStore],
        *,
        max_devices: int = 2048,
    ):
        self.factory = factory
        self.states = states
        self.max_devices = max_devices
        self._devices: OrderedDict[tuple[int, int], tuple[str, Device]] = OrderedDict()

    def __call__(self, context: Any) -> _StoredSession:
        """The session of the node's device, built or reused."""
        store = self.states(context)
        key = (int(context.run_id), int(context.node_id))
        hit = self._devices.get(key)
        if hit is not None and store.token(hit[1].device_id) == hit[0]:
            self._devices.move_to_end(key)
            return _StoredSession(self, key, hit[1], store)
        device = self.factory(context)
        stored = store.load(device.device_id)
        if stored is not None:
            device.load_state_dict(stored[1])
        reconcile_with_ledger(device)  # what the device spent is what its ledger says
        return _StoredSession(self, key, device, store)

    def _keep(self, key: tuple[int, int], token: str, device: Device) -> None:
        self._devices[key] = (token, device)
        self._devices.move_to_end(key)
        while len(self._devices) > self.max_devices:
            self._devices.popitem(last=False)


class _StoredSession:
    """One message's handling by a stored device (see :class:`StoredDevices`)."""

    def __init__(
        self, owner: StoredDevices, key: tuple[int, int], device: Device, store: DeviceStateStore
    ):
        self.owner, self.key, self.device, self.store = owner, key, device, store

    def contribute(self, request: Any, session: Any) -> tuple[Any, dict[str, float]]:
        """Check the secure sum, then contribute; the ε spent rides along (a public count)."""
        self.device.check_secure(session, noise_share=request.noise_share, task=request.task)
        outcome = self.device.contribute(
            request.task, request.table, request.server_round, noise_share=request.noise_share
        )
        metrics = {"epsilon": self.device.epsilon_spent()} if self.device.dp is not None else {}
        return outcome, metrics

    @property
    def ledger_head(self) -> dict[str, object] | None:
        """The device's ledger head after this message's release (None: no release)."""
        return self.device.ledger_head

    def evaluate(self, request: Any) -> Any:
        """The device's evaluation release (never inside a secure sum here)."""
        from fedrec.common.privacy.policy import PolicyViolation, RefusalCode

        if request.noise_share is not None:
            raise PolicyViolation(RefusalCode.NOT_SECURE, "a noise share outside a secure sum")
        return self.device.evaluation_release(
            request.table,
            request.ks,
            request.server_round,
            noise_multiplier=request.noise_multiplier,
        )

    def close(self, changed: bool) -> None:
        """Save the device's state when the message changed it (the accountant first of all)."""
        if changed:
            token = self.store.save(self.device.device_id, self.device.state_dict())
            self.owner._keep(self.key, token, self.device)


def reconcile_with_ledger(device: Device) -> None:
    """Make the device's accountant hold at least what its signed ledger records.

    The ledger is the source of truth: a release is written there before it leaves, and the
    state store is saved after, so a device stopped in between (a killed run) has a ledger
    one release ahead of its store; the accountant then takes the ledger's history. A store
    ahead of its ledger keeps its own, larger, spend (never lowered; the audit will find the
    ledger short). A device without a ledger writer (privacy off, user-level) is left alone.

    Raises:
        StoreError: the ledger and the store record different releases.
        LedgerError: the ledger does not verify with the device's key.
    """
    from fedrec.client.ledger_writer import LedgerWriter
    from fedrec.client.storage import StoreError, _extends
    from fedrec.common.audit.ledger import LedgerError, releases_from_ledger, verify_ledger
    from fedrec.common.privacy.events import merge_history

    writer = device.on_release
    if device.accountant is None or not isinstance(writer, LedgerWriter):
        return
    path = writer.ledger_dir / f"{device.device_id}.jsonl"
    records: list[dict[str, Any]] = []
    if path.exists() and path.stat().st_size > 0:
        result = verify_ledger(path, writer.key.public_key)
        if not result.ok:
            raise LedgerError(f"{path}: the device's ledger is broken: {result.reason}")
        records = result.records
    ledger = merge_history(e.history_entry for e in releases_from_ledger(records))
    stored = merge_history(device.accountant.history)
    if ledger == stored:
        return
    if _extends(stored, ledger):
        device.accountant.history = [tuple(e) for e in ledger]
    elif _extends(ledger, stored):
        log.warning(
            "%s: its store records more releases than its ledger %s; keeping the larger spend",
            device.device_id,
            path,
        )
    else:
        raise StoreError(
            f"{device.device_id}: its stored accountant and its ledger {path} record different "
            "releases; the ledger is the record: move the device store aside to rebuild it "
            "from the ledger"
        )
