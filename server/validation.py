"""Validation of what devices send: every field of every reply, before anything is used.

One path for both transports (Flower messages become :class:`~fedrec.server.coordinator.Reply`
objects without any checking of their own; devices called in-process return them directly):

* :func:`check_reply` sorts a training reply into ``good``, ``refused`` or ``dropped`` (with
  the reason) from :class:`ReplyRules`: who may answer (sampled, once), what a contribution
  is (exactly the expected arrays, float32, finite, norm at most the round's bound), its
  example count, and its metrics (names, finite numbers of sane magnitude; a device's
  ``epsilon`` in ``[0, budget]``).
* :func:`validate_delta` checks arrays against a reference (also a secure sum's total).
* :func:`check_included` checks who a secure sum says it holds.
* :func:`check_evaluation` checks an evaluation reply's metric sums.

Nothing here raises on a malformed reply, whatever its types: a reason is returned instead.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "ReplyRules",
    "check_reply",
    "validate_delta",
    "check_included",
    "check_evaluation",
    "MAX_METRICS",
    "MAX_METRIC_MAGNITUDE",
    "MAX_EXAMPLES",
]

#: A reply carries at most this many metrics, each named by a short string.
MAX_METRICS = 32
#: No metric an honest device sends comes near this magnitude.
MAX_METRIC_MAGNITUDE = 1e12
#: The most examples a reply may claim (a device's interactions; far above any real one).
MAX_EXAMPLES = 1e9
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-@.")


@dataclass(frozen=True)
class ReplyRules:
    """What the replies of one training round must be.

    Attributes:
        reference: the arrays a contribution must match (names, shapes; float32).
        max_norm: the largest L2 norm of an honest contribution.
        sampled: the nodes asked this round (``None``: any node may answer, once).
        epsilon_limit: the largest ``epsilon`` metric a device may report (its budget);
            ``None``: replies of this run carry no ``epsilon``.
    """

    reference: Mapping[str, np.ndarray]
    max_norm: float
    sampled: frozenset[int] | None = None
    epsilon_limit: float | None = None


def _finite(value: object) -> float | None:
    """``value`` as a finite float, or ``None`` (not a real number, a bool, NaN, inf, huge)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        number = float(value)
    except (OverflowError, ValueError, TypeError):
        return None
    return number if math.isfinite(number) else None


def _node(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def check_reply(reply: Any, rules: ReplyRules, seen: set[int]) -> tuple[str, str]:
    """``("good", "")``, ``("refused", code)`` or ``("dropped", why)`` for one reply.

    ``seen`` holds the nodes whose reply was already taken this round; a good or refused
    reply adds its node (a node answers once: a later reply from it is dropped).
    """
    from fedrec.server.coordinator import Reply

    if not isinstance(reply, Reply):
        return "dropped", f"not a reply ({type(reply).__name__})"
    node = _node(reply.node)
    if node is None:
        return "dropped", f"node id {_short(reply.node)} is not an integer"
    if rules.sampled is not None and node not in rules.sampled:
        return "dropped", f"node {node} was not asked this round"
    if node in seen:
        return "dropped", f"node {node} already replied this round"
    try:
        why = _check_kind(reply)
        if why is None and reply.refusal is None:
            why = (
                validate_delta(reply.arrays, rules.reference, max_norm=rules.max_norm)
                or _check_examples(reply.num_examples)
                or _check_metrics(reply.metrics, rules.epsilon_limit)
            )
    except Exception as exc:  # a hostile object (a raising __getitem__, ...)  # noqa: BLE001
        why = f"unreadable reply ({type(exc).__name__})"
    if why is not None:
        return "dropped", why
    seen.add(node)
    if reply.refusal is not None:
        return "refused", str(reply.refusal)
    return "good", ""


def _check_kind(reply: Any) -> str | None:
    """Exactly one of a contribution, a refusal (with a known code) or an error."""
    from fedrec.common.privacy.policy import RefusalCode

    if reply.error is not None:
        return f"error: {_short(reply.error, 200)}"
    if reply.refusal is not None:
        if reply.arrays is not None:
            return "a reply carries both a contribution and a refusal"
        if not isinstance(reply.refusal, str) or reply.refusal not in set(map(str, RefusalCode)):
            return f"unknown refusal code {_short(reply.refusal)}"
        return None
    if reply.arrays is None:
        return "reply carries no contribution"
    return None


def _check_examples(value: object) -> str | None:
    number = _finite(value)
    if number is None or not 1 <= number <= MAX_EXAMPLES:
        return f"example count {_short(value)} is not a number in [1, {MAX_EXAMPLES:g}]"
    return None


def _check_metrics(metrics: object, epsilon_limit: float | None) -> str | None:
    if not isinstance(metrics, Mapping):
        return f"metrics are not a mapping ({type(metrics).__name__})"
    if len(metrics) > MAX_METRICS:
        return f"{len(metrics)} metrics, more than {MAX_METRICS}"
    for name, value in metrics.items():
        if not isinstance(name, str) or not 0 < len(name) <= 64 or set(name) - _NAME_CHARS:
            return f"metric name {_short(name)} is not a short lower-case name"
        number = _finite(value)
        if number is None:
            return f"metric {name!r} = {_short(value)} is not a finite number"
        if abs(number) > MAX_METRIC_MAGNITUDE:
            return f"metric {name!r} = {number:g} is out of range"
    if "epsilon" in metrics:
        eps = float(metrics["epsilon"])
        if epsilon_limit is None:
            return "an epsilon metric in a run whose devices account no epsilon"
        if not 0 <= eps <= epsilon_limit:
            return f"epsilon {eps:g} outside [0, {epsilon_limit:g}] (the devices' budget)"
    return None


def _short(value: object, limit: int = 60) -> str:
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__ must not break the server  # noqa: BLE001
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate_delta(
    delta: object, reference: Mapping[str, np.ndarray], *, max_norm: float
) -> str | None:
    """Why a reply's delta is unacceptable, or ``None`` if it is fine.

    Checks: a mapping of exactly the expected keys, each value a numpy array of the expected
    shape and dtype (float32), every value finite, and the global L2 norm at most
    ``max_norm``.
    """
    if not isinstance(delta, Mapping):
        return f"arrays are not a mapping ({type(delta).__name__})"
    keys = list(delta)
    if len(keys) != len(reference) or set(keys) != set(reference):
        found = _short(sorted(map(str, keys)), 200)
        return f"keys {found} differ from the expected {sorted(reference)}"
    sq = 0.0
    for key, ref in reference.items():
        arr = delta[key]
        if not isinstance(arr, np.ndarray):
            return f"{key}: not an array ({type(arr).__name__})"
        if arr.shape != ref.shape:
            return f"{key}: shape {arr.shape}, expected {ref.shape}"
        if arr.dtype != np.float32:
            return f"{key}: dtype {arr.dtype}, expected float32"
        if not np.isfinite(arr).all():
            return f"{key}: contains NaN or infinite values"
        sq += float(np.square(arr, dtype=np.float64).sum())
    norm = sq**0.5
    if not norm <= max_norm:
        return f"update norm {norm:.4g} exceeds the limit {max_norm:g}"
    return None


def check_included(included: Sequence[object], sampled: Collection[int] | None) -> str | None:
    """Why a secure sum's list of included nodes is unacceptable (unknown, repeated), or None."""
    nodes = [_node(n) for n in included]
    if any(n is None for n in nodes):
        return "a node id in the sum is not an integer"
    if len(set(nodes)) != len(nodes):
        return "the sum counts a node twice"
    if sampled is not None and not set(nodes) <= set(sampled):
        return "the sum includes nodes that were not asked this round"
    return None


def check_evaluation(sums: object, keys: Collection[str], *, bound: float) -> str | None:
    """Why an evaluation reply's metric sums are unacceptable, or ``None``.

    Exactly the expected ``keys``, each a finite number of magnitude at most ``bound``
    (a user's metric lies in [0, 1]; ``bound`` leaves room for the noise of a DP release).
    """
    if not isinstance(sums, Mapping):
        return f"evaluation sums are not a mapping ({type(sums).__name__})"
    if set(sums) != set(keys):
        return f"evaluation keys {_short(sorted(map(str, sums)), 200)} are not the expected ones"
    for name, value in sums.items():
        number = _finite(value)
        if number is None:
            return f"evaluation sum {name!r} = {_short(value)} is not a finite number"
        if abs(number) > bound:
            return f"evaluation sum {name!r} = {number:g} exceeds {bound:g}"
    return None
