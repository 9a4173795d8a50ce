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
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import dp_accounting as dpa

from fedrec.common.privacy.events import PrivacyEvent, merge_history

__all__ = [
    "ACCOUNTANTS",
    "make_accountant",
    "epsilon_of",
    "epsilon_spent",
    "epsilon_after",
    "calibrate",
    "HistoryAccountant",
    "History",
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
    if kind == "pld":
        from fedrec.common.privacy.accounting import epsilon

        return float(
            epsilon(
                [PrivacyEvent(s, q, n) for s, q, n in history], target_delta=delta, accountant="pld"
            )
        )
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


def _entries(event: Any, count: int) -> list[tuple[float, float, int]] | None:
    """History entries of a ``dp_accounting`` event composed ``count`` times (None: unsupported)."""
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
        lambda: HistoryAccountant(accountant),
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
