import numpy as np
import pytest
import torch

from fedrec.common.model.mf import GLOBAL_KEYS, LOCAL_KEYS, MatrixFactorization


def test_global_and_local_parameters_partition_the_model():
    m = MatrixFactorization(3, 5, 4)
    names = {n for n, _ in m.named_parameters()}
    assert names == set(GLOBAL_KEYS) | set(LOCAL_KEYS)
    assert not set(GLOBAL_KEYS) & set(LOCAL_KEYS)
    assert set(m.global_state()) == set(GLOBAL_KEYS)
    assert set(m.local_state()) == set(LOCAL_KEYS)
    assert m.global_state()["item_embedding.weight"].shape == (5, 4)
    assert m.local_state()["user_embedding.weight"].shape == (3, 4)


def test_full_scores_match_forward():
    m = MatrixFactorization(2, 6, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        m.item_bias.weight.normal_()
    full = m.full_scores(np.array([1]))
    pairs = m(torch.tensor([1] * 6), torch.arange(6)).detach().numpy()
    np.testing.assert_allclose(full[0], pairs, rtol=1e-5, atol=1e-6)


def test_load_global_state_roundtrip_and_errors():
    a, b = MatrixFactorization(1, 4, 2), MatrixFactorization(1, 4, 2)
    b.load_global_state(a.global_state())
    for k in GLOBAL_KEYS:
        np.testing.assert_array_equal(a.global_state()[k], b.global_state()[k])
    with pytest.raises(ValueError, match="shape"):
        b.load_global_state(
            {"item_embedding.weight": np.zeros((3, 2)), "item_bias.weight": np.zeros((4, 1))}
        )
    with pytest.raises(ValueError, match="missing"):
        b.load_global_state({"item_embedding.weight": np.zeros((4, 2))})


def test_bias_frozen_when_disabled():
    m = MatrixFactorization(1, 4, 2, item_bias=False)
    assert not m.item_bias.weight.requires_grad
    assert all(p is not m.item_bias.weight for p in m.trainable_parameters())


@pytest.mark.parametrize("bad", [dict(n_users=0, n_items=3), dict(n_users=1, n_items=0)])
def test_rejects_empty_tables(bad):
    with pytest.raises(ValueError):
        MatrixFactorization(**bad)


def test_a_device_model_draws_only_its_user_embedding():
    import torch

    from fedrec.common.model.mf import MatrixFactorization

    gen, ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    model = MatrixFactorization(1, 50, 4, generator=gen, init_items=False)
    assert not model.item_embedding.weight.detach().any()  # no table drawn: zeros
    expected_user = torch.empty(1, 4).normal_(0.0, 0.1, generator=ref)
    assert torch.equal(model.user_embedding.weight.detach(), expected_user)
    assert torch.equal(gen.get_state(), ref.get_state())  # nothing else drawn from it
    drawn = MatrixFactorization(1, 50, 4, generator=torch.Generator().manual_seed(3))
    assert drawn.item_embedding.weight.detach().std() > 0.05  # the default still draws
