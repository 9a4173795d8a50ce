import json

import dp_accounting
import numpy as np
import pytest

from fedrec.common.config import RunConfig
from fedrec.common.privacy.mechanisms.user import clip_delta, noisy_mean
from fedrec.common.privacy.randomness import NoiseSource
from fedrec.server.coordinator import Reply, make_coordinator


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
def test_noisy_mean_has_the_calibrated_noise(noise):
    ref = {"w": np.zeros(20000, np.float32)}
    out = noisy_mean([], ref, clip=2.0, noise_multiplier=1.5, expected_count=10.0, noise=noise)
    assert np.std(out["w"]) == pytest.approx(1.5 * 2.0 / 10.0, rel=0.03)
    # Gaussian: the fourth moment of a Gaussian is 3 sigma^4 (a sum of four normals is one)
    z = out["w"] / np.std(out["w"])
    assert np.mean(z**4) == pytest.approx(3.0, abs=0.15)


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
        replies = [
            Reply(node=n, arrays={k: np.ones_like(v) for k, v in coord.state.items()})
            for n in picked
        ]
        coord.aggregate(rnd, replies)
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
