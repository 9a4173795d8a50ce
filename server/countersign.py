"""The server countersigns every release it receives: receipts, in its own signed file.

A device sends its ledger head (the ``seq`` and ``hash`` of the record it wrote for the
release, before the release left) with its reply, in the record
:data:`~fedrec.common.audit.receipts.HEAD_RECORD`; the server writes one receipt per head into
``RUN/receipts.jsonl`` (:class:`~fedrec.common.audit.receipts.ReceiptLog`, format
``fedrec-receipt/1``), and seals the file when the run ends. The audit then holds every
device ledger to what the server saw (:mod:`fedrec.common.audit.crosscheck`).

:class:`CountersigningGrid` does it for Flower's Grid (the simulation engine and deployments):
it wraps the grid the round loop's transport uses, so every reply, plain or inside SecAgg+,
passes through it; a reply without a head (privacy off, a device without a ledger) gets no
receipt.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from fedrec.common.audit.receipts import HEAD_RECORD, ReceiptLog

__all__ = ["CountersigningGrid", "head_of"]

log = logging.getLogger("fedrec.server")


def head_of(message: Any) -> dict[str, Any] | None:
    """The ledger head a reply message carries, or None."""
    try:
        if message.has_error() or not message.has_content():
            return None
        record = message.content.config_records.get(HEAD_RECORD)
        if record is None:
            return None
        return {
            "device_id": str(record["device_id"]),
            "seq": int(record["seq"]),
            "hash": str(record["hash"]),
        }
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _round_of(message: Any) -> int | None:
    """The server round of a request message (its config's ``server-round``)."""
    try:
        config = message.content.config_records.get("config")
        if config is not None and "server-round" in config:
            return int(config["server-round"])
        return int(message.metadata.group_id)
    except (TypeError, ValueError, AttributeError):
        return None


class CountersigningGrid:
    """A Flower Grid that countersigns every ledger head in the replies it passes on.

    Args:
        grid: the ServerApp's grid (everything but ``send_and_receive`` is forwarded).
        receipts: where the receipts go.
    """

    def __init__(self, grid: Any, receipts: ReceiptLog):
        self._grid = grid
        self.receipts = receipts

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None) -> Any:
        """Send through the wrapped grid; countersign the replies' ledger heads; return them."""
        messages = list(messages)
        rounds = {m.metadata.dst_node_id: _round_of(m) for m in messages}
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        by_round: dict[int, list[tuple[int, dict[str, Any]]]] = {}
        for reply in replies:
            head = head_of(reply)
            node = reply.metadata.src_node_id
            if head is None:
                continue
            rnd = rounds.get(node)
            if rnd is None:
                log.warning(
                    "a ledger head from node %s in a reply to no round: not countersigned", node
                )
                continue
            by_round.setdefault(rnd, []).append((int(node), head))
        for rnd, heads in sorted(by_round.items()):
            self.receipts.countersign(rnd, heads)
        return replies
