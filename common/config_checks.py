"""What every run-config key may hold, and the checks a run makes before it starts.

Two levels, both with messages that name the key, the value and what is allowed:

* :func:`check_fields` (called by :class:`~fedrec.common.config.RunConfig` on construction):
  each key's type, finiteness and range, from the one table :data:`LIMITS`. A value outside
  it is never meaningful (a NaN epsilon, a negative noise multiplier, a δ of 1).
* :func:`check_feasible` (called before a simulation trains, where the simulator plays both
  server and devices): whether the run can work at all, from public quantities. The privacy
  budget is one calibration can meet (ε at most
  :data:`~fedrec.common.privacy.policy.MAX_CALIBRATION_EPSILON`) and affords at least one
  round; an explicit noise multiplier is one devices accept; the local steps per round and
  the item table are within a device's default resource ceilings; δ is below 1/population
  (user-level) or 1/(largest device's examples) (example-level). A deployed device checks the
  same things against its own policy and refuses with a code instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedrec.common.config import RunConfig

__all__ = [
    "Limits",
    "LIMITS",
    "MAX_DELTA",
    "check_fields",
    "check_defences",
    "check_feasible",
    "config_error",
]


@dataclass(frozen=True)
class Limits:
    """The values one key may hold: a closed or open range, or one of ``choices``."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None

    def allowed(self) -> tuple[str, ...]:
        """The allowed strings (``choices`` may be a function, for lazily known names)."""
        choices = self.choices() if callable(self.choices) else self.choices
        return tuple(choices or ())

    def contains(self, value: float) -> bool:
        """Whether a (finite) number lies in the range."""
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return not (self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi))

    def describe(self, kind: type) -> str:
        """``a finite number in (0, 1]``, ``a whole number >= 1``, ``one of 'a', 'b'``."""
        if kind is bool:
            return "true or false"
        if kind is str:
            allowed = self.allowed()
            return "one of " + ", ".join(map(repr, allowed)) if allowed else "a string"
        noun = "a whole number" if kind is int else "a finite number"
        lo = None if self.lo is None else _num(self.lo)
        hi = None if self.hi is None else _num(self.hi)
        if lo is not None and hi is not None:
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            return f"{noun} in {left}{lo}, {hi}{right}"
        if lo is not None:
            return f"{noun} {'>' if self.lo_open else '>='} {lo}"
        if hi is not None:
            return f"{noun} {'<' if self.hi_open else '<='} {hi}"
        return noun


def _num(value: float) -> str:
    if float(value).is_integer() and abs(value) < 1e7:
        return str(int(value))
    return f"{value:g}"


def _datasets() -> tuple[str, ...]:
    from fedrec.common.data.loaders import DATASETS

    return DATASETS


def _algorithms() -> tuple[str, ...]:
    from fedrec.common.algorithms.registry import REGISTRY

    return tuple(REGISTRY)


def _r(lo: float | None = None, hi: float | None = None, *, open_lo=False, open_hi=False):  # noqa: ANN202
    return Limits(lo, hi, open_lo, open_hi)


def _one_of(*choices: str) -> Limits:
    return Limits(choices=choices)


_BIG = 10**6  # generous ceilings: far above any useful value, far below an overflow
_FRACTION = _r(0, 1, open_lo=True)
_HALF_OPEN = _r(0, 1, open_hi=True)

#: Every key's type-independent limits (the type comes from the RunConfig field). A key
#: missing here is checked for its type (and finiteness) only; every number has an entry.
LIMITS: dict[str, Limits] = {
    "dataset": Limits(choices=_datasets),
    "data_dir": Limits(),
    "events_user_col": Limits(),
    "events_item_col": Limits(),
    "events_weight_col": Limits(),
    "events_timestamp_col": Limits(),
    "events_sep": _one_of("", ",", ";", "|", "tab", ":", "::", " "),
    "synthetic_users": _r(1, 10**7),
    "synthetic_items": _r(2, 10**7),
    "split": _one_of("temporal", "random"),
    "population": _r(0, 10**8),
    "seed": _r(0, 2**32 - 1),
    "reproducible": Limits(),
    "num_rounds": _r(1, _BIG),
    "fraction_train": _FRACTION,
    "eval_every": _r(1, _BIG),
    "fraction_evaluate": _r(0, 1),
    "eval_noise_multiplier": _r(0, _BIG),
    "ks": Limits(),
    "dim": _r(1, 4096),
    "item_bias": Limits(),
    "init_std": _r(0, 100, open_lo=True),
    "algorithm": Limits(choices=_algorithms),
    "spectral_top_items": _r(0, 10**7),
    "spectral_max_items": _r(1, 10**7),
    "spectral_popularity_share": _r(0, 1, open_lo=True, open_hi=True),
    "popularity_recency": _r(0, 8),
    "feature_scale": _r(0, _BIG),
    "feature_smoothing": _r(0, _BIG, open_lo=True),
    "feature_year_bins": _r(0, 10_000),
    "local_epochs": _r(0, 1e9, open_lo=True),
    "sample_rate": _FRACTION,
    "local_lr": _r(0, _BIG, open_lo=True),
    "local_optimizer": _one_of("sgd", "adam"),
    "loss": _one_of("bpr", "bce"),
    "n_negatives": _r(1, 10_000),
    "l2": _r(0, _BIG),
    "user_lr_scale": _r(0, _BIG),
    "batch_size_norm": _r(0, 1e12, open_lo=True),
    "fold_in": _one_of("trained", "solve"),
    "warm_start_share": _r(0, 1, open_lo=True, open_hi=True),
    "privacy": _one_of("off", "local", "distributed", "user"),
    "epsilon": _r(0, 1e12, open_lo=True),
    "delta": _r(0, 1, open_lo=True, open_hi=True),
    "noise_multiplier": _r(0, _BIG),
    "max_grad_norm": _r(0, _BIG, open_lo=True),
    "accountant": _one_of("prv", "rdp"),
    "dropout_tolerance": _HALF_OPEN,
    "dropout_policy": _one_of("abort", "account"),
    "simulated_dropout": _HALF_OPEN,
    "user_clip": _r(0, _BIG, open_lo=True),
    "user_noise_multiplier": _r(0, _BIG),
    "server_optimizer": _one_of("fedavg", "fedadam"),
    "server_lr": _r(0, _BIG, open_lo=True),
    "server_beta1": _HALF_OPEN,
    "server_beta2": _HALF_OPEN,
    "server_tau": _r(0, 1000, open_lo=True),
    "max_update_norm": _r(0, 1e9, open_lo=True),
    "robust_aggregation": _one_of("none", "trimmed-mean", "median"),
    "robust_trim": _r(0, 0.5, open_hi=True),
    "row_clip": _r(0, _BIG),
    "run_dir": Limits(),
    "keystore": Limits(),
}


def config_error(key: str, value: object, expected: str, *, why: str = "") -> ValueError:
    """``run-config key 'epsilon' = nan: expected a finite number in (0, 100]`` (one line)."""
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return ValueError(
        f"run-config key {key.replace('_', '-')!r} = {shown}: expected {expected}"
        + (f" ({why})" if why else "")
    )


def _field_kind(cfg: RunConfig, name: str) -> type:
    from dataclasses import fields

    annotation = {f.name: f.type for f in fields(cfg)}[name]
    return {"str": str, "int": int, "float": float, "bool": bool}[str(annotation)]


def check_fields(cfg: RunConfig) -> None:
    """Check (and normalise ints given for floats) every key of ``cfg`` against :data:`LIMITS`.

    Raises:
        ValueError: naming the first key whose value has the wrong type, is not finite or is
            out of range, with what is allowed.
    """
    from dataclasses import fields

    for f in fields(cfg):
        kind = _field_kind(cfg, f.name)
        limits = LIMITS.get(f.name, Limits())
        value = getattr(cfg, f.name)
        setattr(cfg, f.name, _checked(f.name, kind, limits, value))


def check_defences(cfg: RunConfig) -> None:
    """The poisoning defences fit the privacy mode (:mod:`fedrec.common.robust`).

    Robust aggregation needs every update in the clear (privacy off or local, and not an
    algorithm whose raw statistics go through a secure sum when privacy is off). (``row-clip``
    fits every mode: the server clips each reply in off and local, each device its update in
    user, and in distributed each device clamps its DP-SGD steps' sums before the noise.)

    Raises:
        ValueError: naming the key, its value and the modes it fits.
    """
    if cfg.robust_aggregation == "none":
        return
    if cfg.privacy in ("distributed", "user"):
        raise config_error(
            "robust_aggregation",
            cfg.robust_aggregation,
            "'none' with privacy distributed or user",
            why="the server sees only the secure sum of a round's updates, not each one",
        )
    from fedrec.common.algorithms.registry import algorithm_class

    if cfg.privacy == "off" and algorithm_class(cfg.algorithm).raw_statistics:
        raise config_error(
            "robust_aggregation",
            cfg.robust_aggregation,
            f"'none' with algorithm {cfg.algorithm} and privacy off",
            why=(
                f"{cfg.algorithm}'s raw statistics leave devices only inside a secure sum, "
                "so the server never holds an individual contribution to trim"
            ),
        )


def _checked(name: str, kind: type, limits: Limits, value: object) -> object:
    expected = limits.describe(kind)
    if kind is bool:
        if not isinstance(value, bool):
            raise config_error(name, value, expected)
        return value
    if kind is str:
        if not isinstance(value, str):
            raise config_error(name, value, expected)
        allowed = limits.allowed()
        if allowed and value not in allowed:
            raise config_error(name, value, expected)
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise config_error(name, value, expected)
    if kind is int and not isinstance(value, int):
        raise config_error(name, value, expected)
    number = value if kind is int else float(value)
    if not math.isfinite(number) or not limits.contains(number):
        raise config_error(name, value, expected)
    return number


# --------------------------------------------------------------------------------------------
# Feasibility: can this run work at all? (simulations: before any training)


def check_feasible(
    cfg: RunConfig, *, n_devices: int | None = None, max_examples: int | None = None
) -> None:
    """Raise ``ValueError`` (naming keys and values) if ``cfg`` cannot run as configured.

    Args:
        cfg: the run configuration (its keys already checked one by one).
        n_devices: devices in the run, where known (user-level δ must lie below its inverse).
        max_examples: the most training examples one device holds, where known
            (example-level δ must lie below its inverse).
    """
    from fedrec.common.privacy.policy import (
        MAX_CALIBRATION_EPSILON,
        MIN_NOISE_MULTIPLIER,
        PrivacyPolicy,
    )

    policy = PrivacyPolicy()
    steps = cfg.local_config().steps
    if steps > policy.max_steps_per_round:
        raise ValueError(
            f"local-epochs / sample-rate = {cfg.local_epochs:g} / {cfg.sample_rate:g} asks for "
            f"{steps} local steps per round; devices accept at most "
            f"{policy.max_steps_per_round}: lower local-epochs or raise sample-rate"
        )
    if cfg.privacy == "off":
        return
    if cfg.epsilon > MAX_CALIBRATION_EPSILON:
        raise config_error(
            "epsilon",
            cfg.epsilon,
            f"a finite number in (0, {MAX_CALIBRATION_EPSILON:g}] with privacy {cfg.privacy}",
            why="a guarantee beyond it means nothing",
        )
    explicit = cfg.user_noise_multiplier if cfg.privacy == "user" else cfg.noise_multiplier
    key = "user-noise-multiplier" if cfg.privacy == "user" else "noise-multiplier"
    if 0 < explicit < MIN_NOISE_MULTIPLIER:
        raise config_error(
            key,
            explicit,
            f"0 (calibrate to epsilon) or at least {MIN_NOISE_MULTIPLIER:g}",
            why="devices refuse less noise",
        )
    _check_delta(cfg, n_devices=n_devices, max_examples=max_examples)
    _check_budget(cfg, explicit, key)


#: δ is the chance that the guarantee fails outright: whatever the population, it must be small.
MAX_DELTA = 0.01


def _check_delta(cfg: RunConfig, *, n_devices: int | None, max_examples: int | None) -> None:
    if cfg.delta >= MAX_DELTA:
        raise config_error(
            "delta",
            cfg.delta,
            f"a value in (0, {MAX_DELTA:g}), well below 1/population",
            why="delta is the chance that the guarantee fails outright",
        )
    if cfg.privacy == "user" and n_devices:
        if cfg.delta >= 1.0 / n_devices:
            raise config_error(
                "delta",
                cfg.delta,
                f"a value below 1/population = 1/{n_devices} = {1.0 / n_devices:.3g} for "
                "user-level DP",
                why="a larger delta may reveal a whole user",
            )
    elif max_examples and cfg.delta >= 1.0 / max_examples:
        raise config_error(
            "delta",
            cfg.delta,
            f"a value below 1/{max_examples} = {1.0 / max_examples:.3g} (one over the most "
            "interactions a device holds) for example-level DP",
            why="a larger delta may reveal a whole interaction",
        )


def _check_budget(cfg: RunConfig, explicit: float, key: str) -> None:
    """The budget affords one round; calibration (if any) succeeds."""
    from fedrec.common.privacy.accountant import epsilon_of

    releases = cfg.algorithm_class().planned_releases(cfg)
    accountant = "pld" if cfg.privacy == "user" else cfg.accountant
    if explicit > 0 and len(releases) == 1:
        r = releases[0]
        history = [(explicit * r.noise_weight, r.sampling_probability, r.steps)]
        if cfg.privacy != "user":
            history += [(s, q, 1) for s, q, _ in cfg.evaluation_history()]
        try:
            one_round = epsilon_of(accountant, history, cfg.delta)
        except (ArithmeticError, RuntimeError, ValueError) as exc:
            raise config_error(key, explicit, "a noise multiplier the accountant can use") from (
                exc
            )
        if not one_round <= cfg.epsilon:
            raise config_error(
                key,
                explicit,
                f"enough noise for one round within epsilon = {cfg.epsilon:g}",
                why=f"one round alone spends epsilon {one_round:.3g} at delta {cfg.delta:g}; "
                "raise it, or raise epsilon",
            )
        return
    try:
        cfg.noise_multipliers()
    except (ArithmeticError, RuntimeError, ValueError) as exc:
        raise ValueError(
            f"no noise multiplier meets epsilon = {cfg.epsilon:g} at delta = {cfg.delta:g} "
            f"over the planned releases (num-rounds {cfg.num_rounds}, eval-noise-multiplier "
            f"{cfg.eval_noise_multiplier:g}): {str(exc).splitlines()[0][:200]}"
        ) from None
