"""Validation of what devices send: every reply checked before it is aggregated."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["validate_delta"]


def validate_delta(
    delta: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], *, max_norm: float
) -> str | None:
    """Why a reply's delta is unacceptable, or ``None`` if it is fine.

    Checks: exactly the expected keys, each array's shape and dtype (float32), every value
    finite, and the global L2 norm at most ``max_norm``.
    """
    if set(delta) != set(reference):
        return f"keys {sorted(delta)} differ from the expected {sorted(reference)}"
    sq = 0.0
    for key, ref in reference.items():
        arr = delta[key]
        if not isinstance(arr, np.ndarray):
            return f"{key}: not an array ({type(arr).__name__})"
        if arr.shape != ref.shape:
            return f"{key}: shape {arr.shape}, expected {ref.shape}"
        if arr.dtype != np.float32:
            return f"{key}: dtype {arr.dtype}, expected float32"
        if not np.isfinite(arr).all():
            return f"{key}: contains NaN or infinite values"
        sq += float(np.square(arr, dtype=np.float64).sum())
    norm = sq**0.5
    if norm > max_norm:
        return f"update norm {norm:.4g} exceeds the limit {max_norm:g}"
    return None
