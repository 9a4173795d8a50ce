"""Flower's simulation engine woken by stored messages (``fedrec.simulations.engine_wakeups``)."""

import queue
import threading
import time
from types import SimpleNamespace

from fedrec.simulations.engine_wakeups import (
    PICKUP_INTERVAL,
    Wakeup,
    patches_apply,
    pickup_loop,
    prompt_engine,
    pull_loop,
)


class _Stop:
    """A stop event that stops after ``passes`` checks of the loop."""

    def __init__(self, passes: int):
        self.left = passes

    def is_set(self) -> bool:
        self.left -= 1
        return self.left < 0

    def wait(self, timeout: float) -> bool:  # Flower's loop waits here; ours must not
        raise AssertionError("the pick-up waited on the stop event, not on stored messages")


class _RecordingWakeup(Wakeup):
    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float) -> bool:
        self.waits.append(timeout)
        return False


class _State:
    """A link state holding messages per node, handed out one per call as Flower's does."""

    def __init__(self, pending: dict[int, list[str]]):
        self.pending = {n: list(ms) for n, ms in pending.items()}
        self.lock = threading.Lock()

    def get_message_ins(self, *, node_id: int, limit: int) -> list[str]:
        with self.lock:
            out = self.pending[node_id][:limit]
            self.pending[node_id] = self.pending[node_id][limit:]
        return out

    def add(self, node_id: int, msg: str) -> None:
        with self.lock:
            self.pending[node_id].append(msg)


def test_flowers_polling_loops_are_the_ones_replaced():
    """Fails when Flower's two loops change (a new flwr): re-read them, then the hashes."""
    assert patches_apply(), "flwr's add_messages_to_queue or send_and_receive changed"


def test_the_pickup_is_flowers_one_message_per_node_per_pass_waiting_on_stored_messages():
    wakeup = _RecordingWakeup()
    q: queue.Queue = queue.Queue()
    state = _State({7: ["a", "b"], 9: ["c"]})
    pickup_loop(wakeup, PICKUP_INTERVAL)(state, q, {7: 7, 9: 9}, _Stop(3))
    assert [q.get_nowait() for _ in range(q.qsize())] == ["a", "c", "b"]
    assert wakeup.waits == [PICKUP_INTERVAL] * 3


def test_a_stored_message_wakes_the_pickup_long_before_its_interval():
    state, wakeup, q, stop = _State({1: []}), Wakeup(), queue.Queue(), threading.Event()
    loop = pickup_loop(wakeup, 30.0)
    thread = threading.Thread(target=loop, args=(state, q, {1: 1}, stop), daemon=True)
    thread.start()
    time.sleep(0.05)  # the loop is waiting now, for up to 30 s
    t0 = time.monotonic()
    state.add(1, "m")
    wakeup.set()  # what storing a message does under prompt_engine
    assert q.get(timeout=10.0) == "m"
    assert time.monotonic() - t0 < 10.0
    stop.set()
    wakeup.set()
    thread.join(timeout=5.0)
    assert not thread.is_alive()


class _Grid:
    """An in-memory grid whose replies arrive from another thread."""

    pull_interval = 30.0

    def __init__(self) -> None:
        self.replies: list[SimpleNamespace] = []
        self.lock = threading.Lock()

    def push_messages(self, messages):
        return [m for m in messages]

    def pull_messages(self, ids):
        with self.lock:
            out = [r for r in self.replies if r.metadata.reply_to_message_id in ids]
            self.replies = [r for r in self.replies if r not in out]
        return out

    def reply(self, to: str) -> None:
        with self.lock:
            self.replies.append(SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=to)))


def test_a_stored_reply_wakes_the_servers_pull_long_before_its_interval():
    grid, wakeup = _Grid(), Wakeup()
    send_and_receive = pull_loop(wakeup, 30.0)

    def answer() -> None:
        time.sleep(0.05)
        for to in ("x", "y"):
            grid.reply(to)
            wakeup.set()

    threading.Thread(target=answer, daemon=True).start()
    t0 = time.monotonic()
    got = send_and_receive(grid, ["x", "y"], timeout=60.0)
    assert sorted(r.metadata.reply_to_message_id for r in got) == ["x", "y"]
    assert time.monotonic() - t0 < 10.0


def test_the_pull_still_gives_up_at_its_timeout():
    got = pull_loop(Wakeup(), 0.01)(_Grid(), ["never"], timeout=0.05)
    assert got == []


def test_prompt_engine_wraps_storing_and_restores_flowers_functions():
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    names = [
        (vce_api, "add_messages_to_queue"),
        (InMemoryGrid, "send_and_receive"),
        (InMemoryLinkState, "store_message_ins"),
        (InMemoryLinkState, "store_message_res"),
    ]
    before = [getattr(owner, name) for owner, name in names]
    with prompt_engine(PICKUP_INTERVAL):
        assert all(getattr(o, n) is not f for (o, n), f in zip(names, before, strict=True))
    assert all(getattr(o, n) is f for (o, n), f in zip(names, before, strict=True))
    with prompt_engine(None):  # one SuperNode per device: Flower's own loops
        assert all(getattr(o, n) is f for (o, n), f in zip(names, before, strict=True))


def test_storing_a_message_sets_the_wakeup_and_returns_what_flower_returns():
    from fedrec.simulations.engine_wakeups import _signalling

    wakeup = Wakeup()
    stored = _signalling(lambda self, message: f"id-of-{message}", wakeup)
    assert not wakeup.wait(0)
    assert stored(None, "m") == "id-of-m"
    assert wakeup.wait(0)
