"""A population of real and synthetic devices, held compactly."""

import numpy as np
import pytest

from fedrec.simulations.population import PopulationRecency, Ragged, augment, grow, population


def _real(n=30, n_items=50):
    rng = np.random.default_rng(1)
    return [np.unique(rng.integers(0, n_items, size=rng.integers(1, 20))) for _ in range(n)]


def test_population_is_the_real_devices_then_the_synthetic_ones_in_flat_arrays():
    real = _real()
    pop = population(real, 50, 500, seed=3)
    expected = real + augment(real, 50, 500, seed=3)
    assert len(pop) == 500 and len(expected) == 500
    for got, want in zip(pop, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert pop.items.dtype == np.int16 and len(pop.items) == sum(map(len, expected))
    np.testing.assert_array_equal(pop.lengths(), [len(a) for a in expected])
    np.testing.assert_array_equal(pop[-1], expected[-1])
    with pytest.raises(IndexError, match="out of range"):
        pop[500]


def test_a_synthetic_device_takes_its_templates_history():
    """Kept items keep the template's recency; redrawn items take the replaced ones'."""
    real = _real()
    rng = np.random.default_rng(5)
    recency = [rng.permutation((np.arange(len(a)) + 0.5) / len(a)) for a in real]
    pop, templates = grow(real, 50, 400, seed=2)
    assert len(templates) == 370 and templates.max() < 30
    for got, want in zip(pop, population(real, 50, 400, seed=2), strict=True):
        np.testing.assert_array_equal(got, want)  # the templates cost the devices nothing
    rec = PopulationRecency(recency, real, pop, templates, seed=2)
    assert len(rec) == 400
    for u in range(30):
        np.testing.assert_array_equal(rec[u], recency[u])
    redrawn = 0
    for u in range(30, 400):
        t = int(templates[u - 30])
        own, template = pop[u], real[t]
        assert rec[u].shape == own.shape
        # the same history: the template's recencies, each once
        np.testing.assert_allclose(np.sort(rec[u]), np.sort(recency[t]))
        kept = np.isin(own, template)
        where = np.searchsorted(template, own[kept])
        np.testing.assert_array_equal(rec[u][kept], recency[t][where])
        redrawn += int((~kept).sum())
        np.testing.assert_array_equal(rec[u], rec[u])  # the same when asked again
    assert redrawn > 0
    np.testing.assert_array_equal(rec[-1], rec[399])
    with pytest.raises(IndexError, match="out of range"):
        rec[400]
    with pytest.raises(ValueError, match="line up"):
        PopulationRecency(recency[:-1], real, pop, templates)


def test_synthetic_devices_resemble_their_templates_but_are_not_copies():
    real = _real()
    extra = augment(real, 50, 330, seed=0)
    sizes = {len(a) for a in real}
    assert all(len(a) in sizes for a in extra)  # a template's count
    assert all(np.all(np.diff(a) > 0) for a in extra)  # sorted, unique
    copies = sum(any(np.array_equal(a, r) for r in real) for a in extra)
    assert copies < len(extra) / 2


def test_ragged_concat_keeps_order_across_blocks():
    a = Ragged.from_arrays([np.array([1, 2]), np.array([], dtype=int)], 40_000)
    b = Ragged.from_arrays([np.array([3])], 40_000)
    both = Ragged.concat([a, b])
    assert a.items.dtype == np.int32  # beyond int16's range
    assert [x.tolist() for x in both] == [[1, 2], [], [3]]
