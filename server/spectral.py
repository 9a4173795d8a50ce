"""The server's side of the spectral algorithm (:mod:`fedrec.common.algorithms.spectral`).

:class:`SpectralServer` knows which phase a round is, what a device's reply must look like,
and turns the two (noisy) sums into the item table: after the popularity round it selects the
top items (post-processing of a DP release), after the co-occurrence round it factorizes. The
:class:`~fedrec.server.coordinator.Coordinator` adds the noise where the privacy mode puts it
(user-level: on the sum; local and distributed: the devices already did) and accounts it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from fedrec.common.algorithms.features import feature_table
from fedrec.common.algorithms.spectral import (
    PHASES,
    SpectralSpec,
    factorize,
    phase_of_round,
    select_items,
)

__all__ = ["SpectralServer"]

log = logging.getLogger("fedrec.server")


@dataclass
class SpectralServer:
    """State of a spectral run on the server.

    Attributes:
        spec: the public settings shared with every device.
        noise: ``(σ_popularity, σ_cooccurrence)``, the noise multipliers of the two releases.
        device_noise: whether each device adds its full noise itself (local DP); the reply
            norm bound then allows for it.
        features: the catalog's public item features (``algorithm = "features"``, a one-round
            spec): the item table is then
            :func:`~fedrec.common.algorithms.features.feature_table` of the popularity release.
    """

    spec: SpectralSpec
    noise: tuple[float, ...]
    device_noise: bool = False
    features: np.ndarray | None = None
    popularity: np.ndarray | None = None
    selected: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.noise) != self.spec.rounds:
            raise ValueError(f"{self.spec.rounds} noise multipliers needed, got {self.noise}")
        if (self.features is not None) != (self.spec.rounds == 1):
            raise ValueError("the one-round (features) algorithm needs the public item "
                             "features, and only it uses them")

    def phase(self, server_round: int) -> str:
        """``popularity`` (round 1) or ``cooccurrence`` (round 2)."""
        return phase_of_round(server_round, self.spec.rounds)

    def noise_multiplier(self, phase: str) -> float:
        """σ of ``phase``'s release."""
        return self.noise[PHASES.index(phase)]

    def reference(self, phase: str) -> dict[str, np.ndarray]:
        """What a device's reply must look like in ``phase`` (names, shapes, dtype)."""
        return {phase: np.zeros(self.spec.shape(phase), dtype=np.float32)}

    def reply_norm_bound(self, phase: str, noise_share: float = 1.0) -> float:
        """The largest norm an honest reply has (noise included, with overwhelming odds)."""
        bound = self.spec.max_norm(phase)
        if self.device_noise or noise_share < 1.0:
            std = self.noise_multiplier(phase) * self.spec.sensitivity(phase) * noise_share
            dim = float(np.prod(self.spec.shape(phase)))
            bound += std * (math.sqrt(dim) + 10.0)  # χ tail: ‖N(0, s²I_D)‖ ≤ s(√D + 10)
        return bound * (1 + 1e-6) + 1e-6

    def round_arrays(self, phase: str) -> dict[str, np.ndarray]:
        """Arrays sent to the devices with the round's request (the selected items)."""
        if phase == "cooccurrence":
            if self.selected is None:
                raise RuntimeError("the popularity round has not produced a selection")
            return {"selected-items": self.selected.astype(np.int64)}
        return {}

    def finish(self, phase: str, total: np.ndarray) -> dict[str, np.ndarray] | None:
        """Use a round's noisy sum; returns the new item table after the last round."""
        total = np.asarray(total, dtype=np.float64)
        if phase == "popularity":
            self.popularity = total
            if self.features is not None:
                return feature_table(total, self.features, self.spec.dim)
            self.selected = select_items(total, self.spec)
            return None
        if self.selected is None or self.popularity is None:
            raise RuntimeError("the co-occurrence round needs the popularity round first")
        return factorize(self.popularity, total, self.selected, self.spec)
