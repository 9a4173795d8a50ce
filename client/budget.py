"""The device's budget guard: ε spent and ε after one more round, with a memo.

Opacus' PRV accountant takes about a second per ``get_epsilon`` on this class of machine.
An accountant's ε depends only on its history of ``(noise_multiplier, sample_rate, steps)``
and δ, and in a federation every device with the same settings and participation count has
the same history, so results are memoised per process on that history
(:func:`fedrec.common.privacy.dpsgd.epsilon_of_history`); histories are first merged so that equal
spends written in different step groupings share one entry.
"""

from __future__ import annotations

import math

from opacus.accountants import IAccountant

from fedrec.common.privacy.dpsgd import epsilon_of_history

__all__ = ["epsilon_of", "epsilon_spent", "epsilon_after_round"]


def epsilon_of(kind: str, history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """ε of an Opacus accountant of ``kind`` with this history at δ (memoised)."""
    if any(sigma == 0 for sigma, _, _ in history):
        return math.inf
    return epsilon_of_history(kind, _merged(list(history)), delta)


def _kind(accountant: IAccountant) -> str:
    return accountant.mechanism()


def _merged(history: list[tuple[float, float, int]]) -> tuple[tuple[float, float, int], ...]:
    """Merge consecutive entries with equal (σ, q): the accountant's ε is unchanged."""
    out: list[tuple[float, float, int]] = []
    for sigma, q, steps in history:
        if out and out[-1][0] == sigma and out[-1][1] == q:
            out[-1] = (sigma, q, out[-1][2] + int(steps))
        else:
            out.append((float(sigma), float(q), int(steps)))
    return tuple(out)


def epsilon_spent(accountant: IAccountant, delta: float) -> float:
    """ε the device has spent so far."""
    return epsilon_of(_kind(accountant), _merged(list(accountant.history)), delta)


def epsilon_after_round(accountant: IAccountant, *, noise_multiplier: float, sample_rate: float,
                        steps: int, delta: float) -> float:
    """ε after ``steps`` more steps at (``noise_multiplier``, ``sample_rate``)."""
    history = list(accountant.history) + [(noise_multiplier, sample_rate, steps)]
    return epsilon_of(_kind(accountant), _merged(history), delta)
