"""Empirical privacy auditing with one training run (Steinke, Nasr, Jagielski 2023).

The audit (their "Privacy Auditing with One (1) Training Run", NeurIPS 2023): draw ``m``
canaries (interactions, or whole canary devices for user-level DP), include each one in the
training data independently with probability ½, train **once**, score every canary from the
trained model alone, and guess "included" for the ``k₊`` highest scores and "excluded" for the
``k₋`` lowest (abstain on the rest). With ``r = k₊ + k₋`` guesses of which ``v`` are right, an
(ε, δ)-DP training run makes ``v`` no larger than a Binomial(r, e^ε/(1+e^ε)) variable would be,
up to a δ term; so observing ``v`` rejects every ε whose p-value is below ``β``. The largest
rejected ε is an empirical **lower bound** on the run's ε at confidence ``1 - β``.

It must never exceed the accountant's upper bound (else the accounting or the implementation is
wrong); a run with the noise switched off is caught because its bound exceeds what was claimed.

:func:`one_run_epsilon_lower_bound` computes the bound exactly as the paper's reference code
(its appendix; the (ε, δ) version of their main theorem): the p-value of ``v`` correct out of ``r``
is ::

    P[Binomial(r, p) >= v] + 2 m δ · max_{1<=i<=v} P[v - i <= Binomial(r, p) < v] / i,
    p = e^ε / (1 + e^ε),

and the bound is the largest ε with p-value ``< β``, found by bisection (the p-value increases
with ε). With β = 0.05 and δ = 1e-5: m = 1000, r = 100, v = 100 gives 3.465; m = 1000, r = 500,
v = 400 gives 1.198. With δ = 0 the δ term vanishes and this is their pure ε-DP bound.

Validity needs what the paper needs: the scores may depend on the trained model only, not on
the inclusion bits, and the canaries' inclusion must be the only randomness the guesses are
correlated with. :func:`run_canary_audit` enforces the bookkeeping; the scoring is the
caller's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = [
    "CanaryAuditResult",
    "one_run_p_value",
    "one_run_epsilon_lower_bound",
    "run_canary_audit",
]


def _check_counts(m: int, r: int, v: int) -> None:
    if not (0 <= v <= r <= m):
        raise ValueError(
            f"need 0 <= v <= r <= m (v correct out of r guesses over m canaries), got m={m}, "
            f"r={r}, v={v}."
        )


def one_run_p_value(m: int, r: int, v: int, *, epsilon: float, delta: float) -> float:
    """Return the probability of ``>= v`` correct guesses out of ``r`` under (ε, δ)-DP.

    The null hypothesis is that training is (``epsilon``, ``delta``)-DP; ``m`` canaries, each
    included with probability ½. See the module docstring for the formula.
    """
    _check_counts(m, r, v)
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon!r}.")
    if not 0 <= delta <= 1:
        raise ValueError(f"delta must be in [0, 1], got {delta!r}.")
    if v == 0:
        return 1.0
    p = 1.0 / (1.0 + math.exp(-epsilon)) if epsilon < 700 else 1.0
    tail = float(stats.binom.sf(v - 1, r, p))  # P[Binomial(r, p) >= v]
    # P[v - i <= B < v] for i = 1..v, divided by i; the worst i.
    pmf = stats.binom.pmf(np.arange(v - 1, -1, -1), r, p)
    alpha = float(np.max(np.cumsum(pmf) / np.arange(1, v + 1)))
    return min(1.0, tail + alpha * delta * 2 * m)


def one_run_epsilon_lower_bound(
    m: int, r: int, v: int, *, beta: float = 0.05, delta: float = 1e-5, tol: float = 1e-9
) -> float:
    """Return the ε lower bound, at confidence ``1 - beta``, from ``v`` of ``r`` correct guesses.

    The largest ε whose null hypothesis "training is (ε, ``delta``)-DP" has p-value below
    ``beta`` (:func:`one_run_p_value`); ``0.0`` when even ε = 0 is not rejected.

    Args:
        m: Number of canaries (each included with probability ½).
        r: Number of guesses made (abstentions excluded).
        v: Number of correct guesses.
        beta: 1 - confidence (0.05 for 95 %).
        delta: δ of the guarantee under test (the run's claimed δ).
        tol: Bisection tolerance on ε.
    """
    _check_counts(m, r, v)
    if not 0 < beta < 1:
        raise ValueError(f"beta must be in (0, 1), got {beta!r}.")

    def rejected(eps: float) -> bool:
        return one_run_p_value(m, r, v, epsilon=eps, delta=delta) < beta

    if not rejected(0.0):
        return 0.0
    lo, hi = 0.0, 1.0
    while rejected(hi):
        lo, hi = hi, hi * 2
        if hi > 1e4:  # pragma: no cover - p-value -> 1 as ε grows, so this cannot happen
            return lo
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if rejected(mid):
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class CanaryAuditResult:
    """Outcome of :func:`run_canary_audit`.

    Attributes:
        m: Canaries drawn.
        r: Guesses made (``k₊ + k₋``).
        v: Correct guesses.
        epsilon_lower_bound: The one-run bound at confidence ``1 - beta`` for ``delta``.
        beta: 1 - confidence.
        delta: δ the bound is for.
        included: The secret inclusion bits (bool, length ``m``).
        scores: The caller's score per canary.
        guesses: ``+1`` guessed included, ``-1`` guessed excluded, ``0`` abstained.
    """

    m: int
    r: int
    v: int
    epsilon_lower_bound: float
    beta: float
    delta: float
    included: np.ndarray
    scores: np.ndarray
    guesses: np.ndarray

    def __iter__(self):  # (r, v, ε lower bound), for ``r, v, eps = run_canary_audit(...)``
        """Unpack as ``(r, v, epsilon_lower_bound)``."""
        return iter((self.r, self.v, self.epsilon_lower_bound))


def run_canary_audit(
    train_and_score: Callable[[np.ndarray], np.ndarray],
    *,
    m: int,
    seed: int | np.random.Generator,
    beta: float = 0.05,
    delta: float = 1e-5,
    k_guesses: int | tuple[int, int],
) -> CanaryAuditResult:
    """Run the one-run audit around a training function.

    Args:
        train_and_score: Called once with the inclusion bits (bool array of length ``m``):
            it must train on the data plus exactly the included canaries, then return one score
            per canary (all ``m``), higher meaning "more likely trained on", computed from the
            trained model only (e.g. the drop of the canary's loss, or the alignment of the
            model change with the canary's gradient).
        m: Number of canaries.
        seed: Seed or generator for the inclusion bits (use a secure one in a real audit).
        beta: 1 - confidence of the bound.
        delta: δ of the guarantee under test.
        k_guesses: ``k`` (as many "included" as "excluded" guesses) or ``(k₊, k₋)``.

    Returns:
        The result; ``r, v, eps = result`` unpacks the guesses, correct guesses and bound.
    """
    if m <= 0:
        raise ValueError(f"m must be positive, got {m!r}.")
    k_plus, k_minus = (k_guesses, k_guesses) if isinstance(k_guesses, int) else k_guesses
    if k_plus < 0 or k_minus < 0 or k_plus + k_minus > m:
        raise ValueError(
            f"k_guesses must be >= 0 and k+ + k- <= m; got k+={k_plus}, k-={k_minus}, m={m}."
        )
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    included = rng.random(m) < 0.5
    scores = np.asarray(train_and_score(included.copy()), dtype=np.float64).reshape(-1)
    if scores.shape != (m,):
        raise ValueError(f"train_and_score must return {m} scores, got shape {scores.shape}.")
    if not np.all(np.isfinite(scores)):
        raise ValueError("train_and_score returned non-finite scores; scores must be finite.")
    # Ties go to the lower canary index, which is independent of the inclusion bits.
    order = np.lexsort((np.arange(m), scores))  # ascending score
    guesses = np.zeros(m, dtype=np.int8)
    if k_minus:
        guesses[order[:k_minus]] = -1
    if k_plus:
        guesses[order[m - k_plus :]] = 1
    r = int(k_plus + k_minus)
    v = int(np.sum((guesses == 1) & included) + np.sum((guesses == -1) & ~included))
    bound = one_run_epsilon_lower_bound(m, r, v, beta=beta, delta=delta)
    return CanaryAuditResult(
        m=m,
        r=r,
        v=v,
        epsilon_lower_bound=bound,
        beta=beta,
        delta=delta,
        included=included,
        scores=scores,
        guesses=guesses,
    )
