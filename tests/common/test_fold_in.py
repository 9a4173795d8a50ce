"""The on-device fold-in: a solved user embedding fits the device's items and ranks only."""

from __future__ import annotations

import numpy as np

from fedrec.common.model.fold_in import solve_user_embedding


def _table(n_items: int = 200, dim: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, (n_items, dim)), rng.normal(-2, 0.5, n_items)


def test_the_solution_is_the_regularised_optimum():
    emb, bias = _table()
    items = np.array([3, 17, 17, 40, 41, 99, 150])
    u = solve_user_embedding(emb, bias, items, n_negatives=4, l2=1.0)[0].astype(np.float64)
    pos = np.unique(items)
    y = np.zeros(len(emb))
    y[pos] = 1
    w = np.full(len(emb), 4 * len(pos) / (len(emb) - len(pos)))
    w[pos] = 1
    p = 1 / (1 + np.exp(-(emb @ u + bias)))
    grad = emb.T @ (w * (p - y)) + u
    assert np.abs(grad).max() < 1e-4  # stationary point of a strictly convex objective

    # and a perturbed embedding is worse
    def loss(v):
        z = emb @ v + bias
        return float(np.sum(w * (np.logaddexp(0, z) - y * z)) + 0.5 * v @ v)

    assert all(loss(u + d) > loss(u) for d in np.random.default_rng(1).normal(0, 0.1, (5, 6)))


def test_items_drawn_from_a_user_direction_recover_that_direction():
    emb, bias = _table(seed=2)
    bias[:] = 0.0
    cosines = []
    for seed in range(5):
        truth = np.random.default_rng(seed + 10).normal(0, 1, emb.shape[1])
        items = np.argsort(-(emb @ truth))[:15]  # the user's items: the top of its ranking
        u = solve_user_embedding(emb, bias, items)[0]
        cosines.append(u @ truth / np.linalg.norm(u) / np.linalg.norm(truth))
    assert min(cosines) > 0.7  # a random direction in 6 dimensions: |cos| about 0.4


def test_no_items_or_every_item_gives_the_zero_embedding():
    emb, bias = _table(n_items=5, dim=3)
    assert not solve_user_embedding(emb, bias, np.array([], dtype=np.int64)).any()
    assert not solve_user_embedding(emb, bias, np.arange(5)).any()
    assert solve_user_embedding(emb, bias, np.array([1])).shape == (1, 3)


def test_ranking_with_a_fold_in_leaves_the_trained_embedding_alone():
    from fedrec.client.device import Device
    from fedrec.common.algorithms.sgd import SGD
    from fedrec.common.config import RunConfig
    from fedrec.common.privacy.dpsgd import LocalConfig

    cfg = RunConfig(dim=4, fold_in="solve")
    device = Device(
        "d0",
        np.array([1, 2, 3]),
        n_items=20,
        dim=4,
        local=LocalConfig(),
        dp=None,
        algorithm=SGD(cfg, 20),
        test_items=np.array([5]),
        seed=0,
    )
    emb, bias = _table(n_items=20, dim=4)
    state = {
        "item_embedding.weight": emb.astype(np.float32),
        "item_bias.weight": bias.astype(np.float32)[:, None],
    }
    trained = device.model.local_state()["user_embedding.weight"].copy()
    solved = solve_user_embedding(emb, bias, np.array([1, 2, 3]))
    scores = device.recommend(5, state)
    assert len(scores) == 5
    np.testing.assert_array_equal(device.model.local_state()["user_embedding.weight"], trained)
    expected = emb @ solved[0] + bias
    expected[[1, 2, 3]] = -np.inf
    assert set(device.recommend(5, state)) == set(np.argsort(-expected)[:5])
