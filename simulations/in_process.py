"""Devices called in one process as a transport of the round loop.

:class:`InProcessTransport` hands each request to the devices directly, with the checks their
``ClientApp`` would make, and computes a secure sum in the clear: what SecAgg+ computes, with
its semantics (a device whose share would be clipped declines and the round aborts; a
simulated dropout takes a contribution out of the sum). It is the engine of sweeps and
benchmarks: the same device and server code as the Flower engine, without the engine's
overhead (:mod:`fedrec.simulations.loop`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedrec.client.device import Device, Refusal
from fedrec.common.privacy.mechanisms import RoundPlan
from fedrec.common.privacy.policy import PolicyViolation, check_arrays
from fedrec.common.privacy.secagg import SecureSession, exceeds_range
from fedrec.server.coordinator import Reply
from fedrec.server.round_loop import Request, SumResult
from fedrec.server.validation import validate_delta

__all__ = ["InProcessTransport", "PartialSum"]


@dataclass
class PartialSum:
    """A secure sum over some of a round's devices, before the round's abort rule.

    ``total`` is float64 (partial sums then add up as one sum would, to rounding);
    ``out_of_range`` counts shares beyond the range, any of which aborts the whole round's sum.
    """

    total: dict[str, np.ndarray] | None = None
    included: list[int] = field(default_factory=list)
    declined: int = 0
    drop_reasons: list[str] = field(default_factory=list)
    out_of_range: int = 0


def _check_share(
    arrays: object, reference: dict[str, np.ndarray], clipping_range: float
) -> tuple[str | None, bool]:
    """Why a secure sum drops ``arrays`` (or ``None``), and whether a value lies beyond the range.

    :func:`~fedrec.server.validation.validate_delta`'s verdict (no norm limit: the range
    bounds a share) and :func:`~fedrec.common.privacy.secagg.exceeds_range`'s, from one
    minimum and maximum per array for a well-formed share (the two checks took three passes
    over it and a float64 copy); a malformed one gets ``validate_delta``'s reason. Without a
    ``reference`` nothing is validated.
    """
    if isinstance(arrays, dict) and reference and arrays.keys() == reference.keys():
        beyond = False
        for key, ref in reference.items():
            a = arrays[key]
            if not (isinstance(a, np.ndarray) and a.shape == ref.shape and a.dtype == np.float32):
                break
            if a.size:
                low, high = float(a.min()), float(a.max())
                if not (math.isfinite(low) and math.isfinite(high)):
                    break
                beyond = beyond or max(high, -low) > clipping_range
        else:
            return None, beyond
    why = validate_delta(arrays, reference, max_norm=math.inf) if reference else None
    return why, why is None and exceeds_range(arrays, clipping_range)  # type: ignore[arg-type]


class InProcessTransport:
    """The round loop's messages as direct calls to devices.

    Args:
        n_devices: devices ``0 .. n_devices - 1``.
        device: gives device ``u`` (built, or restored from its saved state).
        done: called with ``(u, device)`` after a device handled a request (to save it).
        dropout: in a secure sum, each contribution is dropped with this probability, as if
            its device went offline mid-round.
        rng: the coin of those dropouts.
        drops: instead of ``dropout``, whether device ``u`` drops out of round ``r``'s sum
            (``drops(u, r)``; a cohort worker's coin, independent of the order of devices).
    """

    def __init__(
        self,
        n_devices: int,
        device: Callable[[int], Device],
        done: Callable[[int, Device], None] | None = None,
        *,
        dropout: float = 0.0,
        rng: np.random.Generator | None = None,
        drops: Callable[[int, int], bool] | None = None,
    ):
        self.n_devices = n_devices
        self.device = device
        self.done = done or (lambda u, d: None)
        self.dropout = dropout
        self.rng = rng if rng is not None else np.random.default_rng()
        self.drops = drops

    def nodes(self) -> list[int]:
        """Every device."""
        return list(range(self.n_devices))

    def _answer(
        self, u: int, request: Request, session: SecureSession | None, dev: Device | None = None
    ) -> Reply:
        dev = self.device(u) if dev is None else dev
        share = request.config.get("noise-share")
        try:
            dev.check_secure(session, noise_share=share, task=request.task)
            out = dev.contribute(
                request.task, request.state, request.server_round, noise_share=share
            )
        except PolicyViolation as violation:
            out = Refusal(violation.code, violation.detail)
        if not isinstance(out, Refusal):
            self.done(u, dev)
        if isinstance(out, Refusal):
            return Reply(node=u, refusal=str(out.code))
        metrics = dict(out.metrics)
        if dev.dp is not None:
            metrics["epsilon"] = dev.epsilon_spent()
        return Reply(node=u, arrays=out.arrays, num_examples=out.num_examples, metrics=metrics)

    def train(self, request: Request, nodes: Sequence[int]) -> list[Reply]:
        """Each device's individual reply."""
        return list(self._replies(request, nodes, None))

    def _replies(
        self, request: Request, nodes: Sequence[int], session: SecureSession | None
    ) -> Iterator[Reply]:
        """Each device's reply, in ``nodes``' order; batched where the algorithm can.

        Devices are taken in chunks (:func:`~fedrec.common.model.batched.chunk_size`). In a
        chunk, the devices that pass the checks their ``ClientApp`` makes (the secure session,
        the table's shapes and values) and whose algorithm computes them batched
        (``batchable``: no device noise, e.g. user-level DP) train together
        (``contribute_many``); every other device answers alone, as :meth:`_answer` does.
        """
        from fedrec.common.model.batched import chunk_size

        emb = request.state.get("item_embedding.weight")  # the devices' copies of it
        size = 1 if emb is None or np.ndim(emb) != 2 else chunk_size(*np.shape(emb))
        for start in range(0, len(nodes), size):
            chunk = {u: self.device(u) for u in nodes[start : start + size]}
            batched = self._batched(request, chunk, session)
            for u, dev in chunk.items():
                yield batched[u] if u in batched else self._answer(u, request, session, dev)

    def _batched(
        self, request: Request, chunk: dict[int, Device], session: SecureSession | None
    ) -> dict[int, Reply]:
        """The replies of the devices in ``chunk`` that train batched (possibly none)."""
        share = request.config.get("noise-share")
        algorithm = next(iter(chunk.values())).algorithm
        if not hasattr(algorithm, "batchable"):
            return {}
        devices: dict[int, Device] = {}
        passed: dict[tuple[int, int], bool] = {}
        for u, dev in chunk.items():
            if dev.algorithm is not algorithm or not algorithm.batchable(dev, request.task, share):
                continue
            # a batchable device adds no noise and shares the algorithm: its checks depend only
            # on the request and its table's shape, so one device of each shape checks for all
            key = (dev.n_items, dev.dim)
            if key not in passed:
                try:
                    dev.check_secure(session, noise_share=share, task=request.task)
                    check_arrays(request.state, dev.table_shapes())
                    passed[key] = True
                except PolicyViolation:
                    passed[key] = False
            if passed[key]:
                devices[u] = dev  # otherwise it answers alone, with its refusal
        if not devices:
            return {}
        for dev in devices.values():
            dev.ledger_head = None  # as Device.contribute does
        outs = algorithm.contribute_many(
            list(devices.values()), request.task, request.state, server_round=request.server_round
        )
        replies = {}
        for (u, dev), out in zip(devices.items(), outs, strict=True):
            self.done(u, dev)
            replies[u] = Reply(
                node=u, arrays=out.arrays, num_examples=out.num_examples, metrics=dict(out.metrics)
            )
        return replies

    def secure_sum(self, request: Request, nodes: Sequence[int], plan: RoundPlan) -> SumResult:
        """The sum of the devices' contributions, computed in the clear, with SecAgg+'s rules.

        Contributions are added as they come and not kept (a round of 20,000 co-occurrence
        contributions would otherwise hold gigabytes).
        """
        session = SecureSession(clipping_range=plan.clipping_range, group_size=len(nodes))
        part = self.partial_sum(request, nodes, session)
        if part.out_of_range:
            return SumResult(
                None,
                [],
                part.declined,
                [
                    *part.drop_reasons,
                    f"secure sum aborted: {part.out_of_range} noised share(s) beyond the range",
                ],
            )
        total = part.total
        return SumResult(
            None if total is None else {k: v.astype(np.float32) for k, v in total.items()},
            part.included,
            part.declined,
            part.drop_reasons,
        )

    def partial_sum(
        self, request: Request, nodes: Sequence[int], session: SecureSession
    ) -> PartialSum:
        """The float64 sum of some of a secure round's contributions (a cohort worker's shard).

        ``session`` is what each device is told of the whole round's sum (its range and
        size). A contribution of the wrong shape is dropped, one beyond the range is
        counted in ``out_of_range`` (the whole round's sum then aborts), and a simulated
        dropout takes a contribution out after its device trained.
        """
        part = PartialSum()
        reference = {k: np.zeros(s, np.float32) for k, s in request.reply_shapes.items()}
        for reply in self._replies(request, nodes, session):
            u = reply.node
            if reply.refusal is not None:
                part.declined += 1
                continue
            why, beyond = _check_share(reply.arrays, reference, session.clipping_range)
            if why is not None:  # SecAgg+ drops a vector of the wrong shape the same way
                part.drop_reasons.append(f"node {u}: {why}")
                continue
            assert reply.arrays is not None
            if beyond:
                part.out_of_range += 1
                continue
            if self._drops(u, request.server_round):
                continue
            if part.total is None:
                part.total = {
                    k: np.zeros(v.shape, dtype=np.float64) for k, v in reply.arrays.items()
                }
            for k in part.total:
                part.total[k] += reply.arrays[k]
            part.included.append(u)
        return part

    def _drops(self, u: int, server_round: int) -> bool:
        if self.drops is not None:
            return bool(self.drops(u, server_round))
        return self.dropout > 0 and self.rng.random() < self.dropout

    def evaluate(self, request: Request, nodes: Sequence[int]) -> list[object]:
        """Each device's evaluation release (refusals left out; the coordinator checks them)."""
        out = []
        for u in nodes:
            dev = self.device(u)
            sums = dev.evaluation_release(
                request.state,
                tuple(int(k) for k in str(request.config["ks"]).split(",")),
                request.server_round,
                noise_multiplier=request.config.get("eval-noise-multiplier"),
            )
            if not isinstance(sums, Refusal):
                self.done(u, dev)
                out.append(sums)
        return out
