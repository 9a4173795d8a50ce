"""Solving a user's embedding on the device against a fixed item table (a local fold-in).

With the item table fixed, the user embedding that fits a device's interactions is a small
logistic regression in ``dim`` unknowns: the device's items are positives, every other item a
down-weighted negative (as many in total as ``n_negatives`` sampled negatives per positive,
the weight local training gives them). :func:`solve_user_embedding` solves it with a few
Newton steps (``dim × dim`` systems, no data leaves the device).

Where it may be used: the solved embedding is a function of *all* the device's interactions,
so it is never part of what a device releases under example-level DP. It is used for ranking
on the device (a recommendation never leaves it; no privacy cost), and under user-level DP,
where the whole device is the unit, as the starting point of a round (Federated
Reconstruction, Singhal et al. 2021).
"""

from __future__ import annotations

import numpy as np

__all__ = ["solve_user_embedding"]


def solve_user_embedding(
    item_embedding: np.ndarray,
    item_bias: np.ndarray,
    items: np.ndarray,
    *,
    n_negatives: int = 4,
    l2: float = 1.0,
    iterations: int = 12,
) -> np.ndarray:
    """The user embedding maximising the regularised log-likelihood of ``items``.

    Args:
        item_embedding: the item embeddings, ``(n_items, dim)``.
        item_bias: the item biases, ``(n_items,)`` or ``(n_items, 1)``.
        items: the device's interacted item indices (repeats count once).
        n_negatives: negatives per positive, as in local training (the total weight of the
            negatives).
        l2: the ridge on the embedding (keeps light users near the origin).
        iterations: Newton steps (the problem is strictly convex; a dozen is plenty).

    Returns:
        ``(1, dim)`` float32; zeros for a device with no items.
    """
    emb = np.asarray(item_embedding, dtype=np.float64)
    n_items, dim = emb.shape
    bias = np.asarray(item_bias, dtype=np.float64).reshape(n_items)
    pos = np.unique(np.asarray(items, dtype=np.int64))
    if len(pos) == 0 or len(pos) >= n_items:
        return np.zeros((1, dim), dtype=np.float32)
    y = np.zeros(n_items)
    y[pos] = 1.0
    weight = np.full(n_items, n_negatives * len(pos) / (n_items - len(pos)))
    weight[pos] = 1.0
    u = np.zeros(dim)
    eye = l2 * np.eye(dim)
    for _ in range(iterations):
        z = np.clip(emb @ u + bias, -30.0, 30.0)
        p = 1.0 / (1.0 + np.exp(-z))
        grad = emb.T @ (weight * (p - y)) + l2 * u
        hess = (emb * (weight * p * (1.0 - p))[:, None]).T @ emb + eye
        step = np.linalg.solve(hess, grad)
        u = u - step
        if float(np.abs(step).max()) < 1e-6:
            break
    return u.astype(np.float32)[None, :]
