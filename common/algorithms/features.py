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

from typing import TYPE_CHECKING

import numpy as np

from fedrec.common.algorithms.base import DeviceView, State
from fedrec.common.algorithms.spectral import Spectral, SpectralSpec

if TYPE_CHECKING:
    from fedrec.common.config import RunConfig

__all__ = ["Features", "feature_table", "profile_fold_in"]


def feature_table(popularity: np.ndarray, features: np.ndarray, dim: int) -> dict[str, np.ndarray]:
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
        raise ValueError(
            f"dim {dim} is smaller than the {k} public item features; set dim to at least {k}"
        )
    emb = np.zeros((n, dim), dtype=np.float32)
    emb[:, :k] = features / np.maximum(features.sum(axis=1, keepdims=True), 1.0)
    bias = np.log1p(np.maximum(popularity, 0.0)).astype(np.float32)[:, None]
    return {"item_embedding.weight": emb, "item_bias.weight": bias}


def profile_fold_in(
    embedding: np.ndarray, bias: np.ndarray, items: np.ndarray, *, scale: float, smoothing: float
) -> np.ndarray:
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


class Features(Spectral):
    """One DP popularity release; the item embeddings are the catalog's public features."""

    name = "features"
    summary = (
        "one DP popularity release; the catalog's public genres and release years are "
        "the item embeddings, personalized on each device"
    )
    defaults = {"num-rounds": 1, "fraction-train": 1.0, "dim": 64}
    needs_item_features = True
    uses_recency = False  # its one release keeps 0/1 entries

    def __init__(self, cfg: RunConfig, n_items: int, *, item_features: np.ndarray | None = None):
        super().__init__(cfg, n_items, item_features=item_features)
        if item_features is not None and (
            item_features.ndim != 2
            or item_features.shape[0] != n_items
            or item_features.shape[1] > cfg.dim
        ):
            raise ValueError(
                f"algorithm features: the catalog has {item_features.shape[1]} "
                f"public item features for {item_features.shape[0]} items; they "
                f"need {n_items} rows and dim >= {item_features.shape[1]} "
                f"(dim is {cfg.dim}: set dim to at least "
                f"{item_features.shape[1]})"
            )

    @classmethod
    def check(cls, cfg: RunConfig) -> None:
        """One round, item biases on, sane profile settings."""
        if cfg.num_rounds != 1:
            raise ValueError(
                "algorithm features runs exactly 1 round (the popularity "
                f"release): set num-rounds 1, not {cfg.num_rounds}"
            )
        if not cfg.item_bias:
            raise ValueError(
                "algorithm features needs item-bias true (the DP popularity is the item bias)"
            )
        if cfg.feature_scale < 0 or cfg.feature_smoothing <= 0 or cfg.feature_year_bins < 0:
            raise ValueError(
                "feature-scale and feature-year-bins must be >= 0, feature-smoothing positive"
            )

    @classmethod
    def spec_of(
        cls, cfg: RunConfig, n_items: int, *, popularity_noise: float | None = None
    ) -> SpectralSpec:
        """One round, the popularity release alone, with the profile's settings.

        ``popularity_noise`` is unused: the release keeps 0/1 entries in every mode.
        """
        return SpectralSpec(
            n_items=n_items,
            dim=cfg.dim,
            unit="user" if cfg.privacy == "user" else "example",
            rounds=1,
            popularity_share=1.0,
            feature_scale=cfg.feature_scale,
            feature_smoothing=cfg.feature_smoothing,
        )

    @classmethod
    def shares(cls, cfg: RunConfig) -> tuple[float, ...]:
        """One release: the whole budget."""
        return (1.0,)

    def finish(self, phase: str, total: np.ndarray) -> State | None:
        """The item table: public features as embeddings, the DP popularity as biases."""
        if self.item_features is None:
            raise RuntimeError("algorithm features needs the catalog's public item features")
        self.popularity = total
        return feature_table(total, self.item_features, self.spec.dim)

    def fold_in(self, device: DeviceView, state: State) -> None:
        """The log-ratio profile of the device's items (:func:`profile_fold_in`)."""
        emb = np.asarray(state["item_embedding.weight"], dtype=np.float32)
        bias = np.asarray(state["item_bias.weight"], dtype=np.float32)
        u = profile_fold_in(
            emb,
            bias,
            device.train_items,
            scale=self.spec.feature_scale,
            smoothing=self.spec.feature_smoothing,
        )
        device.model.load_local_state({"user_embedding.weight": u.astype(np.float32)})
