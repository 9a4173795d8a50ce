import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.common.model.mf import MatrixFactorization
from fedrec.common.model.training import example_losses, gather
from fedrec.common.privacy.accountant import calibrate, make_accountant
from fedrec.common.privacy.dpsgd import (
    DPConfig,
    LocalConfig,
    per_example_sq_norms,
    train_local,
)


def _brute_sq_norms(model, ids, loss, l2):
    out = []
    for b in range(len(ids)):
        model.zero_grad()
        g = gather(model, torch.zeros(1, dtype=torch.long), ids[b : b + 1])
        example_losses(g, loss=loss, l2=l2).sum().backward()
        out.append(
            sum(float(p.grad.pow(2).sum()) for p in model.parameters() if p.grad is not None)
        )
    return np.array(out)


@settings(max_examples=25, deadline=None)
@given(
    n_items=st.integers(2, 6),
    k=st.integers(2, 5),
    batch=st.integers(1, 5),
    loss=st.sampled_from(["bpr", "bce"]),
    seed=st.integers(0, 1000),
)
def test_per_example_norms_are_exact(n_items, k, batch, loss, seed):
    """Including examples that gather the same item row twice (repeated negatives)."""
    gen = torch.Generator().manual_seed(seed)
    model = MatrixFactorization(1, n_items, 3, generator=gen)
    with torch.no_grad():
        model.item_bias.weight.normal_(generator=gen)
    ids = torch.randint(0, n_items, (batch, k), generator=gen)
    g = gather(model, torch.zeros(batch, dtype=torch.long), ids)
    losses = example_losses(g, loss=loss, l2=0.01)
    grads = torch.autograd.grad(losses.sum(), g.tensors())
    fast = per_example_sq_norms(g, list(grads)).detach().numpy()
    np.testing.assert_allclose(fast, _brute_sq_norms(model, ids, loss, 0.01), rtol=1e-4, atol=1e-7)


def test_without_noise_each_example_moves_the_model_by_at_most_the_clip():
    """σ = 0, one example, SGD lr 1: the update equals minus the clipped gradient."""
    torch.manual_seed(0)
    model = MatrixFactorization(1, 5, 4, init_std=3.0)  # large init: big raw gradients
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    acc = make_accountant("rdp")
    train_local(
        model,
        np.array([2]),
        local=LocalConfig(epochs=1, sample_rate=1.0, lr=1.0),
        dp=DPConfig(noise_multiplier=0.0, max_grad_norm=0.5),
        accountant=acc,
        generator=torch.Generator().manual_seed(0),
    )
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert float((after - before).norm()) <= 0.5 + 1e-5


def test_noise_reaches_every_coordinate_and_accountant_records_each_step():
    model = MatrixFactorization(1, 50, 4)
    before = model.global_state()
    acc = make_accountant("rdp")
    local = LocalConfig(epochs=1, sample_rate=0.5, lr=0.1)
    res = train_local(
        model,
        np.array([1, 2, 3, 4]),
        local=local,
        dp=DPConfig(noise_multiplier=1.0, max_grad_norm=1.0),
        accountant=acc,
        generator=torch.Generator().manual_seed(1),
    )
    after = model.global_state()
    for k in before:
        assert (after[k] != before[k]).all(), f"{k}: some rows untouched by noise"
    assert res.steps == local.steps == 2
    assert acc.history == [(1.0, 0.5, 2)]


def test_dp_training_requires_accountant_and_single_user():
    with pytest.raises(ValueError, match="accountant"):
        train_local(MatrixFactorization(1, 3, 2), np.array([0]), local=LocalConfig(), dp=DPConfig())
    with pytest.raises(ValueError, match="single user"):
        train_local(MatrixFactorization(2, 3, 2), np.array([0]), local=LocalConfig(), dp=None)


@pytest.mark.slow
def test_calibrated_noise_spends_the_budget():
    for kind in ("rdp", "prv"):
        sigma = calibrate([(1.0, 0.25, 40)], target_epsilon=3.0, target_delta=1e-5, accountant=kind)
        acc = make_accountant(kind)
        acc.history = [(sigma, 0.25, 40)]
        eps = acc.get_epsilon(delta=1e-5)
        assert 2.99 <= eps <= 3.0 + 1e-6  # Brent's method: the budget, not a margin under it


@pytest.mark.parametrize(
    "kw",
    [
        dict(max_grad_norm=0),
        dict(noise_multiplier=-1),
        dict(target_delta=0),
        dict(accountant="nope"),
    ],
)
def test_dp_config_validation(kw):
    with pytest.raises(ValueError):
        DPConfig(**kw)
