"""The public arithmetic of secure sums: how large a SecAgg+ range must be.

SecAgg+ clips every value of a device's vector to ``[-c, c]`` before it quantizes and masks
it. A *noised share* that gets clipped is no longer Gaussian, so the sum would not carry the
noise that was accounted. fedrec therefore sizes ``c`` from public quantities only, so that
clipping needs a Gaussian tail event of probability at most :data:`FAILURE_PROBABILITY` per
device and round, and a device whose share would still be clipped declines
(``secure-range``), which aborts the round before the sum is unmasked.

Every coordinate of a device's vector is ``signal + noise`` with ``|signal| ≤ S`` by
construction (DP-SGD: each step's clipped sum is clamped to ``±C·B``, see
:func:`fedrec.common.privacy.dpsgd.train_local`; spectral contributions lie in ``[0, 1]``) and noise
``N(0, s²)`` with ``s`` public. With ``D`` values per device,
``c = S + s·√(2 ln(D / p))`` makes ``P(any |noise| > c - S) ≤ D·exp(-z²/2) = p`` (Gaussian
tail bound for ``z ≥ 1``).

What a decline reveals: only that this event happened, whose probability is at most ``p``
whatever the data; so the mechanism with the decline is (ε, δ + p)-DP where the accounted one
is (ε, δ)-DP. With ``p = 1e-12`` per device and round that is below every accountant's own
numerical error at the δ values fedrec accepts (≥ 1e-10 in practice); the ledgers record δ.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = [
    "FAILURE_PROBABILITY",
    "SecureSession",
    "secure_range",
    "sgd_update_bounds",
    "exceeds_range",
]

#: The probability, per device and round, that a noised share needs clipping.
FAILURE_PROBABILITY = 1e-12


def secure_range(
    signal_bound: float,
    noise_std: float,
    values: int,
    *,
    failure_probability: float = FAILURE_PROBABILITY,
) -> float:
    """The SecAgg+ clipping range ``c`` for vectors of ``values`` entries ``signal + noise``.

    Args:
        signal_bound: ``S``, the largest magnitude of a coordinate's noise-free part.
        noise_std: ``s``, the std of the Gaussian noise the device adds to each coordinate.
        values: ``D``, the number of values in one device's vector.
        failure_probability: ``p``, the probability that any coordinate exceeds ``c``.
    """
    if signal_bound < 0 or noise_std < 0 or values < 1 or not 0 < failure_probability < 1:
        raise ValueError(
            "secure_range needs signal_bound, noise_std >= 0, values >= 1 and "
            "0 < failure_probability < 1"
        )
    z = max(1.0, math.sqrt(2.0 * math.log(values / failure_probability)))
    return float(signal_bound + z * noise_std) * (1 + 1e-9) + 1e-12


def sgd_update_bounds(
    *,
    lr: float,
    steps: int,
    max_grad_norm: float,
    batch_size_norm: float,
    noise_multiplier: float,
    noise_share: float,
) -> tuple[float, float]:
    """``(S, s)`` of one coordinate of a distributed-DP item update (see the module doc).

    The update is ``-lr · Σ_t (clamp(g_t) + n_t) / B`` over ``steps`` steps, with
    ``|clamp(g_t)| ≤ C·B`` and ``n_t ~ N(0, (share·σ·C)²)``.
    """
    signal = lr * steps * max_grad_norm
    noise = lr * math.sqrt(steps) * noise_share * noise_multiplier * max_grad_norm
    return float(signal), float(noise / batch_size_norm)


def exceeds_range(arrays: Mapping[str, np.ndarray], clipping_range: float) -> bool:
    """Whether any value of ``arrays`` lies beyond ``±clipping_range`` (it must not be sent)."""
    return any(
        np.asarray(v).size and float(np.max(np.abs(v))) > clipping_range for v in arrays.values()
    )


@dataclass(frozen=True)
class SecureSession:
    """What a device knows of the secure sum its reply will be part of.

    Attributes:
        clipping_range: every value is clipped to ``±clipping_range`` before masking.
        group_size: with a complete graph (rounds of up to 25 nodes), the devices that
            completed key sharing with this one, itself included: a lower bound, checked by
            the device, on the inputs the sum can hold. With SecAgg+'s sparse graph (larger
            rounds) a device sees only its neighbours, and this is the round's size as the
            server announced it at setup.
        group_verified: whether the device saw ``group_size`` itself (complete graph) or took
            the server's announcement (sparse graph; the honest-but-curious server runs the
            protocol it announces, and the mechanism aborts a round with fewer inputs than the
            noise needs before unmasking).
    """

    clipping_range: float
    group_size: int
    group_verified: bool = True

    def min_group(self, noise_share: float) -> int:
        """The fewest devices a sum needs for shares of ``noise_share`` to add up to σ."""
        return math.ceil(1.0 / float(noise_share) ** 2 - 1e-9)
