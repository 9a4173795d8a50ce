"""The server's side of the spectral algorithm (:mod:`fedrec.common.spectral`).

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

from fedrec.common.spectral import SpectralSpec, factorize, phase_of_round, select_items

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
    """

    spec: SpectralSpec
    noise: tuple[float, float]
    device_noise: bool = False
    popularity: np.ndarray | None = None
    selected: np.ndarray | None = None

    @staticmethod
    def phase(server_round: int) -> str:
        """``popularity`` (round 1) or ``cooccurrence`` (round 2)."""
        return phase_of_round(server_round)

    def noise_multiplier(self, phase: str) -> float:
        """σ of ``phase``'s release."""
        return self.noise[0] if phase == "popularity" else self.noise[1]

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
            self.selected = select_items(total, self.spec)
            return None
        if self.selected is None or self.popularity is None:
            raise RuntimeError("the co-occurrence round needs the popularity round first")
        return factorize(self.popularity, total, self.selected, self.spec)
