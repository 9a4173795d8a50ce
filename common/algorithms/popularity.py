"""``popularity``: a DP most-popular list, in one round (the tutorial's algorithm).

Each device contributes the indicator vector of its items; the server turns the noisy sum
into item biases (zero embeddings), so every device ranks the catalog by DP popularity. It is
the private version of the most-popular baseline, and the smallest complete algorithm: see
``docs/tutorial.md``, which walks through this file.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from fedrec.common.algorithms.base import (
    Aggregate,
    Algorithm,
    Contribution,
    ContributionSpec,
    DeviceView,
    PlannedRelease,
    State,
    Task,
)
from fedrec.common.privacy.events import PrivacyEvent
from fedrec.common.privacy.policy import Refusal

if TYPE_CHECKING:
    from fedrec.common.config import RunConfig

__all__ = ["Popularity"]


class Popularity(Algorithm):
    """A DP item-popularity count; items ranked by it for everyone."""

    name = "popularity"
    summary = "one DP popularity release; every device ranks items by it (DP most-popular)"
    defaults = {"num-rounds": 1, "fraction-train": 1.0}
    raw_statistics = True  # an indicator vector may only leave noised or inside a secure sum

    @classmethod
    def check(cls, cfg: RunConfig) -> None:
        """One round: the whole budget goes to the one release."""
        if cfg.num_rounds != 1:
            raise ValueError(f"algorithm popularity runs 1 round, not num-rounds {cfg.num_rounds}")

    @classmethod
    def planned_releases(cls, cfg: RunConfig) -> tuple[PlannedRelease, ...]:
        """One Gaussian release; user-level at the device sampling rate."""
        q = cfg.fraction_train if cfg.privacy == "user" else 1.0
        return (PlannedRelease(noise_weight=1.0, sampling_probability=q),)

    def initial_state(self) -> State:
        """Zero embeddings and zero biases (no data involved)."""
        return {
            "item_embedding.weight": np.zeros((self.n_items, self.cfg.dim), np.float32),
            "item_bias.weight": np.zeros((self.n_items, 1), np.float32),
        }

    def task(self, server_round: int) -> Task:
        """The one round: count."""
        return Task("count")

    def contribution(self, task: Task) -> ContributionSpec:
        """One indicator vector; sensitivity 1 (one interaction, or a user's normalized one)."""
        sigma = self.cfg.noise_multipliers()[0]
        device_noise = self.cfg.privacy in ("local", "distributed")
        return ContributionSpec(
            shapes={"count": (self.n_items,)},
            aggregate="sum",
            max_norm=1.0 if self.cfg.privacy == "user" else math.sqrt(self.n_items),
            coordinate_bound=1.0,
            sensitivity=1.0,
            noise_multiplier=sigma,
            noise_per_coordinate=sigma if device_noise else 0.0,
            purpose="popularity",
        )

    def update(self, server_round: int, state: State, aggregate: Aggregate) -> State:
        """The noisy counts become the item biases."""
        assert aggregate.total is not None
        counts = np.asarray(aggregate.total["count"], dtype=np.float64)
        if self.cfg.privacy == "off":  # integer counts, up to a secure sum's quantization
            counts = np.rint(counts)
        bias = counts.astype(np.float32)[:, None]
        return {**state, "item_bias.weight": bias}

    def contribute(
        self,
        device: DeviceView,
        task: Task,
        state: State,
        *,
        server_round: int,
        noise_share: float | None,
    ) -> Contribution | Refusal:
        """The device's item indicator, with its noise (and accounted) under device DP."""
        x = np.zeros(self.n_items)
        x[np.unique(device.train_items)] = 1.0
        if self.cfg.privacy == "user" and x.any():
            x /= np.linalg.norm(x)  # one device's whole contribution has norm 1
        if device.dp is None:  # no device noise: the server adds it to the secure sum
            return Contribution({"count": x.astype(np.float32)})
        sigma = self.cfg.noise_multipliers()[0]
        refusal = device.over_budget(device.epsilon_after([PrivacyEvent(sigma)]))
        if refusal is not None:
            return refusal
        share = 1.0 if noise_share is None else noise_share
        x = x + device.release_noise(device.release_rng(), sigma * share, x.shape)
        device.accountant.step(noise_multiplier=sigma, sample_rate=1.0)
        device.release(
            server_round,
            noise_multiplier=sigma,
            max_grad_norm=1.0,
            sample_rate=1.0,
            steps=1,
            purpose="popularity",
        )
        return Contribution({"count": x.astype(np.float32)})
