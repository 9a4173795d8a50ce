"""The spectral algorithm's building blocks: contributions, sensitivity, factorization, noise."""

import math

import numpy as np
import pytest

from fedrec.common.algorithms.spectral import (
    PHASES,
    SpectralSpec,
    contribution,
    factorize,
    phase_of_round,
    select_items,
)


def _contrib(items, phase, spec, selected=None, seed=0):
    return contribution(
        np.asarray(items), phase, spec, selected=selected, rng=np.random.default_rng(seed)
    )


@pytest.mark.parametrize("unit", ["example", "user"])
def test_contribution_shape_and_norm_do_not_depend_on_the_items(unit):
    spec = SpectralSpec(n_items=50, dim=3, top_items=20, max_items=8, unit=unit)
    selected = np.arange(0, 40, 2)
    rng = np.random.default_rng(1)
    for _ in range(40):
        items = rng.choice(50, size=int(rng.integers(1, 50)), replace=False)
        for phase in PHASES:
            c = _contrib(
                items,
                phase,
                spec,
                selected if phase == "cooccurrence" else None,
                seed=int(rng.integers(1 << 30)),
            )
            assert c.shape == spec.shape(phase)
            assert np.linalg.norm(c) <= spec.max_norm(phase) + 1e-9
            if unit == "user":
                assert np.linalg.norm(c) <= 1.0 + 1e-9


def test_example_level_sensitivity_holds_for_adding_and_swapping_one_item():
    m = 6
    spec = SpectralSpec(n_items=30, dim=2, top_items=30, max_items=m, unit="example")
    selected = np.arange(30)
    rng = np.random.default_rng(2)
    worst = {p: 0.0 for p in PHASES}
    for _ in range(200):
        base = rng.choice(30, size=int(rng.integers(1, 20)), replace=False)
        new = rng.choice(np.setdiff1d(np.arange(30), base))
        # popularity is uncapped: a neighbour adds one item
        diff = np.linalg.norm(
            _contrib(base, "popularity", spec) - _contrib(np.append(base, new), "popularity", spec)
        )
        worst["popularity"] = max(worst["popularity"], diff)
        assert diff <= spec.sensitivity("popularity") + 1e-9
        # co-occurrence is capped at m items: below the cap a neighbour adds one item; at the
        # cap, the capped subsets of neighbours differ by one swap (the coupling)
        small = base[:m]
        if len(small) < m:
            neighbour = np.append(small, new)
        else:
            neighbour = np.append(np.delete(small, int(rng.integers(m))), new)
        diff = np.linalg.norm(
            _contrib(small, "cooccurrence", spec, selected)
            - _contrib(neighbour, "cooccurrence", spec, selected)
        )
        worst["cooccurrence"] = max(worst["cooccurrence"], diff)
        assert diff <= spec.sensitivity("cooccurrence") + 1e-9, (small, neighbour)
    # the bounds are attained: not loose by more than rounding
    assert worst["cooccurrence"] == pytest.approx(math.sqrt(2 * m))
    assert worst["popularity"] == pytest.approx(1.0)


def test_capping_keeps_at_most_max_items_in_the_cooccurrence_round():
    spec = SpectralSpec(n_items=100, dim=2, top_items=100, max_items=10, unit="example")
    c = _contrib(np.arange(60), "cooccurrence", spec, np.arange(100))
    assert c.sum() == 10 * 11 / 2 and set(np.unique(c)) <= {0.0, 1.0}
    assert _contrib(np.arange(60), "popularity", spec).sum() == 60


def test_cooccurrence_only_counts_selected_items():
    spec = SpectralSpec(n_items=10, dim=1, top_items=3, max_items=10, unit="example")
    selected = np.array([1, 4, 7])
    c = _contrib([1, 2, 7, 9], "cooccurrence", spec, selected)
    # upper triangle of x xᵀ with x = (1, 0, 1) over the selection
    assert c.tolist() == [1, 0, 1, 0, 0, 1]
    with pytest.raises(ValueError, match="selected items"):
        _contrib([1], "cooccurrence", spec, None)


def test_select_items_takes_the_most_popular_with_deterministic_ties():
    spec = SpectralSpec(n_items=6, dim=1, top_items=3)
    assert select_items(np.array([5, 1, 5, 9, 0, 5]), spec).tolist() == [0, 2, 3]
    with pytest.raises(ValueError):
        select_items(np.ones(5), spec)


def test_factorize_recovers_two_taste_groups_and_ranks_unselected_items_last():
    # items 0-9 liked by group A, 10-19 by group B; items 20-29 are never selected
    spec = SpectralSpec(n_items=30, dim=2, top_items=20, max_items=100, unit="example")
    rng = np.random.default_rng(3)
    users = [rng.choice(10, 6, replace=False) for _ in range(30)]
    users += [10 + rng.choice(10, 6, replace=False) for _ in range(30)]
    pop = sum(_contrib(u, "popularity", spec) for u in users)
    selected = select_items(pop, spec)
    assert selected.tolist() == list(range(20))
    gram = sum(_contrib(u, "cooccurrence", spec, selected) for u in users)
    table = factorize(pop, gram, selected, spec)
    emb, bias = table["item_embedding.weight"], table["item_bias.weight"][:, 0]
    assert emb.shape == (30, 2) and bias.shape == (30,)
    assert np.allclose(emb[selected].T @ emb[selected], np.eye(2), atol=1e-5)
    for items, group in ((users[0], set(range(10))), (users[-1], set(range(10, 20)))):
        u = emb[items].sum(axis=0)  # the device's fold-in
        scores = emb @ u + bias
        scores[items] = -np.inf
        top = np.argsort(-scores)[:4]
        assert set(top.tolist()) <= group
        assert scores[20:].max() < scores[selected[~np.isin(selected, items)]].min()


def _dp_accounting_epsilon(sigmas, q, delta):
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    acc = pld_privacy_accountant.PLDAccountant()
    for s in sigmas:
        event = dp_accounting.GaussianDpEvent(s)
        if q < 1:
            event = dp_accounting.PoissonSampledDpEvent(q, event)
        acc.compose(event)
    return acc.get_epsilon(delta)


@pytest.mark.slow
def test_user_level_noise_spends_the_budget_per_dp_accounting():
    from fedrec.common.config import RunConfig

    cfg = RunConfig(
        privacy="user",
        algorithm="spectral",
        num_rounds=2,
        epsilon=4.0,
        delta=1e-4,
        fraction_train=0.6,
        spectral_popularity_share=0.3,
    )
    s_pop, s_co = cfg.noise_multipliers()
    assert s_pop / s_co == pytest.approx(math.sqrt(0.7 / 0.3), rel=1e-6)
    eps = _dp_accounting_epsilon([s_pop, s_co], 0.6, 1e-4)
    assert 0.97 * 4.0 <= eps <= 4.0 * 1.001


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_example_level_noise_spends_the_budget_per_dp_accounting(accountant):
    from fedrec.common.config import RunConfig

    cfg = RunConfig(
        privacy="distributed",
        algorithm="spectral",
        num_rounds=2,
        epsilon=3.0,
        accountant=accountant,
    )
    s_pop, s_co = cfg.noise_multipliers()
    eps = _dp_accounting_epsilon([s_pop, s_co], 1.0, cfg.delta)
    # the devices' accountant (Opacus) and dp-accounting's PLD agree on two Gaussians;
    # RDP is an upper bound, so its calibration is conservative
    assert eps <= 3.0 * 1.01
    assert eps >= (0.8 if accountant == "rdp" else 0.97) * 3.0


def test_calibration_rejects_bad_budgets():
    from fedrec.common.privacy.accountant import calibrate

    for eps in (0.0, -1.0, 1e4):
        with pytest.raises(ValueError, match="target_epsilon"):
            calibrate([(1.0, 1.0, 1)], target_epsilon=eps, target_delta=1e-5, accountant="rdp")
    with pytest.raises(ValueError, match="fixed releases alone"):
        calibrate(
            [(1.0, 1.0, 1)],
            target_epsilon=1.0,
            target_delta=1e-5,
            accountant="rdp",
            fixed=[(0.5, 1.0, 10)],
        )


def test_spec_and_config_validation():
    from fedrec.common.config import RunConfig

    with pytest.raises(ValueError, match="exactly 2 rounds"):
        RunConfig(algorithm="spectral", num_rounds=5)
    with pytest.raises(ValueError, match="item-bias"):
        RunConfig(algorithm="spectral", num_rounds=2, item_bias=False)
    with pytest.raises(ValueError, match="algorithm"):
        RunConfig(algorithm="als")
    with pytest.raises(ValueError, match=r"0 \(automatic\) or at least dim"):
        RunConfig(algorithm="spectral", num_rounds=2, dim=8, spectral_top_items=5)
    with pytest.raises(ValueError):
        SpectralSpec(n_items=10, dim=5, top_items=3)
    with pytest.raises(ValueError):
        SpectralSpec(n_items=10, dim=1, unit="group")
    assert phase_of_round(1) == "popularity" and phase_of_round(2) == "cooccurrence"
    with pytest.raises(ValueError):
        phase_of_round(3)


def test_the_automatic_selection_grows_with_the_devices_and_shrinks_with_the_noise():
    from fedrec.common.algorithms.spectral import AUTO_MAX_ITEMS, AUTO_SCALE, selection_size

    cap = AUTO_MAX_ITEMS
    spec = SpectralSpec(n_items=5000, dim=8, top_items=cap, auto=True, unit="user")
    pop = np.ones(5000)

    def size(devices, sigma):
        return selection_size(spec, pop, devices, sigma)

    # user-level: the signal is one unit of sensitivity per device
    assert size(943, 0.75) == round(AUTO_SCALE * math.sqrt(943 / 0.75))
    assert size(943, 0.75) < size(20_000, 0.75)
    assert size(943, 2.0) < size(943, 0.75)
    assert size(3, 5.0) == 8  # never below dim
    assert size(10**7, 0.5) == cap  # nor above the cap
    assert size(943, 0.0) == cap  # no noise: the whole cap
    small = SpectralSpec(n_items=40, dim=4, top_items=cap, auto=True, unit="user")
    assert selection_size(small, np.ones(40), 10**6, 1.0) == 40  # nor above the catalog
    fixed = SpectralSpec(n_items=5000, dim=8, top_items=300, unit="user")
    assert selection_size(fixed, pop, 20_000, 0.5) == 300  # a set size is kept


def test_example_level_signal_counts_interactions_per_unit_of_sensitivity():
    from fedrec.common.algorithms.spectral import signal_mass

    spec = SpectralSpec(n_items=100, dim=2, max_items=25, unit="example")
    pop = np.full(100, 10.0)
    pop[0] = -50.0  # a noisy count below zero counts as none
    # min(total interactions, devices x m) / (2 sqrt(m))
    assert signal_mass(pop, 1000, spec) == pytest.approx(990 / 10)
    assert signal_mass(pop, 3, spec) == pytest.approx(3 * 25 / 10)
    user = SpectralSpec(n_items=100, dim=2, unit="user")
    assert signal_mass(pop, 1234, user) == 1234.0


@pytest.mark.slow
def test_an_automatic_run_sizes_its_selection_after_the_popularity_round():
    from fedrec.common.algorithms.base import Aggregate
    from fedrec.common.algorithms.spectral import AUTO_MAX_ITEMS, Spectral, selection_size
    from fedrec.common.config import RunConfig
    from fedrec.common.privacy.policy import PolicyViolation

    cfg = RunConfig(privacy="user", algorithm="spectral", num_rounds=2, dim=4, epsilon=8.0)
    assert cfg.spectral_top_items == 0  # the default is automatic
    alg = Spectral(cfg, 3000)
    pop = np.random.default_rng(0).normal(size=3000)
    alg.update(1, alg.initial_state(), Aggregate(count=500, total={"popularity": pop}))
    k = selection_size(alg.spec, pop, 500, alg.noise_multiplier("cooccurrence"))
    assert 4 < k < AUTO_MAX_ITEMS
    task = alg.task(2)
    selected = task.arrays["selected-items"]
    np.testing.assert_array_equal(selected, np.sort(np.argsort(-pop)[:k]))
    assert alg.contribution(task).shapes == {"cooccurrence": (k * (k + 1) // 2,)}
    # a device accepts a selection of dim to AUTO_MAX_ITEMS sorted items and nothing else
    assert len(alg._check_selection("cooccurrence", selected)) == k
    for bad in (np.arange(3), np.arange(AUTO_MAX_ITEMS + 1), selected[::-1]):
        with pytest.raises(PolicyViolation, match=f"selection must be 4 to {AUTO_MAX_ITEMS}"):
            alg._check_selection("cooccurrence", bad)
    total = np.zeros(k * (k + 1) // 2)
    table = alg.update(2, {}, Aggregate(count=500, total={"cooccurrence": total}))
    assert table["item_embedding.weight"].shape == (3000, 4)


def test_without_noise_a_secure_sums_quantization_does_not_break_ties():
    """Privacy off: counts are integers; SecAgg+'s stochastic rounding (errors of one step,
    ~5e-7 here) must not decide which of equally popular items is selected or ranked first
    (CI: the Flower and in-process runs of one seed selected different items)."""
    from fedrec.common.algorithms.base import Aggregate
    from fedrec.common.algorithms.popularity import Popularity
    from fedrec.common.algorithms.spectral import Spectral
    from fedrec.common.config import RunConfig

    exact = np.array([3.0, 2.0, 2.0, 2.0, 1.0, 0.0])
    noisy = exact + np.array([0.0, -5e-7, 0.0, 5e-7, 0.0, 5e-7])
    cfg = RunConfig(privacy="off", algorithm="spectral", num_rounds=2, dim=1, spectral_top_items=2)
    alg = Spectral(cfg, 6)
    alg.update(1, alg.initial_state(), Aggregate(count=4, total={"popularity": noisy}))
    np.testing.assert_array_equal(alg.selected, [0, 1])  # the tie goes to the lower index
    np.testing.assert_array_equal(alg.popularity, exact)
    pop = Popularity(RunConfig(privacy="off", algorithm="popularity", num_rounds=1), 6)
    table = pop.update(1, pop.initial_state(), Aggregate(count=4, total={"count": noisy}))
    np.testing.assert_array_equal(table["item_bias.weight"][:, 0], exact)


def test_recency_is_the_mid_rank_of_each_items_latest_interaction():
    from fedrec.common.data.schema import Interactions

    data = Interactions.from_arrays(
        ["a", "a", "a", "a", "b", "b", "c"],
        ["x", "y", "x", "z", "x", "y", "z"],
        timestamps=[1, 2, 5, 3, 7, 7, 4],
    )
    a, b, c = data.user_item_recency()
    # user a: x last at 5, y at 2, z at 3 -> ranks y < z < x; items in index order x, y, z
    np.testing.assert_allclose(a, [2.5 / 3, 0.5 / 3, 1.5 / 3])
    np.testing.assert_allclose(b, [0.5, 0.5])  # equal times: no order, every item alike
    np.testing.assert_allclose(c, [0.5])
    assert [len(r) for r in data.user_item_recency()] == [len(i) for i in data.user_items()]


def test_user_level_popularity_weighs_recent_items_more_and_keeps_norm_one():
    from fedrec.common.algorithms.spectral import RECENCY_WINDOW, user_indicator

    items, recency = np.array([1, 4, 7]), np.array([0.9, 0.5, 0.1])
    x = user_indicator(items, 10, recency, power=2.0)
    assert np.linalg.norm(x) == pytest.approx(1.0)
    assert x[1] > x[4] > x[7] > 0 and x[[0, 2, 3, 5, 6, 8, 9]].sum() == 0
    ramp = 1 - (1 - recency) * 3 / RECENCY_WINDOW  # 3 items: ramped over the window
    np.testing.assert_allclose(x[items], ramp**2 / np.linalg.norm(ramp**2))
    plain = user_indicator(items, 10)  # no order known, or power 0: the plain indicator
    np.testing.assert_allclose(plain[items], 1 / np.sqrt(3))
    np.testing.assert_allclose(user_indicator(items, 10, recency, power=0.0), plain)
    assert not user_indicator(np.array([], dtype=int), 10, np.array([]), 2.0).any()
    with pytest.raises(ValueError, match="2 entries for 3 items"):  # never a silent fallback
        user_indicator(items[:3], 10, recency[:2], power=2.0)
    spec = SpectralSpec(n_items=10, dim=1, unit="user", recency_power=2.0)
    np.testing.assert_allclose(_contrib(items, "popularity", spec) @ plain, 1.0)
    weighted = contribution(
        items, "popularity", spec, rng=np.random.default_rng(0), recency=recency
    )
    np.testing.assert_allclose(weighted, x)


def test_a_short_history_weighs_its_items_nearly_alike_and_a_long_one_by_recency_itself():
    """The ramp spans at least RECENCY_WINDOW items: with n items, recency r weighs
    (1 - (1 - r) n / max(n, RECENCY_WINDOW))^power, so r^power itself from the window up."""
    from fedrec.common.algorithms.spectral import RECENCY_WINDOW, user_indicator

    def weights(n):
        recency = (np.arange(n) + 0.5) / n  # a history in item order, the latest last
        x = user_indicator(np.arange(n), 3 * RECENCY_WINDOW, recency, power=2.0)
        assert np.linalg.norm(x) == pytest.approx(1.0)
        return x[:n], recency

    long, recency = weights(2 * RECENCY_WINDOW)
    np.testing.assert_allclose(long, recency**2 / np.linalg.norm(recency**2))
    edge, recency = weights(RECENCY_WINDOW)
    np.testing.assert_allclose(edge, recency**2 / np.linalg.norm(recency**2))
    short, _ = weights(6)  # 6 items: oldest / newest (1 - 5.5/W)^2 / (1 - 0.5/W)^2, not 1/121
    w = RECENCY_WINDOW
    assert short[0] / short[-1] == pytest.approx(((w - 5.5) / (w - 0.5)) ** 2)
    assert np.all(np.diff(short) > 0) and short[0] / short[-1] > 0.5


@pytest.mark.parametrize("privacy", ["local", "distributed", "off"])
def test_only_user_level_popularity_weighs_by_recency(privacy):
    """Example-level sensitivity (1 per interaction) holds only for 0/1 entries: removing one
    interaction would move every later item's recency; the configuration cannot turn it on.
    Without privacy it is off too (it cost the non-private run on shuffled histories)."""
    from fedrec.common.algorithms.spectral import Spectral
    from fedrec.common.config import RunConfig

    cfg = RunConfig(privacy=privacy, algorithm="spectral", num_rounds=2, popularity_recency=4.0)
    spec = Spectral.spec_of(cfg, 10)
    assert spec.recency_power == 0.0
    x = contribution(
        np.array([1, 4]),
        "popularity",
        spec,
        rng=np.random.default_rng(0),
        recency=np.array([0.9, 0.1]),
    )
    np.testing.assert_array_equal(np.flatnonzero(x), [1, 4])
    np.testing.assert_array_equal(x[[1, 4]], [1.0, 1.0])


@pytest.mark.slow
@pytest.mark.parametrize(("epsilon", "weighs"), [(8.0, True), (2.0, True), (1.0, False)])
def test_user_level_recency_weighting_stops_where_the_popularity_noise_dominates(epsilon, weighs):
    """The weighting lowers the release's signal for the same sensitivity; above
    RECENCY_MAX_NOISE (warm-sgd at eps 1, delta 1e-5: sigma 9.3) devices send the plain
    indicator, and the noise the algorithm calibrates is the one that decides."""
    from fedrec.common.algorithms.registry import create
    from fedrec.common.algorithms.spectral import RECENCY_MAX_NOISE
    from fedrec.common.config import RunConfig

    cfg = RunConfig.from_flat(
        {"algorithm": "warm-sgd", "privacy": "user", "epsilon": epsilon, "delta": 1e-5}
    )
    spectral = create(cfg, 10).spectral
    assert (spectral.noise[0] <= RECENCY_MAX_NOISE) == weighs
    assert spectral.spec.recency_power == (cfg.popularity_recency if weighs else 0.0)
    x = contribution(
        np.array([1, 4]),
        "popularity",
        spectral.spec,
        rng=np.random.default_rng(0),
        recency=np.array([0.9, 0.1]),
    )
    assert (x[1] > x[4] + 1e-6) == weighs  # the plain indicator weighs both alike
    assert np.linalg.norm(x) == pytest.approx(1.0)


def test_a_device_refuses_recency_that_does_not_match_its_items():
    from fedrec.client.device import Device
    from fedrec.common.config import RunConfig

    cfg = RunConfig()
    kwargs = {"n_items": 10, "dim": 2, "local": cfg.local_config(), "dp": None}
    assert Device("d", np.array([1, 2]), recency=np.array([0.2, 0.9]), **kwargs).recency.shape == (
        2,
    )
    for bad in (np.array([0.5]), np.array([0.5, 1.5]), np.array([np.nan, 0.5])):
        with pytest.raises(ValueError, match="recency must give one value in"):
            Device("d", np.array([1, 2]), recency=bad, **kwargs)
