"""One-run empirical audit (Steinke, Nasr, Jagielski 2023): the bound, the harness, DP-SGD."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedrec.common.audit.canary import (
    CanarySizingError,
    detectable_epsilon,
    gaussian_epsilon_estimate,
    one_run_epsilon_lower_bound,
    one_run_p_value,
    run_canary_audit,
    size_canaries,
)
from fedrec.common.privacy.accountant import epsilon_of
from fedrec.common.privacy.accounting import PrivacyEvent, epsilon

# --------------------------------------------------------------------------- the bound


@pytest.mark.parametrize(
    ("m", "r", "v", "expected"),
    [(1000, 100, 100, 3.465), (1000, 500, 400, 1.198)],
)
def test_pinned_one_run_bounds(m, r, v, expected):
    assert one_run_epsilon_lower_bound(m, r, v, beta=0.05, delta=1e-5) == pytest.approx(
        expected, abs=0.005
    )


def test_bound_is_where_the_p_value_crosses_beta():
    eps = one_run_epsilon_lower_bound(1000, 500, 400, beta=0.05, delta=1e-5)
    assert one_run_p_value(1000, 500, 400, epsilon=eps - 1e-6, delta=1e-5) < 0.05
    assert one_run_p_value(1000, 500, 400, epsilon=eps + 1e-6, delta=1e-5) >= 0.05


def test_bound_properties():
    # No evidence, no bound.
    assert one_run_epsilon_lower_bound(1000, 0, 0) == 0.0
    assert one_run_epsilon_lower_bound(1000, 100, 50) == 0.0  # chance level
    # More correct guesses, larger bound; more δ, smaller bound.
    bounds = [one_run_epsilon_lower_bound(1000, 100, v) for v in (70, 80, 90, 100)]
    assert bounds == sorted(bounds) and bounds[0] > 0
    assert one_run_epsilon_lower_bound(1000, 100, 100, delta=1e-3) < bounds[-1]
    # δ = 0 is the pure-DP bound: P[Binomial(r, e^ε/(1+e^ε)) >= v] = β.
    pure = one_run_epsilon_lower_bound(1000, 100, 100, delta=0.0)
    p = 1 / (1 + np.exp(-pure))
    assert p**100 == pytest.approx(0.05, rel=1e-6)


def test_p_value_is_increasing_in_epsilon():
    values = [one_run_p_value(500, 200, 150, epsilon=e, delta=1e-5) for e in np.linspace(0, 5, 21)]
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))


@pytest.mark.parametrize(("m", "r", "v"), [(10, 20, 5), (10, 5, 6), (-1, 0, 0)])
def test_invalid_counts(m, r, v):
    with pytest.raises(ValueError):
        one_run_epsilon_lower_bound(m, r, v)


# --------------------------------------------------------------------------- the harness


def test_harness_bookkeeping():
    seen = {}

    def oracle(included):
        seen["included"] = included.copy()
        return included.astype(float) + 0.01 * np.arange(len(included))  # a perfect scorer

    result = run_canary_audit(oracle, m=400, seed=3, k_guesses=(30, 50))
    assert result.r == 80 and result.v == 80
    assert np.array_equal(result.included, seen["included"])
    assert (result.guesses == 1).sum() == 30 and (result.guesses == -1).sum() == 50
    r, v, eps = result
    assert eps == one_run_epsilon_lower_bound(400, 80, 80, beta=0.05, delta=1e-5) > 0
    # Same seed, same draw.
    again = run_canary_audit(oracle, m=400, seed=3, k_guesses=(30, 50))
    assert np.array_equal(again.included, result.included)


def test_harness_with_a_blind_scorer_finds_nothing():
    rng = np.random.default_rng(0)
    result = run_canary_audit(lambda inc: rng.normal(size=len(inc)), m=1000, seed=1, k_guesses=100)
    assert result.epsilon_lower_bound == 0.0


def test_harness_validates_scores():
    with pytest.raises(ValueError, match="scores"):
        run_canary_audit(lambda inc: np.zeros(3), m=10, seed=0, k_guesses=2)
    with pytest.raises(ValueError, match="k_guesses"):
        run_canary_audit(lambda inc: np.zeros(10), m=10, seed=0, k_guesses=6)


# --------------------------------------------------------------------------- what is detectable


def test_400_perfect_guesses_cannot_detect_a_claim_above_about_4_9():
    # the audit: 400 guesses; no run, however broken, could refute 7.08 or 10.7
    top = detectable_epsilon(1000, 400, delta=1e-5)
    assert 4.8 < top < 4.95
    assert one_run_epsilon_lower_bound(1000, 400, 400, delta=1e-5) == pytest.approx(top, abs=1e-5)
    assert one_run_epsilon_lower_bound(1000, 400, 399, delta=1e-5) < top


@pytest.mark.parametrize("claim", [1.0, 3.0, 6.0, 8.0])
def test_sizing_makes_the_claim_detectable_with_the_fewest_guesses(claim):
    sizing = size_canaries(claim, delta=1e-5)
    assert sizing.k_plus == sizing.k_minus and sizing.r % 2 == 0
    assert sizing.m >= sizing.r + 6 * np.sqrt(sizing.r)  # both sides hold r/2 canaries
    assert sizing.detectable >= claim
    assert detectable_epsilon(sizing.m, sizing.r, delta=1e-5) == pytest.approx(sizing.detectable)
    fewer = sizing.r - 2
    m_fewer = fewer + int(np.ceil(6 * np.sqrt(fewer))) + 2
    assert detectable_epsilon(m_fewer, fewer, delta=1e-5) < claim + 1e-4


def test_sizing_with_a_margin_and_why_a_claim_near_8_leaves_no_room_for_errors():
    sizing = size_canaries(6.0, delta=1e-5, margin=0.5)
    assert sizing.detectable >= 6.5
    # at δ = 1e-5 the bound saturates near 8.1: one wrong guess costs more than the room left
    near = size_canaries(8.0, delta=1e-5)
    assert one_run_epsilon_lower_bound(near.m, near.r, near.r - 1, delta=1e-5) < 8.0


def test_sizing_refuses_a_claim_no_one_run_audit_can_refute():
    # the 2mδ term caps the bound near ln(β/δ) = 6.2 at δ = 1e-4, whatever m
    with pytest.raises(CanarySizingError, match="cannot be refuted") as exc:
        size_canaries(8.0, delta=1e-4, max_canaries=30_000)
    assert 5.0 < exc.value.best_detectable < 6.3
    with pytest.raises(ValueError, match="finite"):
        size_canaries(float("inf"), delta=1e-5)


def test_result_states_its_detectable_maximum():
    result = run_canary_audit(lambda inc: inc.astype(float), m=200, seed=0, k_guesses=60)
    assert result.v == result.r == 120
    assert result.detectable_epsilon == pytest.approx(result.epsilon_lower_bound, abs=1e-5)


def test_gaussian_estimate_recovers_a_gaussian_mechanism():
    rng = np.random.default_rng(0)
    for sigma in (1.0, 2.0):
        truth = epsilon_of("pld", [(sigma, 1.0, 1)], 1e-5)
        inserted = rng.normal(1.0, sigma, 50_000)  # sensitivity 1, noise sigma
        held_out = rng.normal(0.0, sigma, 50_000)
        assert gaussian_epsilon_estimate(inserted, held_out, delta=1e-5) == pytest.approx(
            truth, rel=0.05
        )
    same = rng.normal(size=50_000)
    assert gaussian_epsilon_estimate(same[:25_000], same[25_000:], delta=1e-5) < 0.5
    assert gaussian_epsilon_estimate(np.ones(10), np.zeros(10)) == float("inf")
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_epsilon_estimate(np.ones(1), np.zeros(10))


# --------------------------------------------------------------------------- DP-SGD, once

M = 1000  # canaries
N_REAL, D_REAL = 200, 5
Q, STEPS, CLIP, LR, SCALE = 0.2, 40, 1.0, 1.0, 10.0
CLAIMED_SIGMA = 3.0


def dp_sgd_train_and_score(noise_multiplier: float, *, seed: int = 0):
    """Logistic regression under Opacus DP-SGD; canaries are outliers with random labels.

    Canary ``c`` lives on its own input coordinate (a "Dirac" canary), so the model can only
    learn its label by training on it; the score is the canary's margin under the trained
    model, which needs no knowledge of the inclusion bits.
    """
    g = np.random.default_rng(seed)
    x_real = g.normal(size=(N_REAL, D_REAL)).astype(np.float32)
    y_real = (x_real @ g.normal(size=D_REAL) > 0).astype(np.float32)
    y_canary = g.integers(0, 2, M).astype(np.float32)
    info: dict[str, float] = {}

    def train_and_score(included: np.ndarray) -> np.ndarray:
        torch.manual_seed(seed)
        idx = np.flatnonzero(included)
        x = np.zeros((N_REAL + len(idx), D_REAL + M), np.float32)
        x[:N_REAL, :D_REAL] = x_real
        x[N_REAL + np.arange(len(idx)), D_REAL + idx] = SCALE
        y = np.concatenate([y_real, y_canary[idx]])
        data = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
        batch = round(Q * len(data))
        model = nn.Linear(D_REAL + M, 1, bias=False)
        nn.init.zeros_(model.weight)
        from opacus import PrivacyEngine

        engine = PrivacyEngine(accountant="prv")
        model, optimizer, loader = engine.make_private(
            module=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=LR),
            data_loader=DataLoader(data, batch_size=batch),
            noise_multiplier=noise_multiplier,
            max_grad_norm=CLIP,
            poisson_sampling=True,
        )
        loss_fn = nn.BCEWithLogitsLoss()
        steps = 0
        while steps < STEPS:
            for xb, yb in loader:
                if steps == STEPS:
                    break
                optimizer.zero_grad()
                if len(xb):
                    loss_fn(model(xb).squeeze(-1), yb).backward()
                optimizer.step()
                steps += 1
        info["sample_rate"] = loader.sample_rate  # what Opacus really samples with
        if noise_multiplier > 0:
            info["engine_epsilon"] = engine.get_epsilon(1e-5)
        weights = model._module.weight.detach().numpy()[0, D_REAL:]
        return (2 * y_canary - 1) * weights * SCALE  # margin of each canary's label

    return train_and_score, info


def claimed_epsilon(sample_rate: float) -> float:
    """The ε a run with σ = CLAIMED_SIGMA claims (what its device would record)."""
    release = PrivacyEvent(CLAIMED_SIGMA, sample_rate, STEPS)
    return epsilon([release], target_delta=1e-5, accountant="prv")


@pytest.fixture(autouse=True)
def _quiet_opacus():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_honest_dp_sgd_run_stays_below_its_claim():
    train_and_score, info = dp_sgd_train_and_score(CLAIMED_SIGMA)
    result = run_canary_audit(train_and_score, m=M, seed=1, beta=0.05, delta=1e-5, k_guesses=100)
    claimed = claimed_epsilon(info["sample_rate"])
    assert info["engine_epsilon"] == pytest.approx(claimed, abs=1e-6)  # Opacus agrees
    assert result.r == 200
    assert result.epsilon_lower_bound <= claimed


def test_run_with_noise_off_is_caught():
    train_and_score, info = dp_sgd_train_and_score(0.0)  # DP "deliberately broken"
    result = run_canary_audit(train_and_score, m=M, seed=1, beta=0.05, delta=1e-5, k_guesses=100)
    claimed = claimed_epsilon(info["sample_rate"])  # what the broken run still claims
    assert result.v > 0.95 * result.r
    assert result.epsilon_lower_bound > claimed, (result.epsilon_lower_bound, claimed)
