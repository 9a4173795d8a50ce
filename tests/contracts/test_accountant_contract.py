"""One contract for every accountant fedrec computes ε with, on pinned reference vectors.

The reference figures were computed with ``dp_accounting`` 0.6 (PLD at a 1e-4 grid, and its
RDP accountant), a library independent of both Opacus and fedrec's own audit accountants.
Every accountant a device, a server ledger or the audit uses must reproduce them within its
stated error: PLD and RDP to 1e-3 relative, PRV (an upper bound with error 0.01 in ε) between
the PLD figure and 0.02 above it. Calibration must spend a budget, not exceed it.
"""

import pytest

from fedrec.common.privacy.accountant import calibrate, epsilon_of
from fedrec.common.privacy.accounting import epsilon
from fedrec.common.privacy.events import PrivacyEvent

#: (noise multiplier, sampling rate, steps, δ) → (ε by dp_accounting's PLD, by its RDP)
PINNED = {
    (1.1, 0.01, 1000, 1e-5): (1.5154, 1.7118),
    (0.8, 0.05, 200, 1e-6): (8.8657, 9.9053),
    (2.0, 1.0, 10, 1e-5): (7.5113, 8.0794),
    (4.0, 0.2, 50, 1e-4): (1.2159, 1.3651),
}

DEVICE_AND_SERVER = ("prv", "rdp", "pld")  # fedrec.common.privacy.accountant.epsilon_of
AUDIT = ("pld", "prv", "rdp")  # fedrec.common.privacy.accounting.epsilon (independent code)


def _check(kind, value, pld, rdp):
    if kind == "pld":
        assert value == pytest.approx(pld, rel=1e-3)
    elif kind == "rdp":
        assert value == pytest.approx(rdp, rel=1e-3)
    else:  # PRV: an upper bound within its stated error
        assert pld - 1e-3 <= value <= pld + 0.02


@pytest.mark.parametrize("vector", list(PINNED), ids=str)
@pytest.mark.parametrize("kind", DEVICE_AND_SERVER)
def test_the_signers_accountants_reproduce_the_pinned_vectors(kind, vector):
    sigma, q, steps, delta = vector
    _check(kind, epsilon_of(kind, [(sigma, q, steps)], delta), *PINNED[vector])


@pytest.mark.slow
@pytest.mark.parametrize("vector", list(PINNED), ids=str)
@pytest.mark.parametrize("kind", AUDIT)
def test_the_audits_accountants_reproduce_the_pinned_vectors(kind, vector):
    sigma, q, steps, delta = vector
    value = epsilon([PrivacyEvent(sigma, q, steps)], target_delta=delta, accountant=kind)
    _check(kind, value, *PINNED[vector])


@pytest.mark.parametrize("kind", DEVICE_AND_SERVER)
def test_composition_is_order_free_and_steps_add(kind):
    a, b = (1.1, 0.05, 40), (2.0, 1.0, 3)
    split = [(1.1, 0.05, 15), (2.0, 1.0, 3), (1.1, 0.05, 25)]
    assert epsilon_of(kind, [a, b], 1e-5) == pytest.approx(epsilon_of(kind, [b, a], 1e-5), rel=2e-3)
    assert epsilon_of(kind, split, 1e-5) == pytest.approx(epsilon_of(kind, [a, b], 1e-5), rel=2e-3)
    assert epsilon_of(kind, [], 1e-5) == 0.0
    assert epsilon_of(kind, [(0.0, 1.0, 1)], 1e-5) == float("inf")  # no noise, no guarantee


@pytest.mark.slow
@pytest.mark.parametrize("kind", DEVICE_AND_SERVER)
def test_calibration_spends_the_budget_and_no_more(kind):
    scale = calibrate([(1.0, 0.1, 100)], target_epsilon=3.0, target_delta=1e-5, accountant=kind)
    spent = epsilon_of(kind, [(scale, 0.1, 100)], 1e-5)
    assert 3.0 - 0.01 <= spent <= 3.0 + 1e-9
