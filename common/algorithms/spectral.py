"""Spectral federated MF: two DP releases, a DP popularity count and a DP co-occurrence matrix.

``algorithm = "spectral"`` trains the same matrix-factorization model (item embeddings and
item biases on the server, a user embedding on each device) without SGD, as a truncated
eigendecomposition of the item co-occurrence matrix (PureSVD, Cremonesi et al., RecSys 2010),
with private item selection by frequency as in Chien et al., "Private Alternating Least
Squares" (ICML 2021). Two rounds:

1. **popularity**: each device sends the indicator vector of its items (scaled to norm 1
   for user-level DP). The noisy sum is the DP popularity; the ``top_items`` most popular are
   selected (post-processing, public).
2. **cooccurrence**: each device sends the upper triangle of ``x xᵀ`` for its indicator
   ``x`` restricted to the selected items (again capped at ``max_items`` items, or scaled to
   Frobenius norm 1). The server eigendecomposes the noisy sum ``G``; the item embeddings
   of the selected items are its top ``dim`` eigenvectors, every other item gets zero and a
   bias that ranks it after the selected ones, by DP popularity.

A device's user embedding is the sum of the embeddings of its own items, computed on the
device (``u = Vᵀx``: the PureSVD fold-in), and never leaves it.

**Sensitivity** (L2, the neighbouring relation add/remove):

* example-level, one interaction: popularity changes in one coordinate by 1, so ``1``.
  Co-occurrence: a device's capped set changes by at most one item added, one removed, or
  one swapped (a uniformly random subset of ``m`` items is coupled so that its neighbour's
  differs by at most one swap); a swap changes the ``m`` upper-triangle entries of the
  removed item and the ``m`` of the added one, so ``√(2m)``.
* user-level, a whole device: the contribution has norm at most 1 in both rounds, so 1.

Each round is then a Gaussian mechanism with noise std ``σ_r·Δ_r`` on the sum, i.e. one
DP-SGD "step" with noise multiplier ``σ_r`` and sampling rate 1 (example-level) or the
device sampling rate (user-level): that is how both are accounted and written to the ledgers.
:func:`noise_multipliers` splits the budget between the two releases (``popularity_share``
of the Gaussian "precision" ``1/σ²`` to the popularity round).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["PHASES", "SpectralSpec", "contribution", "select_items", "factorize",
           "noise_multipliers", "phase_of_round"]

#: The two rounds of the spectral algorithm, in order.
PHASES = ("popularity", "cooccurrence")
UNITS = ("example", "user")


def phase_of_round(server_round: int, rounds: int = 2) -> str:
    """The phase of a (1-based) server round: ``popularity`` then ``cooccurrence``.

    ``rounds = 1`` is the popularity release alone (``algorithm = "features"``).
    """
    if not 1 <= server_round <= rounds:
        raise ValueError(f"this algorithm has rounds 1 to {rounds}, not {server_round}")
    return PHASES[server_round - 1]


@dataclass(frozen=True)
class SpectralSpec:
    """The public settings of a spectral run (the same on the server and every device).

    Attributes:
        n_items: catalog size.
        dim: embedding dimension (eigenvectors kept).
        top_items: items selected by DP popularity for the co-occurrence round.
        max_items: example-level contribution bound of the co-occurrence round: a device
            contributes at most this many of its items (drawn uniformly at random).
        unit: ``"example"`` (one interaction) or ``"user"`` (a whole device).
        popularity_share: the fraction of the budget (of ``1/σ²``) spent on popularity.
        rounds: 2 (popularity, then co-occurrence) or 1 (popularity alone, with the whole
            budget: ``popularity_share`` 1; the features algorithm,
            :mod:`fedrec.common.algorithms.features`).
        feature_scale: features algorithm: the user-profile scale of
            :func:`~fedrec.common.algorithms.features.profile_fold_in`.
        feature_smoothing: features algorithm: its smoothing constant.
    """

    n_items: int
    dim: int
    top_items: int = 300
    max_items: int = 100
    unit: str = "example"
    popularity_share: float = 0.2
    rounds: int = 2
    feature_scale: float = 2.0
    feature_smoothing: float = 0.01

    def __post_init__(self) -> None:
        if self.n_items < 1 or self.dim < 1 or self.top_items < 1 or self.max_items < 1:
            raise ValueError("n_items, dim, top_items and max_items must be positive")
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {self.unit!r}")
        if self.rounds not in (1, 2):
            raise ValueError(f"rounds must be 1 or 2, got {self.rounds}")
        if self.rounds == 1:
            if self.popularity_share != 1:
                raise ValueError("a popularity-only run spends its whole budget on popularity: "
                                 f"popularity_share must be 1, got {self.popularity_share}")
            if self.feature_scale < 0 or self.feature_smoothing <= 0:
                raise ValueError("feature_scale must be >= 0 and feature_smoothing positive")
            return
        if not 0 < self.popularity_share < 1:
            raise ValueError(f"popularity_share must lie in (0, 1), got {self.popularity_share}")
        if self.dim > self.n_selected:
            raise ValueError(f"dim {self.dim} exceeds the {self.n_selected} selected items")

    @property
    def phases(self) -> tuple[str, ...]:
        """The phases of this run, one per round."""
        return PHASES[:self.rounds]

    @property
    def n_selected(self) -> int:
        """Items in the co-occurrence round."""
        return min(self.top_items, self.n_items)

    def shape(self, phase: str) -> tuple[int]:
        """The shape of a device's reply in ``phase``."""
        if phase == "popularity":
            return (self.n_items,)
        if phase == "cooccurrence":
            n = self.n_selected
            return (n * (n + 1) // 2,)
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")

    def sensitivity(self, phase: str) -> float:
        """L2 sensitivity of one device's contribution (see the module docstring)."""
        self.shape(phase)
        if self.unit == "user":
            return 1.0
        return 1.0 if phase == "popularity" else math.sqrt(2.0 * self.max_items)

    def max_norm(self, phase: str) -> float:
        """The largest norm a (noise-free) contribution can have."""
        self.shape(phase)
        if self.unit == "user":
            return 1.0
        if phase == "popularity":
            return math.sqrt(self.n_items)
        m = min(self.max_items, self.n_selected)
        return math.sqrt(m * (m + 1) / 2)


def _capped(items: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    items = np.unique(np.asarray(items, dtype=np.int64))
    if len(items) > m:
        items = np.sort(rng.choice(items, size=m, replace=False))
    return items


def contribution(items: np.ndarray, phase: str, spec: SpectralSpec, *,
                 selected: np.ndarray | None = None,
                 rng: np.random.Generator) -> np.ndarray:
    """One device's noise-free contribution to ``phase`` (float64, shape ``spec.shape``).

    Args:
        items: the device's training items (indices into the catalog).
        phase: ``"popularity"`` or ``"cooccurrence"``.
        spec: the run's settings.
        selected: the selected items (sorted, from :func:`select_items`); cooccurrence only.
        rng: draws the capped subset (example-level).
    """
    items = np.asarray(items, dtype=np.int64)
    if phase == "popularity":
        x = np.zeros(spec.n_items)
        keep = np.unique(items)
        x[keep] = 1.0
        if spec.unit == "user" and len(keep):
            x /= math.sqrt(len(keep))
        return x
    if phase != "cooccurrence":
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    if selected is None or len(selected) != spec.n_selected:
        raise ValueError(f"the cooccurrence phase needs the {spec.n_selected} selected items")
    pos = np.searchsorted(selected, items)
    pos = pos[(pos < len(selected)) & (selected[np.minimum(pos, len(selected) - 1)] == items)]
    pos = np.unique(pos)
    if spec.unit == "example":
        pos = _capped(pos, spec.max_items, rng)
    x = np.zeros(spec.n_selected)
    x[pos] = 1.0
    if spec.unit == "user" and len(pos):
        x /= math.sqrt(len(pos))  # x xᵀ then has Frobenius norm ‖x‖² = 1
    rows, cols = np.triu_indices(spec.n_selected)
    return np.outer(x, x)[rows, cols] if len(pos) else np.zeros(spec.shape(phase))


def select_items(popularity: np.ndarray, spec: SpectralSpec) -> np.ndarray:
    """The ``n_selected`` most popular items (sorted indices; ties to the lower index)."""
    popularity = np.asarray(popularity, dtype=np.float64)
    if popularity.shape != (spec.n_items,):
        raise ValueError(f"popularity must have shape ({spec.n_items},)")
    order = np.lexsort((np.arange(spec.n_items), -popularity))
    return np.sort(order[:spec.n_selected])


def factorize(popularity: np.ndarray, cooccurrence: np.ndarray, selected: np.ndarray,
              spec: SpectralSpec) -> dict[str, np.ndarray]:
    """The item table from the two (noisy) sums.

    Item embeddings of the selected items are the top ``dim`` eigenvectors of the symmetric
    matrix whose upper triangle is ``cooccurrence``; other items get zero embeddings and a bias
    of ``-(n_items + 2) + popularity rank`` terms that rank them after every selected item
    (whose fold-in scores lie in ``[-n_items, n_items]``), in order of DP popularity.
    """
    n = spec.n_selected
    upper = np.asarray(cooccurrence, dtype=np.float64)
    if upper.shape != spec.shape("cooccurrence"):
        raise ValueError(f"cooccurrence must have shape {spec.shape('cooccurrence')}")
    g = np.zeros((n, n))
    g[np.triu_indices(n)] = upper
    g = g + np.triu(g, 1).T
    _, vecs = np.linalg.eigh(g)
    v = vecs[:, ::-1][:, :spec.dim]
    # a sign convention, so that the table does not depend on the eigensolver's choice
    v = v * np.where(v.sum(axis=0) < 0, -1.0, 1.0)
    emb = np.zeros((spec.n_items, spec.dim), dtype=np.float32)
    emb[selected] = v
    pop = np.asarray(popularity, dtype=np.float64)
    rank = np.argsort(np.argsort(-pop, kind="stable"), kind="stable")  # 0 = most popular
    bias = -(spec.n_items + 2.0) - rank / spec.n_items
    bias[selected] = 0.0
    return {"item_embedding.weight": emb, "item_bias.weight": bias.astype(np.float32)[:, None]}


def noise_multipliers(epsilon_of: Callable[[list[tuple[float, float, int]]], float], *,
                      target_epsilon: float, popularity_share: float, sample_rate: float = 1.0
                      ) -> tuple[float, ...]:
    """``(σ_popularity, σ_cooccurrence)`` whose two releases spend ``target_epsilon``.

    ``σ_pop = s/√share`` and ``σ_co = s/√(1-share)``; ``s`` is found by bisection on
    ``epsilon_of(history)`` with ``history = [(σ_pop, q, 1), (σ_co, q, 1)]`` (the accountant
    the run uses), the smallest ``s`` whose ε is at most the target. With ``popularity_share``
    1 there is one release and the result is ``(σ_popularity,)``.
    """
    if target_epsilon <= 0:
        raise ValueError(f"target_epsilon must be positive, got {target_epsilon}")
    if not 0 < popularity_share <= 1:
        raise ValueError(f"popularity_share must lie in (0, 1], got {popularity_share}")
    shares = (1.0,) if popularity_share == 1 else (popularity_share, 1 - popularity_share)

    def eps(s: float) -> float:
        return epsilon_of([(s / math.sqrt(share), sample_rate, 1) for share in shares])

    lo, hi = 1e-2, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise ValueError(f"no noise multiplier reaches epsilon {target_epsilon}")
    for _ in range(30):
        mid = math.sqrt(lo * hi)
        if eps(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1.001:
            break
    return tuple(hi / math.sqrt(share) for share in shares)
