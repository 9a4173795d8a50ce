"""Two-stage recommendation on one device: candidate generation, ranking, re-ranking.

Pure numpy; what a device runs to rank the catalog for its own user (nothing here leaves the
device). The stages, in the order :func:`rank` runs them:

1. **Scoring**: ``score_i = <p_u, q_i> + b_i`` over the whole item table (:func:`score_items`,
   one float32 matrix-vector product), or any score vector (a popularity prior for a cold
   start).
2. **Filtering**: excluded items (the user's seen items) and unavailable items (a boolean mask
   or a list of allowed indices) get score ``-inf``. An availability *predicate* is not run
   over the catalog: it is applied lazily to candidates in rank order.
3. **Candidate generation**: the top ``N`` items by score with :func:`numpy.argpartition`
   (``O(n)``), ties to the lower item index; with a freshness boost, the ``N // 2`` most
   recent items join the candidates (a second source, as two-stage systems do).
   ``N = k`` when nothing re-ranks; ``max(10 k, 100)`` otherwise.
4. **Ranking**: candidate scores are min-max normalised to ``[0, 1]``; a freshness boost adds
   ``weight * 2 ** (-age / half_life)`` (so ``weight = 1`` is worth the whole score range of
   the candidates).
5. **Re-ranking**: with ``diversity = λ > 0``, maximal marginal relevance
   (Carbonell & Goldstein 1998) over the candidates' item embeddings picks, one at a time,
   ``argmax (1 - λ) rel_i - λ max_{j chosen} cos(q_i, q_j)``; λ = 0 is the relevance order.
6. **Explanations** (optional): for each recommended item, its nearest item by embedding
   cosine among the user's interacted items ("because you interacted with X"), with a genre
   both share when metadata has genres; without embeddings, the interacted item sharing most
   genres; without history, the cold-start source ("popular", "recent", "catalog").

Everything beyond scoring costs ``O(n)`` vector operations plus ``O(k N d)`` for MMR, so a
``k = 10`` list over a million items costs about one pass over the item table.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Explanation",
    "Freshness",
    "RankedItem",
    "Availability",
    "score_items",
    "fold_in",
    "top_candidates",
    "mmr_order",
    "freshness_boost",
    "explain",
    "rank",
    "intra_list_similarity",
]

#: Allowed items: a boolean mask over the catalog, an array of allowed item indices, or a
#: predicate on an item index (applied lazily, in rank order).
Availability = np.ndarray | Sequence[int] | Callable[[int], bool]

EXPLANATION_KINDS = ("neighbour", "genre", "popular", "recent", "catalog", "score")
#: Up to this many items the scores come from BLAS (single-threaded at this size).
_BLAS_ROWS = 16384
#: Catalogs larger than this pick candidates through a sampled threshold.
_SAMPLE_FROM = 65536
_SAMPLE_SIZE = 4096


@dataclass(frozen=True)
class Freshness:
    """A boost for recent items.

    Attributes:
        timestamps: per-item publication time in seconds (NaN: unknown, no boost); length
            ``n_items``. ``None`` only where a caller fills it in (the SDK uses its catalog's).
        half_life: seconds after which the boost halves.
        weight: the boost of a brand-new item, in units of the candidates' score range.
        now: the reference time (seconds); ``None`` uses the current time.
    """

    timestamps: np.ndarray | None = None
    half_life: float = 7 * 86400.0
    weight: float = 0.5
    now: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.half_life) and self.half_life > 0):
            raise ValueError(
                f"half_life must be a positive number of seconds, got {self.half_life}"
            )
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"freshness weight must be finite and >= 0, got {self.weight}")
        if self.now is not None and not math.isfinite(self.now):
            raise ValueError(f"now must be finite, got {self.now}")


@dataclass(frozen=True)
class Explanation:
    """Why an item is recommended.

    Attributes:
        kind: ``"neighbour"`` (close in embedding space to an item the user interacted with),
            ``"genre"`` (shares a genre with one), ``"popular"`` / ``"recent"`` / ``"catalog"``
            (cold-start sources) or ``"score"`` (the model's score, no better reason found).
        because: index of the interacted item the explanation names, or None.
        similarity: cosine similarity of the two items' embeddings (``"neighbour"``).
        genre: a genre both items share, when metadata has genres.
    """

    kind: str
    because: int | None = None
    similarity: float | None = None
    genre: str | None = None

    def text(self, name: Callable[[int], str] = str) -> str:
        """The explanation in words; ``name`` turns an item index into a display name."""
        if self.kind == "neighbour" and self.because is not None:
            out = f"because you interacted with {name(self.because)}"
            return out + (f" (also {self.genre})" if self.genre else "")
        if self.kind == "genre" and self.because is not None:
            return f"because you interacted with {name(self.because)}, also {self.genre}"
        return {
            "popular": "popular with other users",
            "recent": "new in the catalog",
            "catalog": "from the catalog",
        }.get(self.kind, "recommended for you")


@dataclass(frozen=True)
class RankedItem:
    """One recommended item: its catalog index, model score and optional explanation."""

    index: int
    score: float
    explanation: Explanation | None = None


# --------------------------------------------------------------------------- scoring


def score_items(
    user_vector: np.ndarray, item_embeddings: np.ndarray, item_bias: np.ndarray | None = None
) -> np.ndarray:
    """``<p_u, q_i> + b_i`` for every item (float32, one BLAS matrix-vector product)."""
    emb = np.asarray(item_embeddings)
    user = np.asarray(user_vector, dtype=emb.dtype).reshape(-1)
    if emb.ndim != 2 or emb.shape[1] != user.shape[0]:
        raise ValueError(
            f"item embeddings {emb.shape} do not match a user vector of dimension {user.shape[0]}"
        )
    if emb.shape[0] <= _BLAS_ROWS:
        scores = emb @ user
    else:
        # Multi-threaded BLAS gemv is erratic on a loaded few-core device (10x slower at
        # 50k-100k rows); einsum's single-threaded SIMD loop is as fast and steady.
        scores = np.einsum("ij,j->i", emb, user)
    if item_bias is not None:
        scores += np.asarray(item_bias, dtype=scores.dtype).reshape(-1)
    return scores


def fold_in(
    item_embeddings: np.ndarray, items: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """A user vector from interacted items: their weighted mean embedding.

    A device that has interactions but no trained user embedding yet (or that forgot it) ranks
    with this; it is the item-based neighbour score ``Σ_j w_j <q_j, q_i>`` up to a scale.
    """
    items = np.asarray(items, dtype=np.int64)
    emb = np.asarray(item_embeddings)
    if len(items) == 0:
        return np.zeros(emb.shape[1], dtype=emb.dtype)
    w = np.ones(len(items)) if weights is None else np.asarray(weights, dtype=np.float64)
    total = float(w.sum())
    if total <= 0:
        w, total = np.ones(len(items)), float(len(items))
    return ((w[:, None] * emb[items]).sum(0) / total).astype(emb.dtype)


# --------------------------------------------------------------------------- candidates


def top_candidates(scores: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` best items by score, sorted by (score descending, index ascending).

    ``-inf`` and NaN scores are never candidates; ties at the cut go to the lower index, as
    everywhere in fedrec. ``O(len(scores))``: on a large catalog a threshold from a strided
    sample of the scores keeps only the items at or above it (one vectorised comparison) and
    the exact selection runs on those; otherwise (or when the sample misjudges) argpartition
    runs on all scores. Both give the same answer.
    """
    s = np.asarray(scores)
    size = s.shape[0]
    n = min(int(n), size)
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    if size > _SAMPLE_FROM and n * 64 < size:
        step = size // _SAMPLE_SIZE
        sample = s[::step]
        j = min(len(sample), max(1, math.ceil(4 * n * len(sample) / size)))
        threshold = -np.partition(-sample, j - 1)[j - 1]  # the sample's j-th largest
        if np.isfinite(threshold):
            idx = np.flatnonzero(s >= threshold)  # every item that can be in the top n
            if len(idx) >= n:
                return idx[_top_exact(s[idx], n)]
    return _top_exact(s, n)


def _top_exact(s: np.ndarray, n: int) -> np.ndarray:
    """Positions of the ``n`` best finite entries, by (value desc, position asc)."""
    size = s.shape[0]
    n = min(n, size)
    if n == size:
        idx = np.arange(size)
    else:
        neg = -s
        part = np.argpartition(neg, n - 1)
        cut = neg[part[n - 1]]
        if not np.isfinite(cut):  # fewer than n rankable items
            idx = np.flatnonzero(np.isfinite(s))
        else:
            # every item strictly above the cut, then the cut's ties by lower index
            above = np.flatnonzero(neg < cut)
            ties = np.flatnonzero(neg == cut)[: n - len(above)]
            idx = np.concatenate([above, ties])
    idx = idx[np.isfinite(s[idx])]
    order = np.lexsort((idx, -s[idx]))
    return idx[order].astype(np.int64, copy=False)


def _minmax(x: np.ndarray) -> np.ndarray:
    if len(x) == 0:
        return x.astype(np.float64)
    lo, hi = float(x.min()), float(x.max())
    if hi - lo <= 0:
        return np.ones(len(x))
    return (x.astype(np.float64) - lo) / (hi - lo)


def freshness_boost(
    timestamps: np.ndarray, *, half_life: float, weight: float, now: float
) -> np.ndarray:
    """``weight * 2 ** (-max(0, now - t) / half_life)``; 0 where ``t`` is NaN."""
    t = np.asarray(timestamps, dtype=np.float64)
    age = np.maximum(0.0, now - t)
    boost = weight * np.exp2(-age / half_life)
    return np.where(np.isnan(t), 0.0, boost)


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)


def mmr_order(relevance: np.ndarray, vectors: np.ndarray, k: int, diversity: float) -> np.ndarray:
    """Positions of ``k`` items picked by maximal marginal relevance.

    ``relevance`` and ``vectors`` are the candidates' (in any order; ties go to the earlier
    position). Each step picks ``argmax (1 - λ) rel_i - λ max_{j picked} cos(v_i, v_j)``.
    """
    lam = float(diversity)
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"diversity (MMR λ) must lie in [0, 1], got {diversity}")
    m = len(relevance)
    k = min(int(k), m)
    unit = _unit_rows(vectors)
    rel = (1.0 - lam) * np.asarray(relevance, dtype=np.float64)
    max_sim = np.zeros(m)
    taken = np.zeros(m, dtype=bool)
    out = np.empty(k, dtype=np.int64)
    for step in range(k):
        gain = rel - lam * max_sim
        gain[taken] = -np.inf
        j = int(np.argmax(gain))
        out[step] = j
        taken[j] = True
        if step + 1 < k:
            np.maximum(max_sim, unit @ unit[j], out=max_sim)
    return out


def intra_list_similarity(item_embeddings: np.ndarray, items: Sequence[int]) -> float:
    """Mean pairwise cosine similarity of a list's items (lower is more diverse)."""
    idx = np.asarray(items, dtype=np.int64)
    if len(idx) < 2:
        return 0.0
    unit = _unit_rows(np.asarray(item_embeddings)[idx])
    sims = unit @ unit.T
    m = len(idx)
    return float((sims.sum() - np.trace(sims)) / (m * (m - 1)))


# --------------------------------------------------------------------------- explanations


def _genre_sets(
    genres: Sequence[Sequence[str]] | Mapping[int, Sequence[str]] | None, index: int
) -> tuple[str, ...]:
    if genres is None:
        return ()
    try:
        return tuple(genres[index] or ())  # type: ignore[index]
    except (KeyError, IndexError):
        return ()


def explain(
    items: np.ndarray,
    *,
    history: np.ndarray | None,
    item_vectors: np.ndarray | None = None,
    genres: Sequence[Sequence[str]] | Mapping[int, Sequence[str]] | None = None,
    fallback: str = "score",
) -> list[Explanation]:
    """One :class:`Explanation` per item in ``items``.

    Args:
        items: recommended item indices.
        history: indices of the items the user interacted with (the only items an explanation
            may name).
        item_vectors: the item table, for nearest-neighbour explanations.
        genres: per-item genres (a sequence aligned with the catalog or a dict by index).
        fallback: the kind used when there is no history (the cold-start source).
    """
    items = np.asarray(items, dtype=np.int64)
    hist = (
        np.zeros(0, dtype=np.int64)
        if history is None
        else np.unique(np.asarray(history, dtype=np.int64))
    )
    if len(items) == 0:
        return []
    if len(hist) == 0:
        return [Explanation(fallback) for _ in items]
    out: list[Explanation] = []
    if item_vectors is not None:
        vecs = np.asarray(item_vectors)
        sims = _unit_rows(vecs[items]) @ _unit_rows(vecs[hist]).T  # (k, h)
        same = items[:, None] == hist[None, :]
        if len(hist) > 1:
            sims = np.where(same, -np.inf, sims)  # name another item than the item itself
        best = np.argmax(sims, axis=1)
        for row, item in enumerate(items):
            because = int(hist[best[row]])
            mine = _genre_sets(genres, int(item))
            theirs = set(_genre_sets(genres, because))
            shared = next((g for g in mine if g in theirs), None)
            out.append(Explanation("neighbour", because, float(sims[row, best[row]]), shared))
        return out
    for item in items:
        mine = _genre_sets(genres, int(item))
        best_item, best_shared = None, ()
        for h in hist:
            if h == item and len(hist) > 1:
                continue
            shared = tuple(g for g in mine if g in set(_genre_sets(genres, int(h))))
            if len(shared) > len(best_shared):
                best_item, best_shared = int(h), shared
        if best_item is None:
            out.append(Explanation(fallback))
        else:
            out.append(Explanation("genre", best_item, None, best_shared[0]))
    return out


# --------------------------------------------------------------------------- the pipeline


def _blocked_scores(
    scores: np.ndarray, exclude: np.ndarray | Sequence[int] | None, available: Availability | None
) -> np.ndarray:
    """A copy of the scores with excluded and unavailable items at ``-inf`` (when needed)."""
    s = np.asarray(scores)
    n = s.shape[0]
    copied = False
    if exclude is not None:
        ex = np.asarray(exclude)
        if ex.dtype == bool:
            if ex.shape != (n,):
                raise ValueError(f"exclude mask has shape {ex.shape}, expected {(n,)}")
            s = np.where(ex, -np.inf, s).astype(s.dtype, copy=False)
            copied = True
        elif ex.size:
            s = s.copy()
            copied = True
            s[ex.astype(np.int64)] = -np.inf
    if available is not None and not callable(available):
        av = np.asarray(available)
        if av.dtype == bool:
            if av.shape != (n,):
                raise ValueError(f"availability mask has shape {av.shape}, expected {(n,)}")
            s = np.where(av, s, -np.inf).astype(s.dtype, copy=False)
        else:
            allowed = np.zeros(n, dtype=bool)
            allowed[av.astype(np.int64)] = True
            s = np.where(allowed, s, -np.inf).astype(s.dtype, copy=False)
        copied = True
    return s if copied else np.asarray(scores)


def _available_candidates(
    s: np.ndarray,
    want: int,
    predicate: Callable[[int], bool] | None,
) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray] | None]:
    """The top ``want`` candidates of ``s`` that pass the availability predicate (if any).

    Returns:
        ``(candidates, keep)``: ``keep`` filters an item array through the predicate, each
        item's verdict asked once and remembered (``None`` without a predicate).
    """
    cand = top_candidates(s, want)
    if predicate is None:
        return cand, None
    n = s.shape[0]
    verdict: dict[int, bool] = {}

    def keep(items: np.ndarray) -> np.ndarray:
        flags = []
        for i in items.tolist():
            if i not in verdict:
                verdict[i] = bool(predicate(i))
            flags.append(verdict[i])
        return items[np.asarray(flags, dtype=bool)] if len(items) else items

    pulled = want
    kept = keep(cand)
    while len(kept) < want and len(cand) == pulled and pulled < n:
        # pull more in proportion to the pass rate seen so far (at least double on zero)
        rate = len(kept) / pulled
        pulled = min(n, max(pulled + 1, math.ceil(1.25 * want / rate) if rate else 2 * pulled))
        cand = top_candidates(s, pulled)
        kept = keep(cand)
    return kept[:want], keep


def _add_fresh_candidates(
    s: np.ndarray,
    cand: np.ndarray,
    want: int,
    freshness: Freshness,
    keep: Callable[[np.ndarray], np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Join the ``want // 2`` most recent items to the candidates; their freshness boosts.

    Returns:
        ``(candidates, boost)``: the candidates (by score, ties to the lower index when recent
        items joined) and each candidate's freshness boost.
    """
    n = s.shape[0]
    ts = np.asarray(freshness.timestamps, dtype=np.float64)
    if ts.shape != (n,):
        raise ValueError(f"freshness timestamps have shape {ts.shape}, expected {(n,)}")
    recent_scores = np.where(np.isfinite(s) & ~np.isnan(ts), ts, -np.inf)
    recent = top_candidates(recent_scores, max(1, want // 2))
    if keep is not None:
        recent = keep(recent)
    if len(recent):
        cand = np.union1d(cand, recent)
        cand = cand[np.lexsort((cand, -s[cand]))]
    now = freshness.now if freshness.now is not None else time.time()
    boost = freshness_boost(
        ts[cand], half_life=freshness.half_life, weight=freshness.weight, now=now
    )
    return cand, boost


def _rerank(
    s: np.ndarray,
    cand: np.ndarray,
    boost: np.ndarray | None,
    k: int,
    diversity: float,
    item_vectors: np.ndarray | None,
) -> np.ndarray:
    """The top ``k`` candidates by normalised score plus boost, MMR-ordered with diversity."""
    rel = _minmax(s[cand])
    if boost is not None:
        rel = rel + boost
    by_rel = np.lexsort((cand, -rel))
    cand, rel = cand[by_rel], rel[by_rel]
    if diversity:
        return cand[mmr_order(rel, np.asarray(item_vectors)[cand], k, diversity)]
    return cand[:k]


def rank(
    scores: np.ndarray,
    k: int,
    *,
    item_vectors: np.ndarray | None = None,
    exclude: np.ndarray | Sequence[int] | None = None,
    available: Availability | None = None,
    diversity: float = 0.0,
    freshness: Freshness | None = None,
    n_candidates: int | None = None,
    explain_with: np.ndarray | None = None,
    genres: Sequence[Sequence[str]] | Mapping[int, Sequence[str]] | None = None,
    explanation_fallback: str = "score",
    explanations: bool = False,
) -> list[RankedItem]:
    """The top ``k`` items after candidate generation, ranking and re-ranking.

    Args:
        scores: one score per catalog item (``-inf`` never recommended).
        k: list length (shorter only when fewer items are rankable).
        item_vectors: the item embeddings, for MMR and neighbour explanations.
        exclude: items never to recommend (indices or a boolean mask), e.g. seen items.
        available: allowed items (mask, indices or predicate on an index); others are skipped.
        diversity: MMR λ in ``[0, 1]`` (0: pure relevance). Needs ``item_vectors``.
        freshness: boost for recent items (its ``timestamps`` must be set).
        n_candidates: size of the candidate set (default ``k`` when nothing re-ranks, else
            ``max(10 k, 100)``).
        explain_with: the user's interacted items, which explanations may name.
        genres: per-item genres for explanations.
        explanation_fallback: explanation kind when there is no history.
        explanations: attach an :class:`Explanation` to every item.

    Returns:
        Up to ``k`` :class:`RankedItem`, best first; ``score`` is the raw score.
    """
    k = int(k)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    s = np.asarray(scores)
    if s.ndim != 1:
        raise ValueError(f"scores must be one vector over the catalog, got shape {s.shape}")
    n = s.shape[0]
    if k == 0 or n == 0:
        return []
    if diversity and item_vectors is None:
        raise ValueError("diversity (MMR) needs the item embeddings (item_vectors)")
    if freshness is not None and freshness.timestamps is None:
        raise ValueError("a freshness boost needs per-item timestamps (Freshness.timestamps)")
    reranks = bool(diversity) or (freshness is not None and freshness.weight > 0)
    want = int(n_candidates) if n_candidates is not None else (max(10 * k, 100) if reranks else k)
    want = max(want, k)
    s = _blocked_scores(s, exclude, available)
    predicate = available if callable(available) else None

    cand, keep = _available_candidates(s, want, predicate)
    boost = None
    if freshness is not None and freshness.weight > 0:
        cand, boost = _add_fresh_candidates(s, cand, want, freshness, keep)
    if len(cand) == 0:
        return []
    picked = _rerank(s, cand, boost, k, diversity, item_vectors) if reranks else cand[:k]

    expl: list[Explanation | None]
    if explanations:
        expl = list(
            explain(
                picked,
                history=explain_with,
                item_vectors=item_vectors,
                genres=genres,
                fallback=explanation_fallback,
            )
        )
    else:
        expl = [None] * len(picked)
    raw = np.asarray(scores)[picked].tolist()
    return [
        RankedItem(int(i), float(sc), e)
        for i, sc, e in zip(picked.tolist(), raw, expl, strict=True)
    ]
