"""The spectral algorithm through the device and the coordinator, in each privacy mode."""

import json
import math

import numpy as np
import pytest

from fedrec.client.device import Contribution, Device, Refusal
from fedrec.common.algorithms.base import Task
from fedrec.common.algorithms.spectral import Spectral, SpectralSpec, contribution
from fedrec.common.config import RunConfig
from fedrec.common.privacy.dpsgd import DPConfig
from fedrec.server.coordinator import Reply, make_coordinator

SPEC = SpectralSpec(n_items=40, dim=2, top_items=12, max_items=5, unit="example")
SELECTED = np.arange(0, 24, 2)


def _algorithm(spec, noise):
    """The spectral algorithm of ``spec``, releasing with the noise multipliers ``noise``."""
    cfg = RunConfig(
        algorithm="spectral",
        num_rounds=2,
        dim=spec.dim,
        spectral_top_items=spec.top_items,
        spectral_max_items=spec.max_items,
        privacy="off",
    )  # no calibration: the test sets spec and noise itself
    algorithm = Spectral(cfg, spec.n_items)
    algorithm.spec, algorithm.noise = spec, noise
    return algorithm


def _device(items, *, dp=True, noise=(2.0, 1.5), on_release=None, budget=100.0, spec=SPEC):
    cfg = RunConfig(dim=spec.dim)
    return Device(
        "d",
        np.asarray(items),
        n_items=spec.n_items,
        dim=spec.dim,
        local=cfg.local_config(),
        dp=DPConfig(
            noise_multiplier=noise[1],
            max_grad_norm=1.0,
            target_delta=1e-5,
            budget_epsilon=budget,
            accountant="rdp",
        )
        if dp
        else None,
        seed=0,
        algorithm=_algorithm(spec, noise),
        on_release=on_release,
    )


def _round(dev, phase, rnd, *, selected=None, noise_share=None):
    arrays = {} if selected is None else {"selected-items": np.asarray(selected)}
    return dev.contribute(
        Task(phase, arrays), dev.model.global_state(), rnd, noise_share=noise_share
    )


def test_device_adds_calibrated_noise_and_records_before_replying():
    events = []
    dev = _device(range(0, 30, 3), on_release=lambda event, **context: events.append(event))
    out = _round(dev, "popularity", 1)
    assert isinstance(out, Contribution) and list(out.arrays) == ["popularity"]
    assert len(events) == 1 and events[0].noise_multiplier == 2.0
    assert events[0].max_grad_norm == pytest.approx(1.0)
    assert events[0].purpose == "spectral-popularity"
    assert dev.accountant.history == [(2.0, 1.0, 1)]
    # a large co-occurrence reply: its noise has std σ·Δ (times the share in a secure sum)
    spec = SpectralSpec(n_items=400, dim=2, top_items=300, max_items=5, unit="example")
    for share in (None, 0.25):
        dev = _device([], spec=spec)
        dev.train_items = np.array([1])  # one item outside the selection: a zero contribution
        out = _round(dev, "cooccurrence", 2, selected=np.arange(300) + 100, noise_share=share)
        std = float(np.std(out.arrays["cooccurrence"]))
        expected = 1.5 * math.sqrt(2 * 5) * (1.0 if share is None else share)
        assert std == pytest.approx(expected, rel=0.02)


def test_reply_has_one_shape_and_no_user_data():
    shapes = set()
    for items in ([3], list(range(20)), [0, 39]):
        dev = _device(items)
        for rnd, phase in ((1, "popularity"), (2, "cooccurrence")):
            out = _round(dev, phase, rnd, selected=SELECTED)
            assert set(out.arrays) == {phase} and out.num_examples == 1 and out.metrics == {}
            shapes.add((phase, out.arrays[phase].shape, out.arrays[phase].dtype))
    assert len(shapes) == 2


def test_device_refuses_a_release_past_its_budget():
    dev = _device(range(10), budget=2.0, noise=(1.0, 1.0))
    out = _round(dev, "popularity", 1)
    assert isinstance(out, Refusal) and out.code == "budget"
    assert dev.accountant.history == []


def test_fold_in_ranks_with_the_devices_own_items():
    dev = _device([0, 1], dp=False)
    emb = np.zeros((40, 2), np.float32)
    emb[[0, 1, 5]] = [[1, 0], [1, 0], [1, 0]]
    emb[7] = [0, 1]
    state = {"item_embedding.weight": emb, "item_bias.weight": np.zeros((40, 1), np.float32)}
    assert dev.recommend(1, state).tolist() == [5]


def _coordinator(privacy, tmp_path, **kw):
    cfg = RunConfig(
        privacy=privacy,
        algorithm="spectral",
        num_rounds=2,
        dim=2,
        fraction_train=1.0,
        epsilon=8.0,
        delta=1e-4 if privacy == "user" else 1e-5,
        spectral_top_items=12,
        spectral_max_items=5,
        accountant="rdp",
        **kw,
    )
    return cfg, make_coordinator(cfg, 40, ledger_dir=tmp_path / "ledgers")


@pytest.mark.slow
def test_user_level_noise_on_the_secure_sums_is_ledgered_and_replayed(tmp_path):
    from fedrec.common.audit.report import audit_run

    cfg, coord = _coordinator("user", tmp_path)
    assert coord.secure  # the contributions are item indicators: only sums reach the server
    with pytest.raises(RuntimeError, match="secure"):
        coord.aggregate(1, [])
    spec = coord.algorithm.spec
    z = cfg.noise_multipliers()
    rng = np.random.default_rng(0)
    users = [rng.choice(40, 8, replace=False) for _ in range(30)]
    clean = sum(contribution(u, "popularity", spec, rng=rng) for u in users)
    plan = coord.plan_round(30, 1)
    assert plan.noise_share == 0.0
    report = coord.aggregate_sum(1, plan, {"popularity": clean.astype(np.float32)}, list(range(30)))
    assert report.aggregated == 30 and report.train_metrics["epsilon_user"] > 0
    # the noise on the released sum has std z_pop (sensitivity 1)
    assert np.std(coord.algorithm.popularity - clean) == pytest.approx(z[0], rel=0.35)
    selected = coord.task(2).arrays["selected-items"]
    gram = sum(contribution(u, "cooccurrence", spec, selected=selected, rng=rng) for u in users)
    coord.aggregate_sum(
        2, coord.plan_round(30, 2), {"cooccurrence": gram.astype(np.float32)}, list(range(30))
    )
    assert coord.state["item_embedding.weight"].shape == (40, 2)
    records = [
        json.loads(line)
        for line in (tmp_path / "ledgers" / "server.jsonl").read_text().splitlines()
    ]
    assert [r["mechanism"]["noise_multiplier"] for r in records] == pytest.approx(list(z))
    assert [r["purpose"] for r in records] == ["spectral-popularity", "spectral-cooccurrence"]
    assert records[-1]["claimed_epsilon"] <= 8.0 + 1e-6
    report = audit_run(
        tmp_path / "ledgers", accountants=("pld",), workers=1, plots=False, write=False
    )
    assert report.ok and report.ledgers[0].epsilon["pld"] <= 8.0 * 1.01


def test_privacy_off_spectral_also_sums_securely_and_adds_no_noise(tmp_path):
    _, coord = _coordinator("off", tmp_path)
    assert coord.secure
    total = np.full(40, 2.0, dtype=np.float32)  # within the bound of three indicator vectors
    coord.aggregate_sum(1, coord.plan_round(3, 1), {"popularity": total}, [0, 1, 2])
    assert np.array_equal(coord.algorithm.popularity, total)
    _, local = _coordinator("local", tmp_path / "local")
    assert not local.secure  # local DP: each contribution carries its full noise


def test_a_reply_of_the_wrong_shape_or_too_large_is_dropped(tmp_path):
    _, coord = _coordinator("local", tmp_path)
    good = np.zeros(40, np.float32)
    replies = [
        Reply(node=0, arrays={"popularity": good}),
        Reply(node=1, arrays={"popularity": np.zeros(39, np.float32)}),
        Reply(node=2, arrays={"cooccurrence": good}),
        Reply(node=3, arrays={"popularity": np.full(40, 1e6, np.float32)}),
    ]
    report = coord.aggregate(1, replies)
    assert report.aggregated == 1 and report.dropped == 3


def test_distributed_secure_sum_is_accounted_at_the_noise_present(tmp_path):
    _, coord = _coordinator("distributed", tmp_path, dropout_policy="account")
    plan = coord.plan_round(10, 1)
    total = {"popularity": np.zeros(40, np.float32)}
    coord.aggregate_sum(1, plan, total, list(range(5)))  # 5 of the 9 provisioned
    z_pop = coord.algorithm.noise_multiplier("popularity")
    history = coord.mechanism.histories["0"]
    assert history == [(pytest.approx(z_pop * math.sqrt(5 / 9)), 1.0, 1)]
    assert coord.algorithm.selected is not None


def test_user_level_contributions_leave_the_device_with_norm_at_most_one():
    spec = SpectralSpec(n_items=40, dim=2, top_items=12, unit="user")
    for items in ([3], list(range(30)), [0, 2, 4, 39]):
        dev = _device(items, dp=False, spec=spec)
        for rnd, phase in ((1, "popularity"), (2, "cooccurrence")):
            out = _round(dev, phase, rnd, selected=SELECTED)
            assert np.linalg.norm(out.arrays[phase]) <= 1.0 + 1e-6
