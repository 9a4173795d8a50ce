import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.client.device import Contribution, Device, Refusal
from fedrec.common.model.mf import GLOBAL_KEYS, MatrixFactorization
from fedrec.common.privacy.dpsgd import DPConfig, LocalConfig

N_ITEMS, DIM = 30, 4
LOCAL = LocalConfig(epochs=1, sample_rate=0.5, lr=0.1)


def _state(seed=0):
    import torch

    return MatrixFactorization(
        1, N_ITEMS, DIM, generator=torch.Generator().manual_seed(seed)
    ).global_state()


def _device(items, dp=None, **kw):
    return Device(
        "dev-1", np.asarray(items), n_items=N_ITEMS, dim=DIM, local=LOCAL, dp=dp, seed=0, **kw
    )


@settings(max_examples=20, deadline=None)
@given(
    items=st.lists(st.integers(0, N_ITEMS - 1), min_size=1, max_size=12, unique=True),
    private=st.booleans(),
)
def test_update_structure_does_not_depend_on_items(items, private):
    dp = (
        DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, budget_epsilon=1e6, accountant="rdp")
        if private
        else None
    )
    reply = _device(items, dp=dp).train(_state(), 1)
    assert isinstance(reply, Contribution)
    ref = _state()
    assert set(reply.arrays) == set(GLOBAL_KEYS)
    for k in GLOBAL_KEYS:
        assert reply.arrays[k].shape == ref[k].shape
        assert reply.arrays[k].dtype == np.float32
        assert isinstance(reply.arrays[k], np.ndarray)  # dense, no sparse encoding
        if private:
            assert np.count_nonzero(reply.arrays[k]) == reply.arrays[k].size
    if private:  # under DP the example count and the loss are not revealed
        assert reply.num_examples == 1 and reply.metrics == {}


def test_reply_never_carries_user_embedding_or_items():
    items = np.array([3, 7, 11])
    dev = _device(items, dp=DPConfig(noise_multiplier=1.0, budget_epsilon=1e6, accountant="rdp"))
    reply = dev.train(_state(), 1)
    user = dev.model.local_state()["user_embedding.weight"]
    assert reply.metrics == {}
    for arr in reply.arrays.values():
        for row in np.atleast_2d(arr):
            if row.size == user.size:  # no row of the update is the user embedding
                assert not np.allclose(row, user.ravel(), atol=1e-3)


def test_device_over_budget_refuses_and_spends_nothing():
    dp = DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, budget_epsilon=2.0, accountant="rdp")
    dev = _device(list(range(10)), dp=dp)
    replies = [dev.train(_state(), r) for r in range(1, 40)]
    refusals = [r for r in replies if isinstance(r, Refusal)]
    assert refusals, "a device must eventually refuse"
    first = replies.index(refusals[0])
    assert all(isinstance(r, Refusal) for r in replies[first:])
    assert "budget" in refusals[0].reason
    assert dev.epsilon_spent() <= 2.0
    assert refusals[0].epsilon_needed > 2.0


def test_accountant_state_survives_restart():
    dp = DPConfig(noise_multiplier=1.2, budget_epsilon=100, accountant="rdp")
    dev = _device([1, 2, 3, 4], dp=dp)
    dev.train(_state(), 1)
    dev.train(_state(), 2)
    saved = dev.state_dict()
    spent = dev.epsilon_spent()
    fresh = _device([1, 2, 3, 4], dp=dp)
    assert fresh.epsilon_spent() == 0.0
    fresh.load_state_dict(saved)
    assert fresh.epsilon_spent() == pytest.approx(spent)
    np.testing.assert_array_equal(
        fresh.model.local_state()["user_embedding.weight"],
        dev.model.local_state()["user_embedding.weight"],
    )
    assert fresh.accountant.history == dev.accountant.history


def test_release_is_recorded_before_the_update_leaves():
    events = []
    dp = DPConfig(noise_multiplier=1.0, budget_epsilon=100, accountant="rdp")
    dev = _device(
        [1, 2], dp=dp, on_release=lambda event, **context: events.append((event, context))
    )
    dev.train(_state(), 5)
    assert len(events) == 1 and events[0][1]["round"] == 5
    assert events[0][0].purpose == "dp-sgd" and events[0][0].noise_multiplier == 1.0
    assert events[0][1]["claimed_epsilon"] == pytest.approx(dev.epsilon_spent())

    def broken(_event, **_context):
        raise OSError("disk full")

    dev2 = _device([1, 2], dp=dp, on_release=broken)
    with pytest.raises(OSError):
        dev2.train(_state(), 1)  # nothing is returned, so nothing can be sent


def test_evaluate_returns_sums_and_excludes_train_items():
    dev = _device([0, 1, 2], test_items=np.array([5]))
    sums = dev.evaluate(_state(), (10,))
    assert sums["users"] == 1 and 0 <= sums["ndcg@10"] <= 1
    assert not set(dev.recommend(10, _state())) & {0, 1, 2}
    assert _device([0]).evaluate(_state(), (10,)) is None


def test_rejects_items_outside_catalog():
    with pytest.raises(ValueError, match="outside"):
        _device([N_ITEMS + 1])


@pytest.mark.slow
def test_local_mode_accounting_matches_dp_accounting_over_rounds():
    """The device's claimed ε (Opacus PRV, persisted across rounds) is dp-accounting's PLD ε."""
    import dp_accounting

    from fedrec.common.privacy.dpsgd import DPConfig, LocalConfig

    local = LocalConfig(epochs=1, sample_rate=0.25, lr=0.1)
    dev = Device(
        "d",
        np.arange(8),
        n_items=20,
        dim=4,
        local=local,
        dp=DPConfig(noise_multiplier=1.1, budget_epsilon=50.0),
        seed=0,
    )
    state = MatrixFactorization(1, 20, 4).global_state()
    for rnd in range(1, 4):
        assert not isinstance(dev.train(state, rnd), Refusal)
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(
        dp_accounting.PoissonSampledDpEvent(0.25, dp_accounting.GaussianDpEvent(1.1)),
        3 * local.steps,
    )
    assert dev.epsilon_spent() == pytest.approx(acc.get_epsilon(1e-5), rel=0.02)
