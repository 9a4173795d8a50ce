"""``warm-sgd``: a DP spectral release warm-starts the item table, then Opacus DP-SGD rounds.

Rounds 1 and 2 are the two releases of :mod:`~fedrec.common.algorithms.spectral` (a DP item
popularity count, then the DP co-occurrence of the most popular items). Their noisy sums are
turned into a table the SGD model can start from (:func:`warm_table`): the top eigenvectors,
scaled so that an item row has unit norm on average, as the item embeddings, and the log-odds
of each item's DP popularity among the devices as its bias. Rounds 3 onwards are rounds of
local (DP-)SGD (:class:`~fedrec.common.algorithms.sgd.SGD`) from that table.

**Budget split.** ``warm-start-share`` of the Gaussian "precision" ``1/σ²`` goes to the two
spectral releases (split between them by ``spectral-popularity-share``), the rest to the
DP-SGD rounds; one calibration scales all three so that the whole run spends ε at δ
(:func:`fedrec.common.privacy.mechanisms.noise_multipliers`). Each release is accounted and
ledgered by the device (example-level) or the server (user-level) as it happens.

**User embeddings.** Under user-level DP the whole device is the unit, so a device solves its
user embedding against the current table before each DP-SGD round (Federated Reconstruction,
Singhal et al. 2021; :func:`~fedrec.common.model.fold_in.solve_user_embedding`) and only its
clipped item delta leaves, inside the secure sum. Under example-level DP a solved embedding
would depend on every interaction at once, so the embedding is trained by DP-SGD from its
data-independent initialisation, like the item table. Ranking always uses the solved
embedding (``fold-in solve``): a recommendation never leaves the device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from fedrec.common.algorithms.base import (
    Aggregate,
    Contribution,
    ContributionSpec,
    DeviceView,
    PlannedRelease,
    State,
    Task,
)
from fedrec.common.algorithms.sgd import SGD
from fedrec.common.algorithms.spectral import PHASES, Spectral
from fedrec.common.privacy.policy import Refusal

if TYPE_CHECKING:
    from fedrec.common.config import RunConfig

__all__ = ["WarmSGD", "warm_table", "WARM_ROUNDS", "EMBEDDING_SCALE"]

#: rounds spent on the spectral warm start (popularity, then co-occurrence)
WARM_ROUNDS = len(PHASES)
#: user-level: the warm table's embeddings are the unit-norm eigenvectors times this ``· √dim``
#: (:func:`warm_table`; on ML-100K at dim 8, user-level, K 300: 0.71 / 1.0 / 1.41 gave
#: NDCG@10 0.142 / 0.147 / 0.148 at 943 devices, ε 8, and 0.162 / 0.167 / 0.166 at 20,000, ε 3)
EMBEDDING_SCALE = 1.0


def warm_table(
    spectral_table: State,
    popularity: np.ndarray,
    selected: np.ndarray,
    n_devices: float,
    *,
    unit: str = "example",
) -> State:
    """An SGD starting table from the spectral releases (post-processing only).

    Args:
        spectral_table: :func:`~fedrec.common.algorithms.spectral.factorize`'s table.
        popularity: the DP popularity count (a noisy sum over the devices).
        selected: the items whose embeddings are eigenvectors.
        n_devices: the number of devices the count is over (public).
        unit: the releases' privacy unit, ``"example"`` or ``"user"`` (sets the scale).

    Returns:
        The table: the eigenvectors scaled, biases the log-odds of each item's share of
        devices (clamped to ``[0.5, n_devices - 0.5]`` devices).

    The scale: example-level, unit mean-square row norm over the selection, ``√(K/dim)``;
    user-level, :data:`EMBEDDING_SCALE` ``· √dim`` whatever ``K`` is (the table's squared
    norm is ``dim²``). A user-level sum weighs each device by one over its item count, and
    its eigenvectors' mass sits on the most popular items, so ``√(K/dim)`` made their scores
    outweigh the biases as ``K`` grew: ML-100K, user-level, noise-free, NDCG@10 after the
    warm start 0.160 / 0.126 / 0.069 at ``K`` 100 / 300 / 1682 with ``√(K/dim)``, 0.160 /
    0.168 / 0.167 with ``√dim``. Example-level runs keep ``√(K/dim)``: distributed ε 8 with
    the automatic ``K`` (204), 0.1702 against 0.1654 with ``√dim``; non-private (500),
    0.1831 against 0.1825 (``fedrec simulate --engine loop --dataset ml-100k --seed 0``).
    """
    emb = np.asarray(spectral_table["item_embedding.weight"], dtype=np.float64)
    dim = emb.shape[1]
    if unit == "user":  # eigenvectors: unit-norm columns
        scale = EMBEDDING_SCALE * math.sqrt(dim)
    else:  # Σ‖row‖² = dim over the selection
        scale = math.sqrt(max(len(selected), 1) / dim)
    n = max(float(n_devices), 2.0)
    share = np.clip(np.asarray(popularity, dtype=np.float64), 0.5, n - 0.5) / n
    bias = np.log(share) - np.log1p(-share)
    return {
        "item_embedding.weight": (emb * scale).astype(np.float32),
        "item_bias.weight": bias.astype(np.float32)[:, None],
    }


class WarmSGD(SGD):
    """Two spectral releases warm-start the table; DP-SGD rounds fine-tune it (module doc)."""

    name = "warm-sgd"
    summary = (
        "a DP spectral release (popularity, co-occurrence) warm-starts the item table, "
        "then rounds of Opacus DP-SGD on the devices fine-tune it"
    )
    #: two warm rounds and three short DP-SGD rounds over every device (measured on the
    #: synthetic default and ML-100K: docs/recipes.md); a fine-tuning server step of 1
    defaults = {"num-rounds": 5, "fraction-train": 1.0, "local-epochs": 2.0, "server-lr": 1.0}
    raw_statistics = True  # the warm-start statistics are raw without device noise
    uses_recency = True  # the spectral warm start's popularity round

    def __init__(self, cfg: RunConfig, n_items: int, *, item_features: np.ndarray | None = None):
        super().__init__(cfg, n_items, item_features=item_features)
        self.spectral = Spectral(cfg, n_items)
        self.n_devices = 0.0

    @classmethod
    def check(cls, cfg: RunConfig) -> None:
        """At least one DP-SGD round after the warm start; SGD's and spectral's own checks."""
        SGD.check(cfg)
        if cfg.num_rounds <= WARM_ROUNDS:
            raise ValueError(
                f"algorithm warm-sgd spends rounds 1-{WARM_ROUNDS} on the warm start: "
                f"set num-rounds above {WARM_ROUNDS}, not {cfg.num_rounds}"
            )
        if not cfg.item_bias:
            raise ValueError("algorithm warm-sgd needs item-bias true (popularity biases)")
        if 0 < cfg.spectral_top_items < cfg.dim:
            raise ValueError("spectral-top-items must be 0 (automatic) or at least dim")

    @classmethod
    def planned_releases(cls, cfg: RunConfig) -> tuple[PlannedRelease, ...]:
        """Spectral's two releases, then SGD's, weighted by ``warm-start-share``.

        Example-level: each device may release in both warm rounds and in every DP-SGD round
        it is drawn for (at most ``planned_participations``), which is what is planned.
        """
        share = cfg.warm_start_share
        warm = tuple(
            PlannedRelease(r.noise_weight / math.sqrt(share), r.sampling_probability, 1, 1)
            for r in Spectral.planned_releases(cfg)
        )
        sgd_rounds = cfg.num_rounds - WARM_ROUNDS
        if cfg.privacy == "user":
            q, steps, count = cfg.fraction_train, 1, sgd_rounds
        else:
            local = cfg.local_config()
            q, steps = local.sample_rate, local.steps
            count = min(sgd_rounds, cfg.planned_participations)
        # the DP-SGD steps together get (1 - share) of the precision: each σ scales by √steps
        weight = math.sqrt(steps * count / (1.0 - share))
        return (*warm, PlannedRelease(weight, q, steps, count))

    def sgd_noise(self) -> float:
        """σ of the DP-SGD rounds (the last planned release; calibrated once, by Spectral)."""
        return float(self.spectral.noise[-1])

    # --- server side -----------------------------------------------------------------------
    def task(self, server_round: int) -> Task:
        """Rounds 1-2: the spectral phases; then train."""
        if server_round <= WARM_ROUNDS:
            return self.spectral.task(server_round)
        return Task("train")

    def contribution(self, task: Task) -> ContributionSpec:
        """Spectral's spec in the warm rounds, SGD's (at the DP-SGD σ) after."""
        if task.name in PHASES:
            return self.spectral.contribution(task)
        spec = super().contribution(task)
        sigma = self.sgd_noise()
        per_coordinate = spec.noise_per_coordinate
        if spec.noise_multiplier > 0:
            per_coordinate *= sigma / spec.noise_multiplier
        return replace(spec, noise_multiplier=sigma, noise_per_coordinate=per_coordinate)

    def reply_norm_bound(self, task: Task, noise_share: float) -> float:
        """Spectral's bound in the warm rounds, ``max-update-norm`` after."""
        if task.name in PHASES:
            return self.spectral.reply_norm_bound(task, noise_share)
        return super().reply_norm_bound(task, noise_share)

    def update(self, server_round: int, state: State, aggregate: Aggregate) -> State:
        """Warm rounds: the spectral releases, then :func:`warm_table`; after: SGD's step."""
        if server_round > WARM_ROUNDS:
            return super().update(server_round, state, aggregate)
        if server_round == 1:
            self.n_devices = float(aggregate.count)
        table = self.spectral.update(server_round, state, aggregate)
        if server_round < WARM_ROUNDS:
            return table
        assert self.spectral.popularity is not None and self.spectral.selected is not None
        return warm_table(
            table,
            self.spectral.popularity,
            self.spectral.selected,
            max(self.n_devices, 2.0),
            unit=self.spectral.spec.unit,
        )

    def server_state(self) -> dict[str, Any]:
        """The spectral releases' state and the server optimizer's."""
        return {
            **self.spectral.server_state(),
            "devices": self.n_devices,
            **super().server_state(),
        }

    def load_server_state(self, state: Mapping[str, Any]) -> None:
        """Restore the spectral releases, the device count and the optimizer (a resumed run)."""
        spectral = ("popularity", "selected")
        self.spectral.load_server_state({k: state[k] for k in spectral if k in state})
        if "devices" in state:
            self.n_devices = float(state["devices"])
        super().load_server_state(
            {k: v for k, v in state.items() if k not in (*spectral, "devices")}
        )

    # --- device side -----------------------------------------------------------------------
    def device_dp(self, device: DeviceView) -> Any:
        """The device's DP settings at the DP-SGD rounds' σ (its own budget and δ)."""
        if device.dp is None:
            return None
        return replace(device.dp, noise_multiplier=self.sgd_noise())

    def contribute(
        self,
        device: DeviceView,
        task: Task,
        state: State,
        *,
        server_round: int,
        noise_share: float | None,
    ) -> Contribution | Refusal:
        """Warm rounds: spectral's contribution; after: DP-SGD at the DP-SGD σ."""
        if task.name in PHASES:
            return self.spectral.contribute(
                device, task, state, server_round=server_round, noise_share=noise_share
            )
        if self.cfg.privacy == "user":  # the device is the unit: reconstruct, then train
            self.reconstruct(device, state)
        return super().contribute(
            device, task, state, server_round=server_round, noise_share=noise_share
        )
