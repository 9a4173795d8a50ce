"""Full-ranking top-K metrics (the numbers everyone quotes), per DESIGN.md.

Definitions, for one user with train items ``T`` and test items ``R`` (both as *sets* of
dense item indices):

* **Ranking.** Every item not in ``T`` is ranked by score, descending; equal scores go to the
  **lower item index** first. ``L`` is the first ``K`` items of that ranking (shorter only when
  fewer than ``K`` items are rankable). ``hits = |L ∩ R|``.
* ``recall@K = hits / |R|``, ``precision@K = hits / K``, ``hr@K = 1[hits > 0]``.
* ``ndcg@K = DCG / IDCG`` with ``DCG = Σ 1/log2(r + 1)`` over the 1-based positions ``r`` of the
  hits in ``L`` and ``IDCG = Σ_{r=1}^{min(|R|, K)} 1/log2(r + 1)`` (binary relevance).
* ``coverage@K = |∪_users L| / n_items`` over the evaluated users.
* Means are over the users with ``|R| >= 1`` (``"users"`` in the result); other users are not
  scored at all.

``R`` is taken literally: a test item that is also a train item of the same user (a repeat
interaction) stays in ``R`` although it is excluded from the ranking and so cannot be hit.

Two paths compute the same numbers:

* :func:`evaluate` scores users in batches (a server or a simulation holding all the data);
* :func:`user_metric_sums` scores one user (a device that holds only its own data), and
  :func:`combine_metric_sums` turns many such sums into means.

Both share the ranking and metric code and sum per-user values with :func:`math.fsum`, so they
agree exactly. Catalog coverage is not additive over users, so the per-user sums omit it and
federated evaluation reports no coverage.

:func:`evaluate_sampled` gives the *sampled-negative* metrics (HR@K and NDCG@K with 99
negatives) that papers use; they are always labelled ``sampled_...`` and are only to be shown
beside the full-ranking ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from fedrec.common.data.schema import Interactions

if TYPE_CHECKING:  # SciPy is imported where used: a device's process never loads it
    import scipy.sparse as sp

__all__ = [
    "DEFAULT_KS",
    "ScoreFn",
    "topk_items",
    "user_metric_sums",
    "combine_metric_sums",
    "combine_noisy_sums",
    "evaluation_keys",
    "evaluate",
    "sample_negatives",
    "evaluate_sampled",
]

DEFAULT_KS: tuple[int, ...] = (10, 20)

ScoreFn = Callable[[np.ndarray], np.ndarray]
"""``score_fn(users)``: ``int64`` user indices → ``(len(users), n_items)`` float scores."""

_ADDITIVE = ("recall", "precision", "hr", "ndcg")

# Scored rows per batch when ``batch_size`` is None: about 8M scores (64 MB as float64).
_BATCH_ELEMENTS = 1 << 23


# --------------------------------------------------------------------------- ranking


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    out = tuple(sorted({int(k) for k in ks}))
    if not out or out[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks!r}")
    return out


def _as_scores(scores: object, rows: int, n_items: int) -> np.ndarray:
    """Validate a score block as a ``(rows, n_items)`` float64 array without NaNs."""
    arr = np.asarray(scores)
    if arr.shape != (rows, n_items):
        raise ValueError(f"scores have shape {arr.shape}, expected {(rows, n_items)}")
    # float32 -> float64 is exact, so neither order nor ties change.
    arr = arr.astype(np.float64, copy=False)
    if np.isnan(arr).any():
        raise ValueError("scores contain NaN; every rankable item needs a comparable score")
    return arr


def _topk_rows(scores: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
    """Exact top-``k`` per row: score descending, ties to the lower index, ``exclude`` skipped.

    ``scores`` is ``(B, n)`` float64 without NaN, ``exclude`` a ``(B, n)`` bool mask. Returns
    ``(B, k)`` int64 item indices, padded with ``-1`` where a row has fewer than ``k``
    rankable items.

    An ``argpartition``-style selection followed by a sort of only the ``k`` winners: the
    k-th largest rankable value ``v`` is found per row; every rankable item above ``v`` is in,
    and items equal to ``v`` fill the remaining places lowest index first. That is exact
    with ties, unlike a bare ``argpartition``.
    """
    b, n = scores.shape
    out = np.full((b, k), -1, dtype=np.int64)
    if b == 0 or n == 0:
        return out
    kk = min(k, n)
    masked = np.where(exclude, -np.inf, scores)
    # The kk-th largest of the masked row equals the kk-th largest rankable score whenever a
    # row has >= kk rankable items (excluded entries are -inf, the minimum); otherwise it is
    # -inf and every rankable item gets selected below.
    neg = np.negative(masked)
    kth = -np.partition(neg, kk - 1, axis=1)[:, kk - 1 : kk]
    above = masked > kth
    tied = (masked == kth) & ~exclude
    need = kk - above.sum(axis=1, keepdims=True)
    tied &= np.cumsum(tied, axis=1) <= need
    rows, cols = np.nonzero(above | tied)
    order = np.lexsort((cols, neg[rows, cols], rows))
    rows, cols = rows[order], cols[order]
    starts = np.concatenate(([0], np.cumsum(np.bincount(rows, minlength=b))[:-1]))
    out[rows, np.arange(len(rows)) - starts[rows]] = cols
    return out


def topk_items(scores: np.ndarray, exclude: Iterable[int] | np.ndarray, k: int) -> np.ndarray:
    """Return the top-``k`` items of one score vector, skipping ``exclude``.

    Ranked by score descending with ties to the lower item index. ``exclude`` holds item
    indices (e.g. the user's train items) or is a boolean mask of length ``n_items``. Returns
    an ``int64`` array of length ``min(k, number of rankable items)``.
    """
    scores = np.asarray(scores)
    n = scores.shape[-1] if scores.ndim else 0
    row = _as_scores(scores.reshape(1, -1), 1, n)
    mask = _exclude_mask(exclude, n)
    top = _topk_rows(row, mask[None, :], int(k))[0]
    return top[top >= 0]


def _exclude_mask(items: Iterable[int] | np.ndarray, n_items: int) -> np.ndarray:
    arr = np.asarray(items if isinstance(items, np.ndarray) else list(items))
    if arr.dtype == bool:
        if arr.shape != (n_items,):
            raise ValueError(f"boolean mask has shape {arr.shape}, expected {(n_items,)}")
        return arr
    mask = np.zeros(n_items, dtype=bool)
    mask[arr.astype(np.int64)] = True
    return mask


# --------------------------------------------------------------------------- metric core


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def _per_user_metrics(
    top: np.ndarray, relevant: np.ndarray, n_relevant: np.ndarray, ks: tuple[int, ...]
) -> dict[str, np.ndarray]:
    """Per-user metric values from top lists and a dense relevance mask.

    ``top`` is ``(B, max(ks))`` padded with ``-1``; ``relevant`` is ``(B, n_items)`` bool;
    ``n_relevant`` the ``|R|`` per row (all >= 1).
    """
    kmax = top.shape[1]
    hits = np.take_along_axis(relevant, np.maximum(top, 0), axis=1) & (top >= 0)
    disc = _discounts(kmax)
    hit_cum = np.cumsum(hits, axis=1)
    dcg_cum = np.cumsum(np.where(hits, disc, 0.0), axis=1)
    idcg_cum = np.cumsum(disc)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        h = hit_cum[:, k - 1].astype(np.float64)
        out[f"recall@{k}"] = h / n_relevant
        out[f"precision@{k}"] = h / k
        out[f"hr@{k}"] = (h > 0).astype(np.float64)
        out[f"ndcg@{k}"] = dcg_cum[:, k - 1] / idcg_cum[np.minimum(n_relevant, k) - 1]
    return out


def user_metric_sums(
    scores: np.ndarray,
    train_items: Iterable[int] | np.ndarray,
    test_items: Iterable[int] | np.ndarray,
    *,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, float]:
    """Metric sums for one user, for evaluation on a device.

    ``scores`` has one float per item; ``train_items`` are excluded from the ranking;
    ``test_items`` are the relevant items. For one user the sums are the metric values
    themselves, plus ``"users": 1``; a user with no test item contributes zeros and
    ``"users": 0``. Add many with :func:`combine_metric_sums`. Coverage is not included
    (it is not additive over users).
    """
    ks = _check_ks(ks)
    scores = np.asarray(scores)
    n = scores.shape[-1] if scores.ndim else 0
    row = _as_scores(scores.reshape(1, -1), 1, n)
    relevant = _exclude_mask(test_items, n)
    n_rel = int(relevant.sum())
    if n_rel == 0:
        zero = {f"{m}@{k}": 0.0 for k in ks for m in _ADDITIVE}
        return {**zero, "users": 0}
    top = _topk_rows(row, _exclude_mask(train_items, n)[None, :], ks[-1])
    values = _per_user_metrics(top, relevant[None, :], np.array([n_rel]), ks)
    return {**{key: float(v[0]) for key, v in values.items()}, "users": 1}


def evaluation_keys(ks: Sequence[int]) -> tuple[str, ...]:
    """The keys of one device's metric sums, in a fixed order (``users`` last)."""
    return (*(f"{m}@{k}" for k in _check_ks(ks) for m in _ADDITIVE), "users")


def combine_noisy_sums(sums: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Means from noised metric sums: each key's total over the (noised) user total.

    The sums are released with Gaussian noise (:meth:`Device.evaluation_release`), so the
    user count is noisy too and the means may fall outside ``[0, 1]``; they are unbiased
    ratios, not clipped. ``users`` is returned as the noisy total.
    """
    sums = [s for s in sums if s]
    if not sums:
        return {}
    keys = [k for k in sums[0] if k != "users"]
    users = math.fsum(float(s.get("users", 0.0)) for s in sums)
    out = {
        k: (math.fsum(float(s.get(k, 0.0)) for s in sums) / users if users > 0 else math.nan)
        for k in keys
    }
    out["users"] = users
    return out


def combine_metric_sums(sums: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Add per-user (or per-device) metric sums and divide by the user count: the means.

    Every key but ``"users"`` is summed exactly (:func:`math.fsum`) and divided by the total
    ``"users"``; ``"users"`` is returned as the total. With no users the means are NaN.
    """
    sums = list(sums)
    users = int(sum(int(s.get("users", 0)) for s in sums))
    keys: list[str] = []
    for s in sums:
        keys.extend(key for key in s if key != "users" and key not in keys)
    out: dict[str, float] = {}
    for key in keys:
        total = math.fsum(float(s.get(key, 0.0)) for s in sums)
        out[key] = total / users if users else math.nan
    out["users"] = users
    return out


# --------------------------------------------------------------------------- full evaluation


def _item_mask_csr(data: Interactions) -> sp.csr_matrix:
    """Build a boolean user × item CSR matrix of the (deduplicated) pairs in ``data``."""
    import scipy.sparse as sp

    n_users, n_items = data.n_users, data.n_items
    keys = np.unique(data.user * np.int64(n_items) + data.item)
    users, items = np.divmod(keys, np.int64(n_items))
    indptr = np.concatenate(([0], np.cumsum(np.bincount(users, minlength=n_users))))
    return sp.csr_matrix((np.ones(len(keys), dtype=bool), items, indptr), shape=(n_users, n_items))


def _check_pair(train: Interactions, test: Interactions) -> None:
    if train.n_items != test.n_items or train.n_users != test.n_users:
        raise ValueError(
            f"train is {train.n_users}x{train.n_items} but test is {test.n_users}x{test.n_items}"
            " (users x items); split both from the same Interactions"
        )


def _batches(users: np.ndarray, n_items: int, batch_size: int | None):
    size = batch_size if batch_size is not None else max(1, _BATCH_ELEMENTS // max(n_items, 1))
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(users), size):
        yield users[start : start + size]


def evaluate(
    score_fn: ScoreFn,
    train: Interactions,
    test: Interactions,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int | None = None,
) -> dict[str, float]:
    """Full-ranking Recall, Precision, HR, NDCG and catalog coverage at each K in ``ks``.

    ``score_fn(users)`` gets ``int64`` user indices (only users with at least one test item,
    in ascending order, ``batch_size`` at a time; by default as many as fit in about 8M
    scores) and returns ``(len(users), n_items)`` float scores. Each user's train items are
    excluded from the ranking. Returns means over the evaluated users under keys
    ``"recall@10"``, ``"precision@10"``, ``"hr@10"``, ``"ndcg@10"``, ``"coverage@10"`` (and
    likewise for every K) plus ``"users"``, the number of users evaluated.
    """
    ks = _check_ks(ks)
    _check_pair(train, test)
    n_items = train.n_items
    train_mask = _item_mask_csr(train)
    test_mask = _item_mask_csr(test)
    n_rel_all = np.diff(test_mask.indptr)
    users = np.flatnonzero(n_rel_all > 0).astype(np.int64)

    per_user: dict[str, list[np.ndarray]] = {}
    covered = {k: np.zeros(n_items, dtype=bool) for k in ks}
    for batch in _batches(users, n_items, batch_size):
        scores = _as_scores(score_fn(batch), len(batch), n_items)
        top = _topk_rows(scores, train_mask[batch].toarray(), ks[-1])
        values = _per_user_metrics(top, test_mask[batch].toarray(), n_rel_all[batch], ks)
        for key, v in values.items():
            per_user.setdefault(key, []).append(v)
        for k in ks:
            items = top[:, :k]
            covered[k][items[items >= 0]] = True

    n_users = len(users)
    out: dict[str, float] = {}
    for k in ks:
        for m in _ADDITIVE:
            key = f"{m}@{k}"
            vals = np.concatenate(per_user[key]) if per_user else np.empty(0)
            out[key] = math.fsum(vals.tolist()) / n_users if n_users else math.nan
        out[f"coverage@{k}"] = float(covered[k].sum()) / n_items if n_items else math.nan
    out["users"] = n_users
    return out


# --------------------------------------------------------------------------- sampled metrics


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _negatives_batch(
    interacted: np.ndarray, n_negatives: int, rng: np.random.Generator
) -> np.ndarray:
    """Uniform samples without replacement from each row's non-interacted items.

    ``interacted`` is a ``(B, n_items)`` bool mask. Returns ``(B, n_negatives)`` int64, padded
    with ``-1`` where a row has fewer non-interacted items than ``n_negatives``.
    """
    b, n = interacted.shape
    keys = rng.random((b, n))
    keys[interacted] = np.inf
    m = min(n_negatives, n)
    if m == 0:
        return np.full((b, n_negatives), -1, dtype=np.int64)
    if m < n:
        idx = np.argpartition(keys, m - 1, axis=1)[:, :m]
    else:
        idx = np.argsort(keys, axis=1)
    idx = idx.astype(np.int64)
    idx[~np.isfinite(np.take_along_axis(keys, idx, axis=1))] = n  # sorts after real items
    idx = np.sort(idx, axis=1)
    idx[idx == n] = -1
    out = np.full((b, n_negatives), -1, dtype=np.int64)
    out[:, :m] = idx
    return out


def sample_negatives(
    train: Interactions,
    test: Interactions,
    users: np.ndarray,
    *,
    n_negatives: int = 99,
    seed: int | np.random.Generator,
) -> np.ndarray:
    """Draw negatives per user: items the user has in neither train nor test.

    Returns ``(len(users), n_negatives)`` int64 item indices drawn uniformly without
    replacement (each row sorted, ``-1`` padding at the end where a user has fewer candidates). The
    same draws as :func:`evaluate_sampled` makes for the same ``seed`` and users.
    """
    _check_pair(train, test)
    users = np.asarray(users, dtype=np.int64)
    interacted = _item_mask_csr(train) + _item_mask_csr(test)
    rng = _rng(seed)
    parts = [
        _negatives_batch(interacted[b].toarray(), n_negatives, rng)
        for b in _batches(users, train.n_items, None)
    ]
    return np.concatenate(parts) if parts else np.empty((0, n_negatives), dtype=np.int64)


def _first_test_item(test: Interactions) -> np.ndarray:
    """Per user, the earliest test item by (timestamp, item index); -1 for users with none."""
    first = np.full(test.n_users, -1, dtype=np.int64)
    if len(test):
        order = np.lexsort((test.item, test.timestamp, test.user))
        users = test.user[order]
        lead = np.concatenate(([True], users[1:] != users[:-1]))
        first[users[lead]] = test.item[order][lead]
    return first


def evaluate_sampled(
    score_fn: ScoreFn,
    train: Interactions,
    test: Interactions,
    *,
    n_negatives: int = 99,
    ks: Sequence[int] = (10,),
    seed: int | np.random.Generator,
    batch_size: int | None = None,
) -> dict[str, float]:
    """Sampled-negative HR@K and NDCG@K (as papers report them), labelled ``sampled_``.

    Per user with a test item: the positive is the user's **first** test item by
    ``(timestamp, item index)`` (the next item after train, the usual choice for a temporal
    protocol); ``n_negatives`` items the user never interacted with (in neither train nor
    test) are drawn uniformly without replacement (all of them if there are fewer). The
    positive's rank among the ``1 + n_negatives`` candidates counts the negatives scoring
    higher, or equal with a lower item index. ``sampled_hr@K = 1[rank <= K]`` and
    ``sampled_ndcg@K = 1/log2(rank + 1)`` if ``rank <= K`` else 0, averaged over users;
    ``"sampled_users"`` is their number. Not comparable with full-ranking metrics.
    """
    ks = _check_ks(ks)
    _check_pair(train, test)
    n_items = train.n_items
    rng = _rng(seed)
    positive = _first_test_item(test)
    users = np.flatnonzero(positive >= 0).astype(np.int64)
    interacted = _item_mask_csr(train) + _item_mask_csr(test)

    ranks: list[np.ndarray] = []
    for batch in _batches(users, n_items, batch_size):
        neg = _negatives_batch(interacted[batch].toarray(), n_negatives, rng)
        scores = _as_scores(score_fn(batch), len(batch), n_items)
        pos = positive[batch][:, None]
        pos_score = np.take_along_axis(scores, pos, axis=1)
        neg_score = np.take_along_axis(scores, np.maximum(neg, 0), axis=1)
        ahead = (neg_score > pos_score) | ((neg_score == pos_score) & (neg < pos))
        ranks.append(1 + (ahead & (neg >= 0)).sum(axis=1))

    rank = np.concatenate(ranks) if ranks else np.empty(0, dtype=np.int64)
    n_users = len(users)
    out: dict[str, float] = {}
    for k in ks:
        inside = rank <= k
        hr = inside.astype(np.float64)
        ndcg = np.where(inside, 1.0 / np.log2(rank + 1.0), 0.0)
        out[f"sampled_hr@{k}"] = math.fsum(hr.tolist()) / n_users if n_users else math.nan
        out[f"sampled_ndcg@{k}"] = math.fsum(ndcg.tolist()) / n_users if n_users else math.nan
    out["sampled_users"] = n_users
    return out
