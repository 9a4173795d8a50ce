"""Non-personalized baselines every private model must beat (DESIGN.md).

Both expose ``fit(train) -> self`` and ``scores(users) -> (len(users), n_items)`` floats, so
``model.scores`` can be passed straight to :func:`fedrec.common.evaluation.metrics.evaluate`.
"""

from __future__ import annotations

import numpy as np

from fedrec.common.data.schema import Interactions

__all__ = ["MostPopular", "RandomRecommender"]


class MostPopular:
    """Recommend the items with the most train interactions, the same list for everyone.

    Popularity is the number of interactions per item on the data given to :meth:`fit`
    (counts, not rating weights). Equal counts are ordered by the ranking rule of the
    metrics (lower item index first), so no tie-break is baked into the scores.
    """

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None

    def fit(self, train: Interactions) -> MostPopular:
        """Count interactions per item on ``train``; returns ``self``."""
        self.counts = train.item_counts().astype(np.float64)
        return self

    @property
    def n_items(self) -> int:
        """Catalog size seen by :meth:`fit`."""
        return len(self._fitted())

    def _fitted(self) -> np.ndarray:
        if self.counts is None:
            raise RuntimeError("MostPopular.fit must be called before scores")
        return self.counts

    def scores(self, users: np.ndarray) -> np.ndarray:
        """Return the popularity row once per user: ``(len(users), n_items)``."""
        counts = self._fitted()
        n = len(np.asarray(users))
        return np.tile(counts, (n, 1))


class RandomRecommender:
    """Uniformly random scores: a sanity floor (expected Recall@K is about K / n_items).

    ``seed`` is an int or a ``np.random.Generator``; the same seed and the same sequence of
    calls give the same scores.
    """

    def __init__(self, seed: int | np.random.Generator = 0) -> None:
        self._rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self._n_items: int | None = None

    def fit(self, train: Interactions) -> RandomRecommender:
        """Record the catalog size of ``train``; returns ``self``."""
        self._n_items = train.n_items
        return self

    @property
    def n_items(self) -> int:
        """Catalog size seen by :meth:`fit`."""
        if self._n_items is None:
            raise RuntimeError("RandomRecommender.fit must be called before scores")
        return self._n_items

    def scores(self, users: np.ndarray) -> np.ndarray:
        """Fresh uniform ``[0, 1)`` scores, ``(len(users), n_items)``."""
        return self._rng.random((len(np.asarray(users)), self.n_items))
