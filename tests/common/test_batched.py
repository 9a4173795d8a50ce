"""Batched local SGD (fedrec.common.model.batched) against the per-device path, seed for seed."""

import numpy as np
import pytest
import torch

from fedrec.common.model.batched import chunk_size, train_many
from fedrec.common.model.mf import MatrixFactorization
from fedrec.common.privacy.dpsgd import LocalConfig, train_local

N_ITEMS, DIM = 120, 6


def _setup(rng, n_devices):
    table = MatrixFactorization(1, N_ITEMS, DIM, generator=torch.Generator().manual_seed(9))
    state = table.global_state()
    state["item_bias.weight"] = rng.normal(0, 0.1, (N_ITEMS, 1)).astype(np.float32)
    sizes = rng.integers(1, 50, n_devices)
    positives = [np.unique(rng.integers(0, N_ITEMS, n)) for n in sizes]
    users = rng.normal(0, 0.1, (n_devices, DIM)).astype(np.float32)
    return state, positives, users


def _per_device(state, positives, users, local, seeds):
    out = []
    for b, (pos, seed) in enumerate(zip(positives, seeds, strict=True)):
        model = MatrixFactorization(1, N_ITEMS, DIM)
        model.load_global_state(state)
        model.load_local_state({"user_embedding.weight": users[b : b + 1]})
        gen = torch.Generator().manual_seed(seed)
        result = train_local(model, pos, local=local, dp=None, generator=gen)
        after = model.global_state()
        delta = {k: after[k] - state[k] for k in after}
        out.append((delta, model.local_state()["user_embedding.weight"][0], result, gen))
    return out


@pytest.mark.parametrize(
    "local",
    [
        LocalConfig(epochs=1, sample_rate=1.0, lr=0.5, loss="bce", n_negatives=4),
        LocalConfig(epochs=1, sample_rate=0.3, lr=0.2, loss="bpr", l2=0.01, user_lr_scale=3.0),
        LocalConfig(
            epochs=2, sample_rate=0.5, lr=0.4, loss="bce", n_negatives=2, batch_size_norm=3
        ),
    ],
)
def test_batched_training_equals_the_per_device_path(local):
    rng = np.random.default_rng(0)
    state, positives, users = _setup(rng, 9)
    seeds = [100 + b for b in range(9)]
    expected = _per_device(state, positives, users, local, seeds)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    got = train_many(
        state["item_embedding.weight"],
        state["item_bias.weight"],
        users,
        positives,
        gens,
        local=local,
    )
    for b, (delta, user, result, gen) in enumerate(expected):
        assert np.abs(delta["item_embedding.weight"]).max() > 1e-4  # it did train
        np.testing.assert_allclose(got.item_embedding[b], delta["item_embedding.weight"], atol=1e-7)
        np.testing.assert_allclose(got.item_bias[b], delta["item_bias.weight"], atol=1e-7)
        np.testing.assert_allclose(got.users[b], user, atol=1e-7)
        assert got.seen[b] == result.examples
        assert got.loss_sums[b] / max(1, got.seen[b]) == pytest.approx(result.mean_loss, rel=1e-5)
        # the same draws, in the same order: both generators end in the same state
        assert torch.equal(gens[b].get_state(), gen.get_state())


def test_batched_training_refuses_what_it_does_not_compute():
    rng = np.random.default_rng(1)
    state, positives, users = _setup(rng, 2)
    args = (state["item_embedding.weight"], state["item_bias.weight"], users)
    gens = [torch.Generator(), torch.Generator()]
    with pytest.raises(ValueError, match="'sgd' optimizer"):
        train_many(*args, positives, gens, local=LocalConfig(optimizer="adam"))
    with pytest.raises(ValueError, match="at least one training interaction"):
        train_many(*args, [positives[0], np.array([], np.int64)], gens, local=LocalConfig())


def test_chunk_size_keeps_the_tables_within_the_budget():
    budget = 64 << 20
    for n_items, dim in [(50, 8), (1682, 32), (100_000, 32), (10_000_000, 64)]:
        size = chunk_size(n_items, dim, budget)
        assert 1 <= size <= 256
        per_device = 2 * 4 * n_items * (dim + 1)  # the tables and one step's gradient
        assert size * per_device <= budget or size == 1
        assert size == 256 or (size + 1) * per_device > budget  # as many as fit
