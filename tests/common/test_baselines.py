from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from fedrec.common.data.schema import IdMap, Interactions
from fedrec.common.data.splits import held_out_counts, temporal_split
from fedrec.common.evaluation.metrics import evaluate, evaluate_sampled
from fedrec.common.model.nonpersonalized import MostPopular, RandomRecommender

ML100K = Path(__file__).resolve().parents[2].parent / "shared/datasets/ml-100k"


def make(users, items, n_users, n_items, weights=None) -> Interactions:
    n = len(users)
    return Interactions(
        user=np.asarray(users, dtype=np.int64),
        item=np.asarray(items, dtype=np.int64),
        weight=np.ones(n, np.float32) if weights is None else np.asarray(weights),
        timestamp=np.arange(n),
        user_map=IdMap(str(u) for u in range(n_users)),
        item_map=IdMap(str(i) for i in range(n_items)),
    )


def test_most_popular_counts_not_weights():
    # item 0: two interactions of weight 1; item 2: one of weight 5.
    train = make([0, 1, 1], [0, 0, 2], 2, 4, weights=[1.0, 1.0, 5.0])
    model = MostPopular().fit(train)
    s = model.scores(np.array([0, 1, 1]))
    assert s.shape == (3, 4) and s.dtype == np.float64
    np.testing.assert_array_equal(s, np.tile([2.0, 0.0, 1.0, 0.0], (3, 1)))
    assert model.n_items == 4


def test_most_popular_ties_to_lower_index_and_excludes_train():
    # Counts: item 1 -> 2, items 0, 2, 3 -> 1 each, item 4 -> 0.
    train = make([0, 1, 1, 2, 2], [1, 1, 0, 2, 3], 4, 5)
    test = make([3, 3], [2, 3], 4, 5)
    model = MostPopular().fit(train)
    # User 3 has no train items: ranking 1, then ties 0, 2, 3 by index -> L@2 = [1, 0]: miss.
    # L@4 = [1, 0, 2, 3]: hits at positions 3 and 4.
    out = evaluate(model.scores, train, test, ks=(2, 4))
    assert out["hr@2"] == 0.0
    assert out["recall@4"] == 1.0
    assert out["coverage@2"] == pytest.approx(2 / 5)


def test_unfitted_models_raise():
    with pytest.raises(RuntimeError):
        MostPopular().scores(np.array([0]))
    with pytest.raises(RuntimeError):
        RandomRecommender(0).scores(np.array([0]))


def test_random_recommender_seeded():
    train = make([0, 1], [0, 1], 2, 7)
    a = RandomRecommender(3).fit(train).scores(np.array([0, 1]))
    b = RandomRecommender(3).fit(train).scores(np.array([0, 1]))
    assert a.shape == (2, 7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, RandomRecommender(4).fit(train).scores(np.array([0, 1])))


def test_random_recommender_is_near_chance():
    rng = np.random.default_rng(0)
    n_users, n_items = 200, 100
    data = make(rng.integers(0, n_users, 4000), rng.integers(0, n_items, 4000), n_users, n_items)
    split = temporal_split(data)
    out = evaluate(RandomRecommender(0).fit(split.train).scores, split.train, split.test, ks=(10,))
    # precision@10 of a random list is about |R| / |rankable| = 4 / 80 on average (±noise).
    assert 0.02 < out["precision@10"] < 0.09


def load_ml100k(folder: Path) -> Interactions:
    raw = np.loadtxt(folder / "u.data", dtype=np.int64, delimiter="\t")
    user_map = IdMap.from_ids(raw[:, 0].tolist())
    item_map = IdMap.from_ids(range(1, 1683))  # the full 1682-movie catalog, numeric order
    return Interactions(
        user=raw[:, 0] - 1,  # ids 1..943 are dense and sorted, so index = id - 1
        item=raw[:, 1] - 1,
        weight=raw[:, 2].astype(np.float32),
        timestamp=raw[:, 3],
        user_map=user_map,
        item_map=item_map,
        name="ml-100k",
    )


@pytest.mark.data
def test_most_popular_on_ml100k():
    if not (ML100K / "u.data").exists():
        pytest.skip(f"MovieLens 100K not found at {ML100K}")
    data = load_ml100k(ML100K)
    assert (data.n_users, data.n_items, len(data)) == (943, 1682, 100_000)
    assert user_index_is_id_minus_one(data)

    t0 = time.perf_counter()
    split = temporal_split(data)
    t_split = time.perf_counter() - t0
    n = np.bincount(data.user, minlength=data.n_users)
    n_test = np.bincount(split.test.user, minlength=943)
    np.testing.assert_array_equal(n_test, np.maximum(1, n // 5))
    np.testing.assert_array_equal(held_out_counts(n), np.maximum(1, n // 5))

    model = MostPopular().fit(split.train)
    t0 = time.perf_counter()
    out = evaluate(model.scores, split.train, split.test)
    t_eval = time.perf_counter() - t0

    assert out["users"] == 943
    assert out["ndcg@10"] == pytest.approx(0.111, abs=0.005)
    assert out["recall@10"] == pytest.approx(0.059, abs=0.005)
    # Loose guards (the targets are ~0.1 s each on a laptop-class CPU).
    assert t_split < 2.0 and t_eval < 5.0

    sampled = evaluate_sampled(model.scores, split.train, split.test, seed=0)
    assert sampled["sampled_users"] == 943
    assert sampled["sampled_hr@10"] > out["hr@10"] * 0.5  # much easier than full ranking


def user_index_is_id_minus_one(data: Interactions) -> bool:
    return data.user_map.to_list() == [str(i) for i in range(1, 944)]
