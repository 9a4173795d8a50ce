"""fedrec tune: Papernot & Steinke's accounting, the validation split, and a small search."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from fedrec.common.config import RunConfig
from fedrec.common.data.splits import validation_split
from fedrec.simulations.federation import federated_dataset
from fedrec.simulations.tune import (
    ORDERS,
    TrialCount,
    default_space,
    gaussian_rdp,
    grid,
    parse_space,
    privacy_plan,
    rdp_epsilon,
    trial_count,
    tuning_rdp,
    validation_data,
)

TINY = {"dataset": "synthetic", "synthetic-users": 60, "synthetic-items": 50}


def _reference_count(count: TrialCount):
    """K's distribution from scipy: logarithmic (η = 0) or a zero-truncated negative binomial."""
    if count.eta == 0:
        return stats.logser(1 - count.gamma)
    nb = stats.nbinom(count.eta, count.gamma)  # failures before the η-th success, K >= 0
    zero = nb.pmf(0)

    class Truncated:
        def pmf(self, k):
            return nb.pmf(k) / (1 - zero)

        def mean(self):
            return nb.mean() / (1 - zero)

    return Truncated()


@pytest.mark.parametrize("eta", [0.0, 1.0, 0.5])
def test_trial_count_has_the_asked_mean_and_samples_its_distribution(eta):
    count = trial_count("tnb", 3.0, eta)
    ref = _reference_count(count)
    assert ref.mean() == pytest.approx(3.0, rel=1e-6)
    draws = np.array([count.sample(np.random.default_rng(s)) for s in range(4000)])
    assert draws.min() >= 1
    sd = math.sqrt(sum((k - 3.0) ** 2 * ref.pmf(k) for k in range(1, 2000)))
    assert abs(draws.mean() - 3.0) < 4 * sd / math.sqrt(len(draws))
    for k in (1, 2, 3):
        p = ref.pmf(k)
        assert abs((draws == k).mean() - p) < 4 * math.sqrt(p * (1 - p) / len(draws))


def _closed_form_tnb(rho: float, count: TrialCount, lam: np.ndarray) -> np.ndarray:
    """Theorem 2 for a Gaussian base (ε(λ) = ρλ), λ̂ optimised over the reals by hand.

    (1+η)[(1 - 1/λ̂) ρ λ̂ + L/λ̂] = (1+η)[ρ(λ̂ - 1) + L/λ̂] is least at λ̂ = sqrt(L/ρ),
    where it is (1+η)(2 sqrt(ρL) - ρ).
    """
    big_l = math.log(1 / count.gamma)
    mean = _reference_count(count).mean()
    return (
        rho * lam
        + (1 + count.eta) * (2 * math.sqrt(rho * big_l) - rho)
        + math.log(mean) / (lam - 1)
    )


@pytest.mark.parametrize(("sigma", "eta"), [(2.0, 0.0), (4.0, 1.0), (8.0, 0.0)])
def test_tnb_bound_matches_theorem_2_for_a_gaussian(sigma, eta):
    count = trial_count("tnb", 5.0, eta)
    rho = 1 / (2 * sigma**2)
    lam = np.asarray(ORDERS)
    assert 1.1 < math.sqrt(math.log(1 / count.gamma) / rho) < 1024  # the optimum is in the grid
    ours = tuning_rdp(gaussian_rdp(sigma), count)
    exact = _closed_form_tnb(rho, count, lam)
    assert np.all(ours >= exact - 1e-9)  # a grid λ̂ can only be worse than the best real one
    assert np.all(ours - exact < 0.02 * (1 + eta) * math.sqrt(rho))  # and close to it


def _gaussian_delta(sigma: float, eps: float) -> float:
    """Exact δ(ε) of a Gaussian of sensitivity 1 (Balle & Wang 2018)."""
    a = 1 / (2 * sigma)
    return stats.norm.cdf(a - eps * sigma) - math.exp(eps) * stats.norm.cdf(-a - eps * sigma)


def test_poisson_bound_matches_theorem_6_for_a_gaussian():
    sigma, mu = 3.0, 4.0
    count = trial_count("poisson", mu)
    lam = np.asarray(ORDERS)
    ours = tuning_rdp(gaussian_rdp(sigma), count, base_delta=lambda e: _gaussian_delta(sigma, e))
    d_hat = np.array([_gaussian_delta(sigma, math.log(1 + 1 / (a - 1))) for a in lam])
    expected = lam / (2 * sigma**2) + mu * d_hat + math.log(mu) / (lam - 1)
    np.testing.assert_allclose(ours, expected, rtol=1e-12)
    with pytest.raises(ValueError, match="base_delta"):
        tuning_rdp(gaussian_rdp(sigma), count)


def test_rdp_to_dp_is_balle_et_al_conversion():
    rdp = tuning_rdp(gaussian_rdp(3.0), trial_count("tnb", 3.0))
    lam = np.asarray(ORDERS)
    delta = 1e-5
    by_hand = rdp + np.log((lam - 1) / lam) - (math.log(delta) + np.log(lam)) / (lam - 1)
    assert rdp_epsilon(rdp, delta) == pytest.approx(float(by_hand.min()), rel=1e-9)
    # more trials cost more, and a search costs more than one trial
    assert rdp_epsilon(rdp, delta) > rdp_epsilon(gaussian_rdp(3.0), delta)
    more = tuning_rdp(gaussian_rdp(3.0), trial_count("tnb", 30.0))
    assert rdp_epsilon(more, delta) > rdp_epsilon(rdp, delta)


def test_trial_count_refuses_bad_parameters():
    for kind, mean, eta, match in [
        ("tnb", 1.0, 0.0, "must be > 1"),
        ("tnb", 3.0, -1.0, "eta"),
        ("poisson", 0.0, 0.0, "> 0"),
        ("binomial", 3.0, 0.0, "tnb or poisson"),
    ]:
        with pytest.raises(ValueError, match=match):
            trial_count(kind, mean, eta)


def _triples(data, users=None, items=None):
    uid = [data.user_map.external(u) for u in data.user] if users is None else users
    iid = [data.item_map.external(i) for i in data.item] if items is None else items
    return sorted(zip(uid, iid, (int(t) for t in data.timestamp), strict=True))


def test_validation_split_holds_train_only_and_cuts_its_last_fifth(tmp_path):
    base = {**TINY, "seed": 3}
    target = federated_dataset(RunConfig.from_flat(base))
    keys, sizes = validation_data(base, tmp_path)
    trial = federated_dataset(RunConfig.from_flat({**keys, "algorithm": "sgd"}))
    assert sizes["devices"] == target.n_users and sizes["items"] == target.n_items

    def back(data):  # the event log's ids are "u%06d"/"i%06d" of the target's indices
        users = [str(int(data.user_map.external(u)[1:])) for u in data.user]
        items = [str(int(data.item_map.external(i)[1:])) for i in data.item]
        return users, items

    def plain(data):
        users = [str(u) for u in data.user]
        items = [str(i) for i in data.item]
        return _triples(data, users, items)

    seen = _triples(trial.data, *back(trial.data))
    assert seen == plain(target.split.train)  # exactly the training half
    assert not set(seen) & set(plain(target.split.test))  # no test interaction anywhere
    expected_val = validation_split(target.split)
    got_val = _triples(trial.split.test, *back(trial.split.test))
    assert got_val == plain(expected_val.test)  # the trials score on the validation slice


def test_default_space_is_around_the_algorithms_own_defaults():
    for algorithm, keys in [("warm-sgd", ("local-lr", "server-lr")), ("sgd", ("local-lr",))]:
        flat = RunConfig.from_flat({**TINY, "algorithm": algorithm}).to_flat()
        space = default_space({**TINY, "algorithm": algorithm})
        for key in keys:
            assert space[key] == pytest.approx([flat[key] * f for f in (0.5, 1, 2)])
        assert len(grid(space)) == 9
    with pytest.raises(ValueError, match="--space"):
        default_space({**TINY, "algorithm": "popularity", "privacy": "off"})


def test_space_parsing_refuses_what_is_not_a_hyper_parameter():
    assert parse_space(["local-lr=0.1, 0.2", "num-rounds=4"]) == {
        "local-lr": ["0.1", "0.2"],
        "num-rounds": ["4"],
    }
    for bad in ["local-lr", "local-lr=", "dataset=ml-100k", "epsilon=1,2"]:
        with pytest.raises(ValueError, match="--space"):
            parse_space([bad])


def test_private_plan_calibrates_the_trials_down_to_the_budget():
    base = {**TINY, "algorithm": "sgd", "privacy": "distributed", "num-rounds": 2}
    points = grid({"local-lr": [0.25, 0.5]})
    count = trial_count("tnb", 3.0)
    plan = privacy_plan(base, points, count, n_devices=2000, tune_epsilon=4.0)
    assert 0.9 * 4.0 <= plan.epsilon <= 4.0
    assert plan.trial_epsilon < 4.0 / 1.5  # a search costs well over one trial
    # the base RDP is the run's calibrated DP-SGD (its tight ε is the trial ε; RDP is above
    # it, by less than a quarter) plus the score release
    score = gaussian_rdp(plan.score_sigma)
    training = np.asarray(plan.base_rdp) - score
    assert plan.trial_epsilon <= rdp_epsilon(training, plan.delta) < 1.25 * plan.trial_epsilon
    again = privacy_plan(base, points, count, n_devices=2000, trial_epsilon=plan.trial_epsilon)
    assert again.epsilon == pytest.approx(plan.epsilon)
    with pytest.raises(ValueError, match="one of"):
        privacy_plan(base, points, count, n_devices=2000)
    with pytest.raises(ValueError, match="score releases alone"):  # 60 devices: sigma 1
        privacy_plan(base, points, count, n_devices=60, tune_epsilon=4.0)


def test_cli_errors_are_one_line(capsys):
    from fedrec.cli import main

    argv = ["tune", "--source", "public", "--tune-epsilon", "3"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--source private only" in err
    assert main(["tune", "--source", "public", "--space", "nope=1,2", "--out", "/nonexistent"]) == 2
    assert "nope" in capsys.readouterr().err


def _simulate_accepts(command: str):
    """The RunConfig ``fedrec simulate`` builds from the printed command line."""
    import shlex

    from fedrec.cli import build_parser
    from fedrec.cli.simulate import config_from_args

    argv = shlex.split(command)
    assert argv[:2] == ["fedrec", "simulate"]
    return config_from_args(build_parser().parse_args(argv[1:]))


@pytest.mark.slow
@pytest.mark.parametrize("source", ["private", "public"])
def test_a_small_tune_returns_a_config_simulate_accepts(tmp_path, capsys, source):
    from fedrec.cli import main

    argv = ["tune", "--source", source, "--out", str(tmp_path), "--privacy", "distributed"]
    argv += ["--set", "synthetic-users=60", "--set", "synthetic-items=50", "--set", "num-rounds=3"]
    argv += ["--set", "reproducible=true", "--space", "local-lr=0.25,1.0"]
    if source == "private":
        argv += ["--mean-trials", "2", "--tune-epsilon", "8"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "tune.json").read_text())
    assert result["trials"] and result["chosen"] in [t["point"] for t in result["trials"]]
    command = next(line.strip() for line in out.splitlines() if "fedrec simulate" in line)
    cfg = _simulate_accepts(command)
    assert cfg.local_lr == float(result["chosen"]["local-lr"]) and cfg.num_rounds == 3
    if source == "private":
        p = result["privacy"]
        assert p["epsilon"] <= 8.0 and p["with_final_run"] > max(p["epsilon"], cfg.epsilon)
        assert all(t["epsilon"] == pytest.approx(p["trial_epsilon"]) for t in result["trials"])
        assert "Papernot & Steinke" in out and "validation split" in out
    else:
        assert len(result["trials"]) == 2 and "no privacy of the target data" in out
