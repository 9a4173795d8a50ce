"""Public item features: a catalog's metadata (genres, release years) as a feature matrix.

Public information, no interaction data: the features algorithm
(:mod:`fedrec.common.algorithms.features`) uses them as item embeddings, at no privacy cost.
"""

from __future__ import annotations

import numpy as np

from fedrec.common.data.schema import ItemMetadata

__all__ = ["item_features", "YEAR_COLUMNS"]

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


def item_features(
    metadata: ItemMetadata | None, n_items: int, *, year_bins: int = 10
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
        names += (
            ([f"year<{edges[0]:g}"] + [f"year>={e:g}" for e in edges]) if len(edges) else ["year"]
        )
    if not blocks or sum(b.shape[1] for b in blocks) == 0:
        raise ValueError(
            "algorithm features needs public item metadata (genres or a release "
            "year); this dataset has none. Datasets with it: ml-100k (u.item), "
            "ml-1m (movies.dat), ml-latest (movies.csv), RecBole item files"
        )
    return np.hstack(blocks), names
