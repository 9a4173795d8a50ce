from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.common.data.schema import IdMap, Interactions
from fedrec.common.data.splits import (
    Split,
    held_out_counts,
    random_split,
    temporal_split,
    validation_split,
)


def make(users, items, timestamps, n_users=None, n_items=None) -> Interactions:
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    n_users = n_users if n_users is not None else (int(users.max()) + 1 if len(users) else 0)
    n_items = n_items if n_items is not None else (int(items.max()) + 1 if len(items) else 0)
    return Interactions(
        user=users,
        item=items,
        weight=np.ones(len(users), np.float32),
        timestamp=np.asarray(timestamps, dtype=np.int64),
        user_map=IdMap(str(u) for u in range(n_users)),
        item_map=IdMap(str(i) for i in range(n_items)),
    )


def triples(data: Interactions) -> list[tuple[int, int, int]]:
    return sorted(zip(data.user.tolist(), data.item.tolist(), data.timestamp.tolist(), strict=True))


# ----------------------------------------------------------------------------- counts


def test_held_out_counts_default_is_n_div_5():
    n = np.arange(0, 1000)
    expected = np.where(n > 0, np.maximum(1, n // 5), 0)
    np.testing.assert_array_equal(held_out_counts(n), expected)
    np.testing.assert_array_equal(held_out_counts(n, 0.2), expected)


def test_held_out_counts_exact_where_float_product_misrounds():
    # 0.29 * 100 == 28.999999999999996 in floating point; the intended count is 29.
    assert int(np.floor(0.29 * 100)) == 28
    assert held_out_counts(np.array([100]), 0.29)[0] == 29
    # 0.7 * 10 == 7.000000000000001 floors correctly either way, but check anyway.
    assert held_out_counts(np.array([10]), 0.7)[0] == 7


def test_held_out_counts_edges():
    assert held_out_counts(np.array([1, 2, 3]), 0.0).tolist() == [1, 1, 1]
    assert held_out_counts(np.array([1, 2, 3]), 1.0).tolist() == [1, 2, 3]
    with pytest.raises(ValueError):
        held_out_counts(np.array([3]), 1.5)
    with pytest.raises(ValueError):
        held_out_counts(np.array([3]), -0.1)


# ----------------------------------------------------------------------------- temporal


def test_temporal_split_hand_example():
    # user 0: one interaction            -> max(1, 1//5 = 0) = 1 test, 0 train
    # user 1: five, timestamps 5..1      -> 1 test: the latest (t=5, item 0)
    # user 2: ten, all at t=7            -> 2 test: ties on timestamp go by item index,
    #                                       so the two highest item indices (8, 9) are test
    users = [0] + [1] * 5 + [2] * 10
    items = [3] + [0, 1, 2, 3, 4] + [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    ts = [100] + [5, 4, 3, 2, 1] + [7] * 10
    data = make(users, items, ts, n_users=4, n_items=10)  # user 3 has no interaction
    split = temporal_split(data)
    assert isinstance(split, Split)
    assert triples(split.test) == [(0, 3, 100), (1, 0, 5), (2, 8, 7), (2, 9, 7)]
    assert np.bincount(split.train.user, minlength=4).tolist() == [0, 4, 8, 0]
    assert split.train.user_map == data.user_map and split.test.user_map == data.user_map
    assert split.train.item_map == data.item_map and split.test.item_map == data.item_map
    assert split.train.n_users == 4 and split.test.n_users == 4


def test_temporal_split_keeps_input_order_within_halves():
    data = make([0, 0, 0, 0, 0, 0], [5, 4, 3, 2, 1, 0], [6, 5, 4, 3, 2, 1])
    split = temporal_split(data)
    # Train rows appear in input order (items 4, 3, 2, 1, 0); test is the t=6 row.
    assert split.train.item.tolist() == [4, 3, 2, 1, 0]
    assert split.test.item.tolist() == [5]


@st.composite
def interactions(draw):
    n_users = draw(st.integers(1, 6))
    n_items = draw(st.integers(1, 8))
    n = draw(st.integers(0, 60))
    users = draw(st.lists(st.integers(0, n_users - 1), min_size=n, max_size=n))
    items = draw(st.lists(st.integers(0, n_items - 1), min_size=n, max_size=n))
    ts = draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))  # many timestamp ties
    return make(users, items, ts, n_users=n_users, n_items=n_items)


def _check_partition(data: Interactions, split: Split) -> None:
    assert len(split.train) + len(split.test) == len(data)
    assert sorted(triples(split.train) + triples(split.test)) == triples(data)
    n = np.bincount(data.user, minlength=data.n_users)
    n_test = np.bincount(split.test.user, minlength=data.n_users)
    expected = np.array([max(1, k // 5) if k else 0 for k in n.tolist()])
    np.testing.assert_array_equal(n_test, expected)
    # Every user with an interaction keeps appearing in both maps (they are unchanged).
    for half in (split.train, split.test):
        assert half.user_map == data.user_map and half.item_map == data.item_map


@settings(max_examples=200, deadline=None)
@given(interactions())
def test_temporal_split_invariants(data):
    split = temporal_split(data)
    _check_partition(data, split)
    # Test interactions are the last ones by (timestamp, item index): every train key of a
    # user is <= every test key of that user.
    for u in range(data.n_users):
        tr = split.train.subset(split.train.user == u)
        te = split.test.subset(split.test.user == u)
        if len(tr) and len(te):
            assert max(zip(tr.timestamp.tolist(), tr.item.tolist(), strict=True)) <= min(
                zip(te.timestamp.tolist(), te.item.tolist(), strict=True)
            )


@settings(max_examples=100, deadline=None)
@given(interactions(), st.integers(0, 2**32 - 1))
def test_random_split_invariants(data, seed):
    _check_partition(data, random_split(data, seed=seed))


def test_no_test_interaction_in_train_without_duplicates():
    rng = np.random.default_rng(0)
    n_users, n_items = 30, 50
    pairs = rng.choice(n_users * n_items, size=600, replace=False)
    data = make(pairs // n_items, pairs % n_items, rng.integers(0, 1000, 600), n_users, n_items)
    for split in (temporal_split(data), random_split(data, seed=1)):
        train_pairs = set(zip(split.train.user.tolist(), split.train.item.tolist(), strict=True))
        test_pairs = set(zip(split.test.user.tolist(), split.test.item.tolist(), strict=True))
        assert not train_pairs & test_pairs
        assert set(split.test.user.tolist()) == set(data.user.tolist())


# ----------------------------------------------------------------------------- validation


def test_validation_split_applies_the_rule_to_train():
    rng = np.random.default_rng(3)
    data = make(rng.integers(0, 10, 300), rng.integers(0, 40, 300), rng.integers(0, 99, 300))
    split = temporal_split(data)
    val = validation_split(split)
    assert triples(val.train) == triples(temporal_split(split.train).train)
    assert triples(val.test) == triples(temporal_split(split.train).test)
    assert triples(validation_split(split.train).test) == triples(val.test)
    _check_partition(split.train, val)
    # The validation slice lies before the test slice in time, per user.
    for u in range(data.n_users):
        v = val.test.timestamp[val.test.user == u]
        t = split.test.timestamp[split.test.user == u]
        if len(v) and len(t):
            assert v.max() <= t.min()


# ----------------------------------------------------------------------------- random


def test_random_split_seeded_reproducible():
    rng = np.random.default_rng(5)
    data = make(rng.integers(0, 20, 1000), rng.integers(0, 100, 1000), rng.integers(0, 9, 1000))
    a = random_split(data, seed=42)
    b = random_split(data, seed=42)
    c = random_split(data, seed=43)
    np.testing.assert_array_equal(a.test.user, b.test.user)
    np.testing.assert_array_equal(a.test.item, b.test.item)
    np.testing.assert_array_equal(a.test.timestamp, b.test.timestamp)
    assert triples(a.test) != triples(c.test)
    g1 = random_split(data, seed=np.random.default_rng(7))
    g2 = random_split(data, seed=np.random.default_rng(7))
    assert triples(g1.test) == triples(g2.test)


def test_random_split_is_not_temporal():
    # One user, 50 interactions in time order: a random 10 is almost surely not the last 10.
    data = make([0] * 50, list(range(50)), list(range(50)))
    assert triples(random_split(data, seed=0).test) != triples(temporal_split(data).test)


def test_empty_interactions():
    data = make([], [], [], n_users=2, n_items=3)
    for split in (temporal_split(data), random_split(data, seed=0)):
        assert len(split.train) == 0 and len(split.test) == 0
        assert split.train.n_users == 2
