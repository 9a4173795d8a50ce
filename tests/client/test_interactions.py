import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.client.interactions import (
    Event,
    EventKind,
    WeightPolicy,
    item_signals,
    weights_from_events,
)


def test_kinds_are_normalised_and_validated():
    e = Event("purchase", "a", 10.0)
    assert e.kind is EventKind.PURCHASE and e.kind_value == "purchase"
    assert Event(EventKind.CLICK, "a", 1).timestamp == 1.0
    with pytest.raises(ValueError, match="unknown event kind 'bogus'.*purchase"):
        Event("bogus", "a", 1.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            dict(kind="view", item_id="a", timestamp=1.0, value=-3.0),
            "dwell time cannot be negative",
        ),
        (dict(kind="view", item_id="a", timestamp=1.0), "needs value= dwell seconds"),
        (dict(kind="rating", item_id="a", timestamp=1.0), "needs value= the rating"),
        (dict(kind="click", item_id="a", timestamp=math.nan), "timestamp must be finite"),
        (dict(kind="click", item_id="a", timestamp=-1.0), "timestamp must be seconds"),
        (dict(kind="rating", item_id="a", timestamp=1.0, value=math.nan), "value must be finite"),
        (dict(kind="click", item_id="", timestamp=1.0), "non-empty string"),
        (dict(kind="click", item_id=3, timestamp=1.0), "non-empty string"),
        (dict(kind="click", item_id="a", timestamp=1.0, context={"x": object()}), "JSON"),
        (dict(kind="click", item_id="a", timestamp=1.0, context={1: "x"}), "string keys"),
    ],
)
def test_invalid_events_are_refused_with_a_reason(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Event(**kwargs)


def test_events_are_frozen_and_hashable_with_context():
    e = Event("click", "a", 1.0, context={"screen": "home"})
    with pytest.raises(AttributeError):
        e.item_id = "b"  # type: ignore[misc]
    assert hash(e) == hash(Event("click", "a", 1.0, context={"screen": "other"}))
    assert e != Event("click", "a", 1.0, context={"screen": "other"})
    assert e.to_dict() == {
        "kind": "click",
        "item_id": "a",
        "timestamp": 1.0,
        "value": None,
        "context": {"screen": "home"},
    }


def test_default_mapping_matches_the_documented_table():
    p = WeightPolicy()
    events = [
        Event("purchase", "bought", 1),
        Event("add_to_cart", "cart", 1),
        Event("click", "clicked", 1),
        Event("view", "long", 1, value=120),
        Event("view", "half", 1, value=30),
        Event("view", "glance", 1, value=2),
        Event("rating", "loved", 1, value=5),
        Event("rating", "meh", 1, value=2),
        Event("skip", "skipped", 1),
        Event("impression", "shown", 1),
        Event("impression", "shown", 2),
        Event("like", "liked", 1),
        Event("dislike", "disliked", 1),
        Event("share", "shared", 1),
    ]
    pos, exp = weights_from_events(events, p)
    assert pos == pytest.approx(
        {
            "bought": 1.0,
            "cart": 0.7,
            "clicked": 0.5,
            "long": 0.6,
            "half": 0.3,
            "loved": 1.0,
            "liked": 0.8,
            "shared": 0.8,
        }
    )
    # exposure-only, skipped, glanced and negatively rated items are not positives
    for item in ("shown", "skipped", "glance", "meh", "disliked"):
        assert item not in pos
    assert exp == {"shown": 2}  # kept as exposure, told apart from preference


def test_weight_is_the_max_of_implicit_signals_and_explicit_feedback_decides():
    p = WeightPolicy()
    sig = item_signals(
        [Event("click", "a", 1), Event("click", "a", 2), Event("add_to_cart", "a", 3)], p
    )["a"]
    assert sig.weight == pytest.approx(0.7) and sig.actions == 3
    # a later low rating overrides a purchase; a later high rating restores it
    events = [Event("purchase", "a", 1), Event("rating", "a", 2, value=1)]
    assert item_signals(events, p)["a"].weight == 0.0
    assert item_signals(events, p)["a"].negative
    events.append(Event("rating", "a", 3, value=5))
    assert item_signals(events, p)["a"].weight == 1.0
    # order of arrival does not matter, only timestamps
    assert item_signals(list(reversed(events)), p)["a"].weight == 1.0
    # a skip does not erase a purchase
    assert item_signals([Event("purchase", "a", 1), Event("skip", "a", 2)], p)["a"].weight == 1
    skipped = item_signals([Event("impression", "b", 1), Event("skip", "b", 2)], p)["b"]
    assert skipped.negative and skipped.weight == 0 and skipped.seen and skipped.exposures == 1


def test_policy_is_configurable_and_validated():
    p = WeightPolicy(click=0.9, rating_threshold=3)
    pos, _ = weights_from_events([Event("click", "a", 1), Event("rating", "b", 1, value=3)], p)
    assert pos == {"a": 0.9, "b": 1.0}
    with pytest.raises(ValueError, match=r"click must lie in \[0, 1\]"):
        WeightPolicy(click=2.0)
    with pytest.raises(ValueError, match="full_dwell_seconds"):
        WeightPolicy(full_dwell_seconds=0)


kinds = st.sampled_from([k.value for k in EventKind])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(kinds, st.sampled_from("abc"), st.floats(0, 1e6), st.floats(0, 1000)), max_size=30
    )
)
def test_weights_always_lie_in_unit_interval(rows):
    events = [Event(k, i, t, v if k in ("view", "rating") else None) for k, i, t, v in rows]
    pos, exp = weights_from_events(events)
    assert all(0 < w <= 1 for w in pos.values())
    assert sum(exp.values()) == sum(1 for k, *_ in rows if k == "impression")
