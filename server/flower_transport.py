"""Flower's Grid as a transport of the round loop (simulation engine and deployments).

Requests become Message-API messages (``train``: ``arrays`` = the item table and the task's
arrays, ``config`` = round, task, noise share, …; ``evaluate``: ``arrays``, ``config`` =
round, ks, evaluation noise); replies come back as
:class:`~fedrec.server.coordinator.Reply` objects, never raising on a malformed one. Secure
rounds run Flower's SecAgg+ (:func:`~fedrec.server.secure_aggregation.secure_sum`) with the
range the round was planned with: the server receives only the sum.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedrec.common.privacy.mechanisms import RoundPlan
from fedrec.server.coordinator import Reply
from fedrec.server.round_loop import Request, SumResult

__all__ = [
    "FlowerTransport",
    "reply_from_message",
    "evaluation_from_message",
    "to_arrays",
    "to_numpy",
    "request_content",
]

log = logging.getLogger("fedrec.server")


def to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Named numpy arrays of a Flower ``ArrayRecord``."""
    return {k: v.numpy() for k, v in record.items()}


def to_arrays(state: dict[str, np.ndarray]) -> ArrayRecord:
    """Wrap named numpy arrays in a Flower ``ArrayRecord``."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in state.items()})


def request_content(request: Request) -> RecordDict:
    """The content of a request's messages: ``arrays`` and ``config``."""
    return RecordDict(
        {"arrays": to_arrays(request.arrays()), "config": ConfigRecord(request.flat_config())}
    )


def reply_from_message(msg: Message) -> Reply:
    """Turn a device's reply message into a :class:`Reply`, never raising.

    Nothing is judged here: the values travel as they came (metrics as plain Python values,
    ``num-examples`` as sent) to :func:`~fedrec.server.validation.check_reply`, the one
    validation path of both transports.
    """
    try:
        node = int(msg.metadata.src_node_id)
    except Exception:  # noqa: BLE001 - a reply without a readable sender
        node = -1
    try:
        if msg.has_error():
            return Reply(node=node, error=str(msg.error.reason))
        content = msg.content
        refusal = dict(content["refusal"]).get("code") if "refusal" in content else None
        arrays = to_numpy(content["arrays"]) if "arrays" in content else None  # type: ignore[arg-type]
        if refusal is None and arrays is None:
            return Reply(node=node, error="reply has neither 'arrays' nor 'refusal'")
        metrics = dict(content["metrics"]) if "metrics" in content else {}
        n = metrics.pop("num-examples", 1)
        return Reply(node, arrays, num_examples=n, metrics=metrics, refusal=refusal)
    except Exception as exc:  # a malformed reply must not crash the server
        return Reply(node=node, error=f"unreadable reply: {type(exc).__name__}: {exc}"[:300])


def evaluation_from_message(msg: Message) -> object:
    """A device's evaluation reply as its metric sums (``None`` for an error or a refusal).

    Unchecked: :meth:`~fedrec.server.coordinator.Coordinator.usable_evaluations` judges them.
    """
    try:
        if msg.has_error() or "metrics" not in msg.content:
            return None
        return dict(msg.content["metrics"])
    except Exception:  # noqa: BLE001 - a malformed reply is dropped, never raised
        return None


class FlowerTransport:
    """The round loop's messages over a Flower ``Grid``.

    Args:
        grid: the ServerApp's grid.
        timeout: seconds a round waits for replies (``None``: wait for every reply).
    """

    def __init__(self, grid: Grid, *, timeout: float | None = 3600.0):
        self.grid = grid
        self.timeout = timeout

    def nodes(self) -> list[int]:
        """The connected nodes."""
        return [int(n) for n in self.grid.get_node_ids()]

    def messages(
        self, request: Request, nodes: Sequence[int], kind: str = MessageType.TRAIN
    ) -> list[Message]:
        """The messages of a request to ``nodes``."""
        content = request_content(request)
        return [Message(content=content, message_type=kind, dst_node_id=n) for n in nodes]

    def train(self, request: Request, nodes: Sequence[int]) -> list[Reply]:
        """Individual replies of the nodes (unchecked; the coordinator validates them)."""
        if not nodes:
            return []
        replies = self.grid.send_and_receive(self.messages(request, nodes), timeout=self.timeout)
        return [reply_from_message(m) for m in replies]

    def secure_sum(self, request: Request, nodes: Sequence[int], plan: RoundPlan) -> SumResult:
        """Flower's SecAgg+ over the nodes: only the sum (and who is in it) comes back."""
        from fedrec.server.secure_aggregation import (
            DECLINED_PREFIX,
            SecAggConfig,
            SecureAggregationError,
            secure_sum,
        )

        secagg = SecAggConfig(clipping_range=plan.clipping_range, timeout=self.timeout)
        try:
            res = secure_sum(
                self.grid,
                nodes,
                request_content(request),
                config=secagg,
                group_id=str(request.server_round),
                shapes=dict(request.reply_shapes) or None,
                min_included=plan.min_included if plan.enforce_min else None,
            )
        except (SecureAggregationError, ValueError) as exc:
            reasons = [f"secure aggregation failed: {exc}"]
            declined = 0
            for node, why in sorted(getattr(exc, "drop_reasons", {}).items()):
                declined += DECLINED_PREFIX in why
                reasons.append(f"node {node}: {why}")
            return SumResult(None, [], declined, reasons)
        reasons = [
            f"node {n}: {why}"
            for n, why in sorted(res.drop_reasons.items())
            if n not in set(res.declined)
        ]
        return SumResult(
            res.total,
            list(res.included),
            len(res.declined),
            reasons,
            {
                "secagg_error_bound": float(res.error_bound),
                "secagg_clipping_range": float(plan.clipping_range),
            },
        )

    def evaluate(self, request: Request, nodes: Sequence[int]) -> list[object]:
        """The nodes' evaluation replies (metric sums; unchecked, errors and refusals left out).

        A node that was not asked, or that answers twice, is heard once at most.
        """
        if not nodes:
            return []
        asked, out = set(nodes), []
        for m in self.grid.send_and_receive(
            self.messages(request, nodes, MessageType.EVALUATE), timeout=self.timeout
        ):
            node = getattr(m.metadata, "src_node_id", None)
            if node not in asked:
                log.warning("round %d: dropped an evaluation reply", request.server_round)
                continue
            asked.discard(node)
            sums = evaluation_from_message(m)
            if sums is not None:
                out.append(sums)
        return out
