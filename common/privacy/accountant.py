"""A signer's accountant, its memoised ε, and noise calibration to a budget.

Devices account with Opacus (``"prv"``, tight, or ``"rdp"``); the server's user-level
releases with ``dp_accounting``'s PLD accountant (``"pld"``). Every ε a device's budget guard,
a server ledger or a calibration needs goes through :func:`epsilon_of`: one memo, keyed by the
history ``((noise_multiplier, sampling rate, steps), ...)`` (merged, so that equal spends
written in different step groupings share an entry) and δ. Opacus' PRV accountant takes about
a second per ε on this class of machine, and in a federation devices with the same settings
and participations have the same history, so each is computed once per process.

:func:`calibrate` finds the noise that spends a budget with ``dp_accounting``'s
``calibrate_dp_mechanism`` (Brent's method on the ε gap), over the same accountant a device's
guard uses (:class:`HistoryAccountant` puts fedrec's accountants behind ``dp_accounting``'s
interface), so a device that makes exactly the planned releases ends at its budget, not past
it. The audit keeps its own, independent accountants (:mod:`fedrec.common.privacy.accounting`).

ε is incremental for ``"pld"`` and ``"rdp"``: a round's ε comes from the previous round's
composition (:class:`Composition`: the composed PLD, or the RDP vector) with the one new release
composed onto it, never from the whole history again; :func:`epsilon_of` finds the longest
history it has composed that the asked one extends. A round costs the same at any round: RDP
is a vector sum; the PLD's grid coarsens (doubles) as the history's privacy loss widens, so the
composed PLD keeps a bounded number of points (:func:`pld_level`), which keeps ε an upper bound
at least the audit's value (:class:`Composition` says why). The values equal a from-scratch
composition of the same history within floating point (RDP) or within ``1e-7`` relative (PLD:
each composition truncates ``1e-15`` of tail mass, in a different order than one
self-composition does). ``"prv"`` is computed from scratch (memoised): Opacus sizes the PRV's
mesh by the total number of steps, so a PRV extended on a fixed mesh would not be the number
Opacus gives.
"""

from __future__ import annotations

import functools
import math
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from fedrec.common.privacy.events import PrivacyEvent, merge_history

__all__ = [
    "ACCOUNTANTS",
    "make_accountant",
    "epsilon_of",
    "epsilon_spent",
    "epsilon_after",
    "calibrate",
    "HistoryAccountant",  # noqa: F822 - defined on first use (module __getattr__)
    "History",
    "Composition",
    "INCREMENTAL",
    "PLD_INTERVAL",
    "PLD_SUPPORT",
    "pld_level",
]

#: Accountants a device may keep (Opacus).
ACCOUNTANTS = ("prv", "rdp")
History = tuple[tuple[float, float, int], ...]


def make_accountant(kind: str = "prv") -> Any:
    """A fresh Opacus accountant of the given kind (``"prv"`` or ``"rdp"``)."""
    from opacus.accountants import PRVAccountant, RDPAccountant

    if kind == "prv":
        return PRVAccountant()
    if kind == "rdp":
        return RDPAccountant()
    raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {kind!r}")


def _merged(history: Iterable[Sequence[float]]) -> History:
    """Merged (:func:`merge_history`), without releases that touch no data."""
    return tuple(e for e in merge_history(history) if e[2] > 0 and e[1] > 0)


@functools.lru_cache(maxsize=4096)
def _epsilon_cached(kind: str, history: History, delta: float) -> float:
    if kind in INCREMENTAL:
        return composition_of(kind, history).epsilon(delta)
    acc = make_accountant(kind)
    acc.history = list(history)
    with warnings.catch_warnings(), _numpy_quiet():
        # Opacus' PRV takes log(1 - q) at q = 1 (a harmless -inf, handled by its np.where);
        # RDP warns when its best order is the largest one (the bound is still valid)
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(acc.get_epsilon(delta=delta))


def _numpy_quiet() -> Any:
    import numpy as np

    return np.errstate(divide="ignore", invalid="ignore")


def epsilon_of(kind: str, history: Iterable[Sequence[float]], delta: float) -> float:
    """ε at ``delta`` of an accountant of ``kind`` with this history (memoised).

    ``inf`` when a release had no noise; 0 for an empty history.
    """
    if kind not in (*ACCOUNTANTS, "pld"):
        raise ValueError(f"accountant must be one of {(*ACCOUNTANTS, 'pld')}, got {kind!r}")
    merged = _merged(history)
    if any(sigma == 0 for sigma, _, _ in merged):
        return math.inf
    if not merged:
        return 0.0
    return _epsilon_cached(kind, merged, float(delta))


def epsilon_spent(accountant: Any, delta: float) -> float:
    """ε an Opacus accountant has spent so far."""
    return epsilon_of(accountant.mechanism(), accountant.history, delta)


def epsilon_after(accountant: Any, events: Iterable[PrivacyEvent], delta: float) -> float:
    """ε after the planned ``events`` on top of what the accountant has spent."""
    return epsilon_of(
        accountant.mechanism(), [*accountant.history, *(e.history_entry for e in events)], delta
    )


@functools.cache
def _history_accountant_class() -> type:
    """:class:`HistoryAccountant`, its class defined on first use.

    ``dp_accounting`` (and the SciPy it imports, about 45 MB a process) loads only where
    calibration needs it, not in every process that builds a device (a cohort worker).
    """
    import dp_accounting as dpa

    class HistoryAccountant(dpa.PrivacyAccountant):
        """``dp_accounting``'s accountant interface over :func:`epsilon_of` (for calibration).

        Supports what fedrec releases (Gaussian events, Poisson-sampled, self-composed, composed)
        and computes ε exactly as a device's budget guard (``"prv"``, ``"rdp"``) or the server's
        user-level ledger (``"pld"``) does.
        """

        def __init__(self, kind: str = "prv"):
            super().__init__(dpa.NeighboringRelation.ADD_OR_REMOVE_ONE)
            self.kind = kind
            self.history: list[tuple[float, float, int]] = []

        def _maybe_compose(self, event: Any, count: int, do_compose: bool) -> Any:
            entries = _entries(event, count)
            if entries is None:
                return self.CompositionErrorDetails(event, "unsupported event")
            if do_compose:
                self.history.extend(entries)
            return None

        def get_epsilon(self, target_delta: float) -> float:
            """ε of the composed events at ``target_delta``."""
            return epsilon_of(self.kind, self.history, target_delta)

    HistoryAccountant.__module__ = __name__
    HistoryAccountant.__qualname__ = "HistoryAccountant"
    return HistoryAccountant


def __getattr__(name: str) -> Any:
    if name == "HistoryAccountant":
        return _history_accountant_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _entries(event: Any, count: int) -> list[tuple[float, float, int]] | None:
    """History entries of a ``dp_accounting`` event composed ``count`` times (None: unsupported)."""
    import dp_accounting as dpa

    if isinstance(event, dpa.NoOpDpEvent):
        return []
    if isinstance(event, dpa.GaussianDpEvent):
        return [(float(event.noise_multiplier), 1.0, count)]
    if isinstance(event, dpa.PoissonSampledDpEvent) and isinstance(
        event.event, dpa.GaussianDpEvent
    ):
        return [(float(event.event.noise_multiplier), float(event.sampling_probability), count)]
    if isinstance(event, dpa.SelfComposedDpEvent):
        return _entries(event.event, count * event.count)
    if isinstance(event, dpa.ComposedDpEvent):
        out: list[tuple[float, float, int]] = []
        for _ in range(count):
            for sub in event.events:
                got = _entries(sub, 1)
                if got is None:
                    return None
                out.extend(got)
        return out
    return None


#: The smallest noise multiplier calibration returns (below it accountants need unbounded
#: memory and the guarantee means nothing).
_MIN_SCALE = 0.1


@functools.lru_cache(maxsize=256)
def _calibrate_cached(
    events: tuple[tuple[float, float, int], ...],
    fixed: tuple[tuple[float, float, int], ...],
    target_epsilon: float,
    target_delta: float,
    accountant: str,
) -> float:
    import dp_accounting as dpa
    from dp_accounting.mechanism_calibration import ExplicitBracketInterval

    def history(scale: float) -> list[tuple[float, float, int]]:
        return [(scale * w, q, n) for w, q, n in events] + list(fixed)

    def make_event(scale: float) -> Any:
        return dpa.ComposedDpEvent(
            [PrivacyEvent(s, q, n).to_dp_event() for s, q, n in history(scale)]
        )

    # a bracket from above (small noise multipliers make ε, and PRV's memory, explode)
    hi = 1.0
    while epsilon_of(accountant, history(hi), target_delta) > target_epsilon:
        hi *= 2.0
        if hi > 1e4:
            raise ValueError(f"no noise multiplier reaches epsilon {target_epsilon}")
    lo = hi / 2.0
    while epsilon_of(accountant, history(lo), target_delta) <= target_epsilon:
        hi, lo = lo, lo / 2.0
        if lo < _MIN_SCALE:
            raise ValueError(
                f"epsilon {target_epsilon} needs a noise multiplier below "
                f"{_MIN_SCALE}: set one explicitly if that is what you mean"
            )
    scale = dpa.calibrate_dp_mechanism(
        lambda: _history_accountant_class()(accountant),
        make_event,
        target_epsilon,
        target_delta,
        bracket_interval=ExplicitBracketInterval(lo, hi),
        tol=1e-4,
    )
    return float(scale)


def calibrate(
    events: Sequence[tuple[float, float, int]],
    *,
    target_epsilon: float,
    target_delta: float,
    accountant: str,
    fixed: Sequence[tuple[float, float, int]] = (),
) -> float:
    """The smallest noise scale ``s`` whose releases spend at most ``target_epsilon``.

    Args:
        events: ``(noise_weight, sampling rate, steps)`` per planned release: release ``i``
            has noise multiplier ``s · weight_i``.
        target_epsilon: the budget (at most
            :data:`~fedrec.common.privacy.policy.MAX_CALIBRATION_EPSILON`).
        target_delta: δ.
        accountant: ``"prv"`` or ``"rdp"`` (a device's Opacus accountant) or ``"pld"``.
        fixed: releases of fixed noise composed with them (e.g. planned evaluations).

    Raises:
        ValueError: the budget is out of range, or the fixed releases alone exceed it.
    """
    from fedrec.common.privacy.policy import MAX_CALIBRATION_EPSILON

    if not 0 < target_epsilon <= MAX_CALIBRATION_EPSILON:
        raise ValueError(
            f"target_epsilon must lie in (0, {MAX_CALIBRATION_EPSILON:g}] for "
            f"calibration, got {target_epsilon} (above it a guarantee means "
            "nothing; set a noise multiplier instead)"
        )
    if not 0 < target_delta < 1:
        raise ValueError(f"target_delta must lie in (0, 1), got {target_delta}")
    if not events or any(w <= 0 or not 0 < q <= 1 or n < 1 for w, q, n in events):
        raise ValueError(
            f"calibration needs releases with positive weights, rates in (0, 1] "
            f"and steps >= 1, got {events}"
        )
    if fixed and epsilon_of(accountant, fixed, target_delta) >= target_epsilon:
        raise ValueError(
            f"the fixed releases alone ({tuple(fixed)}) spend epsilon "
            f"{target_epsilon} or more: raise their noise multiplier"
        )
    return _calibrate_cached(
        tuple((float(w), float(q), int(n)) for w, q, n in events),
        tuple((float(s), float(q), int(n)) for s, q, n in fixed),
        float(target_epsilon),
        float(target_delta),
        str(accountant),
    )


# --------------------------------------------------------------------------- incremental

#: Accountants whose ε :func:`epsilon_of` extends from the previous composition.
INCREMENTAL = ("pld", "rdp")

#: The signer's PLD grid at level 0: the audit's first refined grid
#: (``accounting.PLD_START_INTERVAL / PLD_REFINE_FACTOR``). Level ``k`` uses ``2**k`` times it,
#: so every grid the signer uses is a subset of the grids the audit's ``pld_estimate`` ends on
#: (2.5e-4 or 4, 16 times finer); see :class:`Composition` for why that makes the claim at
#: least the audit's value.
PLD_INTERVAL = 2.5e-4

#: Grid points the composed PLD is kept near (at most this many by the width estimate; the
#: grid doubles when a history's estimated width would need more): bounds a round's cost.
PLD_SUPPORT = 2**16

#: Standard deviations of the composed privacy loss its truncated support spans (dp_accounting
#: truncates 1e-15 of tail mass: about 8.4 on each side, measured 16.8 for long histories).
_PLD_SPREAD_SDS = 17.0

#: Composed states kept per kind (a PLD is at most a few MB; an RDP vector is tiny).
_KEEP = {"pld": 4, "rdp": 65536}


@functools.lru_cache(maxsize=1024)
def _pld_step(sigma: float, q: float, level: int = 0) -> Any:
    """One sampled Gaussian step's PLD (pessimistic connect-the-dots) on level ``level``'s grid."""
    from dp_accounting.pld import privacy_loss_distribution as pld_lib

    return pld_lib.from_gaussian_mechanism(
        standard_deviation=sigma,
        value_discretization_interval=PLD_INTERVAL * 2**level,
        sampling_prob=q,
    )


@functools.lru_cache(maxsize=256)
def _pld_gaussian(sigma: float, level: int = 0) -> Any:
    """The PLD of one unsampled Gaussian (``steps`` of them: ``σ/√steps``)."""
    return _pld_step(sigma, 1.0, level)


@functools.lru_cache(maxsize=4096)
def _pld_spread(sigma: float, q: float) -> tuple[float, float]:
    """Width of one step's truncated PLD support and its privacy loss's variance (level 0).

    The larger of the two neighbouring directions, each.
    """
    step = _pld_step(sigma, q, 0)
    width, variance = 0.0, 0.0
    for pmf in (step._pmf_remove, step._pmf_add):
        probs = np.asarray(pmf._probs, dtype=np.float64)
        losses = (pmf._lower_loss + np.arange(len(probs))) * pmf._discretization
        mean = float(probs @ losses) / float(probs.sum())
        width = max(width, len(probs) * pmf._discretization)
        variance = max(variance, float(probs @ (losses - mean) ** 2) / float(probs.sum()))
    return width, variance


def pld_level(history: History) -> int:
    """The grid level of a merged history's PLD: grid ``PLD_INTERVAL · 2**level``.

    The smallest level at which the composed PLD's estimated width (the widest one-step PLD
    plus :data:`_PLD_SPREAD_SDS` standard deviations of the composed privacy loss) fits in
    :data:`PLD_SUPPORT` points. A function of the history alone (not of the order in which it
    was composed), never decreasing as a history grows; the standard deviation grows with the
    square root of the steps, so the level rises by one each time the steps quadruple.
    """
    widest, variances = 0.0, []
    for sigma, q, steps in history:
        width, variance = _pld_spread(sigma, q)
        widest = max(widest, width)
        variances.append(steps * variance)
    points = (widest + _PLD_SPREAD_SDS * math.sqrt(math.fsum(variances))) / PLD_INTERVAL
    return max(0, math.ceil(math.log2(points / PLD_SUPPORT))) if points > PLD_SUPPORT else 0


def _pld_sampled(history: History, level: int) -> Any:
    """The sampled releases of ``history`` composed in order on level ``level``'s grid."""
    pld = None
    for sigma, q, steps in history:
        if q >= 1.0:
            continue
        step = _pld_step(sigma, q, level)
        more = step if steps == 1 else step.self_compose(steps)
        pld = more if pld is None else pld.compose(more)
    return pld


@functools.lru_cache(maxsize=4096)
def _rdp_step(sigma: float, q: float) -> np.ndarray:
    """One (sampled) Gaussian step's RDP at Opacus' default orders."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as opacus_rdp

    out = np.asarray(
        opacus_rdp.compute_rdp(
            q=q, noise_multiplier=sigma, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS
        ),
        dtype=np.float64,
    )
    out.setflags(write=False)
    return out


def _pmf_epsilon(pmf: Any, delta: float) -> float:
    """``pmf.get_epsilon_for_delta(delta)`` of ``dp_accounting`` 0.6, vectorised.

    The same sums in the same order as its loop (cumulative sums from the largest loss down;
    losses stepped down from the top as its ``itertools.count`` does), so the value is equal up
    to the last bits of ``exp``/``log``; a hundred times faster on a PLD of 10^5-10^6 points.
    Non-dense PMFs go to ``dp_accounting`` itself.
    """
    from dp_accounting.pld.pld_pmf import DensePLDPmf

    if not isinstance(pmf, DensePLDPmf):
        return float(pmf.get_epsilon_for_delta(delta))
    inf_mass = float(pmf._infinity_mass)
    if inf_mass > delta:
        return math.inf
    probs = np.asarray(pmf._probs, dtype=np.float64)[::-1]
    step = pmf._discretization
    top = (pmf._lower_loss + len(probs) - 1) * step
    losses = np.cumsum(np.concatenate(([top], np.full(len(probs) - 1, -step))))
    upper = np.cumsum(np.concatenate(([inf_mass], probs)))  # mass before item k, and at the end
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        # exp overflows only at losses below -709, which the stop comes before for any δ < 1
        lower = np.cumsum(np.concatenate(([0.0], np.exp(-losses) * probs)))
        ratio = np.log((upper[:-1] - delta) / lower[:-1])
    stop = (upper[:-1] > delta) & (lower[:-1] > 0) & (ratio >= losses)
    zero = (upper[1:] >= delta) & (lower[1:] == 0)  # checked after adding item k
    k_stop = int(np.argmax(stop)) if stop.any() else len(probs)
    k_zero = int(np.argmax(zero)) if zero.any() else len(probs)
    if k_zero < k_stop:
        return max(0.0, float(losses[k_zero]))
    mass_upper, mass_lower = float(upper[k_stop]), float(lower[k_stop])
    if mass_upper <= mass_lower + delta:
        return 0.0
    return math.log((mass_upper - delta) / mass_lower)


def _pld_epsilon(pld: Any, delta: float) -> float:
    """ε of a PLD at ``delta`` (both neighbouring directions, as ``get_epsilon_for_delta``)."""
    eps = _pmf_epsilon(pld._pmf_remove, delta)
    if pld._symmetric:
        return eps
    return max(eps, _pmf_epsilon(pld._pmf_add, delta))


class Composition:
    """The composition of a history, extended one release at a time (``"pld"``, ``"rdp"``).

    ``"pld"``: ``dp_accounting``'s PLDs (pessimistic connect-the-dots, as its
    ``PLDAccountant``) of the sampled releases, composed in the order they happened, on the grid
    of the history's level (:func:`pld_level`: ``PLD_INTERVAL · 2**level``, so that the composed
    PLD stays near :data:`PLD_SUPPORT` points); the unsampled Gaussians kept as total steps per
    noise multiplier and composed only when ε is asked (``n`` Gaussians with ``σ`` are one with
    ``σ/√n``). A release that leaves the level as it was costs one composition with the composed
    PLD, of bounded size; one that raises it (when the history's steps have about quadrupled)
    composes the history again on the coarser grid, one self-composition per merged entry, so
    the value is a function of the history, whatever the path to it (within ``1e-7`` relative:
    each composition truncates ``1e-15`` of tail mass): a resumed run, a calibration and a
    running claim agree.

    The coarser grid keeps the claim an upper bound: connect-the-dots interpolates the
    mechanism's privacy profile between grid points, and a profile is convex, so
    interpolating over a subset of the points gives a pointwise larger (dominating) profile;
    dominating pairs compose to a dominating pair. Every grid here is a subset of the audit's
    2.5e-4 grid (and of its finer ones), so the claim is at least the audit's value (up to
    the truncated tail mass); how much above is measured in docs/benchmarks.md.

    ``"rdp"``: the RDP vector over Opacus' orders (one step's vector times the steps, summed),
    converted as Opacus' ``RDPAccountant`` does. Immutable: :meth:`extended` returns a new one.
    """

    __slots__ = ("kind", "history", "level", "_pld", "_unsampled", "_rdp", "_eps")

    def __init__(self, kind: str):
        if kind not in INCREMENTAL:
            raise ValueError(f"incremental accountant must be one of {INCREMENTAL}, got {kind!r}")
        self.kind = kind
        self.history: History = ()
        self.level = 0  # the PLD's grid: PLD_INTERVAL * 2**level
        self._pld: Any = None
        self._unsampled: tuple[tuple[float, int], ...] = ()
        self._rdp: np.ndarray | None = None
        self._eps: dict[float, float] = {}

    def extended(self, sigma: float, q: float, steps: int) -> Composition:
        """A new composition: this one and ``steps`` releases of noise ``sigma`` at rate ``q``."""
        sigma, q, steps = float(sigma), float(q), int(steps)
        if sigma <= 0 or not 0 < q <= 1 or steps < 1:
            raise ValueError(f"cannot compose ({sigma}, {q}, {steps}): need σ > 0, q in (0, 1]")
        out = Composition(self.kind)
        last = self.history[-1] if self.history else None
        if last is not None and last[0] == sigma and last[1] == q:
            out.history = (*self.history[:-1], (sigma, q, last[2] + steps))
        else:
            out.history = (*self.history, (sigma, q, steps))
        out._pld, out._unsampled, out._rdp = self._pld, self._unsampled, self._rdp
        if self.kind == "rdp":
            more = steps * _rdp_step(sigma, q)
            out._rdp = more if self._rdp is None else self._rdp + more
            return out
        out.level = pld_level(out.history)
        if q >= 1.0:
            totals = dict(self._unsampled)
            totals[sigma] = totals.get(sigma, 0) + steps
            out._unsampled = tuple(sorted(totals.items()))
        if out.level != self.level:  # a coarser grid: the history again, on it
            out._pld = _pld_sampled(out.history, out.level)
        elif q < 1.0:
            step = _pld_step(sigma, q, out.level)
            more = step if steps == 1 else step.self_compose(steps)
            out._pld = more if self._pld is None else self._pld.compose(more)
        return out

    @property
    def interval(self) -> float:
        """The PLD's grid spacing (``"pld"``)."""
        return PLD_INTERVAL * 2**self.level

    @property
    def support(self) -> int:
        """Grid points of the composed sampled PLD, the larger direction (0: none yet)."""
        if self._pld is None:
            return 0
        return max(len(self._pld._pmf_remove._probs), len(self._pld._pmf_add._probs))

    def epsilon(self, delta: float) -> float:
        """ε at ``delta`` (0 for nothing composed)."""
        delta = float(delta)
        if delta not in self._eps:
            self._eps[delta] = self._epsilon(delta)
        return self._eps[delta]

    def _epsilon(self, delta: float) -> float:
        if not self.history:
            return 0.0
        if self.kind == "rdp":
            from opacus.accountants import RDPAccountant
            from opacus.accountants.analysis import rdp as opacus_rdp

            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
                eps, _ = opacus_rdp.get_privacy_spent(
                    orders=RDPAccountant.DEFAULT_ALPHAS, rdp=self._rdp, delta=delta
                )
            return float(eps)
        pld = self._pld
        for sigma, steps in self._unsampled:
            part = _pld_gaussian(sigma / math.sqrt(steps), self.level)
            pld = part if pld is None else pld.compose(part)
        return _pld_epsilon(pld, delta)


_STATES: dict[str, OrderedDict[History, Composition]] = {k: OrderedDict() for k in INCREMENTAL}
# (kind, history less its last entry, σ, q of the last entry) -> the last such history composed
_STEMS: dict[tuple[str, History, float, float], History] = {}
_LOCK = threading.RLock()  # a Flower server and its in-thread clients may ask at once


def composition_of(kind: str, history: History) -> Composition:
    """The :class:`Composition` of a merged history, extended from the longest one composed.

    A history that extends one already composed (the same entries, the last one with more
    steps, then new entries) is composed from it: one round's ε costs one composition, however
    many rounds came before. The states of the last few histories of each kind are kept.
    """
    with _LOCK:
        return _composition_of(kind, history)


def _composition_of(kind: str, history: History) -> Composition:
    states = _STATES[kind]
    pending: list[tuple[float, float, int]] = []
    current, start = history, None
    while start is None:
        if current in states:
            start = states[current]
            break
        if not current:
            start = Composition(kind)
            break
        sigma, q, steps = current[-1]
        prefix = current[:-1]
        stem = _STEMS.get((kind, prefix, sigma, q))
        if stem is not None and stem in states and stem[-1][2] < steps:
            pending.append((sigma, q, steps - stem[-1][2]))
            start = states[stem]
            break
        pending.append((sigma, q, steps))
        current = prefix
    for sigma, q, steps in reversed(pending):
        start = start.extended(sigma, q, steps)
    _remember(kind, history, start)
    return start


def _remember(kind: str, history: History, state: Composition) -> None:
    states = _STATES[kind]
    states[history] = state
    states.move_to_end(history)
    if history:
        _STEMS[(kind, history[:-1], history[-1][0], history[-1][1])] = history
    while len(states) > _KEEP[kind]:
        old, _ = states.popitem(last=False)
        key = (kind, old[:-1], old[-1][0], old[-1][1]) if old else None
        if key is not None and _STEMS.get(key) == old:
            del _STEMS[key]
