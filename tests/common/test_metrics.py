from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.common.data.schema import IdMap, Interactions
from fedrec.common.evaluation.metrics import (
    combine_metric_sums,
    evaluate,
    evaluate_sampled,
    sample_negatives,
    topk_items,
    user_metric_sums,
)

L2 = math.log2


def make(users, items, n_users, n_items, timestamps=None) -> Interactions:
    n = len(users)
    return Interactions(
        user=np.asarray(users, dtype=np.int64),
        item=np.asarray(items, dtype=np.int64),
        weight=np.ones(n, np.float32),
        timestamp=np.arange(n) if timestamps is None else np.asarray(timestamps),
        user_map=IdMap(str(u) for u in range(n_users)),
        item_map=IdMap(str(i) for i in range(n_items)),
    )


def table_scorer(table):
    table = np.asarray(table, dtype=np.float64)

    def score(users):
        assert users.dtype == np.int64
        return table[users]

    return score


# ----------------------------------------------------------------------------- ranking


def test_topk_ties_go_to_lower_index():
    assert topk_items(np.zeros(6), [], 3).tolist() == [0, 1, 2]
    # Three items tie at 2.0 across the k=2 boundary: the two lowest indices win.
    assert topk_items(np.array([1.0, 2.0, 2.0, 2.0, 1.0]), [], 2).tolist() == [1, 2]
    # Ties inside the list keep index order too.
    assert topk_items(np.array([5.0, 1.0, 5.0, 3.0, 5.0]), [], 4).tolist() == [0, 2, 4, 3]


def test_topk_excludes_train_items():
    scores = np.array([1.0, 2.0, 2.0, 2.0, 1.0])
    assert topk_items(scores, [1], 2).tolist() == [2, 3]
    assert topk_items(scores, np.array([False, True, True, False, False]), 3).tolist() == [3, 0, 4]
    # Fewer rankable items than k: the list is shorter.
    assert topk_items(scores, [0, 1, 2], 10).tolist() == [3, 4]
    assert topk_items(scores, [0, 1, 2, 3, 4], 10).tolist() == []


def test_topk_infinite_scores_are_rankable():
    scores = np.array([-np.inf, np.inf, 0.0, -np.inf])
    assert topk_items(scores, [2], 3).tolist() == [1, 0, 3]


def test_nan_scores_rejected():
    with pytest.raises(ValueError, match="NaN"):
        topk_items(np.array([0.0, np.nan]), [], 1)


# ----------------------------------------------------------------------------- hand examples


def test_user_metric_sums_hand_example():
    # items:    0    1    2    3    4    5
    scores = [0.1, 0.9, 0.5, 0.9, 0.3, 0.7]
    # Train {1} is excluded; ranking of the rest: 3 (0.9), 5 (0.7), 2 (0.5), 4 (0.3), 0 (0.1).
    # Test R = {3, 4}.
    m = user_metric_sums(np.array(scores), [1], [3, 4], ks=(2, 5))
    # K=2: L = [3, 5]; one hit (item 3 at position 1).
    #   recall = 1/2, precision = 1/2, hr = 1
    #   DCG = 1/log2(2) = 1; IDCG = 1/log2(2) + 1/log2(3) (min(|R|=2, K=2) = 2 terms)
    assert m["recall@2"] == pytest.approx(0.5)
    assert m["precision@2"] == pytest.approx(0.5)
    assert m["hr@2"] == 1.0
    assert m["ndcg@2"] == pytest.approx(1 / (1 + 1 / L2(3)))  # 0.6131
    # K=5: L = [3, 5, 2, 4, 0]; hits at positions 1 and 4.
    #   recall = 2/2 = 1, precision = 2/5, hr = 1
    #   DCG = 1 + 1/log2(5) = 1.4307; IDCG = 1 + 1/log2(3) = 1.6309; NDCG = 0.8772
    assert m["recall@5"] == pytest.approx(1.0)
    assert m["precision@5"] == pytest.approx(0.4)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / L2(5)) / (1 + 1 / L2(3)))
    assert m["users"] == 1
    assert not any(key.startswith("coverage") for key in m)


def test_ndcg_ideal_is_over_min_relevant_and_k():
    # 4 relevant items, K = 2, both top-2 are hits: IDCG has only min(4, 2) = 2 terms -> 1.0.
    scores = np.array([9.0, 8.0, 7.0, 6.0, 5.0])
    m = user_metric_sums(scores, [], [0, 1, 2, 3], ks=(2,))
    assert m["ndcg@2"] == pytest.approx(1.0)
    assert m["recall@2"] == pytest.approx(0.5)  # 2 of 4
    # Single relevant item at position 3 of K=5: DCG = 1/log2(4) = 0.5, IDCG = 1.
    m = user_metric_sums(scores, [], [2], ks=(5,))
    assert m["ndcg@5"] == pytest.approx(0.5)
    assert m["precision@5"] == pytest.approx(0.2)


def test_miss_and_short_list():
    scores = np.array([3.0, 2.0, 1.0])
    # Relevant item 2 ranks 3rd: a miss at K=2.
    m = user_metric_sums(scores, [], [2], ks=(2,))
    assert (m["recall@2"], m["precision@2"], m["hr@2"], m["ndcg@2"]) == (0.0, 0.0, 0.0, 0.0)
    # Train {0, 1} leaves one rankable item; K=5: L = [2], a hit at position 1.
    # precision is hits / K = 1/5 even though the list is shorter than K.
    m = user_metric_sums(scores, [0, 1], [2], ks=(5,))
    assert m["recall@5"] == 1.0 and m["ndcg@5"] == 1.0 and m["precision@5"] == pytest.approx(0.2)


def test_test_item_that_is_also_train_cannot_be_hit():
    # R = {0, 1} but item 0 is in train (a repeat): excluded from the ranking, still in R.
    m = user_metric_sums(np.array([5.0, 4.0, 3.0]), [0], [0, 1], ks=(1,))
    # L = [1]: 1 hit of |R| = 2.
    assert m["recall@1"] == pytest.approx(0.5) and m["ndcg@1"] == pytest.approx(1.0)


def test_user_without_test_items_contributes_nothing():
    m = user_metric_sums(np.array([1.0, 2.0]), [0], [], ks=(1,))
    assert m["users"] == 0 and m["recall@1"] == 0.0
    total = combine_metric_sums([m, user_metric_sums(np.array([1.0, 2.0]), [], [1], ks=(1,))])
    assert total["users"] == 1 and total["recall@1"] == 1.0


def test_combine_metric_sums_means():
    a = {"recall@10": 0.5, "ndcg@10": 1.0, "users": 1}
    b = {"recall@10": 1.5, "ndcg@10": 0.5, "users": 3}  # already a sum over 3 users
    out = combine_metric_sums([a, b])
    assert out == {"recall@10": 0.5, "ndcg@10": 0.375, "users": 4}
    assert combine_metric_sums([]) == {"users": 0}


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_hand_example_with_coverage():
    # 3 users, 5 items. Scores are the same popularity row for everyone: [1, 4, 4, 2, 0]
    # -> global order 1, 2 (tie at 4 -> lower index first), 3, 0, 4.
    row = [1.0, 4.0, 4.0, 2.0, 0.0]
    table = [row, row, row]
    # user 0: train {1},     test {3}   -> L@2 = [2, 3]: hit at pos 2
    #   recall 1, precision 1/2, hr 1, ndcg = (1/log2(3)) / 1
    # user 1: train {},      test {0, 1} -> L@2 = [1, 2]: hit at pos 1
    #   recall 1/2, precision 1/2, hr 1, ndcg = 1 / (1 + 1/log2(3))
    # user 2: train {0},     test {}     -> not evaluated
    train = make([0, 2], [1, 0], 3, 5)
    test = make([0, 1, 1], [3, 0, 1], 3, 5)
    out = evaluate(table_scorer(table), train, test, ks=(2,))
    assert out["users"] == 2
    assert out["recall@2"] == pytest.approx((1 + 0.5) / 2)
    assert out["precision@2"] == pytest.approx(0.5)
    assert out["hr@2"] == pytest.approx(1.0)
    assert out["ndcg@2"] == pytest.approx((1 / L2(3) + 1 / (1 + 1 / L2(3))) / 2)
    # Union of lists = {1, 2, 3}: coverage = 3/5.
    assert out["coverage@2"] == pytest.approx(3 / 5)
    assert set(out) == {"recall@2", "precision@2", "hr@2", "ndcg@2", "coverage@2", "users"}


def test_evaluate_only_scores_users_with_test_items():
    seen = []

    def score(users):
        seen.append(users.copy())
        return np.zeros((len(users), 4))

    train = make([0, 1, 2, 3], [0, 0, 0, 0], 5, 4)
    test = make([1, 3], [2, 3], 5, 4)
    evaluate(score, train, test, ks=(1,), batch_size=1)
    assert [s.tolist() for s in seen] == [[1], [3]]


def test_evaluate_default_keys():
    train = make([0], [0], 1, 30)
    test = make([0], [1], 1, 30)
    out = evaluate(table_scorer(np.zeros((1, 30))), train, test)
    for k in (10, 20):
        for m in ("recall", "precision", "hr", "ndcg", "coverage"):
            assert f"{m}@{k}" in out
    # Ranking of zeros minus train {0}: 1, 2, ...: item 1 first.
    assert out["recall@10"] == 1.0 and out["ndcg@10"] == 1.0
    assert out["coverage@10"] == pytest.approx(10 / 30)


def test_evaluate_rejects_bad_shapes():
    train = make([0], [0], 1, 3)
    with pytest.raises(ValueError, match="shape"):
        evaluate(lambda u: np.zeros((len(u), 2)), train, make([0], [1], 1, 3), ks=(1,))
    with pytest.raises(ValueError):
        evaluate(lambda u: np.zeros((len(u), 3)), train, make([0], [1], 1, 4), ks=(1,))


def reference(table, train_sets, test_sets, ks):
    """Plain-Python reference: sort by (-score, index), per DESIGN.md."""
    per = {f"{m}@{k}": [] for k in ks for m in ("recall", "precision", "hr", "ndcg")}
    covered = {k: set() for k in ks}
    for u, row in enumerate(table):
        rel = test_sets[u]
        if not rel:
            continue
        ranking = sorted(
            (i for i in range(len(row)) if i not in train_sets[u]), key=lambda i: (-row[i], i)
        )
        for k in ks:
            lst = ranking[:k]
            covered[k].update(lst)
            hits = [r for r, i in enumerate(lst, start=1) if i in rel]
            dcg = sum(1 / L2(r + 1) for r in hits)
            idcg = sum(1 / L2(r + 1) for r in range(1, min(len(rel), k) + 1))
            per[f"recall@{k}"].append(len(hits) / len(rel))
            per[f"precision@{k}"].append(len(hits) / k)
            per[f"hr@{k}"].append(float(bool(hits)))
            per[f"ndcg@{k}"].append(dcg / idcg)
    out = {key: (sum(v) / len(v) if v else math.nan) for key, v in per.items()}
    for k in ks:
        out[f"coverage@{k}"] = len(covered[k]) / len(table[0])
    return out


@st.composite
def problems(draw):
    n_users = draw(st.integers(1, 6))
    n_items = draw(st.integers(1, 12))
    values = st.sampled_from([0.0, 1.0, 2.0, 0.5, -1.0, np.inf, -np.inf])
    table = [[draw(values) for _ in range(n_items)] for _ in range(n_users)]
    pairs = st.tuples(st.integers(0, n_users - 1), st.integers(0, n_items - 1))
    train = draw(st.lists(pairs, max_size=25))
    test = draw(st.lists(pairs, max_size=15))
    ks = tuple(draw(st.lists(st.integers(1, 14), min_size=1, max_size=3)))
    batch = draw(st.one_of(st.none(), st.integers(1, 4)))
    return n_users, n_items, table, train, test, ks, batch


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(problems())
def test_vectorized_equals_per_user_and_reference(problem):
    n_users, n_items, table, train_pairs, test_pairs, ks, batch = problem
    train = make([u for u, _ in train_pairs], [i for _, i in train_pairs], n_users, n_items)
    test = make([u for u, _ in test_pairs], [i for _, i in test_pairs], n_users, n_items)
    out = evaluate(table_scorer(table), train, test, ks=ks, batch_size=batch)

    train_sets = [{i for v, i in train_pairs if v == u} for u in range(n_users)]
    test_sets = [{i for v, i in test_pairs if v == u} for u in range(n_users)]
    sums = [
        user_metric_sums(np.array(table[u]), sorted(train_sets[u]), sorted(test_sets[u]), ks=ks)
        for u in range(n_users)
    ]
    combined = combine_metric_sums(sums)
    assert out["users"] == combined["users"] == sum(1 for s in test_sets if s)
    for key, value in combined.items():
        if combined["users"]:
            assert out[key] == value, key  # exact agreement, not approximate
        else:
            assert math.isnan(out[key]) or key == "users"

    ref = reference(table, train_sets, test_sets, sorted(set(ks)))
    for key, value in ref.items():
        if math.isnan(value):
            assert math.isnan(out[key])
        elif key.startswith("coverage") and not combined["users"]:
            assert out[key] == 0.0
        else:
            assert out[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


def test_batching_does_not_change_results():
    rng = np.random.default_rng(0)
    n_users, n_items = 40, 60
    table = rng.integers(0, 5, size=(n_users, n_items)).astype(float)  # lots of ties
    train = make(rng.integers(0, n_users, 500), rng.integers(0, n_items, 500), n_users, n_items)
    test = make(rng.integers(0, n_users, 100), rng.integers(0, n_items, 100), n_users, n_items)
    whole = evaluate(table_scorer(table), train, test, ks=(1, 5, 10))
    for b in (1, 3, 7, 39):
        assert evaluate(table_scorer(table), train, test, ks=(1, 5, 10), batch_size=b) == whole


def test_float32_scores_accepted():
    train = make([0], [0], 1, 4)
    test = make([0], [2], 1, 4)
    out = evaluate(lambda u: np.ones((len(u), 4), np.float32), train, test, ks=(1,))
    # All tied: after excluding 0, ranking 1, 2, 3: miss at K=1.
    assert out["hr@1"] == 0.0


# ----------------------------------------------------------------------------- sampled


def sampled_problem(seed=0, n_users=30, n_items=300):
    rng = np.random.default_rng(seed)
    n = 3000
    users = rng.integers(0, n_users, n)
    items = rng.integers(0, n_items, n)
    ts = rng.integers(0, 10**6, n)
    data = make(users, items, n_users, n_items, timestamps=ts)
    from fedrec.common.data.splits import temporal_split

    return temporal_split(data)


def first_test_items(test: Interactions) -> dict[int, int]:
    first = {}
    for u, i, _ in sorted(
        zip(test.user.tolist(), test.item.tolist(), test.timestamp.tolist(), strict=True),
        key=lambda x: (x[0], x[2], x[1]),
    ):
        first.setdefault(u, i)
    return first


def test_sampled_perfect_scorer_gets_one():
    split = sampled_problem()
    first = first_test_items(split.test)
    table = np.zeros((split.train.n_users, split.train.n_items))
    for u, i in first.items():
        table[u, i] = 1.0
    out = evaluate_sampled(table_scorer(table), split.train, split.test, seed=0)
    assert out == {"sampled_hr@10": 1.0, "sampled_ndcg@10": 1.0, "sampled_users": len(first)}


def test_sampled_worst_scorer_gets_zero_and_ties_go_to_lower_index():
    split = sampled_problem()
    first = first_test_items(split.test)
    table = np.zeros((split.train.n_users, split.train.n_items))
    for u, i in first.items():
        table[u, i] = -1.0
    out = evaluate_sampled(table_scorer(table), split.train, split.test, seed=0, ks=(10, 100))
    # Positive below all 99 negatives: rank 100 -> outside top 10, inside top 100.
    assert out["sampled_hr@10"] == 0.0
    assert out["sampled_hr@100"] == 1.0
    assert out["sampled_ndcg@100"] == pytest.approx(1 / L2(101))
    # All scores tied: rank = 1 + number of negatives with a lower item index.
    users = np.array(sorted(first), dtype=np.int64)
    neg = sample_negatives(split.train, split.test, users, seed=5)
    ranks = 1 + (neg < np.array([first[u] for u in users])[:, None]).sum(axis=1)
    expected = float(np.mean(ranks <= 10))
    out = evaluate_sampled(
        lambda u: np.zeros((len(u), split.train.n_items)),
        split.train,
        split.test,
        seed=5,
        batch_size=7,
    )
    assert out["sampled_hr@10"] == pytest.approx(expected)


def test_sampled_negatives_avoid_user_items():
    split = sampled_problem()
    users = np.arange(split.train.n_users, dtype=np.int64)
    neg = sample_negatives(split.train, split.test, users, seed=1)
    assert neg.shape == (len(users), 99)
    for u in users:
        mine = set(split.train.item[split.train.user == u].tolist())
        mine |= set(split.test.item[split.test.user == u].tolist())
        row = neg[u].tolist()
        assert len(set(row)) == 99  # without replacement
        assert not mine & set(row)
        assert all(0 <= i < split.train.n_items for i in row)
    again = sample_negatives(split.train, split.test, users, seed=1)
    np.testing.assert_array_equal(neg, again)


def test_sampled_pads_when_too_few_candidates():
    # 1 user, 5 items; train {0, 1}, test {2}: only items 3, 4 can be negatives.
    train = make([0, 0], [0, 1], 1, 5)
    test = make([0], [2], 1, 5)
    neg = sample_negatives(train, test, np.array([0]), n_negatives=4, seed=0)
    assert neg.tolist() == [[3, 4, -1, -1]]
    # Positive 2 scores lowest: rank 3 among 3 candidates.
    out = evaluate_sampled(
        table_scorer([[9, 9, 0, 1, 1]]), train, test, n_negatives=4, ks=(2, 3), seed=0
    )
    assert out["sampled_hr@2"] == 0.0 and out["sampled_hr@3"] == 1.0
    assert out["sampled_ndcg@3"] == pytest.approx(0.5)  # 1/log2(3 + 1)
