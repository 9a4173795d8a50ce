import json

import dp_accounting
import numpy as np
import pytest

from fedrec.common.config import RunConfig
from fedrec.common.privacy.mechanisms.user import clip_delta
from fedrec.common.privacy.randomness import NoiseSource
from fedrec.server.coordinator import make_coordinator


def _pld_epsilon(q, sigma, rounds, delta):
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    acc.compose(event, rounds)
    return acc.get_epsilon(delta)


def test_clip_bounds_the_whole_update():
    d = {"a": np.full((3, 2), 5.0, np.float32), "b": np.ones((3, 1), np.float32)}
    clipped, norm = clip_delta(d, 1.0)
    assert norm > 1
    total = np.sqrt(sum(np.square(v).sum() for v in clipped.values()))
    assert total == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("noise", [NoiseSource.secure(), NoiseSource.seeded(0)])
def test_the_noisy_mean_of_a_secure_sum_has_the_calibrated_noise(noise):
    from fedrec.common.algorithms.registry import create
    from fedrec.common.privacy.mechanisms import make_mechanism

    cfg = RunConfig(
        privacy="user", fraction_train=0.1, delta=1e-4, user_noise_multiplier=1.5, user_clip=2.0
    )
    mechanism = make_mechanism(cfg, create(cfg, 5000), noise=noise)
    assert mechanism.secure()  # every contribution arrives inside a secure sum
    mechanism.sample(list(range(100)), {}, np.random.default_rng(0))  # q·N = 10 expected
    spec = mechanism.algorithm.contribution(mechanism.algorithm.task(1))
    zeros = {k: np.zeros(v, np.float32) for k, v in spec.shapes.items()}
    plan = mechanism.plan(10, spec)
    aggregate, _ = mechanism.aggregate_sum(1, plan, zeros, list(range(10)), spec)
    values = np.concatenate([v.ravel() for v in aggregate.mean.values()])
    assert np.std(values) == pytest.approx(1.5 * 2.0 / 10.0, rel=0.03)
    # Gaussian: the fourth moment of a Gaussian is 3 sigma^4 (a sum of four normals is one)
    z = values / np.std(values)
    assert np.mean(z**4) == pytest.approx(3.0, abs=0.15)
    with pytest.raises(RuntimeError, match="only inside a secure sum"):
        mechanism.aggregate(1, [], spec)


def test_poisson_sampling_rate():
    coord = make_coordinator(
        RunConfig(privacy="user", fraction_train=0.3, delta=1e-4, user_noise_multiplier=1.0), 10
    )
    sizes = [len(coord.sample(range(1000))) for _ in range(50)]
    assert 270 < np.mean(sizes) < 330 and len(set(sizes)) > 5  # varies: Poisson, not fixed


@pytest.mark.slow
def test_user_level_rounds_are_ledgered_and_accounted_like_dp_accounting(tmp_path):
    cfg = RunConfig(
        privacy="user",
        fraction_train=0.2,
        num_rounds=5,
        epsilon=4.0,
        delta=1e-4,
        user_clip=0.5,
        dim=4,
    )
    coord = make_coordinator(cfg, 10, ledger_dir=tmp_path / "ledgers")
    sigma = cfg.user_noise()
    for rnd in range(1, 6):
        picked = coord.sample(list(range(50)))
        total = {k: np.full_like(v, 0.01) * len(picked) for k, v in coord.state.items()}
        coord.aggregate_sum(rnd, coord.plan_round(len(picked), rnd), total, picked)
    records = [
        json.loads(x) for x in (tmp_path / "ledgers" / "server.jsonl").read_text().splitlines()
    ]
    assert [r["round"] for r in records] == [1, 2, 3, 4, 5]
    assert all(r["unit"] == "user" and r["sampling"]["type"] == "poisson" for r in records)
    expected = _pld_epsilon(0.2, sigma, 5, 1e-4)
    assert records[-1]["claimed_epsilon"] == pytest.approx(expected, abs=0.02)
    assert expected <= cfg.epsilon + 0.02  # calibrated to the budget

    from fedrec.common.audit.report import audit_run

    report = audit_run(tmp_path, accountants=("pld",), plots=False, write=False)
    assert report.server is not None and report.server.integrity == "ok"
    assert report.server.epsilon["pld"] == pytest.approx(expected, abs=0.02)
