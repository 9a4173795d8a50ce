"""Privacy events as data, and the accountants that compose them.

A :class:`PrivacyEvent` is one differentially private release as an auditor needs to see it:
a Gaussian mechanism with noise multiplier ``σ`` (noise standard deviation over the
sensitivity, i.e. over the clipping norm), run ``steps`` times, each time on a Poisson
sample of the data with probability ``q`` (or on all of it: ``sampling_probability=None``,
the same as ``1.0``, no amplification by sampling). A device's local DP-SGD in one round is
one release (unit of privacy: one example); the server's DP-FedAvg noise in one round is one
release too (unit: one user). The event types are the same; the unit is recorded in the
ledger (:mod:`fedrec.common.audit.ledger`), not here.

The accountants turn a list of releases into ε at a target δ for the add/remove-one
neighbouring relation. Composition is commutative, so ε depends only on the multiset of
``(σ, q) → total steps`` (:func:`canonical_history`); results are cached on that key, which is
what makes auditing thousands of devices with identical histories cheap.

Accountants (:data:`ACCOUNTANTS`; the numbers in :func:`accountant_error`):

``"pld"``
    Privacy loss distributions, Google's ``dp_accounting`` (connect-the-dots, pessimistic
    estimate). An upper bound on the true ε. Its discretization rounds each composed step's
    privacy loss up by less than ``value_discretization_interval`` (connect-the-dots is at
    least as tight as rounding up), so it exceeds the true ε by at most
    ``interval × (steps of sampled releases + number of unsampled (σ) groups)``.
``"prv"``
    Privacy loss random variables (Gopi, Lee, Wutschitz 2021), Opacus' ``PRVAccountant``.
    Opacus returns the *upper* end of its bracket: an estimate plus ``eps_error``, where the
    estimate is within ``eps_error`` of the true ε; so the value exceeds the true ε by at
    most ``2 × eps_error``.
``"rdp"``
    Rényi DP of the sampled Gaussian (Mironov, Talwar, Zhang 2019) over Opacus' order grid,
    converted to (ε, δ) as Opacus does (Balle et al. 2020): the same number as Opacus'
    ``RDPAccountant``, so a device that accounts with it can be checked exactly. An upper
    bound that is *not* tight (typically 10-20 % above PLD/PRV); a check, never the claim.
    (``dp_accounting`` 0.6's ``RdpAccountant`` sums the absolute values of the fractional-order
    series, a valid but looser bound: 6.621 instead of 6.614 for q = 0.1, σ = 1.1, 100 steps,
    δ = 1e-5, which is why the exact signed series of Opacus is used here.)
``"analytic"``
    Exact ε of the Gaussian mechanism (Balle & Wang 2018's analytic Gaussian mechanism), only
    for releases without sampling: ``k`` Gaussian releases with multipliers ``σ_i`` compose to one
    Gaussian with ``σ = (Σ 1/σ_i²)^(-1/2)``. Error: the root finder's tolerance.

"Error" here is one-sided: every accountant's value is an upper bound on the true ε, and
``value - error`` is a lower bound for the tight ones. Two tight accountants disagree for real
only when those brackets do not overlap (:func:`brackets_overlap`).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize, special

from fedrec.common.privacy.events import PrivacyEvent

__all__ = [
    "PrivacyEvent",
    "AccountantInfo",
    "ACCOUNTANTS",
    "TIGHT_ACCOUNTANTS",
    "DEFAULT_VALUE_DISCRETIZATION_INTERVAL",
    "DEFAULT_EPS_ERROR",
    "canonical_history",
    "epsilon",
    "delta_for",
    "accountant_error",
    "brackets_overlap",
    "PldEstimate",
    "pld_estimate",
    "analytic_gaussian_epsilon",
    "analytic_gaussian_delta",
    "to_dp_event",
    "opacus_accountant_from_releases",
    "releases_from_opacus_accountant",
]

DEFAULT_VALUE_DISCRETIZATION_INTERVAL = 1e-4
"""PLD grid spacing of the privacy loss (``dp_accounting``'s default)."""

DEFAULT_EPS_ERROR = 0.01
"""Opacus PRV ``eps_error`` (Opacus' default)."""

_ANALYTIC_TOLERANCE = 1e-10


@dataclass(frozen=True)
class AccountantInfo:
    """What an accountant is and how far its ε may be from the truth."""

    name: str
    library: str
    kind: str
    """``"tight"`` (within its stated error of the truth) or ``"upper bound"`` (RDP)."""
    error: str
    """How :func:`accountant_error` bounds the excess of its ε over the true ε."""


ACCOUNTANTS: Mapping[str, AccountantInfo] = {
    "pld": AccountantInfo(
        "pld",
        "dp_accounting (PLDAccountant, connect-the-dots, pessimistic)",
        "tight",
        "stated: how much ε fell in the last 4x refinement of a grid refined per history "
        "(pld_estimate; the error left is well below it); proven: value_discretization_interval "
        "x (steps of sampled releases + unsampled groups)",
    ),
    "prv": AccountantInfo(
        "prv", "opacus (PRVAccountant, upper end of its bracket)", "tight", "2 x eps_error"
    ),
    "rdp": AccountantInfo(
        "rdp",
        "opacus (RDP analysis of its RDPAccountant, its order grid and conversion)",
        "upper bound",
        "not tight: an upper bound only (typically 10-20 % above the tight value)",
    ),
    "analytic": AccountantInfo(
        "analytic",
        "fedrec (scipy; Balle & Wang 2018), unsampled Gaussian only",
        "tight",
        f"root-finding tolerance {_ANALYTIC_TOLERANCE:g}",
    ),
}
"""Every accountant :func:`epsilon` knows, by name."""

TIGHT_ACCOUNTANTS = tuple(name for name, info in ACCOUNTANTS.items() if info.kind == "tight")

# A history in canonical form: sorted ((noise_multiplier, sampling_probability|None), steps).
History = tuple[tuple[float, "float | None", int], ...]


def canonical_history(releases: Iterable[PrivacyEvent]) -> History:
    """Return the order-free form of releases: ``((σ, q, total steps), ...)``, sorted.

    Releases with equal ``(σ, q)`` are merged (composition is commutative); no-ops are
    dropped. Two release lists with the same canonical history have the same ε under every
    accountant here.
    """
    totals: dict[tuple[float, float | None], int] = {}
    for release in releases:
        if not isinstance(release, PrivacyEvent):
            raise TypeError(f"expected PrivacyEvent, got {type(release).__name__}.")
        if release.is_noop:
            continue
        key = (release.noise_multiplier, release.sampling_probability)
        totals[key] = totals.get(key, 0) + release.steps
    items = sorted(
        totals.items(), key=lambda kv: (kv[0][0], -1.0 if kv[0][1] is None else kv[0][1])
    )
    return tuple((sigma, q, steps) for (sigma, q), steps in items)


def _check_delta(target_delta: float) -> float:
    delta = float(target_delta)
    if not 0.0 < delta < 1.0:
        raise ValueError(
            f"target_delta must be in (0, 1), got {target_delta!r}; it should be well below "
            "1/population (e.g. 1e-5)."
        )
    return delta


def _check_accountant(accountant: str) -> str:
    if accountant not in ACCOUNTANTS:
        raise ValueError(
            f"unknown accountant {accountant!r}; choose one of {', '.join(ACCOUNTANTS)}."
        )
    return accountant


def _non_private(history: History) -> bool:
    return any(sigma == 0.0 for sigma, _, _ in history)


# --------------------------------------------------------------------------- analytic


def analytic_gaussian_delta(epsilon: float, *, noise_multiplier: float) -> float:
    """Return δ(ε) of the Gaussian mechanism with sensitivity 1 (Balle & Wang 2018).

    ``δ(ε) = Φ(μ/2 - ε/μ) - e^ε Φ(-μ/2 - ε/μ)`` with ``μ = 1/σ``.
    """
    if noise_multiplier <= 0:
        return 1.0
    mu = 1.0 / noise_multiplier
    first = special.ndtr(mu / 2 - epsilon / mu)
    second = math.exp(epsilon + special.log_ndtr(-mu / 2 - epsilon / mu))
    return max(0.0, float(first - second))


def analytic_gaussian_epsilon(
    *, noise_multiplier: float, target_delta: float, steps: int = 1
) -> float:
    """Exact ε of ``steps`` compositions of the Gaussian mechanism (no sampling).

    ``steps`` Gaussians with multiplier ``σ`` are one Gaussian with ``σ/√steps``; ε is the
    root of :func:`analytic_gaussian_delta` (Brent's method, tolerance 1e-10).
    """
    delta = _check_delta(target_delta)
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    sigma = noise_multiplier / math.sqrt(steps)
    return _analytic_epsilon_for_sigma(sigma, delta)


def _analytic_epsilon_for_sigma(sigma: float, delta: float) -> float:
    def gap(eps: float) -> float:
        return analytic_gaussian_delta(eps, noise_multiplier=sigma) - delta

    if gap(0.0) <= 0:
        return 0.0
    hi = 1.0
    while gap(hi) > 0:
        hi *= 2.0
        if hi > 1e6:  # pragma: no cover - only for absurd σ
            return math.inf
    return float(
        optimize.brentq(gap, 0.0, hi, xtol=_ANALYTIC_TOLERANCE, rtol=4 * np.finfo(float).eps)
    )


def _analytic_sigma(history: History) -> float:
    if any(q is not None for _, q, _ in history):
        raise ValueError(
            "the 'analytic' accountant is exact only for Gaussian releases without sampling; "
            "this history has Poisson-sampled releases. Use 'pld' or 'prv' for them."
        )
    precision = sum(steps / sigma**2 for sigma, _, steps in history)
    return 1.0 / math.sqrt(precision)


# --------------------------------------------------------------------------- PLD


@functools.lru_cache(maxsize=256)
def _pld_base(sigma: float, q: float | None, interval: float) -> Any:
    """Build one step's PLD (pessimistic connect-the-dots), as ``PLDAccountant`` does."""
    from dp_accounting.pld import privacy_loss_distribution as pld_lib

    return pld_lib.from_gaussian_mechanism(
        standard_deviation=sigma,
        value_discretization_interval=interval,
        sampling_prob=1.0 if q is None else q,
    )


@functools.lru_cache(maxsize=1024)
def _pld_composed(history: History, interval: float) -> Any:
    """Compose the PLD of a canonical history as ``dp_accounting.PLDAccountant`` does.

    The accountant composes ``from_gaussian_mechanism(σ/√n)`` for ``n`` unsampled Gaussians
    and ``from_gaussian_mechanism(σ, sampling_prob=q).self_compose(n)`` for sampled ones; we do
    the same with the one-step PLD cached per ``(σ, q)``.
    """
    from dp_accounting.pld import privacy_loss_distribution as pld_lib

    composed = pld_lib.identity(value_discretization_interval=interval)
    for sigma, q, steps in history:
        if q is None:
            part = _pld_base(sigma / math.sqrt(steps), None, interval)
        else:
            part = _pld_base(sigma, q, interval).self_compose(steps)
        composed = composed.compose(part)
    return composed


# --------------------------------------------------------------------------- RDP


@functools.lru_cache(maxsize=1)
def _rdp_orders() -> tuple[float, ...]:
    from opacus.accountants import RDPAccountant

    return tuple(float(a) for a in RDPAccountant.DEFAULT_ALPHAS)


@functools.lru_cache(maxsize=4096)
def _rdp_one_step(sigma: float, q: float | None) -> np.ndarray:
    """Return the RDP of one (sampled) Gaussian step at every order (Opacus' exact series)."""
    from opacus.accountants.analysis import rdp as opacus_rdp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = opacus_rdp.compute_rdp(
            q=1.0 if q is None else q,
            noise_multiplier=sigma,
            steps=1,
            orders=list(_rdp_orders()),
        )
    out = np.asarray(values, dtype=np.float64)
    out.setflags(write=False)
    return out


def _rdp_vector(history: History) -> np.ndarray:
    total = np.zeros(len(_rdp_orders()))
    for sigma, q, steps in history:
        total = total + steps * _rdp_one_step(sigma, q)
    return total


def _rdp_epsilon(history: History, delta: float) -> float:
    from opacus.accountants.analysis import rdp as opacus_rdp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "optimal order is the largest alpha": only looser
        eps, _ = opacus_rdp.get_privacy_spent(
            orders=list(_rdp_orders()), rdp=_rdp_vector(history), delta=delta
        )
    return float(eps)


# --------------------------------------------------------------------------- PRV


def _opacus_history(history: History) -> list[tuple[float, float, int]]:
    return [(sigma, 1.0 if q is None else q, steps) for sigma, q, steps in history]


def _prv_epsilon(history: History, delta: float, eps_error: float) -> float:
    from opacus.accountants import PRVAccountant

    acc = PRVAccountant()
    acc.history = _opacus_history(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus' log(0) warnings at the support's edge
        return float(acc.get_epsilon(delta, eps_error=eps_error))


# --------------------------------------------------------------------------- public API


@functools.lru_cache(maxsize=65536)
def _epsilon_cached(
    history: History, delta: float, accountant: str, interval: float, eps_error: float
) -> float:
    if not history:
        return 0.0
    if _non_private(history):
        return math.inf
    if accountant == "pld":
        return float(_pld_composed(history, interval).get_epsilon_for_delta(delta))
    if accountant == "prv":
        return _prv_epsilon(history, delta, eps_error)
    if accountant == "rdp":
        return _rdp_epsilon(history, delta)
    if accountant == "analytic":
        return _analytic_epsilon_for_sigma(_analytic_sigma(history), delta)
    raise AssertionError(accountant)  # pragma: no cover - checked by _check_accountant


def epsilon(
    releases: Iterable[PrivacyEvent],
    *,
    target_delta: float,
    accountant: str = "pld",
    value_discretization_interval: float = DEFAULT_VALUE_DISCRETIZATION_INTERVAL,
    eps_error: float = DEFAULT_EPS_ERROR,
) -> float:
    """ε at ``target_delta`` of the composition of ``releases`` (add/remove-one neighbours).

    Args:
        releases: The releases to compose, in any order.
        target_delta: δ of the (ε, δ) guarantee.
        accountant: ``"pld"``, ``"prv"``, ``"rdp"`` or ``"analytic"`` (see the module doc).
        value_discretization_interval: PLD grid spacing (``"pld"`` only).
        eps_error: Opacus PRV's ``eps_error`` (``"prv"`` only).

    Returns:
        ε, ``0.0`` for no releases and ``inf`` when any release has no noise.
    """
    history = canonical_history(releases)
    return _epsilon_cached(
        history,
        _check_delta(target_delta),
        _check_accountant(accountant),
        float(value_discretization_interval),
        float(eps_error),
    )


def delta_for(
    releases: Iterable[PrivacyEvent],
    *,
    target_epsilon: float,
    accountant: str = "pld",
    value_discretization_interval: float = DEFAULT_VALUE_DISCRETIZATION_INTERVAL,
) -> float:
    """δ at ``target_epsilon`` of the composition of ``releases``.

    Supported for ``"pld"`` (upper bound), ``"rdp"`` (upper bound) and ``"analytic"`` (exact);
    Opacus' PRV accountant has no public δ-for-ε.
    """
    history = canonical_history(releases)
    _check_accountant(accountant)
    if target_epsilon < 0:
        raise ValueError(f"target_epsilon must be >= 0, got {target_epsilon!r}.")
    if not history:
        return 0.0
    if _non_private(history):
        return 1.0
    if accountant == "pld":
        pld = _pld_composed(history, float(value_discretization_interval))
        return float(pld.get_delta_for_epsilon(target_epsilon))
    if accountant == "rdp":
        from dp_accounting.rdp import rdp_privacy_accountant

        delta, _ = rdp_privacy_accountant.compute_delta(
            list(_rdp_orders()), _rdp_vector(history), target_epsilon
        )
        return float(delta)
    if accountant == "analytic":
        return analytic_gaussian_delta(target_epsilon, noise_multiplier=_analytic_sigma(history))
    raise ValueError(
        "delta_for supports the 'pld', 'rdp' and 'analytic' accountants; Opacus' PRV "
        "accountant exposes ε only."
    )


def accountant_error(
    accountant: str,
    releases: Iterable[PrivacyEvent],
    *,
    value_discretization_interval: float = DEFAULT_VALUE_DISCRETIZATION_INTERVAL,
    eps_error: float = DEFAULT_EPS_ERROR,
) -> float:
    """How much the accountant's ε may exceed the true ε for these releases.

    ``"pld"``: ``interval × (steps of sampled releases + number of unsampled groups)``;
    ``"prv"``: ``2 × eps_error``; ``"analytic"``: the root finder's tolerance;
    ``"rdp"``: ``inf`` (an upper bound with no stated tightness).
    """
    _check_accountant(accountant)
    history = canonical_history(releases)
    if accountant == "pld":
        units = sum(steps if q is not None else 1 for _, q, steps in history)
        return float(value_discretization_interval) * units
    if accountant == "prv":
        return 2.0 * float(eps_error) if history else 0.0
    if accountant == "analytic":
        return _ANALYTIC_TOLERANCE
    return math.inf


def brackets_overlap(
    value_a: float, error_a: float, value_b: float, error_b: float, *, slack: float = 1e-6
) -> bool:
    """Whether two upper bounds with stated errors can both be right.

    Each value ``v`` with error ``e`` says the true ε lies in ``[v - e, v]``; two such claims
    are consistent when the intervals meet (up to ``slack`` for floating point).
    """
    if math.isinf(value_a) or math.isinf(value_b):
        return math.isinf(value_a) and math.isinf(value_b)
    return value_a >= value_b - error_b - slack and value_b >= value_a - error_a - slack


# --------------------------------------------------------------------------- PLD grid


@dataclass(frozen=True)
class PldEstimate:
    """ε from PLD on a grid chosen for the history, with its stated error.

    Attributes:
        epsilon: the pessimistic connect-the-dots ε on the finest grid used (an upper bound on
            the true ε at every grid).
        error: the stated error: how much ε fell when the grid was last made
            ``PLD_REFINE_FACTOR`` times finer. Connect-the-dots converges about quadratically
            in the interval (the fall on a 4x finer grid is typically 10-15x the error that
            remains), so this is a conservative estimate of how far ``epsilon`` may lie
            above the true ε, not a proof.
        bound: the worst-case bound, ``interval × (sampled steps + unsampled groups)``: proven
            but loose for long histories.
        interval: the finest grid spacing used.
    """

    epsilon: float
    error: float
    bound: float
    interval: float


PLD_START_INTERVAL = 1e-3
"""First PLD grid of :func:`pld_estimate`."""
PLD_REFINE_FACTOR = 4
"""Each refinement divides the grid spacing by this."""
PLD_MIN_INTERVAL = 1e-5
"""No refinement below this spacing (the error then stays as measured, and is reported)."""


def pld_estimate(
    releases: Iterable[PrivacyEvent],
    *,
    target_delta: float,
    relative_tolerance: float = 0.005,
    absolute_tolerance: float = 1e-3,
    start_interval: float = PLD_START_INTERVAL,
    min_interval: float = PLD_MIN_INTERVAL,
) -> PldEstimate:
    """PLD ε on a grid refined until its stated error is small (see :class:`PldEstimate`).

    Starts at ``start_interval`` and divides it by :data:`PLD_REFINE_FACTOR` until ε falls
    by at most ``max(absolute_tolerance, relative_tolerance × ε)`` in one refinement (or the
    spacing would go below ``min_interval``). A fixed grid cannot serve every history:
    1e-3 overstates ε = 0.256 by 4 % (q = 0.001, σ = 1, 3,000 steps), and a grid fine enough
    for that is 10x slower on histories that do not need it.
    """
    history = canonical_history(releases)
    delta = _check_delta(target_delta)
    if not history or _non_private(history):
        value = 0.0 if not history else math.inf
        return PldEstimate(value, 0.0, 0.0, float(start_interval))
    interval = float(start_interval)
    value = _epsilon_cached(history, delta, "pld", interval, DEFAULT_EPS_ERROR)
    error = math.inf
    while interval / PLD_REFINE_FACTOR >= min_interval * (1 - 1e-9):
        finer = interval / PLD_REFINE_FACTOR
        refined = _epsilon_cached(history, delta, "pld", finer, DEFAULT_EPS_ERROR)
        error = max(0.0, value - refined)
        value, interval = min(value, refined), finer
        if error <= max(absolute_tolerance, relative_tolerance * value):
            break
    units = sum(steps if q is not None else 1 for _, q, steps in history)
    bound = interval * units
    return PldEstimate(value, min(error, bound), bound, interval)


# --------------------------------------------------------------------------- adapters


def to_dp_event(releases: Iterable[PrivacyEvent]) -> Any:
    """Build the ``dp_accounting`` event of the composition of ``releases``.

    Each release becomes ``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(σ)),
    steps)`` (without the Poisson wrapper when unsampled); the list a ``ComposedDpEvent``.
    """
    import dp_accounting as dpa

    return dpa.ComposedDpEvent([release.to_dp_event() for release in releases])


def opacus_accountant_from_releases(
    releases: Sequence[PrivacyEvent], mechanism: str = "prv"
) -> Any:
    """Build an Opacus accountant (``"prv"``, ``"rdp"``, ``"gdp"``) that has spent ``releases``.

    Its ``history`` is what ``step()`` would have built, consecutive equal ``(σ, q)`` merged;
    ``state_dict()`` / ``load_state_dict()`` persist it on a device.
    """
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism)
    history: list[tuple[float, float, int]] = []
    for release in releases:
        if release.is_noop:
            continue
        q = 1.0 if release.sampling_probability is None else release.sampling_probability
        if history and history[-1][0] == release.noise_multiplier and history[-1][1] == q:
            sigma, q_last, steps = history.pop()
            history.append((sigma, q_last, steps + release.steps))
        else:
            history.append((release.noise_multiplier, q, release.steps))
    acc.history = history
    return acc


def releases_from_opacus_accountant(accountant: Any) -> list[PrivacyEvent]:
    """Return the releases an Opacus accountant has recorded (its ``history``)."""
    return [
        PrivacyEvent(float(sigma), float(q), int(steps)) for sigma, q, steps in accountant.history
    ]
