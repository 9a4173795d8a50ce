"""Poisoning: fake devices promoting one item, and the defences that fit each privacy mode.

Unit tests of the robust maths (:mod:`fedrec.common.robust`), the defences in the server's
aggregation and on the device, the run-config keys, and (slow) attacks on a small synthetic
federation: the attack lifts the target without defence; the defence brings it down.
"""

import numpy as np
import pytest
import scipy.stats

from fedrec.common.algorithms.base import Task
from fedrec.common.config import RunConfig
from fedrec.common.robust import (
    clip_rows,
    coordinate_median,
    public_row_clip,
    robust_mean,
    row_norm_bound,
    trimmed_mean,
)
from fedrec.server.coordinator import Reply, make_coordinator
from fedrec.simulations.poisoning import (
    Attack,
    _fedrecattack_descent,
    fake_count,
    least_popular_item,
    render_table,
    run_attack,
    verdicts,
)

# --- robust aggregators ---------------------------------------------------------------------


@pytest.mark.parametrize("n, trim", [(10, 0.1), (23, 0.2), (7, 0.25), (50, 0.05), (5, 0.0)])
def test_trimmed_mean_equals_scipy_on_honest_data(n, trim):
    stack = np.random.default_rng(n).normal(size=(n, 6, 3))
    ours = trimmed_mean(stack, trim)
    np.testing.assert_allclose(ours, scipy.stats.trim_mean(stack, trim, axis=0), rtol=1e-12)
    if trim == 0:
        np.testing.assert_allclose(ours, stack.mean(axis=0), rtol=1e-12)


def test_trimmed_mean_drops_a_minority_of_outliers():
    rng = np.random.default_rng(1)
    honest = rng.normal(size=(18, 40))
    poisoned = np.concatenate([honest, np.full((2, 40), 1e6)])
    out = trimmed_mean(poisoned, 0.1)  # 2 of 20 dropped at each end
    assert np.all(np.abs(out) < 1.0)
    assert np.all(np.abs(np.mean(poisoned, axis=0)) > 1e4)  # the mean is captured


def test_a_single_huge_outlier_does_not_move_the_median():
    rng = np.random.default_rng(2)
    honest = rng.normal(size=(11, 30))
    with_outlier = np.concatenate([honest, np.full((1, 30), 1e30)])
    med = coordinate_median(with_outlier)
    ordered = np.sort(honest, axis=0)
    # at most one rank up: between the honest median and the next order statistic
    assert np.all(med >= ordered[5]) and np.all(med <= ordered[6])
    assert np.all(np.abs(med) < 5)


def test_robust_mean_per_key_and_errors():
    a = {"x": np.zeros((3, 2), np.float32), "y": np.zeros((3, 1), np.float32)}
    b = {"x": np.ones((3, 2), np.float32), "y": np.ones((3, 1), np.float32)}
    c = {"x": np.full((3, 2), 100, np.float32), "y": np.full((3, 1), 100, np.float32)}
    out = robust_mean([a, b, c], "median")
    assert set(out) == {"x", "y"} and np.all(out["x"] == 1) and out["x"].dtype == np.float32
    with pytest.raises(ValueError, match="expected 'trimmed-mean' or 'median'"):
        robust_mean([a], "mean")
    with pytest.raises(ValueError, match="nothing to aggregate"):
        robust_mean([], "median")
    with pytest.raises(ValueError, match=r"trim must lie in \[0, 0.5\)"):
        trimmed_mean(np.zeros((3, 1)), 0.5)


def test_clip_rows_bounds_each_item_row_jointly():
    rng = np.random.default_rng(3)
    emb = rng.normal(scale=2.0, size=(50, 8)).astype(np.float32)
    bias = rng.normal(scale=2.0, size=(50, 1)).astype(np.float32)
    emb[0], bias[0] = 0.01, 0.01  # a small row stays as it is
    out = clip_rows({"item_embedding.weight": emb, "item_bias.weight": bias}, 0.5)
    norms = np.sqrt(
        np.square(out["item_embedding.weight"]).sum(1) + np.square(out["item_bias.weight"][:, 0])
    )
    assert np.all(norms <= 0.5 + 1e-6) and np.sum(norms > 0.499) >= 45
    np.testing.assert_array_equal(out["item_embedding.weight"][0], emb[0])
    # direction kept: each clipped row is a positive multiple of the original
    cos = (out["item_embedding.weight"] * emb).sum(1) / (
        np.linalg.norm(out["item_embedding.weight"], axis=1) * np.linalg.norm(emb, axis=1)
    )
    np.testing.assert_allclose(cos, 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="positive finite"):
        clip_rows({"x": emb}, float("nan"))


def test_row_norm_bound_is_public_and_grows_with_the_noise():
    cfg = RunConfig(algorithm="sgd", privacy="off", local_epochs=2)
    assert public_row_clip(cfg) == pytest.approx(0.5 * 2 * 2 * 1.0 / 40)  # lr·steps·2·C/B
    noisy = row_norm_bound(
        lr=0.5, steps=2, max_grad_norm=1, batch_size_norm=40, noise_std=0.1, row_size=9
    )
    assert noisy > public_row_clip(cfg) + 0.1 * 3  # the noise's row norm is at least √9·std
    local = RunConfig(privacy="local", local_epochs=2, noise_multiplier=2.0)
    assert public_row_clip(local) > public_row_clip(cfg)
    user = RunConfig(
        privacy="user", local_epochs=2, user_clip=0.01, delta=1e-4, user_noise_multiplier=1.0
    )
    assert public_row_clip(user) == 0.01  # never above a whole update's bound


# --- the defences in the round ---------------------------------------------------------------


def _coordinator(**keys):
    cfg = RunConfig(algorithm="sgd", privacy="off", dim=4, reproducible=True, server_lr=1.0, **keys)
    return make_coordinator(cfg, 30)


def _round(coord, fake_value):
    rng = np.random.default_rng(4)
    reference, _ = coord.reply_reference(1)
    replies = [
        Reply(
            node=i,
            arrays={
                k: rng.normal(scale=0.01, size=v.shape).astype(np.float32)
                for k, v in reference.items()
            },
            num_examples=5,
        )
        for i in range(19)
    ]
    poison = {k: np.zeros(v.shape, np.float32) for k, v in reference.items()}
    poison["item_bias.weight"][7] = fake_value  # one fake pushes item 7
    replies.append(Reply(node=19, arrays=poison, num_examples=5))
    before = {k: v.copy() for k, v in coord.state.items()}
    coord.aggregate(1, replies, list(range(20)))
    return coord.state["item_bias.weight"][7, 0] - before["item_bias.weight"][7, 0]


@pytest.mark.parametrize("keys", [{"robust_aggregation": "median"}, {"row_clip": 0.05}])
def test_server_defences_bound_one_fakes_push(keys):
    undefended = _round(_coordinator(), 50.0)
    defended = _round(_coordinator(**keys), 50.0)
    assert undefended > 2.0  # the mean: 50 / 20
    assert abs(defended) < 0.05


def test_trimmed_mean_in_the_round_equals_the_trimmed_mean_of_the_replies():
    coord = _coordinator(robust_aggregation="trimmed-mean", robust_trim=0.1)
    moved = _round(coord, 50.0)
    assert abs(moved) < 0.05


def test_user_level_row_clip_shrinks_the_secure_range_and_clips_on_the_device():
    from fedrec.common.algorithms.sgd import SGD

    keys = {"privacy": "user", "delta": 1e-4, "user_clip": 1.0, "user_noise_multiplier": 1.0}
    plain = SGD(RunConfig(**keys), 30).contribution(Task("train"))
    clipped = SGD(RunConfig(**keys, row_clip=0.02), 30).contribution(Task("train"))
    assert clipped.coordinate_bound == 0.02 < plain.coordinate_bound


def test_distributed_row_clip_clamps_the_steps_and_shrinks_the_range():
    import torch

    from fedrec.common.algorithms.sgd import SGD
    from fedrec.common.model.mf import MatrixFactorization
    from fedrec.common.privacy.accountant import make_accountant
    from fedrec.common.privacy.dpsgd import DPConfig, LocalConfig, train_local

    keys = {"privacy": "distributed", "noise_multiplier": 1.0, "local_epochs": 2}
    plain = SGD(RunConfig(**keys), 30).contribution(Task("train"))
    clipped = SGD(RunConfig(**keys, row_clip=0.02), 30).contribution(Task("train"))
    assert clipped.coordinate_bound == 0.02 < plain.coordinate_bound
    local = LocalConfig(epochs=2, sample_rate=1.0, lr=0.5, loss="bce", n_negatives=4)
    dp = DPConfig(noise_multiplier=0.0, max_grad_norm=1.0, target_delta=1e-5, budget_epsilon=1e9)
    moved = []
    for bound in (None, 0.001):
        model = MatrixFactorization(1, 30, 4, generator=torch.Generator().manual_seed(0))
        before = model.global_state()
        train_local(
            model,
            np.arange(10),
            local=local,
            dp=dp,
            accountant=make_accountant("rdp"),
            generator=torch.Generator().manual_seed(1),
            noise_share=1.0,
            update_bound=bound,
        )
        after = model.global_state()
        moved.append(max(float(np.abs(after[k] - before[k]).max()) for k in after))
    assert moved[0] > 0.01 and moved[1] <= 0.001 * (1 + 1e-5)  # noise-free: the clamp alone


# --- run-config keys ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "keys, message",
    [
        ({"robust-aggregation": "mean"}, "'robust-aggregation' = 'mean': expected one of 'none'"),
        ({"robust-trim": 0.5}, r"'robust-trim' = 0.5: expected a finite number in \[0, 0.5\)"),
        ({"robust-trim": float("nan")}, "'robust-trim' = nan"),
        ({"row-clip": -1}, "'row-clip' = -1"),
        (
            {"robust-aggregation": "median", "privacy": "distributed"},
            "only the secure sum",
        ),
        ({"robust-aggregation": "trimmed-mean", "privacy": "user"}, "only the secure sum"),
        *(
            (
                {"robust-aggregation": "median", "privacy": "off", "algorithm": name, **extra},
                f"'none' with algorithm {name} and privacy off .*inside a secure sum",
            )
            for name, extra in [
                ("popularity", {"num-rounds": 1}),
                ("spectral", {"num-rounds": 2}),
                ("warm-sgd", {"num-rounds": 5}),
            ]
        ),
    ],
)
def test_bad_defence_keys_are_one_clear_line(keys, message):
    with pytest.raises(ValueError, match=message) as err:
        RunConfig.from_flat(keys)
    assert "\n" not in str(err.value)


def test_defence_keys_are_listed_with_their_values(capsys):
    from fedrec.cli import main

    assert main(["simulate", "--list-keys"]) == 0
    out = capsys.readouterr().out
    assert "robust-aggregation" in out and "'trimmed-mean'" in out and "'median'" in out
    assert "row-clip" in out and "robust-trim" in out
    RunConfig.from_flat({"robust-aggregation": "median", "privacy": "local", "row-clip": 0.3})
    RunConfig.from_flat({"robust-aggregation": "median", "privacy": "off", "algorithm": "sgd"})
    # with device noise, popularity's releases are individual replies: the defence applies
    RunConfig.from_flat(
        {
            "robust-aggregation": "median",
            "privacy": "local",
            "algorithm": "popularity",
            "num-rounds": 1,
        }
    )


# --- attack pieces --------------------------------------------------------------------------


def test_fake_counts_and_the_target():
    assert fake_count(95, 0.05) == 5 and fake_count(943, 0.05) == 50 and fake_count(10, 0) == 0
    train = [np.array([0, 1, 2]), np.array([0, 1]), np.array([0, 3])]
    assert least_popular_item(train, 6) == 2  # items 4 and 5 have no interaction: not "among"
    with pytest.raises(ValueError, match="expected one of"):
        Attack("flood", 0.05)


def test_fedrecattack_direction_raises_the_target_on_few_rows():
    rng = np.random.default_rng(5)
    state = {
        "item_embedding.weight": rng.normal(size=(200, 4)),
        "item_bias.weight": rng.normal(size=(200, 1)),
    }
    users = rng.normal(size=(30, 4))
    step = _fedrecattack_descent(state, users, target=17, top_k=10, max_items=25)
    touched = np.flatnonzero(
        np.abs(step["item_embedding.weight"]).sum(1) + np.abs(step["item_bias.weight"][:, 0])
    )
    assert 17 in touched and len(touched) <= 25
    gain = users @ step["item_embedding.weight"][17] + step["item_bias.weight"][17, 0]
    assert gain.mean() > 0  # the target's scores rise on average


def test_verdicts_pick_the_cheapest_defence_that_holds():
    def row(defence, attack, er, ndcg):
        return {
            "mode": "off",
            "defence": defence,
            "attack": attack,
            "share": 0.05 if attack != "none" else 0.0,
            "er@10": er,
            "ndcg@10": ndcg,
            "fakes": 5,
            "target": 3,
        }

    rows = [
        row("none", "none", 0.0, 0.20),
        row("none", "within-norm", 0.9, 0.18),
        row("median", "none", 0.0, 0.15),
        row("median", "within-norm", 0.0, 0.15),
        row("trimmed-mean", "none", 0.0, 0.195),
        row("trimmed-mean", "within-norm", 0.01, 0.19),
    ]
    (v,) = verdicts(rows)
    assert v["defence"] == "trimmed-mean" and v["holds"]  # median costs 0.05
    assert "| off | trimmed-mean | 0.010 | +0.0050 | yes |" in render_table(rows, ["header"])


# --- attacks on a small synthetic federation (slow) --------------------------------------------

_SMALL = {
    "algorithm": "sgd",
    "synthetic-users": 100,
    "synthetic-items": 40,
    "num-rounds": 4,
    "fraction-train": 0.5,
    "local-epochs": 1,
    "reproducible": True,
}


def _small(**keys):
    return RunConfig.from_flat({**_SMALL, **keys})


@pytest.mark.slow
def test_within_norm_attack_lifts_the_target_and_trimmed_mean_brings_it_down():
    attack = Attack("within-norm", 0.05)
    clean = run_attack(_small(privacy="off"), Attack())
    attacked = run_attack(_small(privacy="off"), attack)
    defended = run_attack(_small(privacy="off", **{"robust-aggregation": "trimmed-mean"}), attack)
    assert clean["er@10"] <= 0.05
    assert attacked["er@10"] >= 0.5  # the attack works
    assert defended["er@10"] <= 0.05  # the defence holds
    assert attacked["fakes"] == 6


@pytest.mark.slow
def test_fedrecattack_lifts_the_target_under_local_dp_and_trimmed_mean_brings_it_down():
    attack = Attack("fedrecattack", 0.1, public_fraction=0.3)
    clean = run_attack(_small(privacy="local"), Attack())
    attacked = run_attack(_small(privacy="local"), attack)
    defended = run_attack(_small(privacy="local", **{"robust-aggregation": "trimmed-mean"}), attack)
    assert attacked["er@10"] >= clean["er@10"] + 0.3
    assert defended["er@10"] <= attacked["er@10"] - 0.3


@pytest.mark.slow
def test_fakes_stay_within_the_honest_norm_distribution():
    from fedrec.server.round_loop import run_round
    from fedrec.simulations import poisoning

    seen = []
    original = poisoning.PoisonedTransport.train

    def spy(self, request, nodes):
        replies = original(self, request, nodes)
        seen.append((replies, self.genuine))
        return replies

    poisoning.PoisonedTransport.train = spy
    try:
        run_attack(_small(privacy="off", **{"num-rounds": 2}), Attack("within-norm", 0.05))
    finally:
        poisoning.PoisonedTransport.train = original
    assert run_round  # the product's round runs the transport
    for replies, genuine in seen:
        norm = {
            r.node: float(np.sqrt(sum(np.square(v).sum() for v in r.arrays.values())))
            for r in replies
            if r.arrays
        }
        honest = [v for u, v in norm.items() if u < genuine]
        fakes = [v for u, v in norm.items() if u >= genuine]
        assert fakes and min(honest) <= min(fakes) and max(fakes) <= max(honest)


@pytest.mark.slow
def test_attack_command_quick_prints_the_table(capsys):
    from fedrec.cli import main

    rc = main(
        [
            "attack",
            "--quick",
            "--modes",
            "off",
            "--attacks",
            "within-norm",
            "--shares",
            "5",
            "--rounds",
            "4",
            "--jobs",
            "1",
            "--set",
            "synthetic-users=100",
            "--set",
            "synthetic-items=40",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "| off | none | within-norm 5% | 6 |" in out and "| off | median | clean | 0 |" in out
    assert "Best defence per mode at 5% within-norm fakes" in out


def test_attack_command_rejects_bad_input(capsys):
    from fedrec.cli import main

    assert main(["attack", "--quick", "--attacks", "flood"]) == 2
    assert "--attacks ['flood']" in capsys.readouterr().err
    assert main(["attack", "--quick", "--shares", "60"]) == 2
    assert main(["attack", "--data-dir", ""]) == 2
    assert "needs --data-dir" in capsys.readouterr().err
