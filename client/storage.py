"""A device's local state in one SQLite file: events, user embedding, privacy spend, item table.

One file holds everything the SDK keeps (schema ``SCHEMA_VERSION``, in ``PRAGMA
user_version``):

=============  ==========================================================================
table          holds
=============  ==========================================================================
``meta``       key → JSON value: device id, DP settings, the ledger signing key, …
``events``     every recorded :class:`~fedrec.client.interactions.Event` (id, kind, item id,
               timestamp, value, context JSON, time recorded)
``blobs``      named npz / JSON blobs: ``item_table`` (the last item embeddings and biases
               received), ``popularity`` (the server's published prior), ``catalog`` (item
               ids and metadata), ``user_state`` (the user embedding and RNG state)
``privacy``    one row: the Opacus accountant's kind and history (its ``state_dict``), the
               total steps, and ε at δ as last computed
``releases``   one row per DP release (the device's privacy ledger): intent → released /
               aborted, with the mechanism, sampling, steps, ε after, CPU seconds, and the
               signed ``fedrec-ledger/1`` record when the device signs its ledger
``rounds``     one row per local training started (time, CPU seconds, outcome), for the
               training policy's rounds-per-day and CPU limits
=============  ==========================================================================

Durability: WAL journal, ``synchronous=FULL`` and one transaction per write, so a write that
has returned survives a crash of the process or of the machine. ``secure_delete`` overwrites
deleted rows, so retention and :meth:`DeviceStore.forget` do not leave events readable in
free pages.

The privacy spend only goes up: :meth:`DeviceStore.begin_release` commits the *intended*
spend (the accountant history after the round) before any training, and
:meth:`DeviceStore.complete_release` commits the final state before the update may leave. A
crash in between leaves the intent counted (over-counting a round that perhaps never left is
the safe error). Python checks and SQLite triggers both refuse an update that would shorten the
accountant history, and deleting the ``privacy`` row or a ``releases`` row, so neither
retention nor ``forget`` can lower it.
"""

from __future__ import annotations

import io
import json
import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.client.interactions import Event
from fedrec.common.privacy.events import merge_history

__all__ = [
    "SCHEMA_VERSION",
    "DeviceStore",
    "StoreError",
    "PrivacyState",
    "Release",
    "Retention",
]

SCHEMA_VERSION = 1
_SECONDS_PER_DAY = 86400.0

History = tuple[tuple[float, float, int], ...]

_SCHEMA = """
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    item_id TEXT NOT NULL,
    ts REAL NOT NULL,
    value REAL,
    context TEXT,
    recorded_at REAL NOT NULL
);
CREATE INDEX events_ts ON events (ts, id);
CREATE INDEX events_item ON events (item_id);
CREATE TABLE blobs (
    name TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    info TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE privacy (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    accountant TEXT,
    history TEXT NOT NULL,
    total_steps INTEGER NOT NULL,
    epsilon REAL,
    delta REAL,
    updated_at REAL
);
INSERT INTO privacy (id, accountant, history, total_steps) VALUES (1, NULL, '[]', 0);
CREATE TRIGGER privacy_never_decreases BEFORE UPDATE ON privacy
WHEN NEW.total_steps < OLD.total_steps
BEGIN SELECT RAISE(ABORT, 'fedrec: the recorded privacy spend never decreases'); END;
CREATE TRIGGER privacy_never_deleted BEFORE DELETE ON privacy
BEGIN SELECT RAISE(ABORT, 'fedrec: the recorded privacy spend is never deleted'); END;
CREATE TABLE releases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    round INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('intent', 'released', 'aborted')),
    noise_multiplier REAL NOT NULL,
    max_grad_norm REAL NOT NULL,
    sample_rate REAL NOT NULL,
    steps INTEGER NOT NULL,
    target_delta REAL NOT NULL,
    budget_epsilon REAL,
    epsilon_after REAL,
    accountant TEXT NOT NULL,
    cpu_seconds REAL,
    created_at REAL NOT NULL,
    released_at REAL,
    note TEXT,
    record TEXT
);
CREATE TRIGGER releases_never_deleted BEFORE DELETE ON releases
BEGIN SELECT RAISE(ABORT, 'fedrec: privacy releases are never deleted'); END;
CREATE TABLE rounds (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    round INTEGER NOT NULL,
    started_at REAL NOT NULL,
    cpu_seconds REAL,
    outcome TEXT NOT NULL
);
"""

#: Migrations from version ``v`` to ``v + 1`` (none yet: version 1 is the first).
_MIGRATIONS: dict[int, str] = {}


class StoreError(RuntimeError):
    """The store cannot do what was asked (newer schema, lowered spend, corrupt blob)."""


class CorruptStoreError(StoreError, ValueError):
    """The file is not a readable SQLite database (truncated, overwritten, damaged).

    A ``ValueError`` too: the file is bad input, and command-line tools report it in one line.
    """


def open_error(path: Path, exc: BaseException) -> CorruptStoreError:
    """The one-line error for a store SQLite cannot read (naming the file and the way out)."""
    reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
    return CorruptStoreError(
        f"{path}: not a readable fedrec store (SQLite: {reason}); the file is truncated or "
        "damaged: restore it from a backup, or move it away and start a new store"
    )


def refuse_empty(path: Path) -> None:
    """Raise :class:`CorruptStoreError` if ``path`` exists and holds 0 bytes.

    SQLite opens an empty file as an empty database: a store truncated to nothing would
    come back as a fresh device with nothing spent. A store SQLite created always holds its
    header once opened, so an empty file is a damaged one.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        raise open_error(path, sqlite3.DatabaseError("the file is empty (0 bytes)"))


def check_readable(db: sqlite3.Connection, path: Path) -> None:
    """Raise :class:`CorruptStoreError` unless SQLite reads the whole file without error.

    ``PRAGMA quick_check`` reads every page (a truncated file fails here, not later in the
    middle of a round).
    """
    try:
        result = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        raise open_error(path, exc) from None
    if result != [("ok",)]:
        raise open_error(path, sqlite3.DatabaseError(str(result[0][0]) if result else "?"))


def _extends(old: History, new: History) -> bool:
    """Whether ``new`` is ``old`` followed by more steps (never fewer, never different)."""
    if not old:
        return True
    if len(new) < len(old) or new[: len(old) - 1] != old[:-1]:
        return False
    last_old, last_new = old[-1], new[len(old) - 1]
    return last_new[:2] == last_old[:2] and last_new[2] >= last_old[2]


@dataclass(frozen=True)
class PrivacyState:
    """What the device has spent, as stored.

    Attributes:
        accountant: the Opacus accountant's mechanism name (``"prv"``, ``"rdp"``), or None
            before the first release.
        history: the accountant's ``(noise_multiplier, sample_rate, steps)`` history.
        total_steps: steps over the whole history.
        epsilon: ε at ``delta`` as last computed (None before the first release).
        delta: the δ of ``epsilon``.
        updated_at: time of the last change (seconds since the epoch).
    """

    accountant: str | None
    history: History
    total_steps: int
    epsilon: float | None
    delta: float | None
    updated_at: float | None

    def accountant_state_dict(self) -> dict[str, Any] | None:
        """The Opacus accountant ``state_dict`` this state stands for (None when empty)."""
        if self.accountant is None:
            return None
        return {"history": [tuple(h) for h in self.history], "mechanism": self.accountant}


@dataclass(frozen=True)
class Release:
    """One row of the device's privacy ledger (see the module docstring)."""

    id: int
    round: int
    status: str
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    target_delta: float
    budget_epsilon: float | None
    epsilon_after: float | None
    accountant: str
    cpu_seconds: float | None
    created_at: float
    released_at: float | None
    note: str | None
    record: dict[str, Any] | None


@dataclass(frozen=True)
class Retention:
    """Data minimization: how much interaction history the device keeps.

    Attributes:
        keep_days: drop events older than this many days (None: no age limit).
        keep_events: keep at most this many most recent events (None: no count limit).
    """

    keep_days: float | None = None
    keep_events: int | None = None

    def __post_init__(self) -> None:
        if self.keep_days is not None and not (
            math.isfinite(self.keep_days) and self.keep_days >= 0
        ):
            raise ValueError(f"keep_days must be >= 0 days, got {self.keep_days}")
        if self.keep_events is not None and int(self.keep_events) < 0:
            raise ValueError(f"keep_events must be >= 0, got {self.keep_events}")


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def _npz_load(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


class DeviceStore:
    """The device's SQLite file (one writer; safe to share between threads).

    Args:
        path: the database file (created, with its folder, if missing).
        timeout: seconds to wait for a lock held by another connection.

    Raises:
        StoreError: the file was written by a newer schema, or is not a fedrec store.
        CorruptStoreError: SQLite cannot read the file (truncated, empty, zeroed, damaged).
    """

    def __init__(self, path: str | Path, *, timeout: float = 30.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        refuse_empty(self.path)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            str(self.path), timeout=timeout, isolation_level=None, check_same_thread=False
        )
        try:
            check_readable(self._db, self.path)
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: could not switch to WAL mode (got {mode!r})")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            raise open_error(self.path, exc) from None
        except BaseException:
            self._conn.close()
            raise

    # --- plumbing --------------------------------------------------------------------------
    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"{self.path}: the store is closed")
        return self._conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed (durably) when the block returns."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _migrate(self) -> None:
        with self._tx() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {version}, newer than this fedrec's "
                    f"{SCHEMA_VERSION}; upgrade fedrec to open it (it is left untouched)."
                )
            if version == 0:
                tables = db.execute(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
                ).fetchone()[0]
                if tables:
                    raise StoreError(f"{self.path} is a SQLite file but not a fedrec store")
                for statement in _split_sql(_SCHEMA):
                    db.execute(statement)
                version = SCHEMA_VERSION
            while version < SCHEMA_VERSION:  # pragma: no cover - no migrations yet
                for statement in _split_sql(_MIGRATIONS[version]):
                    db.execute(statement)
                version += 1
            db.execute(f"PRAGMA user_version = {int(version)}")

    @property
    def schema_version(self) -> int:
        """The schema version of the open file."""
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        """Checkpoint the WAL into the main file and close (idempotent)."""
        with self._lock:
            if self._conn is None:
                return
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:  # pragma: no cover - another reader holds the WAL
                pass
            self._conn.close()
            self._conn = None

    def __enter__(self) -> DeviceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- meta ------------------------------------------------------------------------------
    def get_meta(self, key: str, default: Any = None) -> Any:
        """The JSON value stored under ``key`` (``default`` when absent)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable value under ``key`` (committed on return)."""
        text = json.dumps(value, allow_nan=False)
        with self._tx() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) "
                "DO UPDATE SET value = excluded.value",
                (key, text),
            )

    # --- events ----------------------------------------------------------------------------
    @staticmethod
    def _event_row(event: Event, now: float) -> tuple[Any, ...]:
        if not isinstance(event, Event):
            raise TypeError(
                f"expected a fedrec.client.interactions.Event, got {type(event).__name__}"
            )
        context = None if event.context is None else json.dumps(event.context, allow_nan=False)
        return (event.kind_value, event.item_id, event.timestamp, event.value, context, now)

    def append_event(self, event: Event) -> int:
        """Store one event; when this returns its id, the event is durable."""
        return self.append_events([event])[0]

    def append_events(self, events: Iterable[Event]) -> list[int]:
        """Store events in one transaction (all or none); returns their ids."""
        now = time.time()
        rows = [self._event_row(e, now) for e in events]  # validate before writing
        ids = []
        with self._tx() as db:
            for row in rows:
                cur = db.execute(
                    "INSERT INTO events (kind, item_id, ts, value, context, "
                    "recorded_at) VALUES (?, ?, ?, ?, ?, ?)",
                    row,
                )
                ids.append(int(cur.lastrowid))  # type: ignore[arg-type]
        return ids

    def stored_events(self, *, since: float | None = None) -> list[tuple[int, Event]]:
        """``(id, event)`` pairs ordered by (timestamp, id); ``since`` filters by timestamp."""
        sql = "SELECT id, kind, item_id, ts, value, context FROM events"
        args: tuple[Any, ...] = ()
        if since is not None:
            sql += " WHERE ts >= ?"
            args = (float(since),)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY ts, id", args).fetchall()
        return [
            (r[0], Event(r[1], r[2], r[3], r[4], None if r[5] is None else json.loads(r[5])))
            for r in rows
        ]

    def events(self, *, since: float | None = None) -> list[Event]:
        """Stored events ordered by (timestamp, id)."""
        return [e for _, e in self.stored_events(since=since)]

    def event_count(self) -> int:
        """How many events are stored."""
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM events").fetchone()[0])

    # --- retention -------------------------------------------------------------------------
    def delete_events_before(self, cutoff: float) -> int:
        """Delete events with a timestamp before ``cutoff``; returns how many."""
        with self._tx() as db:
            return db.execute("DELETE FROM events WHERE ts < ?", (float(cutoff),)).rowcount

    def keep_last_events(self, n: int) -> int:
        """Keep only the ``n`` most recent events (by timestamp, then id); returns deleted."""
        with self._tx() as db:
            return db.execute(
                "DELETE FROM events WHERE id NOT IN "
                "(SELECT id FROM events ORDER BY ts DESC, id DESC LIMIT ?)",
                (int(n),),
            ).rowcount

    def apply_retention(self, retention: Retention, *, now: float | None = None) -> int:
        """Apply a :class:`Retention`; returns how many events were deleted."""
        deleted = 0
        if retention.keep_days is not None:
            now = time.time() if now is None else float(now)
            deleted += self.delete_events_before(now - retention.keep_days * _SECONDS_PER_DAY)
        if retention.keep_events is not None:
            deleted += self.keep_last_events(int(retention.keep_events))
        return deleted

    def forget(self) -> int:
        """Delete every event and the user embedding; the privacy spend stays.

        Returns how many events were deleted. The deleted rows are overwritten
        (``secure_delete``) and the WAL is checkpointed and truncated, so the data does not
        linger in the file. The accountant, the release ledger, the item table received and
        the catalog (none of them this user's data) are kept: forgetting must never make the
        device believe it has spent less.
        """
        with self._tx() as db:
            n = db.execute("DELETE FROM events").rowcount
            db.execute("DELETE FROM blobs WHERE name = 'user_state'")
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return n

    # --- blobs -----------------------------------------------------------------------------
    def put_arrays(
        self, name: str, arrays: Mapping[str, np.ndarray], info: Mapping[str, Any] | None = None
    ) -> None:
        """Store named arrays (npz) under ``name`` with JSON ``info`` (committed on return)."""
        data = _npz_bytes(arrays)
        self._put_blob(name, data, dict(info or {}, format="npz"))

    def get_arrays(self, name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """The arrays and info stored under ``name``, or None."""
        row = self._get_blob(name)
        if row is None:
            return None
        data, info = row
        try:
            return _npz_load(data), info
        except (ValueError, OSError) as exc:
            raise StoreError(f"{self.path}: blob {name!r} is not a readable npz ({exc})") from exc

    def put_json(self, name: str, value: Any, info: Mapping[str, Any] | None = None) -> None:
        """Store a JSON value under ``name``."""
        data = json.dumps(value, allow_nan=False).encode("utf-8")
        self._put_blob(name, data, dict(info or {}, format="json"))

    def get_json(self, name: str) -> Any:
        """The JSON value stored under ``name``, or None."""
        row = self._get_blob(name)
        return None if row is None else json.loads(row[0].decode("utf-8"))

    def has_blob(self, name: str) -> bool:
        """Whether a blob named ``name`` is stored."""
        with self._lock:
            return (
                self._db.execute("SELECT 1 FROM blobs WHERE name = ?", (name,)).fetchone()
                is not None
            )

    def _put_blob(
        self, name: str, data: bytes, info: Mapping[str, Any], db: sqlite3.Connection | None = None
    ) -> None:
        row = (name, sqlite3.Binary(data), json.dumps(dict(info), allow_nan=False), time.time())
        sql = (
            "INSERT INTO blobs (name, data, info, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET data = excluded.data, info = excluded.info, "
            "updated_at = excluded.updated_at"
        )
        if db is not None:
            db.execute(sql, row)
            return
        with self._tx() as tx:
            tx.execute(sql, row)

    def put_many(
        self,
        *,
        arrays: Mapping[str, Mapping[str, np.ndarray]] | None = None,
        json_values: Mapping[str, Any] | None = None,
        info: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        """Store several blobs in one transaction (e.g. an item table with its catalog)."""
        info = info or {}
        rows = [
            (name, _npz_bytes(value), dict(info.get(name, {}), format="npz"))
            for name, value in (arrays or {}).items()
        ]
        rows += [
            (
                name,
                json.dumps(value, allow_nan=False).encode("utf-8"),
                dict(info.get(name, {}), format="json"),
            )
            for name, value in (json_values or {}).items()
        ]
        with self._tx() as db:
            for name, data, blob_info in rows:
                self._put_blob(name, data, blob_info, db=db)

    def delete_blob(self, name: str) -> None:
        """Remove the blob named ``name`` (no error when absent)."""
        with self._tx() as db:
            db.execute("DELETE FROM blobs WHERE name = ?", (name,))

    def _get_blob(self, name: str) -> tuple[bytes, dict[str, Any]] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT data, info FROM blobs WHERE name = ?", (name,)
            ).fetchone()
        return None if row is None else (bytes(row[0]), json.loads(row[1]))

    # --- privacy ---------------------------------------------------------------------------
    def privacy_state(self) -> PrivacyState:
        """The stored accountant state and ε."""
        with self._lock:
            row = self._db.execute(
                "SELECT accountant, history, total_steps, epsilon, delta, "
                "updated_at FROM privacy WHERE id = 1"
            ).fetchone()
        history = merge_history(json.loads(row[1]))
        return PrivacyState(row[0], history, int(row[2]), row[3], row[4], row[5])

    def _write_privacy(
        self,
        db: sqlite3.Connection,
        *,
        accountant: str,
        history: Iterable[Sequence[float]],
        epsilon: float | None,
        delta: float | None,
    ) -> None:
        new = merge_history(history)
        row = db.execute("SELECT accountant, history FROM privacy WHERE id = 1").fetchone()
        old = merge_history(json.loads(row[1]))
        if row[0] is not None and row[0] != accountant:
            raise StoreError(
                f"the stored accountant is {row[0]!r}; cannot continue it as {accountant!r}"
            )
        if not _extends(old, new):
            raise StoreError(
                "refusing to record a privacy state that does not extend the stored one "
                f"(stored {old}, new {new}): the recorded spend never decreases"
            )
        db.execute(
            "UPDATE privacy SET accountant = ?, history = ?, total_steps = ?, "
            "epsilon = ?, delta = ?, updated_at = ? WHERE id = 1",
            (
                accountant,
                json.dumps([list(h) for h in new]),
                sum(h[2] for h in new),
                epsilon,
                delta,
                time.time(),
            ),
        )

    def cache_epsilon(self, *, epsilon: float, delta: float) -> None:
        """Store ε at δ for the current history (computed by the caller's accountant)."""
        with self._tx() as db:
            db.execute(
                "UPDATE privacy SET epsilon = ?, delta = ? WHERE id = 1",
                (float(epsilon), float(delta)),
            )

    def begin_release(
        self,
        *,
        server_round: int,
        noise_multiplier: float,
        max_grad_norm: float,
        sample_rate: float,
        steps: int,
        target_delta: float,
        budget_epsilon: float | None,
        accountant: str,
        history_after: Iterable[Sequence[float]],
        epsilon_after: float | None,
    ) -> int:
        """Write-ahead of spend: commit the intended release and the accountant state after it.

        Call before training. From the moment this returns, the round is counted as spent,
        whatever happens next. Returns the release's id.
        """
        now = time.time()
        with self._tx() as db:
            self._write_privacy(
                db,
                accountant=accountant,
                history=history_after,
                epsilon=epsilon_after,
                delta=target_delta,
            )
            cur = db.execute(
                "INSERT INTO releases (round, status, noise_multiplier, max_grad_norm, "
                "sample_rate, steps, target_delta, budget_epsilon, epsilon_after, accountant, "
                "created_at) VALUES (?, 'intent', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    int(server_round),
                    float(noise_multiplier),
                    float(max_grad_norm),
                    float(sample_rate),
                    int(steps),
                    float(target_delta),
                    budget_epsilon,
                    epsilon_after,
                    accountant,
                    now,
                ),
            )
            return int(cur.lastrowid)  # type: ignore[arg-type]

    def complete_release(
        self,
        release_id: int,
        *,
        accountant: str,
        history: Iterable[Sequence[float]],
        epsilon: float | None,
        delta: float,
        record: Mapping[str, Any] | None = None,
        cpu_seconds: float | None = None,
        user_state: Mapping[str, np.ndarray] | None = None,
        user_info: Mapping[str, Any] | None = None,
    ) -> None:
        """Commit a release as sent: final accountant state, ledger record, user state.

        Call after training and before the update leaves; all of it commits atomically.
        """
        with self._tx() as db:
            status = db.execute(
                "SELECT status FROM releases WHERE id = ?", (int(release_id),)
            ).fetchone()
            if status is None or status[0] != "intent":
                raise StoreError(f"release {release_id} is not an open intent ({status})")
            self._write_privacy(
                db, accountant=accountant, history=history, epsilon=epsilon, delta=delta
            )
            db.execute(
                "UPDATE releases SET status = 'released', released_at = ?, "
                "epsilon_after = coalesce(?, epsilon_after), cpu_seconds = ?, "
                "record = ? WHERE id = ?",
                (
                    time.time(),
                    epsilon,
                    cpu_seconds,
                    None if record is None else json.dumps(dict(record), allow_nan=False),
                    int(release_id),
                ),
            )
            if user_state is not None:
                self._put_blob(
                    "user_state", _npz_bytes(user_state), dict(user_info or {}, format="npz"), db=db
                )

    def abort_release(
        self, release_id: int, note: str, *, cpu_seconds: float | None = None
    ) -> None:
        """Mark an intent as not sent; its spend stays counted (the safe side)."""
        with self._tx() as db:
            db.execute(
                "UPDATE releases SET status = 'aborted', note = ?, cpu_seconds = ? "
                "WHERE id = ? AND status = 'intent'",
                (str(note), cpu_seconds, int(release_id)),
            )

    def releases(self) -> list[Release]:
        """Every release row, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, round, status, noise_multiplier, max_grad_norm, sample_rate, steps, "
                "target_delta, budget_epsilon, epsilon_after, accountant, cpu_seconds, "
                "created_at, released_at, note, record FROM releases ORDER BY id"
            ).fetchall()
        return [Release(*r[:15], None if r[15] is None else json.loads(r[15])) for r in rows]

    def start_round(self, server_round: int, *, started_at: float) -> int:
        """Log a local training as started (before it runs); returns its id."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO rounds (round, started_at, outcome) VALUES (?, ?, 'started')",
                (int(server_round), float(started_at)),
            )
            return int(cur.lastrowid)  # type: ignore[arg-type]

    def finish_round(self, round_id: int, *, cpu_seconds: float, outcome: str) -> None:
        """Record a logged training's CPU seconds and outcome."""
        with self._tx() as db:
            db.execute(
                "UPDATE rounds SET cpu_seconds = ?, outcome = ? WHERE id = ?",
                (float(cpu_seconds), str(outcome), int(round_id)),
            )

    def last_round_cpu(self) -> float:
        """CPU seconds of the latest logged training (0 when none)."""
        with self._lock:
            row = self._db.execute(
                "SELECT coalesce(cpu_seconds, 0) FROM rounds ORDER BY id DESC LIMIT 1"
            ).fetchone()
        return 0.0 if row is None else float(row[0])

    def count_rounds(self, outcome: str) -> int:
        """How many logged trainings ended with ``outcome``."""
        with self._lock:
            return int(
                self._db.execute(
                    "SELECT count(*) FROM rounds WHERE outcome = ?", (outcome,)
                ).fetchone()[0]
            )

    def steps_since(self, since: float) -> int:
        """Local DP-SGD steps of the releases recorded at or after ``since``."""
        with self._lock:
            row = self._db.execute(
                "SELECT coalesce(sum(steps), 0) FROM releases WHERE created_at >= ?",
                (float(since),),
            ).fetchone()
        return int(row[0])

    def rounds_since(self, since: float) -> tuple[int, float]:
        """Trainings started at or after ``since`` (any outcome) and their CPU seconds."""
        with self._lock:
            row = self._db.execute(
                "SELECT count(*), coalesce(sum(cpu_seconds), 0) FROM rounds WHERE started_at >= ?",
                (float(since),),
            ).fetchone()
        return int(row[0]), float(row[1])


def _split_sql(script: str) -> list[str]:
    """Statements of a schema script (``sqlite3.complete_statement`` handles triggers)."""
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
