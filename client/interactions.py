"""Typed interaction events an app records, and the documented mapping to training weights.

An app records what happened on screen as :class:`Event` values: an ``impression`` (the item
was shown), a ``click``, a ``view`` with its dwell time in seconds, an explicit ``rating``, an
``add_to_cart``, a ``purchase``, a ``skip``, a ``like``, a ``dislike`` or a ``share``. Events
are data: frozen, validated at construction, JSON-friendly.

:class:`WeightPolicy` turns one item's events into a *training weight* in ``[0, 1]`` (how sure
we are the user likes the item) and an *exposure count* (how often it was shown). The default
mapping, per item:

============== =====================================================================
event          contribution
============== =====================================================================
purchase       1.0
add_to_cart    0.7
like, share    0.8
rating ``r``   ``r >= rating_threshold`` (4 on a 1-5 scale): 1.0; below: an explicit
               negative (weight 0, overrides the implicit signals recorded before it)
dislike        explicit negative, as a low rating
view           ``view_weight * min(1, dwell / full_dwell_seconds)`` (0.6 × dwell/60 s),
               0 under ``min_dwell_seconds`` (5 s): a glance is not interest
click          0.5
skip           0 (a negative exposure; it does not erase a purchase)
impression     0 (exposure only)
============== =====================================================================

An item's weight is the **largest** contribution of its implicit events (a second click is
not more evidence than the first), unless the **latest explicit** feedback (rating, like,
dislike) says otherwise: a positive explicit signal raises the weight to at least its own, a
negative one sets it to 0. Impressions and skips never make an item positive; they are kept
and counted as exposures, so that exposure (the item was shown) can be told from preference
(the user acted on it).

All events of one item merge into **one** training example. That is the unit example-level
DP protects: one (user, item) interaction with everything recorded about it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

__all__ = [
    "EventKind",
    "Event",
    "WeightPolicy",
    "ItemSignal",
    "item_signals",
    "weights_from_events",
]


class EventKind(str, Enum):
    """The kinds of event the SDK understands (the string value is what is stored)."""

    IMPRESSION = "impression"
    CLICK = "click"
    VIEW = "view"
    RATING = "rating"
    ADD_TO_CART = "add_to_cart"
    PURCHASE = "purchase"
    SKIP = "skip"
    LIKE = "like"
    DISLIKE = "dislike"
    SHARE = "share"

    def __str__(self) -> str:
        return self.value


_KINDS = tuple(k.value for k in EventKind)
#: Kinds whose ``value`` is required (dwell seconds for a view, the rating for a rating).
_VALUE_REQUIRED = {EventKind.VIEW: "dwell seconds", EventKind.RATING: "the rating"}
#: Kinds that are feedback the user gave explicitly (the latest one decides).
_EXPLICIT = (EventKind.RATING, EventKind.LIKE, EventKind.DISLIKE)


@dataclass(frozen=True)
class Event:
    """One thing that happened between the user and an item.

    Attributes:
        kind: an :class:`EventKind` or its string value (``"view"``, ``"purchase"`` …).
        item_id: the catalog's id of the item (a non-empty string).
        timestamp: when it happened, seconds since the Unix epoch (finite, >= 0).
        value: dwell seconds for ``view`` and the rating for ``rating`` (both required);
            optional and finite for the other kinds (e.g. a purchase's quantity); ignored by
            the default weights.
        context: optional JSON-serialisable dict (screen, position, …). It stays on the
            device like every event.

    Raises:
        ValueError: unknown kind, empty item id, a non-finite or negative timestamp, a NaN or
            infinite value, a missing or negative dwell, a missing rating, a context that is not
            a JSON-serialisable dict with string keys.
    """

    kind: EventKind | str
    item_id: str
    timestamp: float
    value: float | None = None
    context: dict[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        kind = self.kind
        if not isinstance(kind, EventKind):
            try:
                kind = EventKind(str(kind))
            except ValueError:
                raise ValueError(
                    f"unknown event kind {self.kind!r}; the SDK understands {list(_KINDS)}. "
                    "Map your app's events onto one of these."
                ) from None
        object.__setattr__(self, "kind", kind)
        if not isinstance(self.item_id, str) or not self.item_id:
            raise ValueError(
                f"item_id must be a non-empty string (the catalog's id), got {self.item_id!r}"
            )
        ts = _number("timestamp", self.timestamp)
        if ts < 0:
            raise ValueError(f"timestamp must be seconds since the epoch (>= 0), got {ts}")
        object.__setattr__(self, "timestamp", ts)
        if self.value is None:
            if kind in _VALUE_REQUIRED:
                raise ValueError(
                    f"a {kind.value!r} event needs value= {_VALUE_REQUIRED[kind]} "
                    f"(item {self.item_id!r})"
                )
        else:
            value = _number("value", self.value)
            if kind is EventKind.VIEW and value < 0:
                raise ValueError(
                    f"a view's dwell time cannot be negative, got {value} s (item "
                    f"{self.item_id!r}); record 0 for a view without dwell"
                )
            object.__setattr__(self, "value", value)
        if self.context is not None:
            if not isinstance(self.context, Mapping) or not all(
                isinstance(k, str) for k in self.context
            ):
                raise ValueError("context must be a dict with string keys, or None")
            try:
                json.dumps(self.context, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise ValueError(
                    f"context must be JSON-serialisable (it is stored as JSON): {exc}"
                ) from None
            object.__setattr__(self, "context", dict(self.context))

    def to_dict(self) -> dict[str, Any]:
        """The event as a JSON-friendly dict (``kind`` as its string value)."""
        out = asdict(self)
        out["kind"] = self.kind_value
        return out

    @property
    def kind_value(self) -> str:
        """The kind's string value."""
        return self.kind.value if isinstance(self.kind, EventKind) else str(self.kind)


def _number(name: str, value: object) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got a bool")
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite (not NaN or infinite), got {value!r}")
    return out


@dataclass(frozen=True)
class WeightPolicy:
    """How events become training weights (see the module docstring for the table).

    Attributes:
        purchase: weight of a purchase.
        add_to_cart: weight of an add-to-cart.
        like: weight of a like (explicit positive).
        share: weight of a share.
        click: weight of a click.
        view_weight: weight of a view with at least ``full_dwell_seconds`` of dwell.
        full_dwell_seconds: dwell at which a view reaches ``view_weight``.
        min_dwell_seconds: views shorter than this weigh 0.
        rating_threshold: ratings at or above it are positive, below it negative.
        rating_weight: weight of a positive rating.
        min_training_weight: items whose weight reaches this are the positives the device
            trains on (the local trainer takes unweighted positives).
    """

    purchase: float = 1.0
    add_to_cart: float = 0.7
    like: float = 0.8
    share: float = 0.8
    click: float = 0.5
    view_weight: float = 0.6
    full_dwell_seconds: float = 60.0
    min_dwell_seconds: float = 5.0
    rating_threshold: float = 4.0
    rating_weight: float = 1.0
    min_training_weight: float = 0.5

    def __post_init__(self) -> None:
        for name in (
            "purchase",
            "add_to_cart",
            "like",
            "share",
            "click",
            "view_weight",
            "rating_weight",
            "min_training_weight",
        ):
            w = _number(name, getattr(self, name))
            if not 0.0 <= w <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1] (a training weight), got {w}")
        if _number("full_dwell_seconds", self.full_dwell_seconds) <= 0:
            raise ValueError("full_dwell_seconds must be positive")
        if _number("min_dwell_seconds", self.min_dwell_seconds) < 0:
            raise ValueError("min_dwell_seconds must be >= 0")
        _number("rating_threshold", self.rating_threshold)

    def implicit_weight(self, event: Event) -> float:
        """Weight of one implicit event (0 for exposures, skips and explicit feedback)."""
        kind = event.kind
        if kind is EventKind.PURCHASE:
            return self.purchase
        if kind is EventKind.ADD_TO_CART:
            return self.add_to_cart
        if kind is EventKind.SHARE:
            return self.share
        if kind is EventKind.CLICK:
            return self.click
        if kind is EventKind.VIEW:
            dwell = float(event.value or 0.0)
            if dwell < self.min_dwell_seconds:
                return 0.0
            return self.view_weight * min(1.0, dwell / self.full_dwell_seconds)
        return 0.0

    def explicit_weight(self, event: Event) -> float | None:
        """Weight set by explicit feedback: a weight, 0 for a negative, None if not explicit."""
        kind = event.kind
        if kind is EventKind.RATING:
            return self.rating_weight if float(event.value) >= self.rating_threshold else 0.0  # type: ignore[arg-type]
        if kind is EventKind.LIKE:
            return self.like
        if kind is EventKind.DISLIKE:
            return 0.0
        return None

    def to_dict(self) -> dict[str, float]:
        """The policy as a plain dict."""
        return asdict(self)


@dataclass
class ItemSignal:
    """Everything the events say about one item.

    Attributes:
        weight: training weight in ``[0, 1]`` (0: not a positive).
        exposures: how many impressions were recorded.
        actions: how many non-impression events were recorded.
        negative: the latest explicit feedback was negative, or the item was skipped and never
            acted on positively.
        last_timestamp: time of the latest event of any kind.
        last_action: time of the latest non-impression event (None: exposure only).
    """

    weight: float = 0.0
    exposures: int = 0
    actions: int = 0
    negative: bool = False
    last_timestamp: float = -math.inf
    last_action: float | None = None
    _implicit: float = 0.0
    _explicit: float | None = None
    _explicit_time: float = -math.inf
    _skipped: bool = False

    def add(self, event: Event, policy: WeightPolicy) -> None:
        """Fold one more event into the signal (events may come in any order)."""
        ts = float(event.timestamp)
        self.last_timestamp = max(self.last_timestamp, ts)
        if event.kind is EventKind.IMPRESSION:
            self.exposures += 1
        else:
            self.actions += 1
            self.last_action = ts if self.last_action is None else max(self.last_action, ts)
        if event.kind is EventKind.SKIP:
            self._skipped = True
        self._implicit = max(self._implicit, policy.implicit_weight(event))
        explicit = policy.explicit_weight(event)
        if explicit is not None and ts >= self._explicit_time:
            self._explicit, self._explicit_time = explicit, ts
        self._settle()

    def _settle(self) -> None:
        if self._explicit is None:
            self.weight = self._implicit
            self.negative = self._skipped and self._implicit == 0.0
        elif self._explicit == 0.0:
            self.weight, self.negative = 0.0, True
        else:
            self.weight, self.negative = max(self._implicit, self._explicit), False

    @property
    def seen(self) -> bool:
        """The user acted on the item (any event other than an impression)."""
        return self.actions > 0


def item_signals(
    events: Iterable[Event], policy: WeightPolicy | None = None
) -> dict[str, ItemSignal]:
    """Fold events into one :class:`ItemSignal` per item id (order of events is irrelevant)."""
    policy = policy if policy is not None else WeightPolicy()
    out: dict[str, ItemSignal] = {}
    for event in events:
        sig = out.get(event.item_id)
        if sig is None:
            sig = out[event.item_id] = ItemSignal()
        sig.add(event, policy)
    return out


def weights_from_events(
    events: Iterable[Event], policy: WeightPolicy | None = None
) -> tuple[dict[str, float], dict[str, int]]:
    """Positives with their weights, and exposures, per item.

    Returns:
        ``(positives, exposures)``: ``positives`` maps each item with a weight > 0 to it;
        ``exposures`` maps every item that was shown to its impression count, including the
        items with no action at all (exposure-only), which never appear in ``positives``.
    """
    signals = item_signals(events, policy)
    positives = {item: s.weight for item, s in signals.items() if s.weight > 0}
    exposures = {item: s.exposures for item, s in signals.items() if s.exposures > 0}
    return positives, exposures
