"""Public item features: personalization that costs no privacy budget.

``algorithm = "features"`` (Krichene et al., "Private Learning with Public Features", 2023, in
its simplest form) keeps the matrix-factorization model but takes the item embeddings from the
catalog's *public* metadata instead of learning them from private data:

* the item embedding of item ``i`` is its feature vector ``f_i`` (one-hot genres and one-hot
  release-year bins, see :func:`item_features`), normalized to sum 1; the columns past the
  features are zero;
* the item bias is ``log(1 + max(c_i, 0))`` for the DP popularity count ``c_i`` (the popularity
  round of :mod:`fedrec.common.spectral`: the only release, so it gets the whole budget);
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

from fedrec.common.schema import ItemMetadata

__all__ = ["item_features", "feature_table", "profile_fold_in", "YEAR_COLUMNS"]

#: Metadata columns read as an item's release year (the first one present is used).
YEAR_COLUMNS = ("year", "release_year")


def _years(metadata: ItemMetadata, n_items: int) -> np.ndarray | None:
    for name in YEAR_COLUMNS:
        column = metadata.extra.get(name)
        if column is None:
            continue
        years = np.full(n_items, np.nan)
        for i, value in enumerate(column[:n_items]):
            try:
                years[i] = float(value)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                pass
        if np.isfinite(years).any():
            return years
    return None


def item_features(metadata: ItemMetadata | None, n_items: int, *, year_bins: int = 10
                  ) -> tuple[np.ndarray, list[str]]:
    """The catalog's public feature matrix ``(n_items, k)`` of 0/1 and its column names.

    One column per genre found in the metadata (sorted), and up to ``year_bins`` columns of
    release-year bins whose edges are quantiles of the catalog's known years (public: they
    depend on the catalog, not on any interaction). An item without a genre or year simply has
    no 1 in those columns.

    Raises:
        ValueError: if the metadata has neither genres nor years (nothing to personalize with).
    """
    if year_bins < 0:
        raise ValueError(f"year_bins must be >= 0, got {year_bins}")
    blocks: list[np.ndarray] = []
    names: list[str] = []
    if metadata is not None and metadata.genres is not None:
        vocabulary = sorted({g for item in metadata.genres for g in item})
        index = {g: j for j, g in enumerate(vocabulary)}
        genres = np.zeros((n_items, len(vocabulary)), dtype=np.float32)
        for i, item in enumerate(metadata.genres[:n_items]):
            for g in item:
                genres[i, index[g]] = 1.0
        blocks.append(genres)
        names += [f"genre:{g}" for g in vocabulary]
    years = _years(metadata, n_items) if metadata is not None and year_bins > 0 else None
    if years is not None:
        known = years[np.isfinite(years)]
        edges = np.unique(np.quantile(known, np.arange(1, year_bins) / year_bins))
        bins = np.digitize(years, edges)
        onehot = np.zeros((n_items, len(edges) + 1), dtype=np.float32)
        rows = np.flatnonzero(np.isfinite(years))
        onehot[rows, bins[rows]] = 1.0
        blocks.append(onehot)
        names += ([f"year<{edges[0]:g}"] + [f"year>={e:g}" for e in edges]) if len(edges) \
            else ["year"]
    if not blocks or sum(b.shape[1] for b in blocks) == 0:
        raise ValueError("algorithm features needs public item metadata (genres or a release "
                         "year); this dataset has none. Datasets with it: ml-100k (u.item), "
                         "ml-1m (movies.dat), ml-latest (movies.csv), RecBole item files")
    return np.hstack(blocks), names


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
