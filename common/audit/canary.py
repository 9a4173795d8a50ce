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

**What a test can detect.** Even with every guess right (``v = r``) the bound is at most
:func:`detectable_epsilon` ``(m, r)``: about ``ln(r / ln(1/β))`` (400 perfect guesses among
1000 canaries: 4.86), and, because of the ``2 m δ`` term, never more than about ``ln(β/δ)``
whatever ``m`` (8.13 at δ = 1e-5, β = 0.05; about 5.8 at δ = 1e-4). A claim above the detectable
maximum cannot be refuted, however broken the run: :func:`size_canaries` picks the smallest
number of guesses (and canaries) whose detectable maximum exceeds the claim, or says that none
does.

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
    "CanarySizing",
    "detectable_epsilon",
    "size_canaries",
    "CanarySizingError",
    "gaussian_epsilon_estimate",
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


def detectable_epsilon(m: int, r: int, *, beta: float = 0.05, delta: float = 1e-5) -> float:
    """Return the largest ε the test can certify: the bound when all ``r`` guesses are right.

    No run audited with ``m`` canaries and ``r`` guesses can give a larger lower bound, so a
    claim at or above it cannot be refuted, however broken the run.
    """
    return one_run_epsilon_lower_bound(m, r, r, beta=beta, delta=delta, tol=1e-6)


class CanarySizingError(ValueError):
    """No number of canaries up to the cap makes the claim detectable.

    Attributes:
        best_detectable: the largest detectable ε found (at the cap or where it saturates).
    """

    def __init__(self, message: str, best_detectable: float):
        super().__init__(message)
        self.best_detectable = best_detectable


@dataclass(frozen=True)
class CanarySizing:
    """Canaries and guesses chosen so that a claim is detectable (:func:`size_canaries`).

    Attributes:
        m: canaries to draw.
        k_plus: "included" guesses (the highest scores).
        k_minus: "excluded" guesses (the lowest scores).
        detectable: :func:`detectable_epsilon` of ``m`` and ``r = k_plus + k_minus``.
        claimed_epsilon: the claim it was sized for.
        delta: δ of the claim.
        beta: 1 - confidence.
    """

    m: int
    k_plus: int
    k_minus: int
    detectable: float
    claimed_epsilon: float
    delta: float
    beta: float

    @property
    def r(self) -> int:
        """Guesses made."""
        return self.k_plus + self.k_minus


def _canaries_for(r: int) -> int:
    # Enough canaries that each side holds r/2 of them: 6 standard deviations of Binomial(m, ½).
    return r + int(math.ceil(6 * math.sqrt(r))) + 2


def size_canaries(
    claimed_epsilon: float,
    *,
    delta: float,
    beta: float = 0.05,
    margin: float = 0.0,
    max_canaries: int = 200_000,
) -> CanarySizing:
    """The fewest canaries and guesses whose detectable maximum exceeds ``claimed_epsilon``.

    ``r`` guesses (half "included", half "excluded") over ``m = r + 6√r + 2`` canaries, so
    that both sides hold ``r/2`` canaries with overwhelming probability; ``r`` is the smallest
    even number for which all-correct guesses reject ε = ``claimed_epsilon + margin``.

    Raises:
        CanarySizingError: no ``m <= max_canaries`` does (near ``ln(β/δ)`` no number does).
    """
    if not math.isfinite(claimed_epsilon) or claimed_epsilon < 0:
        raise ValueError(f"claimed_epsilon must be finite and >= 0, got {claimed_epsilon!r}.")
    target = claimed_epsilon + margin

    def detects(r: int) -> bool:
        return one_run_p_value(_canaries_for(r), r, r, epsilon=target, delta=delta) < beta

    low, r = 0, 2
    while not detects(r):
        low, r = r, 2 * math.ceil(r * 0.625)  # x1.25, even
        if _canaries_for(r) > max_canaries:
            grid = [g for g in (2_000, 20_000, 50_000, low) if _canaries_for(g) <= max_canaries]
            best = max(
                detectable_epsilon(_canaries_for(g), g, beta=beta, delta=delta) for g in grid
            )
            raise CanarySizingError(
                f"a claim of epsilon {claimed_epsilon:.3g} at delta {delta:g} cannot be "
                f"refuted by a one-run audit with at most {max_canaries} canaries: all-correct "
                f"guesses certify at most {best:.3f} (at most about ln(beta/delta) = "
                f"{math.log(beta / delta):.2f} for any number); audit a smaller claim or a "
                "smaller delta on the run's privacy curve",
                best,
            )
    while r - low > 2:  # smallest even r that detects
        mid = 2 * ((low + r) // 4)
        if mid <= low:
            break
        if detects(mid):
            r = mid
        else:
            low = mid
    m = _canaries_for(r)
    return CanarySizing(
        m=m,
        k_plus=r // 2,
        k_minus=r // 2,
        detectable=detectable_epsilon(m, r, beta=beta, delta=delta),
        claimed_epsilon=float(claimed_epsilon),
        delta=delta,
        beta=beta,
    )


def gaussian_epsilon_estimate(
    inserted: np.ndarray, held_out: np.ndarray, *, delta: float = 1e-5
) -> float:
    """ε of a Gaussian fitted to canary statistics (in the manner of Andrew et al., ICLR 2024).

    "One-shot empirical privacy estimation for federated learning" fits a Gaussian to the
    statistics (cosines with the final model change) of the inserted canaries, compares it
    with the null distribution of canaries that were never inserted, and reports the ε of
    distinguishing the two. Here both are fitted, with a common (pooled) variance: the noise
    is the same Gaussian for both, and two separately fitted variances would turn sampling
    error into a spurious quadratic privacy loss. The ε at ``delta`` is that of the Gaussian
    mechanism with ``μ = (mean(inserted) - mean(held_out)) / σ`` (Balle and Wang 2018):
    ``δ(ε) = Φ(-ε/μ + μ/2) - e^ε Φ(-ε/μ - μ/2)``.

    An *estimate* of the run's ε (sampling error included, no confidence level), not a
    bound: a tight claim's estimate may sit a little above it. ``inf`` when the inserted and
    held-out statistics do not overlap at all (σ = 0).
    """
    a = np.asarray(inserted, dtype=np.float64)
    b = np.asarray(held_out, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("need at least 2 inserted and 2 held-out canary statistics.")
    gap = abs(float(a.mean()) - float(b.mean()))
    pooled = math.sqrt(
        ((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2)
    )
    if pooled <= 1e-12 * max(gap, 1e-300):
        return 0.0 if gap == 0 else math.inf
    mu = gap / pooled

    def gaussian_delta(eps: float) -> float:
        return float(
            stats.norm.cdf(-eps / mu + mu / 2)
            - math.exp(eps + stats.norm.logcdf(-eps / mu - mu / 2))
        )

    if mu == 0 or gaussian_delta(0.0) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while gaussian_delta(hi) > delta:
        lo, hi = hi, 2 * hi
        if hi > 1e4:
            return math.inf
    while hi - lo > 1e-6:
        mid = (lo + hi) / 2
        if gaussian_delta(mid) > delta:
            lo = mid
        else:
            hi = mid
    return hi


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

    @property
    def detectable_epsilon(self) -> float:
        """The largest bound these ``m`` canaries and ``r`` guesses could give (all correct)."""
        return detectable_epsilon(self.m, self.r, beta=self.beta, delta=self.delta)

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
