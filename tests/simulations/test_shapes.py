"""Development shapes: each is the shape it claims, and the defaults beat most-popular on it."""

from pathlib import Path

import numpy as np
import pytest

from fedrec.common.config import RunConfig
from fedrec.simulations.federation import federated_dataset
from fedrec.simulations.shapes import (
    HEAVY_DEVICE,
    SHAPES,
    build,
    measure_shape,
    median_measure,
    shape_table,
    verdicts,
)

ML100K = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "ml-100k"
HAVE_ML100K = (ML100K / "u.data").exists()


def _per_device(base):
    fed = federated_dataset(RunConfig.from_flat(base))
    return fed, np.bincount(fed.data.user, minlength=fed.n_real_users)


@pytest.mark.skipif(not HAVE_ML100K, reason="needs ../shared/datasets/ml-100k")
def test_ml100k_subsets_hold_only_heavy_or_only_light_users(tmp_path):
    _, heavy = _per_device(build(SHAPES["ml-100k-heavy"], tmp_path, str(ML100K)))
    _, light = _per_device(build(SHAPES["ml-100k-light"], tmp_path, str(ML100K)))
    assert heavy.min() >= 200 and len(heavy) > 100
    assert light.max() <= 40 and len(light) > 200
    with pytest.raises(ValueError, match="needs --data-dir"):
        build(SHAPES["ml-100k-light"], tmp_path, "")


def test_synthetic_shapes_have_their_sizes(tmp_path):
    fed, per_device = _per_device(build(SHAPES["heavy-tail"], tmp_path, small=True))
    assert per_device.max() >= HEAVY_DEVICE and np.median(per_device) < 100
    items = build(SHAPES["items-10k"], tmp_path, small=True)
    assert items["synthetic-items"] >= 10_000
    assert build(SHAPES["population-10k"], tmp_path)["synthetic-users"] >= 10_000
    assert build(SHAPES["items-10k"], tmp_path)["synthetic-items"] >= 10_000


def _measured(pop, mf, off, dist, user):
    return {
        "sizes": {
            "devices": 10,
            "items": 20,
            "interactions": 30,
            "heaviest_device": 5,
            "devices_2000_plus": 0,
        },
        "algorithm": "warm-sgd",
        "epsilon": 8.0,
        "most_popular": pop,
        "centralized_mf": mf,
        "runs": {
            "off": {"ndcg@10": off, "delta": None},
            "distributed": {"ndcg@10": dist, "delta": 1e-5},
            "user": {"ndcg@10": user, "delta": 1e-6},
        },
        "seconds": 2.0,
    }


def test_table_says_which_checks_pass():
    m = {**_measured(0.10, 0.20, 0.17, 0.12, 0.09), "seconds": 3.0}
    assert verdicts(m) == {
        "distributed beats most-popular": True,
        "user beats most-popular": False,
        "non-private >= 0.9 x centralized MF": False,
    }
    table = shape_table("heavy-tail", m)
    assert "| warm-sgd | off (non-private federated) | 0.1700 | NO: 0.85 x centralized MF" in table
    assert "| 0.1200 | beats most-popular (+20.0%) |" in table
    assert "δ 1e-06) | 0.0900 | does NOT beat most-popular (-10.0%) |" in table


def test_several_seeds_give_medians_with_each_seeds_figures_beside_them():
    m = median_measure(
        {
            0: _measured(0.10, 0.20, 0.19, 0.12, 0.08),
            1: _measured(0.11, 0.22, 0.15, 0.14, 0.12),
            2: _measured(0.12, 0.21, 0.18, 0.13, 0.13),
        }
    )
    assert (m["most_popular"], m["centralized_mf"]) == (0.11, 0.21)
    assert [m["runs"][k]["ndcg@10"] for k in ("off", "distributed", "user")] == [0.18, 0.13, 0.12]
    assert m["seconds"] == 6.0 and m["runs"]["user"]["delta"] == 1e-6
    assert verdicts(m)["user beats most-popular"] is True  # the median 0.12 > 0.11
    table = shape_table("heavy-tail", m)
    assert "| NDCG@10 (median) | check | seeds 0, 1, 2 |" in table
    assert "| most-popular | - | 0.1100 | - | 0.1000 / 0.1100 / 0.1200 |" in table
    assert "| 0.1200 | beats most-popular (+9.1%) | 0.0800 / 0.1200 / 0.1300 |" in table
    assert "seeds" not in shape_table("heavy-tail", median_measure({0: _measured(*[0.1] * 5)}))


#: (shape, mode) where the defaults do NOT beat most-popular on the small shape (warm-sgd,
#: eps 8, seeded; NDCG@10 measured by this test, reported in issue 14 and docs/recipes.md).
#: strict: the test fails as soon as the defaults win there, so that the entry is removed.
SHORTFALLS: dict[tuple[str, str], str] = {
    # ("ml-100k-heavy", "user") was here (0.2207 vs 0.2548 at 149 devices) until the
    # popularity release weighed each device's items by their recency (popularity-recency)
    # ("heavy-tail", "user") was here (0.1568 vs 0.1733 at 300 devices, seed 0) until the
    # recency weighting ramped over at least RECENCY_WINDOW items (spectral.user_indicator)
}

CASES = [
    pytest.param(
        name,
        mode,
        marks=[pytest.mark.xfail(strict=True, raises=AssertionError, reason=SHORTFALLS[key])]
        if (key := (name, mode)) in SHORTFALLS
        else [],
    )
    for name in SHAPES
    for mode in ("distributed", "user")
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "mode"), CASES)
def test_the_defaults_beat_most_popular_on_each_small_shape(name, mode, tmp_path):
    shape = SHAPES[name]
    if shape.needs_ml100k and not HAVE_ML100K:
        pytest.skip("needs ../shared/datasets/ml-100k")
    base = build(shape, tmp_path, str(ML100K), small=True)
    m = measure_shape(base, centralized=False, modes=(mode,), log=lambda _m: None)
    private, pop = m["runs"][mode]["ndcg@10"], m["most_popular"]
    assert private > pop, f"{name} {mode}: warm-sgd eps 8 {private:.4f} <= most-popular {pop:.4f}"
