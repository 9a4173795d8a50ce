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
:meth:`Spectral.shares` splits the budget between the two releases (``popularity_share``
of the Gaussian "precision" ``1/σ²`` to the popularity round).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from fedrec.common.algorithms.base import (
    Aggregate,
    Algorithm,
    Contribution,
    ContributionSpec,
    DeviceView,
    PlannedRelease,
    State,
    Task,
)
from fedrec.common.privacy.policy import Refusal

if TYPE_CHECKING:
    from fedrec.common.config import RunConfig

__all__ = [
    "PHASES",
    "Spectral",
    "SpectralSpec",
    "contribution",
    "select_items",
    "user_indicator",
    "RECENCY_WINDOW",
    "selection_size",
    "signal_mass",
    "factorize",
    "phase_of_round",
]

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
        top_items: items selected by DP popularity for the co-occurrence round (with
            ``auto``, the most: the count is :func:`selection_size`).
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
        recency_power: the user-level popularity round weighs items by their recency in the
            device's history to this power (``popularity-recency``). 0 otherwise: under
            example-level DP the sensitivity assumes 0/1 entries (removing one interaction
            would move the other items' recency); without privacy the weights, which shuffled
            histories make random, cost more than they add (heavy-tail, seed 0: non-private
            NDCG@10 0.2229 with them, 0.2432 without, against centralized MF 0.2659).
        auto: the selection's size is :func:`selection_size`, at most ``top_items``.
    """

    n_items: int
    dim: int
    top_items: int = 300
    max_items: int = 100
    auto: bool = False
    unit: str = "example"
    popularity_share: float = 0.2
    rounds: int = 2
    feature_scale: float = 2.0
    feature_smoothing: float = 0.01
    recency_power: float = 0.0

    def __post_init__(self) -> None:
        if self.n_items < 1 or self.dim < 1 or self.top_items < 1 or self.max_items < 1:
            raise ValueError("n_items, dim, top_items and max_items must be positive")
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {self.unit!r}")
        if self.rounds not in (1, 2):
            raise ValueError(f"rounds must be 1 or 2, got {self.rounds}")
        if self.rounds == 1:
            if self.popularity_share != 1:
                raise ValueError(
                    "a popularity-only run spends its whole budget on popularity: "
                    f"popularity_share must be 1, got {self.popularity_share}"
                )
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
        return PHASES[: self.rounds]

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


#: User-level recency weighting ramps over at least this many items (:func:`user_indicator`).
#: A short history's order says little about what its device goes on to use, while weights
#: down to ``(1/(2n))²`` would throw most of its release away: a device with 6 items weighs
#: its oldest item 0.55 of its newest, not 0.01. Measured (warm-sgd, user-level ε 8, seeds
#: 0 / 1 / 2; no ramp / a ramp of 20 / 30 / 50 / 100 items): the small ``heavy-tail`` shape
#: (300 devices, median 28 items, most-popular 0.1733) 0.1568 / 0.1683 / 0.1754, 0.1783 /
#: 0.1692 / 0.1751, 0.1780 / 0.1679 / 0.1745, 0.1795 / 0.1842 / 0.1838, 0.1695 / 0.1872 /
#: 0.1769; ``ml-100k-light`` (16-32 items, most-popular 0.0702) 0.0943 / 0.0900 / 0.0855,
#: 0.0862 / 0.1016 / 0.0934, 0.0833 / 0.0954 / 0.0924, 0.0804 / 0.0891 / 0.0917, 0.0797 /
#: 0.0837 / 0.0972; ML-100K (943 devices, seed 0) 0.1582, 0.1582, 0.1577, 0.1531, 0.1506.
#: ``ml-100k-heavy`` (160 items or more each) is the same at every ramp up to 160.
RECENCY_WINDOW = 20


def user_indicator(
    items: np.ndarray, n_items: int, recency: np.ndarray | None = None, power: float = 0.0
) -> np.ndarray:
    """A device's items as a vector of norm 1 (zero without items): a user-level release.

    Each item weighs ``r ** power`` before the scaling, where ``r`` is its recency (its place
    in the device's history, :attr:`fedrec.client.device.Device.recency`) ramped over at least
    :data:`RECENCY_WINDOW` items: ``r = 1 - (1 - recency) · n / max(n, RECENCY_WINDOW)`` for
    a device with ``n`` items, so ``recency`` itself from ``RECENCY_WINDOW`` items up. With
    ``power`` 0 or no ``recency``, every item alike (``1/√n``). The norm bound, not the
    weights, is the sensitivity, so any weighting the device chooses costs nothing extra.

    Raises:
        ValueError: ``recency`` does not have one entry per item.
    """
    items = np.asarray(items, dtype=np.int64)
    x = np.zeros(n_items)
    if recency is not None and len(recency) != len(items):
        raise ValueError(f"recency has {len(recency)} entries for {len(items)} items")
    if power > 0 and recency is not None:
        n = len(items)
        ramp = 1.0 - (1.0 - np.asarray(recency, dtype=np.float64)) * n / max(n, RECENCY_WINDOW)
        np.maximum.at(x, items, ramp**power)
    else:
        x[items] = 1.0
    norm = float(np.linalg.norm(x))
    return x / norm if norm > 0 else x


def contribution(
    items: np.ndarray,
    phase: str,
    spec: SpectralSpec,
    *,
    selected: np.ndarray | None = None,
    rng: np.random.Generator,
    recency: np.ndarray | None = None,
) -> np.ndarray:
    """One device's noise-free contribution to ``phase`` (float64, shape ``spec.shape``).

    Args:
        items: the device's training items (indices into the catalog).
        phase: ``"popularity"`` or ``"cooccurrence"``.
        spec: the run's settings.
        selected: the selected items (sorted, from :func:`select_items`); cooccurrence only.
        rng: draws the capped subset (example-level).
        recency: where each of ``items`` lies in the device's history (``Device.recency``);
            the user-level popularity contribution weighs items by it to
            ``spec.recency_power`` (example-level runs keep 0/1 entries: see
            :class:`SpectralSpec`).

    User-level, the popularity contribution has norm 1 whatever the weights (the
    sensitivity is the norm bound, not the weights' form). Weighing by recency estimates
    what devices go on to use rather than what they used: ML-100K users with >= 200
    interactions, noise-free, NDCG@10 of the popularity ranking 0.2553 unweighted against
    0.3291 with power 2 (full ML-100K 0.0960 against 0.1156; data without an order in time,
    the synthetic default, 0.1822 against 0.1820).
    """
    items = np.asarray(items, dtype=np.int64)
    if phase == "popularity":
        if spec.unit == "user":
            return user_indicator(items, spec.n_items, recency, spec.recency_power)
        x = np.zeros(spec.n_items)
        x[np.unique(items)] = 1.0
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


#: User-level: the popularity release's noise multiplier above which devices send the plain
#: indicator whatever ``popularity-recency`` says (:func:`recency_power`).
RECENCY_MAX_NOISE = 7.0


def recency_power(cfg: RunConfig, popularity_noise: float) -> float:
    """The power devices weigh their popularity release's items by recency to.

    ``popularity-recency`` under user-level DP while the popularity release's noise
    multiplier ``popularity_noise`` (public: calibrated from ε, δ and the plan) is at most
    :data:`RECENCY_MAX_NOISE`; 0 above it, and 0 in every other mode (see
    :class:`SpectralSpec`). Unequal weights lower the release's signal (its sum) by
    ``E[w] / √E[w²]``, 0.75 at power 2, for the same sensitivity; when noise dominates that
    loss outweighs what the weighting adds. Measured with warm-sgd on ML-100K, 943 devices,
    δ 1e-5, seeds 0 / 1 / 2 (power 2 against 0): ε 1 (σ 9.3) 0.0942 against 0.1171 (median;
    most-popular 0.1111); ε 2 (σ 5.0) 0.1275 / 0.1361 / 0.1358 against 0.1273 / 0.1295 /
    0.1311; ε 3 (σ 3.5) 0.1418 against 0.1369; ε 8 (σ 1.5) 0.1582 against 0.1551.
    """
    if cfg.privacy != "user" or popularity_noise > RECENCY_MAX_NOISE:
        return 0.0
    return float(cfg.popularity_recency)


#: The most items an automatic selection (``spectral-top-items = 0``) holds: a co-occurrence
#: reply is then at most 500 · 501 / 2 = 125,250 values (0.5 MB of float32). It is also the
#: selection without noise (privacy off), where sampling noise is what limits it: ML-100K,
#: non-private, NDCG@10 0.172 / 0.182 / 0.183 / 0.167 at 150 / 300 / 500 / 1,000 items.
AUTO_MAX_ITEMS = 500
#: The constant of the automatic selection size, ``AUTO_SCALE · √(signal / σ)``
#: (:func:`selection_size`).
AUTO_SCALE = 2.8


def signal_mass(popularity: np.ndarray, contributors: int, spec: SpectralSpec) -> float:
    """The co-occurrence round's expected signal, in units of its sensitivity.

    The sum over devices of ``‖contribution‖ / Δ``: ``contributors`` for user-level DP (every
    contribution is scaled to norm 1 = Δ); for example-level DP, a device with ``n`` of the
    selected items sends ``x xᵀ``'s upper triangle, of norm about ``n / √2``, against
    ``Δ = √(2m)``, so ``Σ min(n, m) / (2 √m)``, with ``Σ n`` read from the (noisy) popularity
    release, the total interaction count (post-processing of a DP release).
    """
    n = max(int(contributors), 1)
    if spec.unit == "user":
        return float(n)
    total = float(np.clip(np.asarray(popularity, dtype=np.float64), 0.0, None).sum())
    return min(total, n * spec.max_items) / (2.0 * math.sqrt(spec.max_items))


def selection_size(
    spec: SpectralSpec, popularity: np.ndarray, contributors: int, sigma: float
) -> int:
    """How many items the co-occurrence round covers (``spec.n_selected`` when fixed).

    With ``spectral-top-items = 0`` (the default) it is a function of public quantities and
    of the DP popularity release: ``AUTO_SCALE · √(S / σ)``, where ``S`` is
    :func:`signal_mass` (the signal's size in units of the sensitivity, from the public count
    of contributors) and ``σ`` the co-occurrence release's noise multiplier, between ``dim``
    and ``min(AUTO_MAX_ITEMS, n_items)``; that bound without noise. More items spread a
    device's fixed-norm contribution thinner while each adds noise, so the size grows with
    the square root of the signal-to-noise ratio. Measured on ML-100K, user-level, seed 0
    (NDCG@10 by the size, docs/algorithms.md): 943 devices at ε 8 (σ 0.75, automatic 99)
    and a 20,000-device population at ε 3 (σ 1.80, automatic 295) are at the best fixed
    size within the noise.
    """
    cap = spec.n_selected
    if not spec.auto or sigma <= 0:
        return cap
    k = round(AUTO_SCALE * math.sqrt(signal_mass(popularity, contributors, spec) / sigma))
    return int(min(cap, max(spec.dim, k)))


def select_items(popularity: np.ndarray, spec: SpectralSpec) -> np.ndarray:
    """The ``n_selected`` most popular items (sorted indices; ties to the lower index)."""
    popularity = np.asarray(popularity, dtype=np.float64)
    if popularity.shape != (spec.n_items,):
        raise ValueError(f"popularity must have shape ({spec.n_items},)")
    order = np.lexsort((np.arange(spec.n_items), -popularity))
    return np.sort(order[: spec.n_selected])


#: :func:`factorize` zeroes eigenvectors whose eigenvalue is at most this times the largest
NULL_EIGENVALUE = 1e-4


def factorize(
    popularity: np.ndarray,
    cooccurrence: np.ndarray,
    selected: np.ndarray,
    spec: SpectralSpec,
) -> dict[str, np.ndarray]:
    """The item table from the two (noisy) sums.

    Item embeddings of the selected items are the top ``dim`` eigenvectors of the symmetric
    matrix whose upper triangle is ``cooccurrence`` (zero where the eigenvalue is at most
    :data:`NULL_EIGENVALUE` of the largest); other items get zero embeddings and a bias
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
    vals, vecs = np.linalg.eigh(g)
    v = vecs[:, ::-1][:, : spec.dim]
    # eigenvectors of a (numerically) null eigenvalue carry no signal and are arbitrary: a
    # sum over fewer devices than dim has them, and rounding (SecAgg+'s quantization) picks
    # different ones; they are zeroed
    top = vals[::-1][: spec.dim]
    v = v * (top > NULL_EIGENVALUE * max(float(vals[-1]), 0.0))
    # a sign convention, so that the table does not depend on the eigensolver's choice
    v = v * np.where(v.sum(axis=0) < 0, -1.0, 1.0)
    emb = np.zeros((spec.n_items, spec.dim), dtype=np.float32)
    emb[selected] = v
    pop = np.asarray(popularity, dtype=np.float64)
    rank = np.argsort(np.argsort(-pop, kind="stable"), kind="stable")  # 0 = most popular
    bias = -(spec.n_items + 2.0) - rank / spec.n_items
    bias[selected] = 0.0
    return {"item_embedding.weight": emb, "item_bias.weight": bias.astype(np.float32)[:, None]}


class Spectral(Algorithm):
    """Two DP releases, a popularity count and a co-occurrence matrix (module docstring)."""

    name = "spectral"
    summary = (
        "two DP releases (item popularity, then the co-occurrence of the top items), "
        "eigendecomposed into the item table; users folded in on the device"
    )
    defaults = {"num-rounds": 2, "fraction-train": 1.0}
    raw_statistics = True
    uses_recency = True

    def __init__(self, cfg: RunConfig, n_items: int, *, item_features: np.ndarray | None = None):
        super().__init__(cfg, n_items, item_features=item_features)
        self.noise = tuple(cfg.noise_multipliers())
        self.spec = self.spec_of(cfg, n_items, popularity_noise=self.noise[0])
        self.popularity: np.ndarray | None = None
        self.selected: np.ndarray | None = None
        #: devices in the popularity round's sum (public), for :func:`selection_size`
        self.contributors = 0

    @classmethod
    def spec_of(
        cls, cfg: RunConfig, n_items: int, *, popularity_noise: float | None = None
    ) -> SpectralSpec:
        """The run's public settings for a catalog of ``n_items``.

        ``popularity_noise``: the popularity release's noise multiplier, when the caller has
        calibrated it already (else it is calibrated here; it decides :func:`recency_power`).
        """
        auto = cfg.spectral_top_items == 0
        if popularity_noise is None and cfg.privacy == "user":
            popularity_noise = cfg.noise_multipliers()[0]
        return SpectralSpec(
            n_items=n_items,
            dim=cfg.dim,
            top_items=AUTO_MAX_ITEMS if auto else cfg.spectral_top_items,
            auto=auto,
            max_items=cfg.spectral_max_items,
            unit="user" if cfg.privacy == "user" else "example",
            popularity_share=cfg.spectral_popularity_share,
            recency_power=recency_power(cfg, popularity_noise or 0.0),
        )

    @classmethod
    def check(cls, cfg: RunConfig) -> None:
        """Two rounds, item biases on, a sane selection and budget split."""
        if cfg.num_rounds != 2:
            raise ValueError(
                "algorithm spectral runs exactly 2 rounds (popularity, then "
                f"co-occurrence): set num-rounds 2, not {cfg.num_rounds}"
            )
        if not cfg.item_bias:
            raise ValueError(
                "algorithm spectral needs item-bias true (it ranks the items "
                "outside the selection by bias)"
            )
        if 0 < cfg.spectral_top_items < cfg.dim:
            raise ValueError("spectral-top-items must be 0 (automatic) or at least dim")
        if cfg.spectral_max_items < 1:
            raise ValueError("spectral-max-items must be positive")
        if not 0 < cfg.spectral_popularity_share < 1:
            raise ValueError("spectral-popularity-share must lie in (0, 1)")

    @classmethod
    def planned_releases(cls, cfg: RunConfig) -> tuple[PlannedRelease, ...]:
        """One Gaussian release per phase (``popularity_share`` of ``1/σ²`` to popularity).

        User-level at the device sampling rate ``fraction-train``.
        """
        q = cfg.fraction_train if cfg.privacy == "user" else 1.0
        shares = cls.shares(cfg)
        return tuple(PlannedRelease(1 / math.sqrt(s), q, 1, 1) for s in shares)

    @classmethod
    def shares(cls, cfg: RunConfig) -> tuple[float, ...]:
        """The budget share of each release (of ``1/σ²``)."""
        p = cfg.spectral_popularity_share
        return (p, 1 - p)

    # --- server side -----------------------------------------------------------------------
    def initial_state(self) -> State:
        """The seeded initial table (replaced after the last release)."""
        from fedrec.common.algorithms.sgd import initial_item_table

        return initial_item_table(self.cfg, self.n_items)

    def phase(self, server_round: int) -> str:
        """``popularity`` (round 1) or ``cooccurrence`` (round 2)."""
        return phase_of_round(server_round, self.spec.rounds)

    def noise_multiplier(self, phase: str) -> float:
        """σ of ``phase``'s release."""
        return self.noise[PHASES.index(phase)]

    def task(self, server_round: int) -> Task:
        """The round's phase, with the selected items in the co-occurrence round."""
        phase = self.phase(server_round)
        if phase == "cooccurrence":
            if self.selected is None:
                raise RuntimeError("the popularity round has not produced a selection")
            return Task(phase, {"selected-items": self.selected.astype(np.int64)})
        return Task(phase)

    def contribution(self, task: Task) -> ContributionSpec:
        """One array named after the phase; entries in [0, 1]; sensitivity per the unit."""
        device_noise = self.cfg.privacy in ("local", "distributed")
        sigma = self.noise_multiplier(task.name)
        spec = self.spec_of_task(task)
        return ContributionSpec(
            shapes={task.name: spec.shape(task.name)},
            aggregate="sum",
            max_norm=spec.max_norm(task.name),
            coordinate_bound=1.0,
            sensitivity=spec.sensitivity(task.name),
            noise_multiplier=sigma,
            noise_per_coordinate=sigma * spec.sensitivity(task.name) if device_noise else 0.0,
            purpose=f"spectral-{task.name}",
        )

    def spec_of_task(self, task: Task) -> SpectralSpec:
        """The spec of a round: in the co-occurrence round, sized to the task's selection."""
        selected = task.arrays.get("selected-items") if task.name == "cooccurrence" else None
        if selected is None:
            return self.spec
        return replace(self.spec, top_items=max(len(np.asarray(selected)), 1))

    def update(self, server_round: int, state: State, aggregate: Aggregate) -> State:
        """Popularity: select the top items; co-occurrence: factorize into the table."""
        assert aggregate.total is not None
        phase = self.phase(server_round)
        if phase == "popularity":
            self.contributors = int(aggregate.count)  # public: SecAgg+ reveals the count
        total = np.asarray(aggregate.total[phase], dtype=np.float64)
        if self.cfg.privacy == "off":  # integer sums: a secure sum's quantization is rounded
            total = np.rint(total)  # away, so that equal counts stay ties (broken by index)
        new = self.finish(phase, total)
        if new is None:
            return state
        return {k: np.asarray(v, dtype=np.float32) for k, v in new.items()}

    def finish(self, phase: str, total: np.ndarray) -> State | None:
        """Use a round's noisy sum; returns the new item table after the last round.

        After the popularity round, the selection's size is :func:`selection_size` of the
        public count of the round's contributors (``self.contributors``).
        """
        if phase == "popularity":
            self.popularity = total
            sigma = self.noise_multiplier(PHASES[1])
            k = selection_size(self.spec, total, self.contributors, sigma)
            self.selected = select_items(total, replace(self.spec, top_items=k))
            return None
        if self.selected is None or self.popularity is None:
            raise RuntimeError("the co-occurrence round needs the popularity round first")
        spec = replace(self.spec, top_items=len(self.selected))
        return factorize(self.popularity, total, self.selected, spec)

    def server_state(self) -> dict[str, Any]:
        """The popularity release and the selection (between the two rounds)."""
        return {
            k: v
            for k, v in (("popularity", self.popularity), ("selected", self.selected))
            if v is not None
        }

    def load_server_state(self, state: Mapping[str, Any]) -> None:
        """Restore the popularity release and the selection (a resumed run)."""
        if "popularity" in state:
            self.popularity = np.asarray(state["popularity"], dtype=np.float64)
        if "selected" in state:
            self.selected = np.asarray(state["selected"])

    # --- device side -----------------------------------------------------------------------
    def contribute(
        self,
        device: DeviceView,
        task: Task,
        state: State,
        *,
        server_round: int,
        noise_share: float | None,
    ) -> Contribution | Refusal:
        """The device's indicator (or co-occurrence) contribution, noised under device DP."""
        from fedrec.common.privacy.events import PrivacyEvent
        from fedrec.common.privacy.policy import PolicyViolation, RefusalCode

        phase = task.name
        try:
            if phase not in self.spec.phases:
                raise PolicyViolation(RefusalCode.BAD_REQUEST, f"unknown phase {phase!r}")
            sel = self._check_selection(phase, task.arrays.get("selected-items"))
        except PolicyViolation as violation:
            return device.refuse(violation)
        sigma = self.noise_multiplier(phase) if device.dp is not None else 0.0
        if device.dp is not None:
            refusal = device.over_budget(device.epsilon_after([PrivacyEvent(float(sigma))]))
            if refusal is not None:
                return refusal
        rng = device.release_rng()
        spec = self.spec if sel is None else replace(self.spec, top_items=len(sel))
        values = contribution(
            device.train_items,
            phase,
            spec,
            selected=sel,
            rng=rng,
            recency=getattr(device, "recency", None),
        )
        device.rounds_trained += 1
        if self.spec.unit == "user":  # norm 1 by construction; clipped to make it a rule
            norm = float(np.linalg.norm(values))
            values = values * min(1.0, 1.0 / norm) if norm > 0 else values
        if device.dp is None:
            return Contribution({phase: values.astype(np.float32)})
        std = (
            sigma
            * self.spec.sensitivity(phase)
            * (1.0 if noise_share is None else float(noise_share))
        )
        values = values + device.release_noise(rng, std, values.shape)
        device.accountant.step(noise_multiplier=float(sigma), sample_rate=1.0)
        device.release(  # recorded before the contribution leaves
            server_round,
            noise_multiplier=sigma,
            max_grad_norm=self.spec.sensitivity(phase),
            sample_rate=1.0,
            steps=1,
            purpose=f"spectral-{phase}" + ("" if noise_share is None else "-distributed"),
        )
        return Contribution({phase: values.astype(np.float32)})

    def _check_selection(self, phase: str, selected: np.ndarray | None) -> np.ndarray | None:
        """The server's item selection of a co-occurrence round, checked (``bad-request``)."""
        from fedrec.common.privacy.policy import PolicyViolation, RefusalCode

        if phase != "cooccurrence":
            return None
        if selected is None:
            raise PolicyViolation(RefusalCode.BAD_REQUEST, "no item selection")
        sel = np.asarray(selected)
        if (
            sel.ndim != 1
            or sel.dtype.kind not in "iu"
            or not self.spec.dim <= len(sel) <= self.spec.n_selected
            or (len(sel) and (sel.min() < 0 or sel.max() >= self.spec.n_items))
            or np.any(np.diff(sel) <= 0)
        ):
            raise PolicyViolation(
                RefusalCode.BAD_REQUEST,
                f"the selection must be {self.spec.dim} to {self.spec.n_selected} sorted "
                f"distinct item indices in [0, {self.spec.n_items})",
            )
        return sel.astype(np.int64)

    def fold_in(self, device: DeviceView, state: State) -> None:
        """PureSVD's fold-in: the sum of the embeddings of the device's items."""
        emb = np.asarray(state["item_embedding.weight"], dtype=np.float32)
        u = (
            emb[device.train_items].sum(axis=0, keepdims=True)
            if len(device.train_items)
            else np.zeros((1, emb.shape[1]), dtype=np.float32)
        )
        device.model.load_local_state({"user_embedding.weight": u.astype(np.float32)})
