"""Synthetic implicit-feedback data with a known ground truth.

Users and items get latent factors; each item also gets a long-tailed (Zipf-like) popularity.
A user picks items without replacement with probability proportional to
``exp(scale * u·v + log popularity + noise)``, so the data holds both a personal, low-rank
signal that matrix factorization can learn and a popularity signal that a most-popular
baseline captures. With the defaults the personal signal is strong enough that a factor model
clearly beats most-popular on a temporal split.

The generative process, for ``rng = numpy.random.default_rng(seed)``:

1. ``user_factors`` ``(n_users, dim)`` and ``item_factors`` ``(n_items, dim)`` are i.i.d.
   ``N(0, 1/dim)``, so each vector has norm about 1.
2. Item popularity: items get a random rank ``r`` in ``1..n_items``; popularity is
   ``r ** -popularity_exponent``, normalised to sum to 1 (``item_popularity``).
3. Activity: user ``u`` has ``k_u`` interactions, lognormal with mean about
   ``mean_interactions`` (``activity_sigma`` is the log-scale spread), rounded and clipped to
   ``[5, n_items // 2]``.
4. Choice: logits ``scale * u·v + log(popularity) + noise * N(0, 1)``; the user's ``k_u`` items
   are a sample without replacement from ``softmax(logits)`` (the Gumbel-top-k trick).
5. Time: the user's items come in random order, starting at a random time within
   ``start_spread_days`` of ``start`` and separated by positive gaps (exponential, mean
   ``mean_gap_s`` seconds, at least one second), so timestamps strictly increase per user.
6. Weights are all 1.0 (implicit feedback).
7. Public item metadata: item ``i`` has genre ``"g<j>"`` for every latent dimension ``j`` with
   ``item_factors[i, j] > 1/√dim`` (one standard deviation), a noisy public view of the latent
   structure like a movie's genres; derived without further random draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .schema import IdMap, Interactions, ItemMetadata

__all__ = ["SyntheticDataset", "generate_synthetic", "make_synthetic"]

_BLOCK_CELLS = 1 << 22  # user-item logits computed per block of about this many cells


@dataclass
class SyntheticDataset:
    """Synthetic interactions together with the ground truth that generated them.

    Attributes:
        interactions: the generated interactions (``name == "synthetic"``); dense index ``i``
            is external id ``str(i)`` for users and items alike.
        user_factors: ``(n_users, dim)`` latent user factors.
        item_factors: ``(n_items, dim)`` latent item factors.
        item_popularity: ``(n_items,)`` the Zipf-like popularity prior (sums to 1).
        scale: the weight of ``u·v`` in the logits the data was sampled from.
    """

    interactions: Interactions
    user_factors: np.ndarray
    item_factors: np.ndarray
    item_popularity: np.ndarray
    scale: float = 6.0

    def true_scores(self, users: np.ndarray | None = None) -> np.ndarray:
        """Return the noise-free logits ``scale * u·v + log popularity`` used to sample.

        Args:
            users: dense user indices (default all users).

        Returns:
            ``(len(users), n_items)`` scores; higher means more likely to be chosen.
        """
        u = self.user_factors if users is None else self.user_factors[users]
        return self.scale * (u @ self.item_factors.T) + np.log(self.item_popularity)


def make_synthetic(
    *,
    n_users: int = 1000,
    n_items: int = 500,
    dim: int = 8,
    mean_interactions: float = 40,
    popularity_exponent: float = 1.0,
    scale: float = 6.0,
    noise: float = 0.5,
    activity_sigma: float = 0.8,
    min_interactions: int = 5,
    start: int = 1_600_000_000,
    start_spread_days: float = 180.0,
    mean_gap_s: float = 86_400.0,
    seed: int | np.random.Generator | None = 0,
) -> SyntheticDataset:
    """Generate synthetic interactions and return them with their ground truth.

    Args:
        n_users: number of users.
        n_items: number of items.
        dim: latent dimension.
        mean_interactions: mean number of interactions per user (before clipping).
        popularity_exponent: Zipf exponent of item popularity (0: uniform).
        scale: weight of the personal signal ``u·v`` in the logits.
        noise: standard deviation of Gaussian noise added to every user-item logit, the part
            of taste that the low-rank factors do not explain.
        activity_sigma: log-scale spread of the lognormal number of interactions per user.
        min_interactions: the fewest interactions a user has (capped by ``n_items // 2``).
        start: earliest timestamp (unix seconds).
        start_spread_days: users start at a uniform time within this many days of ``start``.
        mean_gap_s: mean gap in seconds between a user's consecutive interactions.
        seed: an ``int`` seed, a ``numpy.random.Generator``, or ``None`` for fresh entropy.

    Returns:
        A :class:`SyntheticDataset`.

    Raises:
        ValueError: on non-positive sizes or negative spreads.
    """
    if n_users < 1 or n_items < 2 or dim < 1:
        raise ValueError(
            f"need n_users >= 1, n_items >= 2 and dim >= 1; got {n_users}, {n_items}, {dim}"
        )
    if mean_interactions <= 0 or noise < 0 or activity_sigma < 0 or mean_gap_s <= 0:
        raise ValueError(
            "mean_interactions and mean_gap_s must be > 0; noise and activity_sigma must be >= 0"
        )
    rng = np.random.default_rng(seed)
    user_factors = rng.normal(0.0, 1.0 / np.sqrt(dim), size=(n_users, dim))
    item_factors = rng.normal(0.0, 1.0 / np.sqrt(dim), size=(n_items, dim))
    popularity = _item_popularity(rng, n_items, popularity_exponent)
    counts = _interaction_counts(
        rng, n_users, n_items, mean_interactions, activity_sigma, min_interactions
    )
    item = _choose_items(
        rng, user_factors, item_factors, np.log(popularity), counts, scale=scale, noise=noise
    )
    user = np.repeat(np.arange(n_users), counts)
    item, timestamp = _timestamps(rng, user, item, counts, start, start_spread_days, mean_gap_s)

    interactions = Interactions(
        user=user,
        item=item,
        weight=np.ones(len(item), np.float32),
        timestamp=timestamp,
        user_map=IdMap(str(u) for u in range(n_users)),
        item_map=IdMap(str(i) for i in range(n_items)),
        name="synthetic",
        items=ItemMetadata(genres=_item_genres(item_factors)),
    )
    return SyntheticDataset(
        interactions=interactions,
        user_factors=user_factors,
        item_factors=item_factors,
        item_popularity=popularity,
        scale=float(scale),
    )


def _item_popularity(
    rng: np.random.Generator, n_items: int, popularity_exponent: float
) -> np.ndarray:
    """Zipf-like item popularity over random ranks, summing to 1 (step 2 of the module doc)."""
    ranks = rng.permutation(n_items) + 1
    popularity = ranks.astype(np.float64) ** -float(popularity_exponent)
    popularity /= popularity.sum()
    return popularity


def _interaction_counts(
    rng: np.random.Generator,
    n_users: int,
    n_items: int,
    mean_interactions: float,
    activity_sigma: float,
    min_interactions: int,
) -> np.ndarray:
    """Each user's number of interactions (step 3 of the module doc)."""
    cap = max(n_items // 2, 1)
    floor = min(min_interactions, cap)
    mu = np.log(mean_interactions) - activity_sigma**2 / 2
    counts = np.rint(rng.lognormal(mu, activity_sigma, size=n_users))
    return np.clip(counts, floor, cap).astype(np.int64)


def _choose_items(
    rng: np.random.Generator,
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    log_pop: np.ndarray,
    counts: np.ndarray,
    *,
    scale: float,
    noise: float,
) -> np.ndarray:
    """Sample each user's ``counts[u]`` items without replacement (step 4 of the module doc).

    Returns:
        The chosen item indices, user by user (user 0's first), each user's in key order.
    """
    n_users, n_items = len(user_factors), len(item_factors)
    item_factors_t = (item_factors.T * scale).astype(np.float32)
    log_pop32 = log_pop.astype(np.float32)
    user_factors32 = user_factors.astype(np.float32)
    chosen: list[np.ndarray] = []
    block = max(1, _BLOCK_CELLS // n_items)
    for lo in range(0, n_users, block):
        hi = min(lo + block, n_users)
        keys = user_factors32[lo:hi] @ item_factors_t
        keys += log_pop32
        if noise:
            keys += np.float32(noise) * rng.standard_normal(keys.shape, dtype=np.float32)
        # + Gumbel(0, 1) noise: the top k keys are a sample without replacement from softmax
        exp = rng.standard_exponential(keys.shape, dtype=np.float32)
        keys -= np.log(exp + np.float32(1e-30))
        k = counts[lo:hi]
        kmax = int(k.max())
        if kmax < n_items:
            top = np.argpartition(-keys, kmax - 1, axis=1)[:, :kmax]
        else:
            top = np.broadcast_to(np.arange(n_items), keys.shape)
        # order each user's kmax best keys, then keep that user's first k_u
        rank = np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1)
        top = np.take_along_axis(top, rank, axis=1)
        chosen.append(top[np.arange(kmax) < k[:, None]])
    return np.concatenate(chosen)


def _timestamps(
    rng: np.random.Generator,
    user: np.ndarray,
    item: np.ndarray,
    counts: np.ndarray,
    start: int,
    start_spread_days: float,
    mean_gap_s: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle each user's items in time and give them timestamps (step 5 of the module doc).

    Returns:
        ``(item, timestamp)``: the items in their new order and their strictly increasing
        (per user) timestamps.
    """
    # random order in time within each user, strictly increasing timestamps
    order = np.lexsort((rng.random(len(item)), user))
    item = item[order]
    gaps = 1 + np.floor(rng.exponential(mean_gap_s, size=len(item))).astype(np.int64)
    first = np.zeros(len(item), bool)
    first[np.cumsum(counts) - counts] = True
    user_start = start + np.floor(
        rng.uniform(0.0, start_spread_days * 86_400.0, size=len(counts))
    ).astype(np.int64)
    gaps[first] = 0
    cum = np.cumsum(gaps)
    timestamp = cum - np.repeat(cum[first], counts) + np.repeat(user_start, counts)
    return item, timestamp


def _item_genres(item_factors: np.ndarray) -> list[tuple[str, ...]]:
    """Item ``i``'s genres: ``"g<j>"`` where ``item_factors[i, j] > 1/√dim`` (step 7)."""
    dim = item_factors.shape[1]
    return [
        tuple(f"g{j}" for j in np.flatnonzero(row > 1.0 / np.sqrt(dim))) for row in item_factors
    ]


def generate_synthetic(
    *,
    n_users: int = 1000,
    n_items: int = 500,
    dim: int = 8,
    mean_interactions: float = 40,
    popularity_exponent: float = 1.0,
    seed: int | np.random.Generator | None = 0,
    noise: float = 0.5,
    scale: float = 6.0,
    **kwargs: float,
) -> Interactions:
    """Generate synthetic interactions (just the :class:`Interactions`, ``name="synthetic"``).

    Takes the arguments of :func:`make_synthetic`; use that function to also get the latent
    factors and the popularity prior.

    Args:
        n_users: number of users.
        n_items: number of items.
        dim: latent dimension.
        mean_interactions: mean number of interactions per user.
        popularity_exponent: Zipf exponent of item popularity.
        seed: an ``int`` seed or a ``numpy.random.Generator``.
        noise: standard deviation of the per user-item logit noise.
        scale: weight of the personal signal ``u·v`` in the logits.
        **kwargs: the other keyword arguments of :func:`make_synthetic`.

    Returns:
        The generated interactions.
    """
    return make_synthetic(
        n_users=n_users,
        n_items=n_items,
        dim=dim,
        mean_interactions=mean_interactions,
        popularity_exponent=popularity_exponent,
        seed=seed,
        noise=noise,
        scale=scale,
        **kwargs,
    ).interactions
