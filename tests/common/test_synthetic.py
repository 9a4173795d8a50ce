import numpy as np
import pytest

from fedrec.common.data.schema import Interactions
from fedrec.common.data.synthetic import SyntheticDataset, generate_synthetic, make_synthetic


def arrays(data: Interactions) -> tuple[np.ndarray, ...]:
    return data.user, data.item, data.weight, data.timestamp


def test_seeded_reproducibility():
    a = generate_synthetic(n_users=200, n_items=100, seed=7)
    b = generate_synthetic(n_users=200, n_items=100, seed=7)
    c = generate_synthetic(n_users=200, n_items=100, seed=8)
    for x, y in zip(arrays(a), arrays(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert len(a) != len(c) or not np.array_equal(a.item, c.item)
    # a Generator is accepted too, and gives the same data as its seed
    d = generate_synthetic(n_users=200, n_items=100, seed=np.random.default_rng(7))
    np.testing.assert_array_equal(a.item, d.item)


def test_shapes_and_truth():
    ds = make_synthetic(n_users=300, n_items=120, dim=6, seed=1)
    assert isinstance(ds, SyntheticDataset)
    data = ds.interactions
    assert data.name == "synthetic"
    assert (data.n_users, data.n_items) == (300, 120)
    assert data.user_map.external(5) == "5" and data.item_map.index("17") == 17
    assert ds.user_factors.shape == (300, 6) and ds.item_factors.shape == (120, 6)
    assert ds.item_popularity.shape == (120,)
    assert ds.item_popularity.sum() == pytest.approx(1.0)
    norms = np.linalg.norm(ds.user_factors, axis=1)
    assert 0.6 < norms.mean() < 1.3  # unit-ish
    np.testing.assert_array_equal(data.weight, 1.0)
    assert ds.true_scores(np.array([0, 1])).shape == (2, 120)
    # each user's items are distinct (sampled without replacement)
    counts = np.bincount(data.user, minlength=data.n_users)
    assert sum(len(i) for i in data.user_items()) == counts.sum() == len(data)


def test_activity_varies_within_bounds():
    data = generate_synthetic(n_users=1000, n_items=500, mean_interactions=40, seed=2)
    counts = np.bincount(data.user, minlength=data.n_users)
    assert counts.min() >= 5
    assert counts.max() <= 250
    assert 30 < counts.mean() < 50
    assert counts.std() > 10  # lognormal, not constant
    assert np.percentile(counts, 90) > 2 * np.percentile(counts, 10)


def test_small_catalog_caps_activity():
    data = generate_synthetic(n_users=50, n_items=6, mean_interactions=40, seed=3)
    counts = np.bincount(data.user, minlength=data.n_users)
    assert counts.max() <= 3 and counts.min() >= 3  # min 5 capped at n_items // 2


def test_long_tail_popularity():
    data = generate_synthetic(n_users=1000, n_items=500, seed=4)
    counts = np.sort(data.item_counts())[::-1]
    top_share = counts[:50].sum() / counts.sum()
    assert top_share > 0.3  # top 10% of items hold far more than 10% of interactions
    flat = generate_synthetic(n_users=1000, n_items=500, popularity_exponent=0.0, seed=4)
    flat_counts = np.sort(flat.item_counts())[::-1]
    assert flat_counts[:50].sum() / flat_counts.sum() < top_share


def test_timestamps_increase_per_user():
    data = generate_synthetic(n_users=300, n_items=100, seed=5)
    order = np.lexsort((data.timestamp, data.user))
    # rows are already grouped by user in time order
    np.testing.assert_array_equal(order, np.arange(len(data)))
    same_user = data.user[1:] == data.user[:-1]
    assert (np.diff(data.timestamp)[same_user] > 0).all()
    starts = data.timestamp[np.r_[True, ~same_user]]
    assert len(np.unique(starts)) > 250  # random per-user start


def test_personal_signal_is_in_the_data():
    """The true scores rank a user's own items far above what popularity alone would."""
    ds = make_synthetic(n_users=400, n_items=200, seed=6)
    data = ds.interactions
    scores = ds.true_scores()
    pop_scores = np.log(ds.item_popularity)
    own = np.zeros((data.n_users, data.n_items), bool)
    own[data.user, data.item] = True

    def auc(s: np.ndarray) -> float:
        ranks = s.argsort(axis=1).argsort(axis=1)
        pos = own.sum(1)
        neg = data.n_items - pos
        rank_sum = (ranks * own).sum(1) - pos * (pos - 1) / 2
        return float(np.mean(rank_sum / (pos * neg)))

    assert auc(scores) > auc(np.broadcast_to(pop_scores, scores.shape)) + 0.05


@pytest.mark.slow
def test_twenty_thousand_users():
    # its speed (< 10 s) is measured by python -m fedrec.simulations.bench_data, not here
    data = generate_synthetic(n_users=20_000, n_items=500, seed=0)
    assert data.n_users == 20_000 and len(np.unique(data.user)) == 20_000


def test_public_genres_follow_the_latent_factors():
    data = make_synthetic(n_users=50, n_items=80, seed=3)
    genres = data.interactions.items.genres
    dim = data.item_factors.shape[1]
    for row, g in zip(data.item_factors, genres, strict=True):
        assert set(g) == {f"g{j}" for j in range(dim) if row[j] > 1 / dim**0.5}
    assert sum(map(len, genres)) > 0


def test_bad_arguments():
    with pytest.raises(ValueError):
        generate_synthetic(n_users=0)
    with pytest.raises(ValueError):
        generate_synthetic(noise=-1.0)
