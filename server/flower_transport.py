"""Flower's Grid as a transport of the round loop (simulation engine and deployments).

Requests become Message-API messages (``train``: ``arrays`` = the item table and the task's
arrays, ``config`` = round, task, noise share, …; ``evaluate``: ``arrays``, ``config`` =
round, ks, evaluation noise); replies come back as
:class:`~fedrec.server.coordinator.Reply` objects, never raising on a malformed one. Secure
rounds run Flower's SecAgg+ (:func:`~fedrec.server.secure_aggregation.secure_sum`) with the
range the round was planned with: the server receives only the sum.

In simulation, :class:`CohortTransport` talks to *cohort workers* instead, SuperNodes that each
host a shard of the virtual devices (:mod:`fedrec.simulations.workers`): one message per
worker and round, individual replies or the shard's partial sum (the simulated secure sum)
back, the devices' ledger heads countersigned.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid

from fedrec.common.privacy.mechanisms import RoundPlan
from fedrec.server.coordinator import Reply
from fedrec.server.round_loop import Request, SumResult

__all__ = [
    "FlowerTransport",
    "CohortTransport",
    "COHORT_RECORD",
    "HEADS_RECORD",
    "cohort_key",
    "split_cohort_keys",
    "pack_heads",
    "pack_replies",
    "unpack_replies",
    "pack_sum",
    "cohort_message",
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


# --- cohort workers (simulation) ------------------------------------------------------------
#: A cohort request's record: ``devices`` (the worker's devices asked this round), the
#: contribution's ``shape:NAME`` and, in a secure round, ``secure``, ``clipping-range`` and
#: ``group-size`` (the whole round's). A worker's sum reply carries it too: ``included``,
#: ``declined``, ``out-of-range`` and ``reasons``; its roster reply: ``devices``.
COHORT_RECORD = "fedrec.cohort"
#: The ledger heads a worker forwards, three entries per device ``U``: ``U/device_id``,
#: ``U/seq``, ``U/hash``.
HEADS_RECORD = "fedrec.ledger-heads"
_ROSTER = "roster"
#: Seconds between the server's polls for cohort workers' replies (Flower's default: 0.1).
_PULL_INTERVAL = 0.005


def cohort_key(device: int, name: str) -> str:
    """The key of a device's value in a cohort record (``"17/epsilon"``)."""
    return f"{int(device)}/{name}"


def split_cohort_keys(record: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """A cohort record's values per device (keys not of the form ``U/name`` raise)."""
    out: dict[int, dict[str, Any]] = {}
    for key, value in record.items():
        device, sep, name = str(key).partition("/")
        if not sep:
            raise ValueError(f"key {str(key)[:40]!r} names no device")
        out.setdefault(int(device), {})[name] = value
    return out


def pack_heads(heads: Mapping[int, Mapping[str, Any]]) -> ConfigRecord:
    """The ledger heads of a worker's devices as one record (:data:`HEADS_RECORD`)."""
    flat: dict[str, Any] = {}
    for u, head in heads.items():
        flat[cohort_key(u, "device_id")] = str(head["device_id"])
        flat[cohort_key(u, "seq")] = int(head["seq"])
        flat[cohort_key(u, "hash")] = str(head["hash"])
    return ConfigRecord(flat)


def _heads_of(msg: Message) -> dict[int, dict[str, Any]]:
    try:
        record = msg.content.config_records.get(HEADS_RECORD)
        return split_cohort_keys(record) if record is not None else {}
    except (ValueError, TypeError, AttributeError):
        return {}


def pack_replies(replies: Sequence[Reply]) -> RecordDict:
    """A worker's individual replies (contributions, metrics, refusals) as one reply's content."""
    arrays: dict[str, np.ndarray] = {}
    metrics: dict[str, float | int] = {}
    refusals: dict[str, str] = {}
    for r in replies:
        if r.refusal is not None:
            refusals[str(r.node)] = str(r.refusal)
            continue
        assert r.arrays is not None
        arrays.update({cohort_key(r.node, k): v for k, v in r.arrays.items()})
        metrics[cohort_key(r.node, "num-examples")] = r.num_examples  # type: ignore[assignment]
        metrics.update({cohort_key(r.node, k): float(v) for k, v in r.metrics.items()})
    return RecordDict(
        {
            "arrays": to_arrays(arrays),
            "metrics": MetricRecord(metrics),
            "refusals": ConfigRecord(refusals),
        }
    )


def unpack_replies(msg: Message | None, asked: Sequence[int]) -> list[Reply]:
    """The individual replies in a worker's reply, one per device asked, never raising.

    A device the reply says nothing about (or a reply that is missing, an error or
    unreadable) gets a :class:`Reply` with an ``error``; values for devices not asked are
    ignored (:func:`~fedrec.server.validation.check_reply` judges the rest).
    """
    if msg is None:
        return [Reply(node=u, error="its cohort worker did not answer") for u in asked]
    try:
        if msg.has_error():
            why = f"its cohort worker failed: {msg.error.reason}"[:300]
            return [Reply(node=u, error=why) for u in asked]
        content = msg.content
        arrays = split_cohort_keys(to_numpy(content["arrays"]))  # type: ignore[arg-type]
        metrics = split_cohort_keys(dict(content["metrics"]))  # type: ignore[arg-type]
        refusals = {int(k): str(v) for k, v in dict(content["refusals"]).items()}  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 - a malformed reply must not crash the server
        why = f"unreadable cohort reply: {type(exc).__name__}: {exc}"[:300]
        return [Reply(node=u, error=why) for u in asked]
    out = []
    for u in asked:
        if u in refusals:
            out.append(Reply(node=u, refusal=refusals[u]))
        elif u in arrays:
            m = dict(metrics.get(u, {}))
            n = m.pop("num-examples", 1)
            out.append(Reply(node=u, arrays=arrays[u], num_examples=n, metrics=m))
        else:
            out.append(Reply(node=u, error="its cohort worker sent nothing for it"))
    return out


def pack_sum(
    total: Mapping[str, np.ndarray] | None,
    included: Sequence[int],
    *,
    declined: int,
    out_of_range: int,
    reasons: Sequence[str],
) -> RecordDict:
    """A worker's partial secure sum (float64) and who is in it, as one reply's content."""
    info = ConfigRecord(
        {
            "included": [int(u) for u in included],
            "declined": int(declined),
            "out-of-range": int(out_of_range),
            "reasons": [str(r)[:300] for r in reasons],
        }
    )
    content = RecordDict({COHORT_RECORD: info})
    if total is not None:
        content["sum"] = to_arrays({k: np.asarray(v, np.float64) for k, v in total.items()})
    return content


def cohort_message(
    request: Request,
    devices: Sequence[int],
    kind: str,
    extra: Mapping[str, Any],
    *,
    node: int,
) -> Message:
    """The message asking cohort worker ``node`` for its ``devices``' answers to ``request``.

    ``extra``: the secure round's entries of :data:`COHORT_RECORD` (empty otherwise).
    """
    base = request_content(request)
    shapes = {f"shape:{k}": [int(d) for d in s] for k, s in request.reply_shapes.items()}
    cohort = ConfigRecord({"devices": [int(u) for u in devices], **shapes, **extra})
    content = RecordDict(
        {"arrays": base["arrays"], "config": base["config"], COHORT_RECORD: cohort}
    )
    return Message(content, message_type=kind, dst_node_id=node)


class CohortTransport:
    """The round loop's messages to cohort workers over a Flower Grid (simulation only).

    A SuperNode here is a *cohort worker* hosting a shard of the virtual devices
    (:mod:`fedrec.simulations.workers`); the round loop's nodes are device indices, as
    in-process. Each round a worker gets one message naming its devices sampled this round
    and answers with their individual replies, or, in a secure round, with its shard's
    partial sum (the simulated secure sum of
    :class:`~fedrec.simulations.in_process.InProcessTransport`, with its rules: a share
    beyond the range aborts the whole sum, a simulated dropout leaves it). The worker
    forwards its devices' ledger heads, which the server countersigns (``receipts``).
    Deployments keep one device per SuperNode and Flower's SecAgg+
    (:class:`FlowerTransport`).

    Args:
        grid: the ServerApp's grid.
        timeout: seconds a round waits for the workers' replies.
        receipts: where the server countersigns the releases it receives (``None``: nowhere).
    """

    def __init__(self, grid: Grid, *, timeout: float | None = 3600.0, receipts: Any = None):
        self.grid = grid
        self.timeout = timeout
        self.receipts = receipts
        self._worker_of: dict[int, int] | None = None
        # the simulation's in-memory grid polls for replies every 0.1 s: a wait a worker
        # round (a few messages) would pay every time; poll every 5 ms instead
        inner = getattr(grid, "_grid", grid)
        if isinstance(getattr(inner, "pull_interval", None), float):
            inner.pull_interval = min(inner.pull_interval, _PULL_INTERVAL)

    def roster(self) -> dict[int, int]:
        """Device index -> worker node, asked of every worker once.

        Raises:
            RuntimeError: a worker gave no roster, or two workers host one device.
        """
        if self._worker_of is not None:
            return self._worker_of
        config = ConfigRecord({"task": _ROSTER})
        messages = [
            Message(RecordDict({"config": config}), message_type=MessageType.QUERY, dst_node_id=n)
            for n in self.grid.get_node_ids()
        ]
        where: dict[int, int] = {}
        for reply in self.grid.send_and_receive(messages, timeout=self.timeout):
            node = int(reply.metadata.src_node_id)
            if reply.has_error() or COHORT_RECORD not in reply.content:
                why = reply.error.reason if reply.has_error() else "no roster in the reply"
                raise RuntimeError(f"cohort worker {node} gave no roster: {why}")
            for u in reply.content[COHORT_RECORD]["devices"]:  # type: ignore[union-attr]
                if int(u) in where:
                    raise RuntimeError(
                        f"device {u} is hosted by workers {where[int(u)]} and {node}"
                    )
                where[int(u)] = node
        self._worker_of = where
        return where

    def nodes(self) -> list[int]:
        """Every device the workers host."""
        return sorted(self.roster())

    def _send(
        self, request: Request, devices: Sequence[int], kind: str, extra: Mapping[str, Any]
    ) -> list[tuple[list[int], Message | None]]:
        """One message per worker naming its devices; each worker's devices and reply."""
        where = self.roster()
        by_worker: dict[int, list[int]] = {}
        for u in devices:
            by_worker.setdefault(where[int(u)], []).append(int(u))
        messages = [cohort_message(request, us, kind, extra, node=w) for w, us in by_worker.items()]
        replies = self.grid.send_and_receive(messages, timeout=self.timeout) if messages else []
        got = {int(m.metadata.src_node_id): m for m in replies}
        return [(us, got.get(w)) for w, us in by_worker.items()]

    def _countersign(self, server_round: int, heads: list[tuple[int, dict[str, Any]]]) -> None:
        if self.receipts is not None and heads:
            self.receipts.countersign(server_round, heads)

    def train(self, request: Request, nodes: Sequence[int]) -> list[Reply]:
        """Each device's individual reply, in the order of ``nodes`` (unchecked)."""
        out: dict[int, Reply] = {}
        signed: list[tuple[int, dict[str, Any]]] = []
        for asked, msg in self._send(request, nodes, MessageType.TRAIN, {}):
            heads = _heads_of(msg) if msg is not None else {}
            for r in unpack_replies(msg, asked):
                out[r.node] = r
                if r.arrays is not None and r.node in heads:
                    signed.append((r.node, heads[r.node]))
        self._countersign(request.server_round, signed)
        return [out[int(u)] for u in nodes]

    def secure_sum(self, request: Request, nodes: Sequence[int], plan: RoundPlan) -> SumResult:
        """The workers' partial sums added up: only the sum (and who is in it) comes back."""
        extra = {
            "secure": True,
            "clipping-range": float(plan.clipping_range),
            "group-size": len(nodes),
        }
        total: dict[str, np.ndarray] | None = None
        included: set[int] = set()
        declined = out_of_range = 0
        reasons: list[str] = []
        heads: dict[int, dict[str, Any]] = {}
        for asked, msg in self._send(request, nodes, MessageType.TRAIN, extra):
            try:
                part = _unpack_sum(msg, asked, request)
            except ValueError as exc:
                reasons += [f"node {u}: {exc}" for u in asked]
                continue
            declined += part["declined"]
            out_of_range += part["out-of-range"]
            reasons += part["reasons"]
            included.update(part["included"])
            heads.update(_heads_of(msg))  # type: ignore[arg-type]
            if part["sum"] is not None:
                if total is None:
                    total = {k: np.zeros_like(v) for k, v in part["sum"].items()}
                for k in total:
                    total[k] += part["sum"][k]
        if out_of_range:
            reasons.append(f"secure sum aborted: {out_of_range} noised share(s) beyond the range")
            return SumResult(None, [], declined, reasons)
        order = [int(u) for u in nodes if int(u) in included]
        if total is not None:
            self._countersign(request.server_round, [(u, heads[u]) for u in order if u in heads])
        return SumResult(
            None if total is None else {k: v.astype(np.float32) for k, v in total.items()},
            order,
            declined,
            reasons,
        )

    def evaluate(self, request: Request, nodes: Sequence[int]) -> list[object]:
        """The devices' evaluation releases (metric sums; unchecked, refusals left out)."""
        out: list[object] = []
        signed: list[tuple[int, dict[str, Any]]] = []
        for asked, msg in self._send(request, nodes, MessageType.EVALUATE, {}):
            if msg is None or msg.has_error() or "metrics" not in msg.content:
                continue
            try:
                sums = split_cohort_keys(dict(msg.content["metrics"]))  # type: ignore[arg-type]
            except (ValueError, TypeError):
                log.warning(
                    "round %d: dropped an unreadable evaluation reply", request.server_round
                )
                continue
            heads = _heads_of(msg)
            signed += [(u, heads[u]) for u in asked if u in sums and u in heads]
            out += [sums[u] for u in asked if u in sums]
        self._countersign(request.server_round, signed)
        return out


def _unpack_sum(msg: Message | None, asked: Sequence[int], request: Request) -> dict[str, Any]:
    """A worker's partial sum, checked: its devices asked, its arrays the contribution's shapes.

    Raises:
        ValueError: no reply, an error, or a malformed one (its devices are left out).
    """
    if msg is None:
        raise ValueError("its cohort worker did not answer")
    if msg.has_error():
        raise ValueError(f"its cohort worker failed: {msg.error.reason}"[:300])
    try:
        info = msg.content[COHORT_RECORD]
        included = [int(u) for u in info["included"]]  # type: ignore[union-attr,index]
        part = {
            "included": included,
            "declined": int(info["declined"]),  # type: ignore[index,arg-type,call-overload]
            "out-of-range": int(info["out-of-range"]),  # type: ignore[index,arg-type,call-overload]
            "reasons": [str(r)[:300] for r in info["reasons"]],  # type: ignore[index,union-attr]
            "sum": to_numpy(msg.content["sum"]) if "sum" in msg.content else None,  # type: ignore[arg-type]
        }
    except Exception as exc:  # noqa: BLE001 - a malformed reply must not crash the server
        raise ValueError(f"unreadable cohort sum: {type(exc).__name__}: {exc}"[:300]) from None
    if len(set(included)) != len(included) or not set(included) <= {int(u) for u in asked}:
        raise ValueError("its cohort worker's sum names devices it was not asked, or twice")
    if (part["sum"] is None) != (not included):
        raise ValueError("its cohort worker's sum and the devices in it disagree")
    total = part["sum"]
    if total is not None and request.reply_shapes:
        shapes = {k: tuple(s) for k, s in request.reply_shapes.items()}
        if set(total) != set(shapes):
            raise ValueError(f"its cohort worker's sum has keys {sorted(total)[:8]}")
        for k, v in total.items():
            if v.shape != shapes[k] or v.dtype != np.float64 or not np.isfinite(v).all():
                raise ValueError(
                    f"its cohort worker's sum: {k} is not a finite float64 {shapes[k]}"
                )
    return part
