"""Defences against poisoned updates: robust aggregation and per-row clipping (pure numpy).

A fake device that wants an item recommended needs only to move that item's row of the item
table. Two families of defence bound what it can do:

* **per-row clipping** (:func:`clip_rows`): every row of an item-table update (the item's
  embedding and bias together) is scaled to L2 norm at most ``row-clip``. A fake's push on
  one item is then no larger than an honest device's push on one of its items, whatever the
  norm of its whole update. :func:`row_norm_bound` derives the bound from public quantities
  only (the local recipe, the noise, the table's shape), never from the data.
* **robust aggregation** (:func:`robust_mean`): the coordinate-wise trimmed mean (drop the
  ``trim`` largest and smallest values of every coordinate, average the rest) or the
  coordinate-wise median of the round's updates, instead of their mean. A minority of
  fakes whose values lie beyond the honest ones is trimmed away; it needs the server to see
  every update (privacy ``off`` and ``local``), never a secure sum.

Under SecAgg+ (privacy ``distributed`` and ``user``) the server sees only the sum: clipping is
done by each device itself, on trust, and the only bound on a dishonest device is the secure
sum's per-coordinate range (:mod:`fedrec.common.privacy.secagg`), which holds only if the
protocol proves each input lies in it (Flower's SecAgg+ does not: a device quantizes its own
vector). :mod:`fedrec.simulations.poisoning` measures all of these against fake devices.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fedrec.common.config import RunConfig

__all__ = [
    "ROBUST_AGGREGATORS",
    "clip_rows",
    "trimmed_mean",
    "coordinate_median",
    "robust_mean",
    "row_norm_bound",
    "public_row_clip",
]

#: The values of the run-config key ``robust-aggregation``.
ROBUST_AGGREGATORS = ("none", "trimmed-mean", "median")


def clip_rows(arrays: Mapping[str, np.ndarray], bound: float) -> dict[str, np.ndarray]:
    """Scale every row of an update to L2 norm at most ``bound``.

    Arrays with the same number of rows (the item embeddings and the item biases) form one
    row together: row ``i`` is the concatenation of their rows ``i``. Other arrays are
    clipped row by row on their own.

    Raises:
        ValueError: ``bound`` is not a positive finite number.
    """
    if not (math.isfinite(bound) and bound > 0):
        raise ValueError(f"a row clipping bound must be a positive finite number, got {bound!r}")
    groups: dict[int, list[str]] = {}
    for k, v in arrays.items():
        groups.setdefault(int(np.shape(v)[0]) if np.ndim(v) else -1, []).append(k)
    out: dict[str, np.ndarray] = {}
    for rows, keys in groups.items():
        if rows < 0:  # a scalar: its own row
            out.update({k: np.clip(arrays[k], -bound, bound) for k in keys})
            continue
        flat = [np.asarray(arrays[k], np.float64).reshape(rows, -1) for k in keys]
        norms = np.sqrt(sum(np.square(f).sum(axis=1) for f in flat))
        scale = np.minimum(1.0, bound / np.maximum(norms, 1e-300))
        for k in keys:
            v = np.asarray(arrays[k])
            out[k] = (v * scale.reshape((rows,) + (1,) * (v.ndim - 1))).astype(v.dtype)
    return out


def trimmed_mean(stack: np.ndarray, trim: float) -> np.ndarray:
    """The coordinate-wise mean of ``stack`` (devices on axis 0) without its extremes.

    ``floor(trim · n)`` values are dropped at each end of every coordinate (as
    ``scipy.stats.trim_mean`` does); when that would leave nothing, the median.

    Raises:
        ValueError: ``trim`` is outside ``[0, 0.5)`` or ``stack`` is empty.
    """
    if not 0 <= trim < 0.5:
        raise ValueError(f"trim must lie in [0, 0.5), got {trim!r}")
    n = int(np.shape(stack)[0])
    if n == 0:
        raise ValueError("nothing to aggregate")
    cut = int(math.floor(trim * n))
    if cut == 0:
        return np.mean(stack, axis=0, dtype=np.float64)
    if n - 2 * cut < 1:
        return coordinate_median(stack)
    ordered = np.sort(np.asarray(stack, np.float64), axis=0)
    return ordered[cut : n - cut].mean(axis=0)


def coordinate_median(stack: np.ndarray) -> np.ndarray:
    """The coordinate-wise median of ``stack`` (devices on axis 0)."""
    if int(np.shape(stack)[0]) == 0:
        raise ValueError("nothing to aggregate")
    return np.median(np.asarray(stack, np.float64), axis=0)


def robust_mean(
    contributions: Sequence[Mapping[str, np.ndarray]], method: str, *, trim: float = 0.1
) -> dict[str, np.ndarray]:
    """The coordinate-wise ``method`` (``trimmed-mean`` or ``median``) of the contributions.

    Every contribution weighs the same (a device's example count is not trusted).

    Raises:
        ValueError: an unknown method, or no contribution.
    """
    if method not in ROBUST_AGGREGATORS or method == "none":
        raise ValueError(f"robust aggregation {method!r}: expected 'trimmed-mean' or 'median'")
    if not contributions:
        raise ValueError("nothing to aggregate")
    out = {}
    for k in contributions[0]:
        stack = np.stack([np.asarray(c[k], np.float32) for c in contributions])
        value = coordinate_median(stack) if method == "median" else trimmed_mean(stack, trim)
        out[k] = value.astype(np.float32)
    return out


def row_norm_bound(
    *,
    lr: float,
    steps: int,
    max_grad_norm: float,
    batch_size_norm: float,
    noise_std: float = 0.0,
    row_size: int = 1,
    hits_per_step: float = 2.0,
    failure_probability: float = 1e-6,
) -> float:
    """A bound on the L2 norm of one item's row in an honest DP-SGD update (public quantities).

    An honest device's update is ``-lr · Σ_t (g_t + n_t) / B`` over ``steps`` steps, where
    every example's gradient is clipped to L2 norm ``C`` (``max_grad_norm``) and ``B`` is the
    fixed ``batch-size-norm``. Within one step an item's row is the positive of at most one
    example and, with high probability, a sampled negative of at most ``hits_per_step - 1``
    others, so its noise-free part has norm at most ``lr · steps · hits_per_step · C / B``.
    The noise a device adds (std ``noise_std`` per coordinate over ``steps`` steps, already
    summed) has, over a row of ``row_size`` values, norm at most
    ``noise_std · (√row_size + √(2 ln(1/p)))`` except with probability ``p`` (the Gaussian
    norm's concentration). Their sum is the bound: no data enters it.

    With privacy off, ``C`` is nominal (honest examples are not clipped), and rows beyond it
    are rare when embeddings stay small; with user-level DP the whole update's norm is at
    most ``user-clip`` as well, and the smaller bound applies.
    """
    for name, value in (("lr", lr), ("max_grad_norm", max_grad_norm), ("B", batch_size_norm)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"row_norm_bound needs a positive finite {name}, got {value!r}")
    if steps < 1 or row_size < 1 or noise_std < 0 or not 0 < failure_probability < 1:
        raise ValueError("row_norm_bound needs steps, row_size >= 1, noise_std >= 0, 0 < p < 1")
    signal = lr * steps * hits_per_step * max_grad_norm / batch_size_norm
    tail = math.sqrt(row_size) + math.sqrt(2.0 * math.log(1.0 / failure_probability))
    return float(signal + noise_std * tail)


def public_row_clip(cfg: RunConfig, *, hits_per_step: float = 2.0) -> float:
    """:func:`row_norm_bound` for a run of ``sgd``: its local recipe and its device noise.

    The noise is the full device noise with privacy ``local`` (each reply carries it), none
    otherwise (``off``; ``user``, whose noise the server adds to the sum). With ``user`` the
    bound is at most ``user-clip``, the norm of a whole update. ``hits_per_step = 1`` (the
    row's positive example alone) gives a tighter bound, which clips some honest rows.
    """
    from fedrec.common.privacy.secagg import sgd_update_bounds

    local = cfg.local_config()
    sigma = cfg.device_noise() if cfg.privacy == "local" else 0.0
    _, noise = sgd_update_bounds(
        lr=local.lr,
        steps=local.steps,
        max_grad_norm=cfg.max_grad_norm,
        batch_size_norm=local.batch_size_norm,
        noise_multiplier=sigma,
        noise_share=1.0,
    )
    bound = row_norm_bound(
        lr=local.lr,
        steps=local.steps,
        max_grad_norm=cfg.max_grad_norm,
        batch_size_norm=local.batch_size_norm,
        noise_std=noise,
        row_size=cfg.dim + int(cfg.item_bias),
        hits_per_step=hits_per_step,
    )
    return min(bound, cfg.user_clip) if cfg.privacy == "user" else bound
