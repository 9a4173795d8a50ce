import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from fedrec.client.interactions import Event
from fedrec.client.storage import (
    SCHEMA_VERSION,
    DeviceStore,
    Retention,
    StoreError,
    merge_history,
)


def _release(store, steps=3, sigma=1.0, q=0.5):
    state = store.privacy_state()
    after = merge_history(list(state.history) + [(sigma, q, steps)])
    return store.begin_release(
        server_round=1,
        noise_multiplier=sigma,
        max_grad_norm=1.0,
        sample_rate=q,
        steps=steps,
        target_delta=1e-5,
        budget_epsilon=8.0,
        accountant="rdp",
        history_after=after,
        epsilon_after=float(sum(h[2] for h in after)),
    )


def test_pragmas_and_schema_version(tmp_path):
    with DeviceStore(tmp_path / "d.db") as s:
        assert s.schema_version == SCHEMA_VERSION
        assert s._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert s._db.execute("PRAGMA secure_delete").fetchone()[0] == 1


def test_a_closed_store_says_so(tmp_path):
    s = DeviceStore(tmp_path / "d.db")
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        s.event_count()


def test_newer_schema_and_foreign_files_are_refused_untouched(tmp_path):
    path = tmp_path / "d.db"
    DeviceStore(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer than this fedrec"):
        DeviceStore(path)
    other = tmp_path / "other.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="not a fedrec store"):
        DeviceStore(other)


def test_events_round_trip_and_batches_are_atomic(tmp_path):
    with DeviceStore(tmp_path / "d.db") as s:
        ids = s.append_events(
            [Event("view", "a", 5.0, 12.0, {"screen": "home"}), Event("purchase", "b", 3.0)]
        )
        assert ids == [1, 2]
        assert s.events() == [
            Event("purchase", "b", 3.0),
            Event("view", "a", 5.0, 12.0, {"screen": "home"}),
        ]
        with pytest.raises(TypeError):
            s.append_events([Event("click", "c", 1.0), ("click", "d", 1.0)])
        assert s.event_count() == 2  # nothing of the bad batch was written
        assert [e.item_id for e in s.events(since=4.0)] == ["a"]


def test_blobs_round_trip(tmp_path):
    with DeviceStore(tmp_path / "d.db") as s:
        arr = np.arange(12, dtype=np.float32).reshape(3, 4)
        s.put_arrays("item_table", {"x": arr}, {"round": 3})
        got, info = s.get_arrays("item_table")
        np.testing.assert_array_equal(got["x"], arr)
        assert info["round"] == 3
        s.put_json("catalog", {"item_ids": ["a"]})
        assert s.get_json("catalog") == {"item_ids": ["a"]}
        assert s.get_arrays("missing") is None


def test_spend_only_goes_up(tmp_path):
    with DeviceStore(tmp_path / "d.db") as s:
        rid = _release(s, steps=4)
        assert s.privacy_state().total_steps == 4
        assert s.releases()[0].status == "intent"
        with pytest.raises(StoreError, match="never decreases"):
            s.begin_release(
                server_round=2,
                noise_multiplier=1.0,
                max_grad_norm=1.0,
                sample_rate=0.5,
                steps=1,
                target_delta=1e-5,
                budget_epsilon=8,
                accountant="rdp",
                history_after=[(1.0, 0.5, 1)],
                epsilon_after=1.0,
            )
        with pytest.raises(StoreError, match="accountant"):
            s.begin_release(
                server_round=2,
                noise_multiplier=1.0,
                max_grad_norm=1.0,
                sample_rate=0.5,
                steps=1,
                target_delta=1e-5,
                budget_epsilon=8,
                accountant="prv",
                history_after=[(1.0, 0.5, 9)],
                epsilon_after=1.0,
            )
        s.complete_release(
            rid,
            accountant="rdp",
            history=[(1.0, 0.5, 4)],
            epsilon=4.0,
            delta=1e-5,
            record={"seq": 0},
            cpu_seconds=0.1,
            user_state={"user_embedding": np.ones((1, 2), np.float32)},
        )
        assert s.releases()[0].status == "released" and s.releases()[0].record == {"seq": 0}
        with pytest.raises(StoreError, match="not an open intent"):
            s.complete_release(
                rid, accountant="rdp", history=[(1.0, 0.5, 4)], epsilon=4.0, delta=1e-5
            )
        # the triggers guard the file even against direct SQL
        for sql in (
            "UPDATE privacy SET total_steps = 0",
            "DELETE FROM privacy",
            "DELETE FROM releases",
        ):
            with pytest.raises(sqlite3.DatabaseError, match="fedrec"):
                s._db.execute(sql)
        assert s.privacy_state().total_steps == 4


def test_retention_keeps_days_and_counts_and_never_the_spend(tmp_path):
    day = 86400.0
    now = 100 * day
    with DeviceStore(tmp_path / "d.db") as s:
        s.append_events([Event("click", f"i{k}", now - k * day) for k in range(10)])
        _release(s, steps=5)
        assert s.apply_retention(Retention(keep_days=3.5), now=now) == 6
        assert sorted(e.item_id for e in s.events()) == ["i0", "i1", "i2", "i3"]
        assert s.apply_retention(Retention(keep_events=2)) == 2
        assert sorted(e.item_id for e in s.events()) == ["i0", "i1"]
        assert s.privacy_state().total_steps == 5
    with pytest.raises(ValueError):
        Retention(keep_days=-1)


def test_forget_removes_events_and_user_embedding_from_the_file(tmp_path):
    path = tmp_path / "d.db"
    s = DeviceStore(path)
    s.append_events([Event("purchase", "secret-item-xyz", 1.0)] * 5)
    s.put_arrays("user_state", {"user_embedding": np.full((1, 4), 7.25, np.float32)})
    s.put_arrays("item_table", {"x": np.zeros(3)})
    _release(s, steps=7)
    assert s.forget() == 5
    assert s.event_count() == 0 and not s.has_blob("user_state")
    assert s.has_blob("item_table")
    assert s.privacy_state().total_steps == 7 and len(s.releases()) == 1
    s.close()
    raw = path.read_bytes()
    wal = path.with_name(path.name + "-wal")
    raw += wal.read_bytes() if wal.exists() else b""
    assert b"secret-item-xyz" not in raw  # secure_delete + truncated WAL


CHILD = textwrap.dedent("""
    import sys
    from fedrec.client.sdk import Event, FedRecClient
    from fedrec.client.storage import merge_history
    client = FedRecClient.open(sys.argv[1], dp={"accountant": "rdp"}, sign_ledger=False)
    s = client.store
    i = 0
    while True:
        eid = client.record(Event("click", "item%d" % i, float(i), context={"pad": "x" * 500}))
        sys.stdout.write("E %d\\n" % eid)
        sys.stdout.flush()
        st = s.privacy_state()
        after = merge_history(list(st.history) + [(1.0, 0.5, 2)])
        rid = s.begin_release(server_round=i, noise_multiplier=1.0, max_grad_norm=1.0,
                              sample_rate=0.5, steps=2, target_delta=1e-5,
                              budget_epsilon=None, accountant="rdp", history_after=after,
                              epsilon_after=None)
        sys.stdout.write("S %d\\n" % (st.total_steps + 2))
        sys.stdout.flush()
        if i % 2:
            s.complete_release(rid, accountant="rdp", history=after, epsilon=None,
                               delta=1e-5)
        i += 1
""")


def test_sigkill_during_writes_loses_no_committed_event_nor_spend(tmp_path):
    path = tmp_path / "crash.db"
    rng = random.Random(0)
    committed: set[int] = set()
    spend_seen = 0
    for trial in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True
        )
        lines = []
        while len(lines) < 20:  # let it get going, then kill it mid-loop
            lines.append(child.stdout.readline())
        time.sleep(rng.uniform(0.0, 0.05))
        os.kill(child.pid, signal.SIGKILL)
        rest, _ = child.communicate()
        assert child.returncode == -signal.SIGKILL
        for line in lines + rest.splitlines(keepends=True):
            if not line.endswith("\n"):
                continue  # the kill cut this line short: its number may be truncated
            if line.startswith("E "):
                committed.add(int(line.split()[1]))
            elif line.startswith("S "):
                spend_seen = max(spend_seen, int(line.split()[1]))
        with DeviceStore(path) as s:
            stored = {i for i, _ in s.stored_events()}
            assert committed <= stored, f"trial {trial}: lost {sorted(committed - stored)[:5]}"
            state = s.privacy_state()
            assert state.total_steps >= spend_seen
            # every intent, finished or not, is counted in the accountant history
            assert state.total_steps == 2 * len(s.releases())


def _damaged_copies(tmp_path):
    """A real store with events, then copies truncated, zeroed or overwritten."""
    path = tmp_path / "good.db"
    with DeviceStore(path) as s:
        s.append_events([Event("purchase", f"i{i % 20}", float(i)) for i in range(2000)])
    raw = path.read_bytes()
    assert len(raw) > 8192
    return {
        "truncated to half": raw[: len(raw) // 2],
        "truncated to one page": raw[:4096],
        "truncated inside the header": raw[:50],
        "zeroed header": b"\0" * 100 + raw[100:],
        "zeroed first page": b"\0" * 4096 + raw[4096:],
        "not SQLite": b"this is not a database " * 20,
    }


@pytest.mark.parametrize("opener", ["store", "sdk", "simulation"])
def test_a_damaged_store_is_a_clear_error_naming_the_file(tmp_path, opener):
    from fedrec.client.sdk import FedRecClient
    from fedrec.client.state_store import DeviceStateStore
    from fedrec.client.storage import CorruptStoreError

    for name, data in _damaged_copies(tmp_path).items():
        path = tmp_path / f"{name.replace(' ', '-')}.db"
        path.write_bytes(data)
        with pytest.raises(CorruptStoreError) as info:
            if opener == "store":
                DeviceStore(path)
            elif opener == "sdk":
                FedRecClient.open(path, catalog=[f"i{i}" for i in range(20)])
            else:
                DeviceStateStore(path).device_ids()
        message = str(info.value)
        assert message.startswith(f"{path}: not a readable fedrec store"), (name, message)
        assert "\n" not in message and "restore it from a backup" in message
        assert isinstance(info.value, ValueError) and isinstance(info.value, StoreError)
        assert path.read_bytes() == data, name  # left untouched


@pytest.mark.parametrize(
    "array",
    [
        np.arange(32, dtype=np.float32) / 7,
        np.arange(6, dtype=np.uint64) * (2**60),
        np.arange(12, dtype=np.float64).reshape(3, 4).T,  # not C-contiguous
        np.zeros((0,), np.int16),
        np.float32(3.5),  # 0-d
    ],
)
def test_device_states_keep_every_array_exactly_and_read_the_older_npy_blobs(tmp_path, array):
    import io

    from fedrec.client.state_store import DeviceStateStore, _from_bytes

    store = DeviceStateStore(tmp_path / "states.sqlite")
    state = {"user_embedding": array, "generator": array, "accountant": "{}", "rounds_trained": 2}
    store.save_many({"d": state})
    _, got = store.load("d")
    for key in ("user_embedding", "generator"):
        assert got[key].dtype == np.asarray(array).dtype
        assert got[key].shape == np.asarray(array).shape
        np.testing.assert_array_equal(got[key], array)
        assert got[key].flags.writeable  # a device trains its embedding in place
    old = io.BytesIO()
    np.save(old, np.asarray(array), allow_pickle=False)  # what stores held before
    np.testing.assert_array_equal(_from_bytes(old.getvalue()), array)
    with pytest.raises(ValueError, match="not a stored array"):
        _from_bytes(b"garbage" + old.getvalue())
