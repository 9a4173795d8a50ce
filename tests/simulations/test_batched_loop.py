"""The in-process loop trains user-level and non-private devices batched: the same run."""

import numpy as np
import pytest

from fedrec.common.algorithms.sgd import SGD
from fedrec.common.config import RunConfig
from fedrec.simulations.loop import run_plain


def _cfg(privacy):
    return RunConfig(
        synthetic_users=40,
        synthetic_items=30,
        dim=8,
        num_rounds=3,
        fraction_train=0.5,
        privacy=privacy,
        epsilon=8.0,
        reproducible=True,
        seed=4,
        algorithm="sgd",
        user_clip=0.05,  # binds for some devices: the clipping is compared too
        user_noise_multiplier=1.0,
        local_epochs=1.0,
        sample_rate=0.5,
    )


@pytest.mark.parametrize(("privacy", "rebuilt"), [("user", False), ("off", False), ("user", True)])
def test_batched_devices_give_the_per_device_run(monkeypatch, privacy, rebuilt):
    cfg = _cfg(privacy)
    if rebuilt:  # a large population: devices rebuilt per use from their saved states
        import fedrec.simulations.loop as loop

        monkeypatch.setattr(loop, "_KEEP_DEVICES", 10)
    calls = []
    real = SGD.contribute_many

    def spy(self, devices, *args, **kwargs):
        calls.append(len(devices))
        return real(self, devices, *args, **kwargs)

    monkeypatch.setattr(SGD, "contribute_many", spy)
    batched = run_plain(cfg)
    assert sum(calls) == sum(int(r["aggregated"]) for r in batched.rounds) > 0
    monkeypatch.setattr(SGD, "batchable", lambda self, device, task, share: False)
    alone = run_plain(cfg)
    assert sum(calls) == sum(int(r["aggregated"]) for r in batched.rounds)  # no more batches
    for k, v in alone.state.items():
        assert np.abs(v - cfg_state_initial(cfg)[k]).max() > 1e-4  # the model moved
        np.testing.assert_allclose(batched.state[k], v, atol=1e-6)
    for a, b in zip(batched.rounds, alone.rounds, strict=True):
        assert a["aggregated"] == b["aggregated"]
        assert float(a["update_norm"]) == pytest.approx(float(b["update_norm"]), rel=1e-5)
    assert batched.final == pytest.approx(alone.final, abs=1e-6)


def cfg_state_initial(cfg):
    from fedrec.common.algorithms.sgd import initial_item_table
    from fedrec.simulations.federation import federated_dataset

    return initial_item_table(cfg, federated_dataset(cfg).n_items)


def test_the_loop_runs_on_one_thread_and_restores_the_count():
    import torch
    from threadpoolctl import threadpool_info

    from fedrec.simulations.loop import one_thread

    conftest = torch.get_num_threads()
    torch.set_num_threads(2)
    blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    try:
        with one_thread():
            assert torch.get_num_threads() == 1
            assert all(i["num_threads"] == 1 for i in threadpool_info() if i["user_api"] == "blas")
        assert torch.get_num_threads() == 2
        assert [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"] == blas
    finally:
        torch.set_num_threads(conftest)


def test_batched_devices_refuse_a_round_their_checks_refuse(monkeypatch):
    from fedrec.common.privacy.secagg import SecureSession
    from fedrec.server.coordinator import make_coordinator
    from fedrec.server.round_loop import Request
    from fedrec.simulations.federation import federated_dataset, make_device
    from fedrec.simulations.in_process import InProcessTransport

    cfg = _cfg("user")
    fed = federated_dataset(cfg)
    coord = make_coordinator(cfg, fed.n_items)
    task = coord.task(1)
    shapes = coord.algorithm.contribution(task).shapes
    devices = {u: make_device(fed, u, cfg, ledger_dir=None) for u in range(6)}
    transport = InProcessTransport(fed.n_users, devices.__getitem__)
    calls = []
    monkeypatch.setattr(SGD, "contribute_many", lambda self, d, *a, **k: calls.append(d))
    request = Request(1, task, coord.state, {}, shapes)
    tiny = SecureSession(clipping_range=1e-9, group_size=6)  # would clip every share
    part = transport.partial_sum(request, list(devices), tiny)
    assert part.declined == 6 and part.total is None and not calls
    bad = Request(1, task, {k: v[:-1] for k, v in coord.state.items()}, {}, shapes)
    replies = transport.train(bad, list(devices))  # a table of the wrong shape
    assert [r.refusal for r in replies] == ["bad-request"] * 6 and not calls


def test_a_device_trained_batched_builds_no_model_and_keeps_its_draws():
    import torch

    from fedrec.common.algorithms.base import Task
    from fedrec.common.model.mf import MatrixFactorization
    from fedrec.simulations.federation import federated_dataset, make_device

    cfg = _cfg("user")
    fed = federated_dataset(cfg)
    devices = [make_device(fed, u, cfg, ledger_dir=None) for u in range(4)]
    dev = devices[0]
    # the user embedding is the one a model built from the device's seed draws
    seeded = MatrixFactorization(
        1,
        fed.n_items,
        cfg.dim,
        init_std=cfg.init_std,
        init_items=False,
        generator=torch.Generator().manual_seed(dev._seed),
    )
    first = dev.user_embedding()
    np.testing.assert_array_equal(first, seeded.local_state()["user_embedding.weight"])
    state = {k: np.asarray(v) for k, v in cfg_state_initial(cfg).items()}
    outs = dev.algorithm.contribute_many(devices, Task("train"), state, server_round=1)
    assert all(d._model is None for d in devices)  # trained from its state alone
    assert np.abs(dev.user_embedding() - first).max() > 0  # its user embedding moved
    assert all(o.arrays["item_embedding.weight"].shape == (fed.n_items, cfg.dim) for o in outs)
    trained = dev.user_embedding()
    again = make_device(fed, 0, cfg, ledger_dir=None)  # rebuilt from the saved state
    again.load_state_dict(dev.state_dict())
    np.testing.assert_array_equal(again.user_embedding(), trained)
    assert again._model is None
    np.testing.assert_array_equal(dev.model.local_state()["user_embedding.weight"], trained)
    with pytest.raises(ValueError, match="shape"):
        devices[1].set_user_embedding(np.zeros((2, cfg.dim), np.float32))


@pytest.mark.parametrize(
    "case", ["fine", "beyond", "nan", "inf", "shape", "dtype", "keys", "list", "empty"]
)
def test_a_shares_check_is_validate_delta_and_exceeds_range(case):
    import math

    from fedrec.common.privacy.secagg import exceeds_range
    from fedrec.server.validation import validate_delta
    from fedrec.simulations.in_process import _check_share

    reference = {"a": np.zeros((3, 2), np.float32), "b": np.zeros((3, 1), np.float32)}
    arrays = {"a": np.full((3, 2), 0.5, np.float32), "b": np.full((3, 1), -0.25, np.float32)}
    if case == "beyond":
        arrays["b"][1, 0] = -2.0
    elif case in ("nan", "inf"):
        arrays["a"][2, 1] = float(case)
    elif case == "shape":
        arrays["a"] = arrays["a"][:2]
    elif case == "dtype":
        arrays["b"] = arrays["b"].astype(np.float64)
    elif case == "keys":
        arrays["c"] = arrays.pop("b")
    elif case == "list":
        arrays["a"] = arrays["a"].tolist()
    elif case == "empty":
        reference = {}
    why, beyond = _check_share(arrays, reference, 1.0)
    expected = validate_delta(arrays, reference, max_norm=math.inf) if reference else None
    assert why == expected
    assert beyond == (expected is None and exceeds_range(arrays, 1.0))
    assert (why is None) == (case in ("fine", "beyond", "empty"))
    assert beyond == (case == "beyond")
