"""The :class:`PrivacyMechanism` interface: where the noise goes, who sees what, what is counted.

A privacy mechanism wraps a round's aggregate, in the manner of Flower's DP strategy wrappers
and pfl-research's postprocessors. It decides, for any algorithm:

* on the device: whether devices add noise (:attr:`PrivacyMechanism.device_noise`) and which
  share of it (:meth:`PrivacyMechanism.plan`), and whether contributions may only leave inside
  a secure sum (:meth:`PrivacyMechanism.secure`);
* on the server: how devices are sampled (:meth:`PrivacyMechanism.sample`), how replies or a
  secure sum become the :class:`~fedrec.common.algorithms.base.Aggregate` the algorithm
  uses (:meth:`PrivacyMechanism.aggregate`, :meth:`PrivacyMechanism.aggregate_sum`), with the
  server's own noise where the mode puts it there;
* what it accounts and ledgers (device accountants, the server's ledgers); the noise is
  calibrated to the budget by :func:`fedrec.common.privacy.mechanisms.noise_multipliers`.

A mode an algorithm cannot run in is refused from one table
(:func:`fedrec.common.privacy.mechanisms.refusal`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from fedrec.common.algorithms.base import Aggregate, ContributionSpec
from fedrec.common.model.optimizers import weighted_mean
from fedrec.common.privacy.randomness import NoiseSource
from fedrec.common.privacy.secagg import secure_range

if TYPE_CHECKING:
    from fedrec.common.algorithms.base import Algorithm
    from fedrec.common.config import RunConfig

__all__ = ["PrivacyMechanism", "RoundPlan", "Contributed", "ServerLedgers"]


@dataclass(frozen=True)
class RoundPlan:
    """What a secure round is provisioned for.

    Attributes:
        sampled: devices asked to take part.
        min_included: devices whose contributions must reach the sum for the full noise.
        noise_share: the fraction of the noise std each device adds (0: devices add none).
        clipping_range: the secure sum's range, from public quantities only
            (:func:`fedrec.common.privacy.secagg.secure_range`).
        enforce_min: abort before unmasking a sum of fewer than ``min_included`` devices
            (distributed DP's ``dropout-policy = abort``).
    """

    sampled: int
    min_included: int
    noise_share: float
    clipping_range: float = 0.0
    enforce_min: bool = False


@dataclass
class Contributed:
    """One validated individual contribution (an update or a statistic) and its weight."""

    node: int
    arrays: Mapping[str, np.ndarray]
    num_examples: float = 1.0


class ServerLedgers:
    """The server's signed ledgers and receipts of a run: one key, a ledger per name and folder.

    The key is the operator's, from the run's keystore (outside the run directory:
    :mod:`fedrec.common.audit.keystore`); only its public half is published.
    """

    def __init__(self, ledger_dir: Path | str | None, keystore: Path | str = ""):
        self.ledger_dir = None if ledger_dir is None else Path(ledger_dir)
        self.keystore = keystore
        self._key: Any = None
        self._ledgers: dict[tuple[str, str], Any] = {}
        self._receipts: Any = None

    def key(self) -> Any:
        """The operator's :class:`~fedrec.common.audit.ledger.DeviceKey`."""
        if self._key is None:
            from fedrec.common.audit.keystore import Keystore

            assert self.ledger_dir is not None
            self._key = Keystore.for_run(self.ledger_dir.parent, self.keystore).server_key()
        return self._key

    def ledger(self, name: str, folder: str = "") -> Any:
        """The ledger ``ledger_dir/folder/name.jsonl`` signed by the server (None: nowhere)."""
        if self.ledger_dir is None:
            return None
        from fedrec.common.audit.ledger import Ledger

        key = (folder, name)
        if key not in self._ledgers:
            base = self.ledger_dir / folder if folder else self.ledger_dir
            public = base / "keys" / f"{name}.pub.pem"
            if not public.exists():
                self.key().save_public(public)
            self._ledgers[key] = Ledger(base / f"{name}.jsonl", self.key(), device_id=name)
        return self._ledgers[key]

    def receipts(self) -> Any:
        """The run's receipts (``RUN/receipts.jsonl``; None: nowhere)."""
        if self.ledger_dir is None:
            return None
        if self._receipts is None:
            from fedrec.common.audit.receipts import RECEIPTS_FILE, ReceiptLog

            self._receipts = ReceiptLog(self.ledger_dir.parent / RECEIPTS_FILE, self.key())
        return self._receipts


class PrivacyMechanism:
    """Where a run's noise is added, who sees what, and what is accounted.

    Args:
        cfg: the run configuration.
        algorithm: the run's algorithm.
        ledger_dir: where server-side ledgers go (``None``: nowhere).
        noise: the server's source of sampling decisions and noise.
    """

    #: the ``--privacy`` name
    name: ClassVar[str] = ""
    #: the unit of privacy (``"example"``, ``"user"``; ``None`` without a guarantee)
    unit: ClassVar[str | None] = None
    #: whether devices add DP noise themselves (and keep accountants and ledgers)
    device_noise: ClassVar[bool] = False
    #: who is trusted with what, in words
    trust: ClassVar[str] = ""

    def __init__(
        self,
        cfg: RunConfig,
        algorithm: Algorithm,
        *,
        ledger_dir: Path | str | None = None,
        noise: NoiseSource | None = None,
    ):
        self.cfg = cfg
        self.algorithm = algorithm
        self.noise = noise if noise is not None else cfg.noise_source()
        self.ledgers = ServerLedgers(ledger_dir, cfg.keystore)
        self.pool_size = 0

    # --- compatibility and calibration -----------------------------------------------------
    @classmethod
    def refusal(cls, algorithm: type[Algorithm], cfg: RunConfig) -> str | None:
        """Why this mechanism cannot run ``algorithm`` with ``cfg`` (None: it can)."""
        return None

    # --- sampling --------------------------------------------------------------------------
    def sample(
        self, pool: Sequence[int], participations: dict[int, int], rng: np.random.Generator
    ) -> list[int]:
        """Devices for a round: ``ceil(fraction · N)``, least-used first, ties at random.

        In effect shuffled passes over all devices (each trains once per pass before any
        trains twice), so every device's number of participations is known in advance and
        calibration can plan its budget. No device data is used.
        """
        self.pool_size = len(pool)
        if not pool:
            return []
        want = max(1, math.ceil(self.cfg.fraction_train * len(pool) - 1e-9))
        ties = rng.permutation(len(pool))  # positions, not ids: ids may exceed int64
        order = sorted(range(len(pool)), key=lambda i: (participations.get(pool[i], 0), ties[i]))
        chosen = [pool[i] for i in order[:want]]
        for n in chosen:
            participations[n] = participations.get(n, 0) + 1
        return chosen

    # --- secure sums -----------------------------------------------------------------------
    def secure(self) -> bool:
        """Whether contributions only ever leave devices inside a secure sum."""
        return self.algorithm.raw_statistics and not self.device_noise

    def plan(self, sampled: int, spec: ContributionSpec) -> RoundPlan:
        """A secure round's provisioning (devices add no noise: share 0)."""
        return RoundPlan(
            sampled=sampled,
            min_included=1,
            noise_share=0.0,
            clipping_range=secure_range(spec.coordinate_bound, 0.0, spec.size),
        )

    def aggregate_sum(
        self,
        server_round: int,
        plan: RoundPlan,
        total: Mapping[str, np.ndarray],
        included: Sequence[int],
        spec: ContributionSpec,
    ) -> tuple[Aggregate | None, list[str]]:
        """The aggregate of a secure sum of ``len(included)`` contributions, with why not."""
        return _aggregate_of(
            spec, {k: np.asarray(v, np.float64) for k, v in total.items()}, len(included)
        ), []

    # --- individual replies ----------------------------------------------------------------
    def aggregate(
        self, server_round: int, replies: Sequence[Contributed], spec: ContributionSpec
    ) -> Aggregate | None:
        """The aggregate of individually received contributions (None: nothing to use)."""
        if not replies:
            return None
        if spec.aggregate == "mean":
            weights = [r.num_examples if self.name == "off" else 1.0 for r in replies]
            return Aggregate(
                count=len(replies), mean=weighted_mean([r.arrays for r in replies], weights)
            )
        total = {
            k: np.sum([r.arrays[k] for r in replies], axis=0, dtype=np.float64) for k in spec.shapes
        }
        return Aggregate(count=len(replies), total=total)

    def metrics(self, included: Sequence[int]) -> dict[str, float]:
        """Privacy figures of a round for its report (ε of the devices in it, …)."""
        return {}


def _aggregate_of(spec: ContributionSpec, total: dict[str, np.ndarray], n: int) -> Aggregate:
    """A sum of ``n`` contributions as the algorithm takes it (the mean, or the sum)."""
    if spec.aggregate == "mean":
        return Aggregate(count=n, mean={k: (v / n).astype(np.float32) for k, v in total.items()})
    return Aggregate(count=n, total=total)
