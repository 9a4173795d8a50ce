"""Secure summation of device updates with Flower's own SecAgg+, for Message-API server code.

:func:`secure_sum` asks a set of nodes for their updates and gets back **only the sum** of the
updates of the nodes that completed the protocol, plus the list of those nodes. It runs the
four stages of Flower's SecAgg+ protocol (setup, share keys, collect masked vectors, unmask)
by calling the stage methods of :class:`flwr.server.workflow.SecAggPlusWorkflow`; no
cryptography is written here. Devices run Flower's ``secaggplus_mod`` through
:func:`fedrec.client.secure_aggregation.secure_aggregation_mod`.

Glue: where the legacy API fights the Message API
---------------------------------------------------
* **Legacy context and strategy.** The workflow expects a ``LegacyContext`` whose strategy's
  ``configure_fit`` samples clients and whose ``aggregate_fit`` consumes ``FitRes`` objects.
  :func:`secure_sum` builds a private ``LegacyContext`` (fresh state, never the caller's) with
  a small adapter strategy: ``configure_fit`` returns exactly ``nodes`` (placeholder proxies
  that cannot be used to send anything) and ``aggregate_fit`` only captures the unmasked sum.
* **Content.** ``configure_fit`` can only express legacy ``FitIns`` (parameters + scalar
  config), so it returns empty ones and, after the setup stage, each node's instruction is
  replaced by a copy of the caller's ``RecordDict`` ``content``. It reaches the ClientApp's
  ``train`` handler at the collect-masked-vectors stage, next to the protocol's own
  ``secaggplus_configs`` record (a reserved key).
* **Stages are called one by one**, not through ``SecAggPlusWorkflow.__call__``, so that the
  glue sees which nodes are still active after each stage (``included``/``dropped`` and the
  stage at which each node left) and can fix one defect of Flower 1.42: a node that drops
  during *setup* or *share keys* stays in the workflow's "sampled" set, so at the unmask stage
  the server asks the survivors for key shares of it that they never received (the devices
  fail with ``KeyError``) and tries to remove pairwise masks that were never added. After each
  of those two stages the glue narrows the sampled set and every neighbour set to the nodes
  still active, which is what the SecAgg(+) papers prescribe (only nodes that shared keys can
  be "dead" at unmasking).
* **Replies are screened** before the workflow sums them (an internal proxy around the
  ``Grid``): a reply that lacks the stage's fields, or whose masked vector does not have the
  agreed layout, is replaced by an error reply, so the node counts as dropped (SecAgg+ then
  removes its masks like any dropout) instead of crashing the round or corrupting the sum.
  The proxy also records per-node error reasons and missing replies. It only ever sees what
  the server sees anyway: public keys, encrypted shares, masked vectors, shares of secrets.
* **Array names.** Legacy ``Parameters`` are an unnamed list; the devices send the names and
  shapes of their arrays in the clear (``fedrec.secagg.layout``, a JSON string in the
  ``fitres.metrics`` record), so the sum comes back as a dict with the devices' keys.

Weights, quantization, clipping
-------------------------------
SecAgg+ as shipped computes a *weighted mean*: a device with ``num_examples`` ``e`` scales its
vector by ``round(e / max_weight · Q) / Q`` (``Q = quantization_range``) and the server divides
the unmasked sum by the sum of those factors. Here every device reports ``num_examples = 1``
and the server sets ``max_weight = 1.0``, so every factor is exactly ``Q / Q = 1``; the
workflow then returns ``sum / n`` with ``n`` the number of included nodes, and the glue
multiplies by ``n`` (exact up to one float64 rounding). A reply with another
``num_examples`` is rejected (it would make the result a weighted sum).

Each value ``x`` is clipped to ``[-c, c]`` (``c = clipping_range``) and mapped to
``(x + c) · Q / (2c)``, rounded *stochastically* to an integer (unbiased, error below one
step). One step is ``Δ = 2c / Q`` (``SecAggConfig.quantization_step``), so every entry of the
sum of ``n`` devices is within ``n · Δ`` of the exact sum (:attr:`SecureSumResult.error_bound`),
plus the float32 rounding of the returned arrays. A clipped value would change the sum (and a
clipped noise share the noise it carries), so devices never send one: a device whose vector
exceeds ``±c`` declines with the code ``secure-range`` and :func:`secure_sum` then aborts
before the unmask stage (fedrec sizes ``c`` so that this needs an event of probability at
most 1e-12 per device, :mod:`fedrec.common.privacy.secagg`). Devices send nothing but their arrays:
no statistic of their values rides along in the masked vector. The sum of ``n`` quantized
vectors must stay below ``modulus_range``: ``n · Q < modulus_range`` (1023 devices with the
defaults).

Limits
------
* At least ``SecAggConfig.min_nodes`` (default 3) distinct nodes; with 2 nodes a sum reveals
  the other node's update to each of them. At most ``SecAggConfig.max_nodes``.
* The round fails (:class:`SecureAggregationError`) when a node still in the protocol has fewer
  than ``threshold`` active neighbours (itself included), e.g. with ``num_shares = 1.0`` and
  ``reconstruction_threshold = 0.6``, when more than 40 % of the nodes drop.
* ``timeout=None`` waits for every reply of every stage; a node that vanishes (not one that
  replies with an error) then blocks the round. Set a timeout in deployment.
* Security is SecAgg+'s honest-but-curious model: the server follows the protocol; it learns
  which nodes dropped and the layout (names, shapes) of the updates, nothing else per node.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.common import (
    DisconnectRes,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    GetParametersIns,
    GetParametersRes,
    GetPropertiesIns,
    GetPropertiesRes,
    Parameters,
    ReconnectIns,
    Scalar,
    bytes_to_ndarray,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.server.client_manager import ClientManager, SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import (
    SecAggPlusWorkflow,
    WorkflowState,
)
from flwr.serverapp import Grid

__all__ = [
    "COMPLETE_GRAPH_NODES",
    "neighbourhood_size",
    "SecAggConfig",
    "SecureSumResult",
    "SecureAggregationError",
    "secure_sum",
    "LAYOUT_KEY",
    "DECLINED_PREFIX",
]

log = logging.getLogger("fedrec.server")

#: Wire contract with :mod:`fedrec.client.secure_aggregation` (the two modules may not import
#: each other; a test checks that the constants agree).
LAYOUT_KEY = "fedrec.secagg.layout"
#: Prefix of the error reason of a device that declined to train (e.g. privacy budget spent).
DECLINED_PREFIX = "fedrec.secagg.declined: "
#: The decline code of a device whose noised share exceeded the range (the round aborts).
SECURE_RANGE_CODE = "secure-range"
#: ``max_weight`` sent to devices; with ``num_examples = 1`` every weight factor is exactly 1.
_MAX_WEIGHT = 1.0
_STAGE_FIELDS = {
    Stage.SETUP: (Key.PUBLIC_KEY_1, Key.PUBLIC_KEY_2),
    Stage.SHARE_KEYS: (Key.DESTINATION_LIST, Key.CIPHERTEXT_LIST),
    Stage.COLLECT_MASKED_VECTORS: (Key.MASKED_PARAMETERS,),
    Stage.UNMASK: (Key.NODE_ID_LIST, Key.SHARE_LIST),
}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: Up to this many nodes, every node is every node's neighbour (classic SecAgg).
COMPLETE_GRAPH_NODES = 25


def neighbourhood_size(num_nodes: int) -> int:
    """SecAgg+'s neighbourhood (a node and its neighbours) for a round of ``num_nodes`` nodes.

    Every node up to :data:`COMPLETE_GRAPH_NODES`; beyond, ``2⌈log₂ n⌉ + 1`` (odd, as
    Flower's ring graph needs; 19 for 500 nodes, 41 for a million): the logarithmic degree of
    Bell et al., "Secure single-server aggregation with (poly)logarithmic overhead" (CCS
    2020). Flower's Shamir sharing (pure Python) costs each device time that grows with its
    neighbourhood times the threshold, so a complete graph makes a round cubic in its nodes
    (100 nodes took 3 minutes on 2 cores); a logarithmic one keeps it near-linear. Against the
    honest-but-curious server any neighbourhood of 3 or more hides each input; a larger one
    tolerates more dropouts before the graph of surviving nodes could split (Flower's graph
    is a shuffled ring in which each node links to the ``k - 1`` nearest: splitting it takes
    ``(k - 1) / 2`` consecutive nodes of the ring dropping out together, about ``n · p^9``
    for a dropout rate ``p`` at 500 nodes).
    """
    if num_nodes <= COMPLETE_GRAPH_NODES:
        return num_nodes
    return 2 * math.ceil(math.log2(num_nodes)) + 1


@dataclass(frozen=True)
class SecAggConfig:
    """Parameters of one SecAgg+ secure summation (validated on construction).

    Attributes:
        num_shares: into how many shares each device's secrets are split, i.e. the size of
            each device's neighbourhood (itself included). ``None`` (default):
            :func:`neighbourhood_size` of the round's nodes, every node for up to
            :data:`COMPLETE_GRAPH_NODES` nodes and SecAgg+'s logarithmic sparse graph beyond.
            A float in ``(0, 1]`` is a fraction of the sampled nodes (``1.0``: every node is
            every node's neighbour, classic SecAgg); an int must be odd and at least 3.
        reconstruction_threshold: how many shares rebuild a secret, i.e. how many of a
            device's neighbours must survive. A float in ``(0, 1]`` is a fraction of
            ``num_shares`` (at least 2 after rounding); an int must be at least 2 and below an
            int ``num_shares``. Higher is more private (more colluders needed), lower
            tolerates more dropouts.
        clipping_range: every value is clipped to ``[-clipping_range, clipping_range]`` before
            quantization; choose it above the largest magnitude an update can have (e.g. the
            L2 clipping norm of DP updates), or values are distorted.
        quantization_range: number of quantization levels over ``[-c, c]``; one level is
            ``2 · clipping_range / quantization_range``.
        modulus_range: the ring of the masked arithmetic, a power of 2 above
            ``quantization_range`` and at most ``2**32``; bounds the number of nodes (sum of
            the quantized vectors must not wrap around).
        timeout: seconds to wait for the replies of each stage (``None``: wait for all).
        min_nodes: the fewest distinct nodes :func:`secure_sum` accepts (at least 2).
    """

    num_shares: int | float | None = None
    reconstruction_threshold: int | float = 0.6
    clipping_range: float = 8.0
    quantization_range: int = 2**22
    modulus_range: int = 2**32
    timeout: float | None = None
    min_nodes: int = 3

    def __post_init__(self) -> None:
        shares, threshold = self.num_shares, self.reconstruction_threshold
        if shares is None:
            pass
        elif _is_int(shares):
            if shares < 3 or shares % 2 == 0:  # type: ignore[operator]
                raise ValueError(
                    "an int num_shares must be odd and at least 3 "
                    f"(got {shares}); use 1.0 for all nodes"
                )
        elif isinstance(shares, float):
            if not 0.0 < shares <= 1.0:
                raise ValueError(f"a float num_shares must be in (0, 1], got {shares}")
        else:
            raise TypeError(f"num_shares must be an int or a float, got {shares!r}")
        if _is_int(threshold):
            if threshold < 2:  # type: ignore[operator]
                raise ValueError(f"an int reconstruction_threshold must be >= 2, got {threshold}")
            if _is_int(shares) and threshold >= shares:  # type: ignore[operator]
                raise ValueError(
                    "an int reconstruction_threshold must be below num_shares "
                    f"({threshold} >= {shares})"
                )
        elif isinstance(threshold, float):
            if not 0.0 < threshold <= 1.0:
                raise ValueError(
                    f"a float reconstruction_threshold must be in (0, 1], got {threshold}"
                )
        else:
            raise TypeError(
                f"reconstruction_threshold must be an int or a float, got {threshold!r}"
            )
        if not _is_real(self.clipping_range) or not (
            math.isfinite(self.clipping_range) and self.clipping_range > 0
        ):
            raise ValueError(f"clipping_range must be finite and > 0, got {self.clipping_range}")
        if not _is_int(self.quantization_range) or self.quantization_range < 2:
            raise ValueError(
                f"quantization_range must be an int >= 2, got {self.quantization_range!r}"
            )
        m = self.modulus_range
        if not _is_int(m) or m <= self.quantization_range or m > 2**32 or m & (m - 1):
            raise ValueError(
                "modulus_range must be a power of 2 above quantization_range and "
                f"at most 2**32, got {m!r}"
            )
        if self.timeout is not None and not (_is_real(self.timeout) and self.timeout > 0):
            raise ValueError(f"timeout must be None or > 0, got {self.timeout!r}")
        if not _is_int(self.min_nodes) or self.min_nodes < 2:
            raise ValueError(f"min_nodes must be an int >= 2, got {self.min_nodes!r}")
        if self.max_nodes < self.min_nodes:
            raise ValueError(
                f"modulus_range / quantization_range allows {self.max_nodes} "
                f"nodes, fewer than min_nodes={self.min_nodes}"
            )

    @property
    def quantization_step(self) -> float:
        """One quantization level, ``2 · clipping_range / quantization_range``."""
        return 2.0 * float(self.clipping_range) / self.quantization_range

    @property
    def max_nodes(self) -> int:
        """The most nodes whose quantized vectors sum without wrapping around the modulus."""
        return (self.modulus_range - 1) // self.quantization_range

    def protocol_sizes(self, num_nodes: int) -> tuple[int, int]:
        """``(num_shares, threshold)`` as Flower's setup stage resolves them for ``num_nodes``.

        Args:
            num_nodes: the number of sampled nodes.
        """
        if self.num_shares is None:
            return self.for_nodes(num_nodes).protocol_sizes(num_nodes)
        if isinstance(self.num_shares, float):
            shares = round(self.num_shares * num_nodes)
            if shares < num_nodes and shares % 2 == 0:
                shares += 1
            if shares <= 2:
                shares = num_nodes
        else:
            shares = self.num_shares
        if isinstance(self.reconstruction_threshold, float):
            threshold = max(round(self.reconstruction_threshold * shares), 2)
        else:
            threshold = self.reconstruction_threshold
        return shares, threshold

    def for_nodes(self, num_nodes: int) -> SecAggConfig:
        """These parameters with ``num_shares`` resolved for a round of ``num_nodes`` nodes."""
        if self.num_shares is not None:
            return self
        k = neighbourhood_size(num_nodes)
        return dataclasses.replace(self, num_shares=1.0 if k >= num_nodes else k)

    def workflow(self) -> SecAggPlusWorkflow:
        """Flower's workflow object with these parameters (``max_weight`` fixed to 1.0).

        ``num_shares`` must be resolved first (:meth:`for_nodes`).
        """
        if self.num_shares is None:
            raise ValueError("resolve num_shares for the round first: config.for_nodes(n)")
        return SecAggPlusWorkflow(
            num_shares=self.num_shares,
            reconstruction_threshold=self.reconstruction_threshold,
            max_weight=_MAX_WEIGHT,
            clipping_range=float(self.clipping_range),
            quantization_range=self.quantization_range,
            modulus_range=self.modulus_range,
            timeout=self.timeout,
        )


@dataclass
class SecureSumResult:
    """What :func:`secure_sum` reveals: the sum, who is in it, who is not and why.

    Attributes:
        total: the float32 sum of the included nodes' arrays (dequantized), keyed and shaped
            like the arrays the devices sent.
        included: node ids whose inputs are in ``total`` (sorted).
        dropped: sampled node ids whose inputs are not in ``total`` (sorted).
        drop_reasons: for every dropped node, the stage it left at and why.
        declined: the dropped nodes that declined to train (e.g. privacy budget), a subset of
            ``dropped``.
        num_shares: the resolved number of shares (neighbourhood size).
        threshold: the resolved reconstruction threshold.
        clipping_range: the clipping range used.
        quantization_step: one quantization level ``2 · clipping_range / quantization_range``.
    """

    total: dict[str, np.ndarray]
    included: list[int]
    dropped: list[int]
    drop_reasons: dict[int, str] = field(default_factory=dict)
    declined: list[int] = field(default_factory=list)
    num_shares: int = 0
    threshold: int = 0
    clipping_range: float = 0.0
    quantization_step: float = 0.0

    @property
    def error_bound(self) -> float:
        """Bound on ``|total - exact sum|`` per entry (quantization only).

        Each node's stochastic rounding errs by less than one step, so ``n`` nodes err by less
        than ``n · quantization_step``; the float32 rounding of ``total`` comes on top.
        """
        return len(self.included) * self.quantization_step


class SecureAggregationError(RuntimeError):
    """The protocol could not produce a sum (too many dropouts, malformed setup).

    Attributes:
        stage: the SecAgg+ stage at which it stopped.
        drop_reasons: node id -> reason, for the nodes that had dropped by then.
    """

    def __init__(self, message: str, *, stage: str, drop_reasons: Mapping[int, str]):
        super().__init__(message)
        self.stage = stage
        self.drop_reasons = dict(drop_reasons)


# ---------------------------------------------------------------------------------------------
# Adapters for the legacy API
# ---------------------------------------------------------------------------------------------


class _NodeRef(ClientProxy):
    """A legacy ``ClientProxy`` that only names a node (the workflow sends via the Grid)."""

    def __init__(self, node_id: int):
        super().__init__(str(node_id))
        self.node_id = node_id

    def _unused(self) -> Any:
        raise NotImplementedError("secure_sum talks to nodes through the Grid only")

    def get_properties(
        self, ins: GetPropertiesIns, timeout: float | None, group_id: int | None
    ) -> GetPropertiesRes:
        """Not used (legacy API)."""
        return self._unused()

    def get_parameters(
        self, ins: GetParametersIns, timeout: float | None, group_id: int | None
    ) -> GetParametersRes:
        """Not used (legacy API)."""
        return self._unused()

    def fit(self, ins: FitIns, timeout: float | None, group_id: int | None) -> FitRes:
        """Not used (legacy API)."""
        return self._unused()

    def evaluate(
        self, ins: EvaluateIns, timeout: float | None, group_id: int | None
    ) -> EvaluateRes:
        """Not used (legacy API)."""
        return self._unused()

    def reconnect(
        self, ins: ReconnectIns, timeout: float | None, group_id: int | None
    ) -> DisconnectRes:
        """Not used (legacy API)."""
        return self._unused()


class _SumCapture(Strategy):
    """Legacy strategy: samples exactly the given nodes and captures the unmasked sum."""

    def __init__(self, nodes: Sequence[int]):
        self.nodes = list(nodes)
        self.results: list[tuple[ClientProxy, FitRes]] | None = None

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """No initial parameters."""
        return None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Exactly our nodes, with empty legacy instructions (replaced after setup)."""
        return [
            (_NodeRef(n), FitIns(Parameters(tensors=[], tensor_type=""), {})) for n in self.nodes
        ]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Capture the results (each carries the unmasked aggregate); write nothing back."""
        self.results = list(results)
        return None, {}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list:
        """No evaluation."""
        return []

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list,
        failures: list,
    ) -> tuple[float | None, dict[str, Scalar]]:
        """No evaluation."""
        return None, {}

    def evaluate(
        self,
        server_round: int,
        parameters: Parameters,
    ) -> tuple[float, dict[str, Scalar]] | None:
        """No evaluation."""
        return None


def _short_reason(reason: str, limit: int = 300) -> str:
    """The gist of a device's error reason (Flower wraps exceptions and Ray tracebacks)."""
    match = re.fullmatch(r"<class '([^']*)'>:<'(.*)'>", reason.strip(), flags=re.DOTALL)
    kind, text = (match.group(1), match.group(2)) if match else ("", reason)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = (lines[-1] if lines else text).split("Message: ", 1)[-1]
    if kind and kind.isidentifier():
        text = f"{kind}: {text}"
    return text[:limit]


def _parse_layout(text: object) -> list[tuple[str, tuple[int, ...]]]:
    if not isinstance(text, str):
        raise ValueError("no layout")
    items = json.loads(text)
    layout = [(str(k), tuple(int(d) for d in shape)) for k, shape in items]
    if not layout or len({k for k, _ in layout}) != len(layout):
        raise ValueError("empty layout or duplicate names")
    return layout


class _ScreeningGrid:
    """Grid proxy used inside :func:`secure_sum`: screens replies and records dropouts.

    Everything but ``send_and_receive`` is forwarded to the wrapped grid.
    """

    def __init__(self, grid: Grid, shapes: Mapping[str, tuple[int, ...]] | None):
        self._grid = grid
        self._shapes = (
            None
            if shapes is None
            else [(str(k), tuple(int(d) for d in s)) for k, s in shapes.items()]
        )
        self.drop_reasons: dict[int, str] = {}
        self.declined: set[int] = set()
        self.decline_codes: dict[int, str] = {}
        self.layout: list[tuple[str, tuple[int, ...]]] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        """Send through the wrapped grid; return the replies, malformed ones as errors."""
        messages = list(messages)
        if not messages:
            return []
        stage = str(messages[0].content.config_records[RECORD_KEY_CONFIGS][Key.STAGE])
        by_node = {m.metadata.dst_node_id: m for m in messages}
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        replied = {r.metadata.src_node_id for r in replies}
        for nid in by_node.keys() - replied:
            self.drop_reasons[nid] = f"{stage}: no reply" + (
                f" within {timeout} s" if timeout is not None else ""
            )
        problems: dict[int, str] = {}
        for r in replies:
            nid = r.metadata.src_node_id
            if r.has_error():
                reason = str(r.error.reason)
                self.drop_reasons[nid] = f"{stage}: {_short_reason(reason)}"
                if DECLINED_PREFIX in reason:
                    self.declined.add(nid)
                    self.decline_codes[nid] = reason.split(DECLINED_PREFIX, 1)[1].strip()
                continue
            problem = self._check_fields(stage, r)
            if problem is not None:
                problems[nid] = problem
        if stage == Stage.COLLECT_MASKED_VECTORS:
            problems.update(
                self._check_vectors(
                    [
                        r
                        for r in replies
                        if not r.has_error() and r.metadata.src_node_id not in problems
                    ]
                )
            )
        out: list[Message] = []
        for r in replies:
            nid = r.metadata.src_node_id
            if nid in problems:
                log.warning(
                    "secure_sum: node %s sent a malformed %s reply (%s); dropped",
                    nid,
                    stage,
                    problems[nid],
                )
                self.drop_reasons[nid] = f"{stage}: malformed reply: {problems[nid]}"
                r = Message(
                    Error(code=0, reason=f"malformed reply: {problems[nid]}"), reply_to=by_node[nid]
                )
            out.append(r)
        return out

    @staticmethod
    def _check_fields(stage: str, reply: Message) -> str | None:
        configs = reply.content.config_records.get(RECORD_KEY_CONFIGS)
        if configs is None:
            return f"no '{RECORD_KEY_CONFIGS}' record"
        missing = [k for k in _STAGE_FIELDS.get(stage, ()) if k not in configs]
        return f"missing {missing}" if missing else None

    def _check_vectors(self, replies: list[Message]) -> dict[int, str]:
        """Layout, shapes and weight of every collect-stage reply (the weight must be 1)."""
        layouts: dict[int, list[tuple[str, tuple[int, ...]]]] = {}
        problems: dict[int, str] = {}
        for r in sorted(replies, key=lambda m: m.metadata.src_node_id):
            nid = r.metadata.src_node_id
            content = r.content
            try:
                metrics = content.config_records["fitres.metrics"]
                layout = _parse_layout(metrics.get(LAYOUT_KEY))
                weight = content.metric_records["fitres.num_examples"]["num_examples"]
                if weight != 1:
                    raise ValueError(f"num_examples is {weight}, not 1")
                masked = cast(
                    list[bytes], content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]
                )
                shapes = [bytes_to_ndarray(b).shape for b in masked]
                want = [(1,), *(s for _, s in layout)]
                if shapes != want:
                    raise ValueError(f"masked vector shapes {shapes} do not match the layout")
                layouts[nid] = layout
            except Exception as exc:  # noqa: BLE001 - any defect drops the node
                problems[nid] = f"{type(exc).__name__}: {exc}"
        expected = self._shapes or self.layout
        if expected is None and layouts:
            counts = Counter(json.dumps(v) for v in layouts.values())
            top = counts.most_common(1)[0][0]
            expected = next(v for v in layouts.values() if json.dumps(v) == top)
        for nid, layout in layouts.items():
            if layout != expected:
                problems[nid] = f"layout {layout} differs from {expected}"
        self.layout = expected
        return problems


# ---------------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------------


def _narrow_to_active(state: WorkflowState) -> None:
    """Forget nodes that dropped before sharing keys (see the module docstring)."""
    active = set(state.active_node_ids)
    state.sampled_node_ids = set(active)
    state.nid_to_neighbours = {
        nid: neighbours & active
        for nid, neighbours in state.nid_to_neighbours.items()
        if nid in active
    }


def _checked_protocol_sizes(
    config: SecAggConfig, node_ids: list[int], content: RecordDict
) -> tuple[int, int]:
    """``(num_shares, threshold)`` for ``node_ids``; ``ValueError`` on bad arguments."""
    if len(node_ids) < config.min_nodes:
        raise ValueError(
            f"secure_sum needs at least {config.min_nodes} distinct nodes, got {len(node_ids)}"
        )
    if len(node_ids) > config.max_nodes:
        raise ValueError(
            f"{len(node_ids)} nodes would overflow modulus_range "
            f"(at most {config.max_nodes} with these ranges)"
        )
    if RECORD_KEY_CONFIGS in content:
        raise ValueError(f"the record name {RECORD_KEY_CONFIGS!r} is reserved for SecAgg+")
    num_shares, threshold = config.protocol_sizes(len(node_ids))
    if threshold > min(num_shares, len(node_ids)):
        raise ValueError(
            f"threshold {threshold} exceeds the neighbourhood size "
            f"{min(num_shares, len(node_ids))} for {len(node_ids)} nodes"
        )
    return num_shares, threshold


def _legacy_context(node_ids: list[int], group_id: str | int) -> tuple[LegacyContext, _SumCapture]:
    """A private ``LegacyContext`` whose strategy samples ``node_ids`` and captures the sum."""
    strategy = _SumCapture(node_ids)
    client_manager = SimpleClientManager()  # only for the workflow's log line
    for nid in node_ids:
        client_manager.register(_NodeRef(nid))
    context = LegacyContext(
        Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}),
        strategy=strategy,
        client_manager=client_manager,
    )
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
        {WorkflowKey.CURRENT_ROUND: group_id}
    )
    context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
    return context, strategy


def _halted(
    stage: str, why: str, *, screen: _ScreeningGrid, node_ids: list[int], threshold: int
) -> SecureAggregationError:
    """The error of a round that stops at ``stage``, with the sampled nodes' drop reasons."""
    reasons = {n: r for n, r in screen.drop_reasons.items() if n in node_ids}
    return SecureAggregationError(
        f"secure aggregation halted at stage {stage!r}: {why} "
        f"({len(reasons)} of {len(node_ids)} nodes failed at some stage, "
        f"threshold {threshold})",
        stage=stage,
        drop_reasons=reasons,
    )


def _mask_and_collect(
    workflow: SecAggPlusWorkflow,
    screen: _ScreeningGrid,
    context: LegacyContext,
    state: WorkflowState,
    content: RecordDict,
    fail: Callable[[str, str], SecureAggregationError],
) -> None:
    """Run the setup, share-keys and collect-masked-vectors stages.

    Each node's instruction becomes a copy of ``content`` after setup; a stage that cannot go
    on raises ``fail(stage, why)``.
    """
    proxy = cast(Grid, screen)
    if not workflow.setup_stage(proxy, context, state):
        raise fail(Stage.SETUP, "too few nodes replied with public keys")
    _narrow_to_active(state)
    for nid in state.nid_to_fitins:
        state.nid_to_fitins[nid] = RecordDict(dict(content.items()))
    if not workflow.share_keys_stage(proxy, context, state):
        raise fail(Stage.SHARE_KEYS, "too few nodes shared their keys")
    _narrow_to_active(state)
    collected = workflow.collect_masked_vectors_stage(proxy, context, state)
    out_of_range = sorted(
        n for n, code in screen.decline_codes.items() if code.startswith(SECURE_RANGE_CODE)
    )
    if out_of_range:
        raise fail(
            Stage.COLLECT_MASKED_VECTORS,
            f"{len(out_of_range)} device(s) declined because their noised share "
            "exceeded the clipping range; not unmasking a sum whose noise would differ "
            "from the accounted noise",
        )
    if not collected:
        raise fail(Stage.COLLECT_MASKED_VECTORS, "too few masked vectors")


def _unmasked_total(
    results: list[tuple[ClientProxy, FitRes]],
    layout: list[tuple[str, tuple[int, ...]]] | None,
    n: int,
) -> dict[str, np.ndarray]:
    """The float32 sum of ``n`` included nodes, keyed and shaped by the agreed ``layout``."""
    assert layout is not None  # set by the collect stage's screening
    vectors = parameters_to_ndarrays(results[0][1].parameters)
    # The workflow divided by the sum of the weight factors, n · Q / Q = n: undo it.
    totals = [np.asarray(v, dtype=np.float64) * n for v in vectors]
    return {
        name: totals[i].reshape(shape).astype(np.float32) for i, (name, shape) in enumerate(layout)
    }


def secure_sum(
    grid: Grid,
    nodes: Sequence[int],
    content: RecordDict,
    *,
    config: SecAggConfig | None = None,
    group_id: str | int,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    min_included: int | None = None,
) -> SecureSumResult:
    """Securely sum the updates of ``nodes``: the server learns only the sum and who is in it.

    Runs Flower's SecAgg+ over ``grid``. Each node receives ``content`` as a ``train`` message
    at the collect-masked-vectors stage; its ClientApp must run
    :func:`fedrec.client.secure_aggregation.secure_aggregation_mod` and reply with its
    arrays. Nodes that fail, decline, time out or send malformed replies are dropped and the
    sum covers the others, as long as enough of them remain (see :class:`SecAggConfig`).

    Args:
        grid: the ServerApp's grid.
        nodes: the node ids to ask (duplicates are ignored).
        content: what the devices' ``train`` handler receives (e.g. ``arrays`` and ``config``);
            the record name ``secaggplus_configs`` is reserved.
        config: the SecAgg+ parameters (default: :class:`SecAggConfig` defaults).
        group_id: the message group of this round (e.g. the server round).
        shapes: the expected names and shapes of the devices' arrays; replies that differ are
            dropped. Without it, the layout most devices agree on is used.
        min_included: abort *before the unmask stage* (so the server never learns the sum)
            when fewer masked vectors than this were collected; e.g. distributed DP, whose
            sum carries the full noise only with enough noise shares in it.

    Returns:
        The dequantized float32 sum and the included / dropped nodes.

    Raises:
        ValueError: bad arguments (too few or too many nodes, a reserved record name).
        SecureAggregationError: too many nodes dropped for the protocol to finish.
    """
    node_ids = list(dict.fromkeys(int(n) for n in nodes))
    config = (config or SecAggConfig()).for_nodes(len(node_ids))
    num_shares, threshold = _checked_protocol_sizes(config, node_ids, content)
    workflow = config.workflow()
    context, strategy = _legacy_context(node_ids, group_id)
    state = WorkflowState()
    screen = _ScreeningGrid(grid, shapes)
    proxy = cast(Grid, screen)
    fail = functools.partial(_halted, screen=screen, node_ids=node_ids, threshold=threshold)
    _mask_and_collect(workflow, screen, context, state, content, fail)
    included = sorted(state.active_node_ids)
    if min_included is not None and len(included) < min_included:
        raise fail(
            Stage.COLLECT_MASKED_VECTORS,
            f"{len(included)} masked vectors, fewer than the {min_included} required; "
            "not unmasking",
        )
    if not workflow.unmask_stage(proxy, context, state) or strategy.results is None:
        raise fail(Stage.UNMASK, "too few key shares to remove the masks")
    results = strategy.results
    if sorted(p.node_id for p, _ in results) != included:
        raise fail(Stage.UNMASK, "the workflow's results do not match the included nodes")
    dropped = sorted(set(node_ids) - set(included))
    return SecureSumResult(
        total=_unmasked_total(results, screen.layout, len(included)),
        included=included,
        dropped=dropped,
        drop_reasons={nid: screen.drop_reasons.get(nid, "dropped") for nid in dropped},
        declined=sorted(screen.declined & set(dropped)),
        num_shares=num_shares,
        threshold=threshold,
        clipping_range=float(config.clipping_range),
        quantization_step=config.quantization_step,
    )
