"""Public item features: personalization that costs no privacy budget.

``algorithm = "features"`` (Krichene et al., "Private Learning with Public Features", 2023, in
its simplest form) keeps the matrix-factorization model but takes the item embeddings from the
catalog's *public* metadata instead of learning them from private data:

* the item embedding of item ``i`` is its feature vector ``f_i`` (one-hot genres and one-hot
  release-year bins, see :func:`~fedrec.common.data.item_features.item_features`), normalized
  to sum 1; the columns past the features are zero;
* the item bias is ``log(1 + max(c_i, 0))`` for the DP popularity count ``c_i`` (the popularity
  round of :mod:`fedrec.common.algorithms.spectral`: the only release, so it gets the whole budget);
* a device's user embedding is computed on the device from its own items (never sent, so it
  costs nothing): ``scale · log((p_u + s) / (g + s))`` per column, where ``p_u`` is the mean
  embedding of the user's items, ``g`` the popularity-weighted mean embedding of the catalog
  (computed from the received table) and ``s`` a smoothing constant. A user who watches twice
  as many dramas as the catalog at large gets ``+scale·log 2`` on the drama column.

The score ``bias_i + u·e_i`` is popularity tilted towards the user's genres and eras. Only
the popularity release touches other devices' data; the rest is post-processing of it and of
public metadata, so the run's ε is that of one Gaussian release.
"""

from __future__ import annotations

import numpy as np

__all__ = ["feature_table", "profile_fold_in"]

def feature_table(popularity: np.ndarray, features: np.ndarray, dim: int
                  ) -> dict[str, np.ndarray]:
    """The item table of the features algorithm from a (noisy) popularity count.

    Embedding ``i`` is ``features[i]`` normalized to sum 1, padded with zeros to ``dim``
    columns; bias ``i`` is ``log(1 + max(popularity[i], 0))``.
    """
    popularity = np.asarray(popularity, dtype=np.float64)
    features = np.asarray(features, dtype=np.float64)
    n, k = features.shape
    if popularity.shape != (n,):
        raise ValueError(f"popularity must have shape ({n},), got {popularity.shape}")
    if k > dim:
        raise ValueError(f"dim {dim} is smaller than the {k} public item features; "
                         f"set dim to at least {k}")
    emb = np.zeros((n, dim), dtype=np.float32)
    emb[:, :k] = features / np.maximum(features.sum(axis=1, keepdims=True), 1.0)
    bias = np.log1p(np.maximum(popularity, 0.0)).astype(np.float32)[:, None]
    return {"item_embedding.weight": emb, "item_bias.weight": bias}


def profile_fold_in(embedding: np.ndarray, bias: np.ndarray, items: np.ndarray, *,
                    scale: float, smoothing: float) -> np.ndarray:
    """A device's user embedding ``scale · log((p_u + s) / (g + s))`` (shape ``(1, dim)``).

    ``p_u`` is the mean of the embeddings of ``items`` (the device's own), ``g`` the mean over
    the catalog weighted by ``exp(bias) - 1`` (the popularity the table encodes). Columns that
    are zero in the table get 0. A device without items gets zeros (pure popularity).
    """
    embedding = np.asarray(embedding, dtype=np.float64)
    weights = np.expm1(np.asarray(bias, dtype=np.float64).reshape(-1))
    weights = np.maximum(weights, 0.0)
    items = np.asarray(items, dtype=np.int64)
    if len(items) == 0 or weights.sum() <= 0:
        return np.zeros((1, embedding.shape[1]), dtype=np.float32)
    glob = weights @ embedding / weights.sum()
    prof = embedding[items].mean(axis=0)
    return (scale * np.log((prof + smoothing) / (glob + smoothing))).astype(np.float32)[None, :]
