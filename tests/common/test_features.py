"""Public item features (``algorithm = "features"``): the feature matrix, the item table built
from a DP popularity count, the on-device profile, and the one-release accounting."""

import math

import numpy as np
import pytest

from fedrec.common.algorithms.features import feature_table, profile_fold_in
from fedrec.common.algorithms.spectral import SpectralSpec, contribution, phase_of_round
from fedrec.common.config import RunConfig
from fedrec.common.data.item_features import item_features
from fedrec.common.data.schema import ItemMetadata


def _meta():
    return ItemMetadata(
        genres=[("Drama",), ("Comedy", "Drama"), (), ("Comedy",), ("Horror",)],
        extra={"year": [1950, 1990, None, 1995, 1997]},
    )


def test_item_features_one_hot_genres_and_year_bins():
    feats, names = item_features(_meta(), 5, year_bins=2)
    assert names[:3] == ["genre:Comedy", "genre:Drama", "genre:Horror"]
    assert feats.shape == (5, 3 + 2) and set(np.unique(feats)) <= {0.0, 1.0}
    assert feats[1, :3].tolist() == [1, 1, 0] and feats[2, :3].sum() == 0
    year = feats[:, 3:]
    assert year.sum(axis=1).tolist() == [1, 1, 0, 1, 1]  # the item without a year has none
    assert year[0].argmax() == 0 and year[4].argmax() == 1  # old before new
    assert item_features(_meta(), 5, year_bins=0)[0].shape == (5, 3)


def test_item_features_needs_metadata():
    with pytest.raises(ValueError, match="genres or a release year"):
        item_features(None, 5)
    with pytest.raises(ValueError, match="genres or a release year"):
        item_features(ItemMetadata(titles=["a"] * 5), 5)


def test_feature_table_normalizes_features_and_takes_log_popularity():
    feats, _ = item_features(_meta(), 5, year_bins=2)
    pop = np.array([10.0, 3.0, -4.0, 0.0, 100.0])
    table = feature_table(pop, feats, dim=8)
    emb, bias = table["item_embedding.weight"], table["item_bias.weight"][:, 0]
    assert emb.shape == (5, 8) and not emb[:, 5:].any()
    nonzero = feats.sum(axis=1) > 0
    assert np.allclose(emb[nonzero].sum(axis=1), 1.0)
    assert np.allclose(bias, np.log1p(np.maximum(pop, 0)))  # a negative noisy count is 0
    with pytest.raises(ValueError, match="set dim to at least 5"):
        feature_table(pop, feats, dim=4)


def test_profile_fold_in_tilts_popularity_towards_the_users_genres():
    # two genres, equally popular; the user watched only genre-0 items
    feats = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [1, 0], [0, 1]], dtype=np.float32)
    table = feature_table(np.full(6, 20.0), feats, dim=3)
    emb, bias = table["item_embedding.weight"], table["item_bias.weight"]
    u = profile_fold_in(emb, bias, np.array([0, 1]), scale=2.0, smoothing=0.01)
    assert u.shape == (1, 3) and u[0, 2] == 0.0
    assert u[0, 0] == pytest.approx(2.0 * math.log((1 + 0.01) / (0.5 + 0.01)), rel=1e-5)
    assert u[0, 1] == pytest.approx(2.0 * math.log(0.01 / 0.51), rel=1e-5)
    scores = bias[:, 0] + emb @ u[0]
    assert scores[4] > scores[5]  # unseen genre-0 item above the equally popular genre-1 one
    # popularity still counts: a much more popular genre-1 item can win
    pop = np.full(6, 20.0)
    pop[5] = 1e6
    t2 = feature_table(pop, feats, dim=3)
    u2 = profile_fold_in(
        t2["item_embedding.weight"],
        t2["item_bias.weight"],
        np.array([0, 1]),
        scale=0.5,
        smoothing=0.01,
    )
    s2 = t2["item_bias.weight"][:, 0] + t2["item_embedding.weight"] @ u2[0]
    assert s2[5] > s2[4]
    # a device without items ranks by popularity alone
    assert not profile_fold_in(
        emb, bias, np.array([], dtype=np.int64), scale=2.0, smoothing=0.01
    ).any()


def test_one_round_spec_and_single_release_accounting():
    spec = SpectralSpec(n_items=7, dim=3, rounds=1, popularity_share=1.0)
    assert spec.phases == ("popularity",)
    assert phase_of_round(1, rounds=1) == "popularity"
    with pytest.raises(ValueError):
        phase_of_round(2, rounds=1)
    with pytest.raises(ValueError, match="popularity_share must be 1"):
        SpectralSpec(n_items=7, dim=3, rounds=1, popularity_share=0.5)
    # the one contribution is the spectral popularity one: item-independent shape
    rng = np.random.default_rng(0)
    assert contribution(np.array([1, 4]), "popularity", spec, rng=rng).shape == (7,)
    cfg = RunConfig(algorithm="features", num_rounds=1, epsilon=2.0, accountant="rdp")
    (sigma,) = cfg.noise_multipliers()
    assert cfg.device_noise() == sigma
    from fedrec.common.privacy.accountant import epsilon_of

    assert epsilon_of("rdp", [(sigma, 1.0, 1)], cfg.delta) == pytest.approx(2.0, rel=2e-3)
    two = RunConfig(
        algorithm="spectral",
        num_rounds=2,
        epsilon=2.0,
        accountant="rdp",
        spectral_popularity_share=0.5,
    ).noise_multipliers()
    assert len(two) == 2 and min(two) > sigma  # two releases need more noise each


@pytest.mark.slow
def test_user_level_features_noise_matches_dp_accounting():
    from tests.common.test_spectral import _dp_accounting_epsilon

    cfg = RunConfig(
        privacy="user",
        algorithm="features",
        num_rounds=1,
        epsilon=3.0,
        delta=1e-4,
        fraction_train=1.0,
    )
    (sigma,) = cfg.noise_multipliers()
    assert cfg.user_noise() == sigma
    assert 0.97 * 3.0 <= _dp_accounting_epsilon([sigma], 1.0, 1e-4) <= 3.0 * 1.001


def test_features_config_validation():
    with pytest.raises(ValueError, match="exactly 1 round"):
        RunConfig(algorithm="features", num_rounds=2)
    with pytest.raises(ValueError, match="item-bias"):
        RunConfig(algorithm="features", num_rounds=1, item_bias=False)
    with pytest.raises(ValueError, match="feature-smoothing"):
        RunConfig(algorithm="features", num_rounds=1, feature_smoothing=0.0)
    from fedrec.common.algorithms.features import Features

    spec = Features.spec_of(
        RunConfig(algorithm="features", num_rounds=1, dim=40, feature_scale=1.5, privacy="user"),
        100,
    )
    assert (spec.rounds, spec.unit, spec.feature_scale, spec.dim) == (1, "user", 1.5, 40)
