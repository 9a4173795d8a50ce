"""Privacy mechanisms: ``off``, ``local``, ``distributed``, ``user`` (one module each).

:data:`MECHANISMS` maps ``--privacy`` names to classes. :func:`refusal` is the one table of
what runs where: a mode an algorithm cannot run in is refused at configuration time, with the
reason, from the algorithm's :attr:`~fedrec.common.algorithms.base.Algorithm.modes` and the
mechanism's :meth:`~fedrec.common.privacy.mechanisms.base.PrivacyMechanism.refusal`.
:func:`noise_multipliers` calibrates a run's noise (one calibration for every algorithm and
mode, :func:`fedrec.common.privacy.accountant.calibrate`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fedrec.common.privacy.mechanisms.base import (
    Contributed,
    PrivacyMechanism,
    RoundPlan,
    ServerLedgers,
)
from fedrec.common.privacy.mechanisms.distributed import Distributed
from fedrec.common.privacy.mechanisms.local import Local
from fedrec.common.privacy.mechanisms.off import Off
from fedrec.common.privacy.mechanisms.user import UserLevel

if TYPE_CHECKING:
    from fedrec.common.algorithms.base import Algorithm
    from fedrec.common.config import RunConfig
    from fedrec.common.privacy.randomness import NoiseSource

__all__ = [
    "MECHANISMS",
    "PrivacyMechanism",
    "RoundPlan",
    "Contributed",
    "ServerLedgers",
    "Off",
    "Local",
    "Distributed",
    "UserLevel",
    "make_mechanism",
    "refusal",
    "noise_multipliers",
]

#: ``--privacy`` name → mechanism class.
MECHANISMS: dict[str, type[PrivacyMechanism]] = {
    "off": Off,
    "local": Local,
    "distributed": Distributed,
    "user": UserLevel,
}


def refusal(algorithm: type[Algorithm], cfg: RunConfig) -> str | None:
    """Why ``algorithm`` cannot run under ``cfg.privacy`` (None: it can)."""
    mechanism = MECHANISMS.get(cfg.privacy)
    if mechanism is None:
        return f"privacy must be one of {tuple(MECHANISMS)}, got {cfg.privacy!r}"
    reason = algorithm.modes.get(cfg.privacy, "not supported")
    if reason is not None:
        return f"algorithm {algorithm.name} cannot run with privacy {cfg.privacy}: {reason}"
    return mechanism.refusal(algorithm, cfg)


def make_mechanism(
    cfg: RunConfig,
    algorithm: Algorithm,
    *,
    ledger_dir: Path | str | None = None,
    noise: NoiseSource | None = None,
) -> PrivacyMechanism:
    """The run's mechanism, wrapping ``algorithm``."""
    return MECHANISMS[cfg.privacy](cfg, algorithm, ledger_dir=ledger_dir, noise=noise)


def noise_multipliers(cfg: RunConfig) -> tuple[float, ...]:
    """The noise multiplier of each of the run's planned releases (zeros with privacy off).

    Calibrated so that the planned releases spend ``epsilon`` at ``delta``: example-level
    modes on the devices' accountant (with the planned evaluation releases), user-level with
    PLD at the device sampling rate. An explicit ``noise-multiplier`` (example-level) or
    ``user-noise-multiplier`` (user-level) is used as it is for an algorithm with one kind of
    release.
    """
    from fedrec.common.algorithms.registry import algorithm_class
    from fedrec.common.privacy.accountant import calibrate

    releases = algorithm_class(cfg.algorithm).planned_releases(cfg)
    weights = tuple(r.noise_weight for r in releases)
    if cfg.privacy == "off":
        return tuple(0.0 for _ in weights)
    explicit = cfg.user_noise_multiplier if cfg.privacy == "user" else cfg.noise_multiplier
    if explicit > 0 and len(releases) == 1:
        return (float(explicit),)
    user = cfg.privacy == "user"
    scale = calibrate(
        [(r.noise_weight, r.sampling_probability, r.steps * r.count) for r in releases],
        target_epsilon=cfg.epsilon,
        target_delta=cfg.delta,
        accountant="pld" if user else cfg.accountant,
        fixed=() if user else cfg.evaluation_history(),
    )
    return tuple(scale * w for w in weights)
