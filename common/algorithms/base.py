"""The :class:`Algorithm` interface: one federated algorithm in one module.

An algorithm answers the questions of pfl-research's ``FederatedAlgorithm`` for fedrec's
model (global item table on the server, a user embedding on each device):

* what the server sends in a round (:meth:`Algorithm.task`: a named task, extra arrays, a
  config), and what a device's contribution looks like (:meth:`Algorithm.contribution`: names,
  shapes, L2 sensitivity, coordinate bound — public quantities only);
* what one device computes (:meth:`Algorithm.contribute`), with the device's DP noise added
  and accounted when the privacy mechanism puts noise on the device;
* how the server turns the aggregate into the next item table (:meth:`Algorithm.update`);
* how a device folds the table into a user vector to rank items (:meth:`Algorithm.fold_in`);
* which releases a device makes over a run (:meth:`Algorithm.planned_releases`), so that a
  privacy mechanism can calibrate the noise to a budget.

A *privacy mechanism* (:mod:`fedrec.common.privacy.mechanisms`) wraps the aggregate: where the
noise is added, who sees individual contributions, what is accounted and ledgered. A mode an
algorithm cannot run in is refused from one table (:data:`Algorithm.modes`). The registry
(:mod:`fedrec.common.algorithms.registry`) maps names to classes; a new algorithm is a module
and a registry line (see ``docs/tutorial.md``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from fedrec.common.privacy.policy import PolicyViolation, Refusal

if TYPE_CHECKING:  # the run configuration imports torch lazily
    from fedrec.common.config import RunConfig

__all__ = [
    "Algorithm",
    "Task",
    "ContributionSpec",
    "Contribution",
    "Aggregate",
    "PlannedRelease",
    "State",
    "TABLE_KEYS",
    "DeviceView",
]

State = dict[str, np.ndarray]
#: The item table's arrays: what the server holds and sends (the model's global parameters).
TABLE_KEYS: tuple[str, ...] = ("item_embedding.weight", "item_bias.weight")


@dataclass(frozen=True)
class Task:
    """What the server asks of the sampled devices in one round.

    Attributes:
        name: the task (``"train"`` for SGD rounds; a phase name for release algorithms).
        arrays: arrays sent beside the item table (e.g. the items a phase is about).
        config: scalar settings of the round (sent in the request's config).
    """

    name: str
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ContributionSpec:
    """The public shape of one device's contribution to a round (no data involved).

    Attributes:
        shapes: the names and exact shapes of the arrays a device sends.
        aggregate: ``"mean"`` (updates of the item table, averaged) or ``"sum"`` (statistics
            whose sum the server uses).
        max_norm: the largest L2 norm of an honest noise-free contribution (replies beyond it,
            with the noise allowance, are dropped).
        coordinate_bound: the largest magnitude of one noise-free coordinate (sizes a secure
            sum's range).
        sensitivity: the L2 sensitivity of one unit's contribution (what the noise is scaled
            by: ``std = noise_multiplier · sensitivity``).
        noise_multiplier: the noise multiplier of the release this contribution is part of,
            whoever adds the noise (devices or the server; 0 without privacy).
        noise_per_coordinate: the std of the device noise on one coordinate at noise share 1
            (0 without device noise); a share ``s`` scales it by ``s``.
        sampling_probability: the Poisson rate of the release one contribution is (``None``:
            no sampling), as accounted.
        steps: how many times that (sampled) mechanism runs in one contribution.
        purpose: what the release is for, in ledgers (``"dp-sgd"``, ``"spectral-popularity"``).
    """

    shapes: Mapping[str, tuple[int, ...]]
    aggregate: str
    max_norm: float
    coordinate_bound: float
    sensitivity: float
    noise_multiplier: float = 0.0
    noise_per_coordinate: float = 0.0
    sampling_probability: float | None = None
    steps: int = 1
    purpose: str = "release"

    @property
    def size(self) -> int:
        """Values in one contribution."""
        return int(sum(math.prod(s) for s in self.shapes.values()))


@dataclass
class Contribution:
    """What a device sends for a round: the arrays, and (privacy off only) harmless metadata."""

    arrays: dict[str, np.ndarray]
    num_examples: int = 1
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Aggregate:
    """What a privacy mechanism hands the algorithm: the (noised) aggregate of a round.

    ``total`` for ``"sum"`` algorithms, ``mean`` for ``"mean"`` ones; ``count`` contributions
    are in it.
    """

    count: int
    total: State | None = None
    mean: State | None = None


@dataclass(frozen=True)
class PlannedRelease:
    """A release each device makes over a run, for calibration (public quantities only).

    ``noise_weight`` scales a common noise multiplier ``s``: the release's noise multiplier is
    ``s · noise_weight``; ``count`` releases of ``steps`` steps at ``sampling_probability``.
    """

    noise_weight: float = 1.0
    sampling_probability: float = 1.0
    steps: int = 1
    count: int = 1


class DeviceView(Protocol):
    """What an algorithm may use of a device (:class:`fedrec.client.device.Device`).

    Its data (``train_items``), its model (the user embedding is ``model``'s local part),
    its settings and randomness, and its privacy bookkeeping: every release goes through
    :meth:`over_budget` before and :meth:`release` after it is computed.
    """

    train_items: np.ndarray
    #: where each training item lies in the user's history (``None``: unknown)
    recency: np.ndarray | None
    model: Any
    local: Any
    dp: Any
    accountant: Any
    generator: Any
    noise: Any
    report_metrics: bool
    rounds_trained: int

    def table_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shapes of the item table's arrays."""

    def epsilon_after(self, events: Any) -> float:
        """The device's ε if it made these releases on top of its history."""

    def epsilon_if_trained(self) -> float:
        """The device's ε after one more training round as planned."""

    def over_budget(self, needed: float) -> Refusal | None:
        """A ``budget`` refusal if ``needed`` exceeds the device's own budget, else None."""

    def refuse(self, violation: PolicyViolation) -> Refusal:
        """The refusal (a fixed code) for a policy violation."""

    def release(
        self,
        server_round: int,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        sample_rate: float,
        steps: int,
        purpose: str,
    ) -> None:
        """Write a release to the device's ledger (before the contribution leaves)."""

    def release_rng(self) -> np.random.Generator:
        """The generator a release's noise is drawn from (OS entropy unless reproducible)."""

    def release_noise(
        self, rng: np.random.Generator, std: float, shape: tuple[int, ...]
    ) -> np.ndarray:
        """Gaussian noise of ``std`` and ``shape`` from the device's noise source."""


class Algorithm(ABC):
    """A federated algorithm for fedrec's item-table model. Subclass, then register.

    Args:
        cfg: the run configuration.
        n_items: catalog size.
        item_features: the catalog's public item features, for algorithms that use them.
    """

    #: the registry name (``--algorithm``)
    name: ClassVar[str] = ""
    #: one line for ``--help`` and the docs
    summary: ClassVar[str] = ""
    #: run-config values this algorithm needs unless the user sets them (e.g. num-rounds)
    defaults: ClassVar[Mapping[str, Any]] = {}
    #: privacy mode → ``None`` (supported) or why it is refused
    modes: ClassVar[Mapping[str, str | None]] = {
        "off": None,
        "local": None,
        "distributed": None,
        "user": None,
    }
    #: whether a contribution without device noise is a raw statistic of the device's data
    #: (then it may only ever leave inside a secure sum)
    raw_statistics: ClassVar[bool] = False
    #: whether the algorithm needs the catalog's public item features
    needs_item_features: ClassVar[bool] = False
    #: whether a user-level device weighs its release by recency (``popularity-recency``)
    uses_recency: ClassVar[bool] = False

    def __init__(self, cfg: RunConfig, n_items: int, *, item_features: np.ndarray | None = None):
        self.cfg = cfg
        self.n_items = int(n_items)
        self.item_features = item_features

    # --- the run's plan --------------------------------------------------------------------
    @classmethod
    def check(cls, cfg: RunConfig) -> None:
        """Raise ``ValueError`` naming the key if ``cfg`` does not suit this algorithm."""
        return None

    @classmethod
    @abstractmethod
    def planned_releases(cls, cfg: RunConfig) -> tuple[PlannedRelease, ...]:
        """The releases each device makes over a run of ``cfg`` (what calibration composes).

        Example-level modes: the device's own releases; user-level: the server's release per
        round, at the device sampling rate. Public quantities only.
        """

    # --- server side -----------------------------------------------------------------------
    @abstractmethod
    def initial_state(self) -> State:
        """The item table before round 1 (no data involved)."""

    @abstractmethod
    def task(self, server_round: int) -> Task:
        """What round ``server_round`` asks of devices."""

    @abstractmethod
    def contribution(self, task: Task) -> ContributionSpec:
        """The public shape of a contribution to ``task``."""

    def reply_norm_bound(self, task: Task, noise_share: float) -> float:
        """The largest norm an honest reply has, its device noise included (overwhelming odds).

        ``max_norm`` plus the χ tail of the noise, ``‖N(0, s²I_D)‖ ≤ s(√D + 10)``.
        """
        spec = self.contribution(task)
        std = spec.noise_per_coordinate * noise_share
        return (spec.max_norm + std * (math.sqrt(spec.size) + 10.0)) * (1 + 1e-6) + 1e-6

    @abstractmethod
    def update(self, server_round: int, state: State, aggregate: Aggregate) -> State:
        """The item table after a round with this aggregate."""

    def server_state(self) -> dict[str, Any]:
        """The algorithm's own server state for checkpoints (default: none)."""
        return {}

    def load_server_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`server_state` returned (a resumed run; default: nothing)."""
        if state:
            raise ValueError(
                f"{type(self).__name__} keeps no server state, but the checkpoint holds "
                f"{sorted(state)}"
            )

    # --- device side -----------------------------------------------------------------------
    @abstractmethod
    def contribute(
        self,
        device: DeviceView,
        task: Task,
        state: State,
        *,
        server_round: int,
        noise_share: float | None,
    ) -> Contribution | Refusal:
        """One device's contribution to ``task`` (noised and accounted under device DP).

        ``noise_share`` is the fraction of the noise the device adds inside a secure sum
        (``None``: the full noise, or none without device DP).
        """

    def fold_in(self, device: DeviceView, state: State) -> None:
        """Set the device's user embedding for ranking (default: keep the trained one)."""
        return None
