"""The device's own privacy policy, and the fixed codes a device refuses with.

The device owns its privacy: its own settings (SDK options, a SuperNode's node config, a
simulation's device config) fix its ε budget, the largest δ it accepts, its accountant and
its resource ceilings. What a server sends (a run config, a round's request) may only be
stricter; anything else is refused **before any work**, costs nothing, and the reply carries
only a :class:`RefusalCode`: a fixed word, never a number or a sentence that could depend on
the device's data (its size, its CPU time) or state (battery, network). The detail stays on
the device, in its log.

:class:`TrainingRequest` is what a server asks of a device in one round (its recipe);
:meth:`PrivacyPolicy.check` says whether the device may do it. The same check runs in the
simulation's devices, the SDK and the deployed ClientApp.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum

__all__ = [
    "RefusalCode",
    "Refusal",
    "PrivacyPolicy",
    "TrainingRequest",
    "PolicyViolation",
    "MAX_CALIBRATION_EPSILON",
    "MIN_NOISE_MULTIPLIER",
    "training_memory_bytes",
    "check_arrays",
]

#: Noise calibration is refused above this ε (a guarantee beyond it means nothing, and the
#: search for the noise multiplier would take minutes).
MAX_CALIBRATION_EPSILON = 100.0
#: A device refuses a noise multiplier below this before accounting it: no budget a device
#: accepts survives it, and accounting it (PRV's grid grows as the noise shrinks) would cost
#: minutes and gigabytes, a way for a server to stall devices.
MIN_NOISE_MULTIPLIER = 0.3


class RefusalCode(StrEnum):
    """Why a device declined a request: the only thing a refusal reply carries."""

    #: the round would take the device past its own ε budget
    BUDGET = "budget"
    #: the server asked for looser privacy than the device allows (δ, ε, no DP, seeds)
    PRIVACY_POLICY = "privacy-policy"
    #: the round would exceed the device's resource ceilings (steps, table size, memory)
    RESOURCES = "resources"
    #: the app's training policy forbids training now (charging, network, daily limits)
    DEVICE_STATE = "device-state"
    #: the request is malformed (missing fields, a non-finite or wrongly shaped table, a
    #: catalog that differs from the device's, item indices out of range)
    BAD_REQUEST = "bad-request"
    #: a contribution that needs a secure sum (a noise share, a noise-free contribution) was
    #: requested outside one, or inside a group too small for its noise share
    NOT_SECURE = "not-secure"
    #: the device is not set up for what was asked (another algorithm, no held-out data)
    UNSUPPORTED = "unsupported"
    #: the device's noised share exceeded the secure sum's range (the round must abort)
    SECURE_RANGE = "secure-range"


@dataclass(frozen=True)
class Refusal:
    """A device declined a round.

    Only ``code`` (a :class:`~fedrec.common.privacy.policy.RefusalCode`) is ever sent;
    ``detail`` is for the device's own log, and the ε figures for its own reports.
    """

    code: RefusalCode
    detail: str = ""
    epsilon_spent: float = 0.0
    epsilon_needed: float = 0.0

    @property
    def reason(self) -> str:
        """Code and detail in words (local logs only)."""
        return f"{self.code}: {self.detail}" if self.detail else str(self.code)


class PolicyViolation(Exception):
    """A request the device refuses; ``code`` goes to the server, ``detail`` only to the log."""

    def __init__(self, code: RefusalCode, detail: str):
        super().__init__(f"{code}: {detail}")
        self.code = RefusalCode(code)
        self.detail = detail


def check_arrays(arrays: Mapping[str, object], shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Raise :class:`PolicyViolation` (``bad-request``) unless ``arrays`` is exactly ``shapes``.

    Every expected name present with its exact shape, no other name, every value a finite
    number: a server's table that fails this is refused before any work.
    """
    import numpy as np

    if set(arrays) != set(shapes):
        raise PolicyViolation(
            RefusalCode.BAD_REQUEST,
            f"arrays {sorted(arrays)} are not the expected {sorted(shapes)}",
        )
    for name, shape in shapes.items():
        value = np.asarray(arrays[name])
        if value.shape != tuple(shape):
            raise PolicyViolation(
                RefusalCode.BAD_REQUEST, f"{name} has shape {value.shape}, expected {tuple(shape)}"
            )
        if value.dtype.kind not in "fiu" or not np.all(np.isfinite(value)):
            raise PolicyViolation(RefusalCode.BAD_REQUEST, f"{name} is not all finite numbers")


def training_memory_bytes(n_items: int, dim: int) -> int:
    """A generous estimate of the memory one training round needs for an item table.

    About sixteen float32 copies of the table (received and updated tables, parameters,
    gradients, accumulated gradients, the noise in float64, the reply).
    """
    return 16 * 4 * int(n_items) * (int(dim) + 1)


@dataclass(frozen=True)
class TrainingRequest:
    """What a server asks a device to do in one round (every field is the server's word).

    Attributes:
        n_items, dim: the item table's shape.
        steps: local DP-SGD steps (``ceil(epochs / sample_rate)``).
        noise_multiplier: the noise multiplier asked for (0: calibrate from ``epsilon``).
        sample_rate: Poisson sampling rate of the device's examples per step.
        epsilon: the run's ε (what the noise is calibrated to), or None.
        delta: the run's δ, or None.
        dp: whether the run asks the device to add DP noise itself.
    """

    n_items: int
    dim: int
    steps: int = 1
    noise_multiplier: float = 0.0
    sample_rate: float = 1.0
    epsilon: float | None = None
    delta: float | None = None
    dp: bool = True


@dataclass(frozen=True)
class PrivacyPolicy:
    """The device's privacy policy and resource ceilings (its own settings, never the server's).

    Attributes:
        epsilon_budget: the most ε this device ever spends (at ``delta``).
        delta: the δ the device accounts at; a server's δ may be smaller, never larger.
        accountant: the device's accountant (``"prv"`` or ``"rdp"``).
        allow_no_dp: accept rounds in which the device adds no noise itself (``privacy``
            ``off``, or user-level DP added by a server the device trusts).
        max_steps_per_round: the most local DP-SGD steps one round may ask for.
        max_table_entries: the most entries (``n_items × (dim + 1)``) of an item table the
            device accepts.
        max_memory_bytes: the most memory a round may need
            (:func:`training_memory_bytes`).
    """

    epsilon_budget: float = 8.0
    delta: float = 1e-5
    accountant: str = "prv"
    allow_no_dp: bool = False
    max_steps_per_round: int = 10_000
    max_table_entries: int = 2**25
    max_memory_bytes: int = 2**31

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epsilon_budget) and self.epsilon_budget > 0):
            raise ValueError(
                f"epsilon_budget must be a positive number, got {self.epsilon_budget!r}"
            )
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must lie in (0, 1), got {self.delta!r}")
        if self.accountant not in ("prv", "rdp"):
            raise ValueError(f"accountant must be 'prv' or 'rdp', got {self.accountant!r}")
        for name in ("max_steps_per_round", "max_table_entries", "max_memory_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    def to_dict(self) -> dict[str, object]:
        """The policy as a plain dict (what a store keeps)."""
        return asdict(self)

    def check_table(self, n_items: int, dim: int) -> None:
        """Raise :class:`PolicyViolation` if a table of this shape exceeds the ceilings."""
        entries = int(n_items) * (int(dim) + 1)
        if entries > self.max_table_entries:
            raise PolicyViolation(
                RefusalCode.RESOURCES,
                f"an item table of {n_items} x {dim} exceeds the device's "
                f"ceiling of {self.max_table_entries} entries",
            )
        if training_memory_bytes(n_items, dim) > self.max_memory_bytes:
            raise PolicyViolation(
                RefusalCode.RESOURCES,
                f"training on a {n_items} x {dim} table needs about "
                f"{training_memory_bytes(n_items, dim)} bytes, over the "
                f"device's ceiling of {self.max_memory_bytes}",
            )

    def check(self, request: TrainingRequest) -> None:
        """Raise :class:`PolicyViolation` unless the device may do ``request``.

        Checks, in order: privacy (no DP only if allowed; δ at most the device's; ε at most
        its budget), then resources (steps, table entries, memory). Nothing here looks at
        the device's data.
        """
        if not request.dp:
            if not self.allow_no_dp:
                raise PolicyViolation(
                    RefusalCode.PRIVACY_POLICY,
                    "the server asks for training without device noise; "
                    "this device does not allow it",
                )
        else:
            if request.delta is not None and not (0 < request.delta <= self.delta):
                raise PolicyViolation(
                    RefusalCode.PRIVACY_POLICY,
                    f"the server's delta {request.delta!r} is looser than "
                    f"this device's {self.delta:g}",
                )
            if request.epsilon is not None and not (0 < request.epsilon <= self.epsilon_budget):
                raise PolicyViolation(
                    RefusalCode.PRIVACY_POLICY,
                    f"the server's epsilon {request.epsilon!r} exceeds this "
                    f"device's budget {self.epsilon_budget:g}",
                )
            sigma = request.noise_multiplier
            if not (math.isfinite(sigma) and sigma >= 0):
                raise PolicyViolation(
                    RefusalCode.BAD_REQUEST, f"noise multiplier {sigma!r} is not a number >= 0"
                )
            if 0 < sigma < MIN_NOISE_MULTIPLIER:
                raise PolicyViolation(
                    RefusalCode.PRIVACY_POLICY,
                    f"noise multiplier {sigma:g} is below {MIN_NOISE_MULTIPLIER:g}",
                )
            if sigma == 0 and request.epsilon is None:
                raise PolicyViolation(
                    RefusalCode.BAD_REQUEST,
                    "no noise multiplier and no epsilon to calibrate one to",
                )
            if not 0 < request.sample_rate <= 1:
                raise PolicyViolation(
                    RefusalCode.BAD_REQUEST, f"sampling rate {request.sample_rate!r} outside (0, 1]"
                )
        if not (isinstance(request.steps, int) and 1 <= request.steps):
            raise PolicyViolation(
                RefusalCode.BAD_REQUEST, f"steps {request.steps!r} is not a positive integer"
            )
        if request.steps > self.max_steps_per_round:
            raise PolicyViolation(
                RefusalCode.RESOURCES,
                f"{request.steps} local steps exceed the device's ceiling "
                f"of {self.max_steps_per_round}",
            )
        self.check_table(request.n_items, request.dim)
