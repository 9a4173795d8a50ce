"""Train/test splits of an :class:`~fedrec.common.data.schema.Interactions`, per DESIGN.md.

The evaluation protocol (DESIGN.md, "Evaluation protocol") is a per-user *temporal* split:
sort each user's interactions by ``(timestamp, item index)``; the last
``max(1, floor(n * fraction))`` of them are test, the rest train. With the default
``fraction = 0.2`` that is ``max(1, n // 5)``. The same rule applied to train cuts a
validation slice (:func:`validation_split`).

Consequences worth knowing:

* A user with ``n = 1`` interaction has that interaction in **test** and none in train
  (``max(1, 0) = 1``); users with ``n`` in ``2..9`` get exactly one test interaction.
  Such a user is still evaluated (against a ranking that excludes nothing).
* The id maps are never changed: every user and item of the input is still in both halves'
  maps, even where one half has no interaction for them.
* Rows keep their original relative order inside each half (the halves are
  :meth:`~fedrec.common.data.schema.Interactions.subset` s of the input by a boolean mask).

Everything is vectorized (one ``lexsort`` over all interactions); ML-100K splits in a few
milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from fedrec.common.data.schema import Interactions

__all__ = ["Split", "temporal_split", "validation_split", "random_split", "held_out_counts"]


@dataclass(frozen=True)
class Split:
    """A train half and a test (or validation) half of the same interactions.

    Both halves share the input's ``user_map`` and ``item_map``.
    """

    train: Interactions
    test: Interactions


def _as_fraction(fraction: float) -> Fraction:
    """Return the exact rational the caller meant by ``fraction`` (``0.2`` → ``1/5``).

    Going through ``repr`` recovers the shortest decimal that round-trips to the float, so
    ``0.2`` is exactly ``1/5`` and ``0.29`` exactly ``29/100`` rather than the binary
    approximations whose products with ``n`` can floor to the wrong integer.
    """
    if isinstance(fraction, Fraction):
        frac = fraction
    else:
        frac = Fraction(repr(float(fraction)))
    if not 0 <= frac <= 1:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction!r}")
    return frac


def held_out_counts(n: np.ndarray, fraction: float = 0.2) -> np.ndarray:
    """Count held-out interactions for users with ``n`` interactions each.

    ``max(1, floor(n * fraction))`` for ``n >= 1`` and ``0`` for ``n == 0``, computed in exact
    integer arithmetic (for the default ``0.2`` this is ``max(1, n // 5)``).
    """
    n = np.asarray(n, dtype=np.int64)
    frac = _as_fraction(fraction)
    if frac == Fraction(1, 5):
        held = n // 5
    else:
        # Exact: one Python-int product per *distinct* count, then scatter back.
        uniq, inverse = np.unique(n, return_inverse=True)
        per = np.array(
            [(int(u) * frac.numerator) // frac.denominator for u in uniq], dtype=np.int64
        )
        held = per[inverse].reshape(n.shape)
    return np.where(n > 0, np.maximum(1, held), 0)


def _split_by_rank(data: Interactions, order: np.ndarray, fraction: float) -> Split:
    """Put the last ``held_out_counts`` positions of each user's block of ``order`` in test.

    ``order`` must list all positions grouped by user in ascending user order (as a
    ``lexsort`` whose last key is ``data.user`` does), each user's block in the order whose
    tail is held out.
    """
    counts = np.bincount(data.user, minlength=data.n_users)
    held = held_out_counts(counts, fraction)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    users_sorted = data.user[order]
    rank = np.arange(len(order), dtype=np.int64) - starts[users_sorted]
    is_test_sorted = rank >= (counts - held)[users_sorted]
    is_test = np.empty(len(order), dtype=bool)
    is_test[order] = is_test_sorted
    return Split(train=data.subset(~is_test), test=data.subset(is_test))


def temporal_split(data: Interactions, *, fraction: float = 0.2) -> Split:
    """Per-user temporal split: each user's last ``max(1, floor(n*fraction))`` are test.

    "Last" is by ``(timestamp, item index)``; exact duplicates keep their input order. A user
    with a single interaction ends up with it in test and nothing in train.
    """
    order = np.lexsort((data.item, data.timestamp, data.user))
    return _split_by_rank(data, order, fraction)


def validation_split(split_or_train: Split | Interactions, *, fraction: float = 0.2) -> Split:
    """Apply the temporal rule to a training set: ``Split(train=train', test=validation)``.

    Accepts a :class:`Split` (its ``train`` is cut) or an :class:`Interactions`.
    """
    train = split_or_train.train if isinstance(split_or_train, Split) else split_or_train
    return temporal_split(train, fraction=fraction)


def random_split(
    data: Interactions,
    *,
    fraction: float = 0.2,
    seed: int | np.random.Generator,
) -> Split:
    """Seeded random per-user split with the same per-user test counts as the temporal one.

    Each user's test interactions are a uniformly random subset of size
    ``max(1, floor(n*fraction))``. ``seed`` is an int (reproducible) or a
    ``np.random.Generator`` (advanced by the call).
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    keys = rng.random(len(data))
    order = np.lexsort((keys, data.user))
    return _split_by_rank(data, order, fraction)
