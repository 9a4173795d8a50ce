"""Flower's simulation engine woken by its messages instead of polling for them.

Flower 1.42's simulation engine polls twice a round trip: its pick-up thread walks every
node's stored messages every 0.1 s (``vce_api.add_messages_to_queue``), and the ServerApp's
in-memory grid sleeps ``pull_interval`` (0.1 s) between pulls for replies
(``InMemoryGrid.send_and_receive``). With one SuperNode per device the walk is the cost; with
a few cohort workers (:mod:`fedrec.simulations.workers`) each wait is pure latency, half an
interval on average, twice a round.

:func:`prompt_engine` (for the run, cohort workers only) makes both loops wait on an event
that storing a message sets (``InMemoryLinkState.store_message_ins`` and
``store_message_res`` wrapped to set it), with the interval kept as a fallback: a message is
picked up, and a reply pulled, as soon as it is stored. The two loops are Flower's own, the
waits aside, and are replaced only where the installed functions' sources have the sha256
of flwr 1.42.0's (:func:`patches_apply`); another Flower keeps its own loops, and a test
fails so that the copies are checked again.
"""

from __future__ import annotations

import hashlib
import inspect
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["PICKUP_INTERVAL", "prompt_engine", "patches_apply", "Wakeup"]

#: Seconds between the engine's pick-ups (and the server's pulls) when no message woke them:
#: a fallback, since storing a message wakes the loop waiting for it.
PICKUP_INTERVAL = 0.005
#: The sha256 of flwr 1.42.0's ``vce_api.add_messages_to_queue`` and
#: ``InMemoryGrid.send_and_receive`` sources, which :func:`prompt_engine` replaces.
_SOURCES_SHA256 = {
    "add_messages_to_queue": "953f4bd41a931a7779a4a670ab17b633f6e20b08a0128535328674466419777a",
    "send_and_receive": "0229edfa5741b92857a8f53744a145900bd8726e339627d46c69418d45429a0a",
}


class Wakeup:
    """An event a waiting loop clears before it looks and waits on after.

    A message stored between the look and the wait sets the event, so the wait returns at
    once; none is ever missed, at worst one look finds nothing.
    """

    def __init__(self) -> None:
        self._event = threading.Event()

    def clear(self) -> None:
        """Before looking for messages."""
        self._event.clear()

    def set(self) -> None:
        """A message was stored."""
        self._event.set()

    def wait(self, timeout: float) -> bool:
        """Until a message is stored or ``timeout`` s pass; whether one was."""
        return self._event.wait(timeout)


def _sources() -> dict[str, Any]:
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    return {
        "add_messages_to_queue": vce_api.add_messages_to_queue,
        "send_and_receive": InMemoryGrid.send_and_receive,
    }


def patches_apply() -> bool:
    """Whether the installed Flower's two polling loops are the ones :func:`prompt_engine` knows."""
    for name, function in _sources().items():
        try:
            source = inspect.getsource(function)
        except (OSError, TypeError):
            return False
        if hashlib.sha256(source.encode()).hexdigest() != _SOURCES_SHA256[name]:
            return False
    return True


def pickup_loop(new_message: Wakeup, interval: float) -> Any:
    """Flower 1.42's pick-up loop, waiting on ``new_message`` (at most ``interval`` s)."""

    def add_messages_to_queue(state: Any, queue: Any, nodes_mapping: Any, f_stop: Any) -> None:
        while not f_stop.is_set():
            new_message.clear()
            for node_id in nodes_mapping.keys():
                for msg in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(msg)
            new_message.wait(interval)

    return add_messages_to_queue


def pull_loop(new_reply: Wakeup, interval: float) -> Any:
    """Flower 1.42's ``InMemoryGrid.send_and_receive``, waiting on ``new_reply``."""

    def send_and_receive(
        self: Any, messages: Iterable[Any], *, timeout: float | None = None
    ) -> Iterable[Any]:
        msg_ids = set(self.push_messages(messages))
        del messages
        end_time = time.time() + (timeout if timeout is not None else 0.0)
        ret: list[Any] = []
        while timeout is None or time.time() < end_time:
            new_reply.clear()
            res_msgs = self.pull_messages(msg_ids)
            ret.extend(res_msgs)
            msg_ids.difference_update({msg.metadata.reply_to_message_id for msg in res_msgs})
            if len(msg_ids) == 0:
                break
            new_reply.wait(min(interval, self.pull_interval))
        return ret

    return send_and_receive


def _signalling(store: Any, wakeup: Wakeup) -> Any:
    def stored(self: Any, message: Any) -> Any:
        try:
            return store(self, message)
        finally:
            wakeup.set()

    return stored


@contextmanager
def prompt_engine(interval: float | None = PICKUP_INTERVAL) -> Iterator[None]:
    """For the block: the engine's pick-up and the server's pulls woken by stored messages.

    ``interval``: the longest wait without a message (``None``: Flower's own loops, as with
    one SuperNode per device). Only where :func:`patches_apply`; everything is restored after.
    """
    if interval is None or not patches_apply():
        yield
        return
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    new_message, new_reply = Wakeup(), Wakeup()
    saved = {
        (vce_api, "add_messages_to_queue"): pickup_loop(new_message, interval),
        (InMemoryGrid, "send_and_receive"): pull_loop(new_reply, interval),
        (InMemoryLinkState, "store_message_ins"): _signalling(
            InMemoryLinkState.store_message_ins, new_message
        ),
        (InMemoryLinkState, "store_message_res"): _signalling(
            InMemoryLinkState.store_message_res, new_reply
        ),
    }
    originals = {key: getattr(*key) for key in saved}
    for (owner, name), replacement in saved.items():
        setattr(owner, name, replacement)
    try:
        yield
    finally:
        for (owner, name), original in originals.items():
            setattr(owner, name, original)
