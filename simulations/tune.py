"""Hyper-parameter tuning on a validation split, on public data or privately on private data.

``fedrec tune --dataset ml-100k --data-dir PATH --algorithm warm-sgd --privacy distributed
--source public``

tunes a few hyper-parameters of one algorithm and privacy mode and prints a table of trials
(configuration, validation NDCG@10, ε), the chosen configuration as ``--set`` flags to paste
into ``fedrec simulate``, and a privacy statement that says which source was used.

Every trial is a federated run (the plain loop of :mod:`fedrec.simulations.loop`) trained on
the *training* half of a split and scored on a *validation* slice cut from it by DESIGN.md's
rule (each device's last ``max(1, n // 5)`` training interactions): test interactions never
enter a trial. Two sources:

``--source public`` (costs no privacy of the target data)
    synthetic data shaped like the target from public quantities only (devices, catalog size,
    mean interactions per device: ``--like devices=N,items=M,interactions=X``, or read from the
    target data, which the statement then says), or a public dataset you name
    (``--public-dataset NAME --public-data-dir PATH``). Every point of the space is run, in
    the target's privacy mode at ``--epsilon``, and scored exactly.
``--source private`` (spends privacy, accounted)
    the validation split of the target data. Random search in the manner of Papernot &
    Steinke, "Hyperparameter tuning with Rényi DP" (ICLR 2022): the number of trials ``K`` is
    random (truncated negative binomial, their Theorem 2, or Poisson, their Theorem 6), each
    trial draws a point of the space uniformly and is a DP run, its score a Gaussian release
    of the sum over devices of each device's validation NDCG@10 (sensitivity 1 for one
    interaction and for one device), and the best noisy score wins. The base mechanism's
    Rényi DP is the largest over the space of the planned releases of one run (the calibrated
    noise, at the run's sampling rates and steps) plus the score release; the theorem turns it
    into the RDP of the whole search, converted to (ε, δ). The per-trial ε is calibrated
    *down* so that the whole search spends ``--tune-epsilon`` (or fixed by ``--trial-epsilon``,
    the search's ε then computed), and the statement gives the ε of the chosen model's
    ``fedrec simulate`` run at ``--epsilon`` composed with the tuning's: the privacy cost of
    the selected model including its tuning. The devices' own ledgers are not written: the
    search and its figures are recorded in ``OUT/tune.json``.

The default space (:func:`default_space`) is two hyper-parameters, three values each, around
the algorithm's own defaults (factors 0.5, 1, 2, so nothing depends on the dataset);
``--space KEY=V1,V2,...`` (repeatable, any run-config key) replaces it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "ORDERS",
    "TrialCount",
    "trial_count",
    "gaussian_rdp",
    "history_rdp",
    "tuning_rdp",
    "rdp_epsilon",
    "score_noise",
    "default_space",
    "parse_space",
    "grid",
    "validation_data",
    "shaped_like",
    "run_trial",
    "PrivacyPlan",
    "privacy_plan",
    "search",
    "best",
    "tune",
    "report",
    "privacy_statement",
    "add_arguments",
    "run",
    "main",
]

#: Rényi orders of the tuning's accounting (Opacus' grid, extended to large orders so that
#: the ``λ̂`` of Theorem 2 can be large when a trial's ε is small).
ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [80, 128, 256, 512, 1024]
)

#: The keys the source options fill in (the data of a trial), never tuned.
_DATA_PREFIXES = ("dataset", "data-dir", "events-", "synthetic-")


# --------------------------------------------------------------------------- number of trials


@dataclass(frozen=True)
class TrialCount:
    """The distribution of the number of trials ``K`` (Papernot & Steinke, Section 3).

    ``kind="tnb"``: truncated negative binomial, ``P[K=k] ∝ (1-γ)^k C(k+η-1, k)`` for
    ``k ≥ 1`` (``η = 0``: logarithmic; ``η = 1``: geometric); ``kind="poisson"``: Poisson with
    mean ``mu`` (``K = 0`` outputs nothing).
    """

    kind: str
    eta: float = 0.0
    gamma: float = 0.5
    mu: float = 0.0

    @property
    def mean(self) -> float:
        """``E[K]``."""
        if self.kind == "poisson":
            return self.mu
        g, eta = self.gamma, self.eta
        if eta == 0:
            return (1 / g - 1) / math.log(1 / g)
        return eta * (1 - g) / (g * (1 - g**eta))

    def sample(self, rng: np.random.Generator) -> int:
        """Draw ``K``."""
        if self.kind == "poisson":
            return int(rng.poisson(self.mu))
        # inverse CDF over the pmf's recurrence p(k+1)/p(k) = (1-γ)(k+η)/(k+1)
        g, eta = self.gamma, self.eta
        p = (1 - g) / math.log(1 / g) if eta == 0 else eta * (1 - g) / (g**-eta - 1)
        u, k, cdf = rng.random(), 1, p
        while cdf < u and p > 0:
            p *= (1 - g) * (k + eta) / (k + 1)
            k += 1
            cdf += p
        return k


def trial_count(kind: str, mean: float, eta: float = 0.0) -> TrialCount:
    """The distribution of ``K`` of ``kind`` (``tnb`` or ``poisson``) with ``E[K] = mean``.

    Raises:
        ValueError: an unknown kind, ``mean`` too small for it, or ``η ≤ -1``.
    """
    if kind == "poisson":
        if mean <= 0:
            raise ValueError(f"--mean-trials must be > 0, got {mean}")
        return TrialCount("poisson", mu=float(mean))
    if kind != "tnb":
        raise ValueError(f"--trials-distribution must be tnb or poisson, got {kind!r}")
    if eta <= -1:
        raise ValueError(f"--eta must be > -1 (Papernot & Steinke), got {eta}")
    if mean <= 1:
        raise ValueError(f"--mean-trials must be > 1 for the truncated negative binomial: {mean}")
    lo, hi = 1e-12, 1 - 1e-12  # E[K] falls from ∞ to 1 as γ goes from 0 to 1
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if TrialCount("tnb", eta, mid).mean > mean else (lo, mid)
    return TrialCount("tnb", eta=float(eta), gamma=(lo + hi) / 2)


# --------------------------------------------------------------------------- Rényi DP


def gaussian_rdp(noise_multiplier: float, orders: Sequence[float] = ORDERS) -> np.ndarray:
    """RDP of one Gaussian release of sensitivity 1: ``λ / (2σ²)`` at each order."""
    return np.asarray(orders, dtype=np.float64) / (2.0 * noise_multiplier**2)


def history_rdp(
    history: Sequence[tuple[float, float, int]], orders: Sequence[float] = ORDERS
) -> np.ndarray:
    """RDP of releases ``(σ, q, steps)`` (Poisson-sampled Gaussians; Opacus' exact series)."""
    import warnings

    from opacus.accountants.analysis.rdp import compute_rdp

    total = np.zeros(len(orders))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for sigma, q, steps in history:
            if steps <= 0:
                continue
            if sigma <= 0:
                return np.full(len(orders), np.inf)
            step = compute_rdp(q=float(q), noise_multiplier=sigma, steps=1, orders=list(orders))
            total = total + steps * np.asarray(step, dtype=np.float64)
    return total


def tuning_rdp(
    base_rdp: np.ndarray,
    count: TrialCount,
    orders: Sequence[float] = ORDERS,
    *,
    base_delta: Callable[[float], float] | None = None,
) -> np.ndarray:
    """RDP of the best of ``K`` runs of a base mechanism of RDP ``base_rdp``, at ``orders``.

    Truncated negative binomial (Papernot & Steinke, Theorem 2), at every order ``λ``::

        ε'(λ) = ε(λ) + (1+η)(1 - 1/λ̂) ε(λ̂) + (1+η) log(1/γ) / λ̂ + log E[K] / (λ - 1)

    minimised over the grid's ``λ̂``. Poisson (Theorem 6): ``ε'(λ) = ε(λ) + μ δ̂ + log μ /
    (λ-1)`` where the base mechanism is ``(ε̂, δ̂)``-DP with ``ε̂ = log(1 + 1/(λ-1))``;
    ``base_delta(ε̂)`` gives that ``δ̂``.
    """
    lam = np.asarray(orders, dtype=np.float64)
    base = np.asarray(base_rdp, dtype=np.float64)
    if count.kind == "tnb":
        one = 1 + count.eta
        hat = one * (1 - 1 / lam) * base + one * math.log(1 / count.gamma) / lam
        return base + float(np.min(hat)) + math.log(count.mean) / (lam - 1)
    if base_delta is None:
        raise ValueError("Poisson trials need base_delta, the base mechanism's delta at epsilon")
    d_hat = np.array([base_delta(math.log1p(1 / (a - 1))) for a in lam])
    return base + count.mu * d_hat + math.log(count.mu) / (lam - 1)


def rdp_epsilon(rdp: np.ndarray, delta: float, orders: Sequence[float] = ORDERS) -> float:
    """(ε, δ) from RDP (Opacus' conversion, Balle et al. 2020), the best order of the grid."""
    import warnings

    from opacus.accountants.analysis.rdp import get_privacy_spent

    if not np.all(np.isfinite(rdp)):
        finite = np.isfinite(rdp)
        if not finite.any():
            return math.inf
        rdp, orders = np.asarray(rdp)[finite], np.asarray(orders)[finite]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eps, _ = get_privacy_spent(orders=list(orders), rdp=list(rdp), delta=delta)
    return float(eps)


def score_noise(n_devices: int) -> float:
    """σ of a trial's score release: ``max(1, n_devices / 200)`` (sensitivity 1).

    The noise on the mean NDCG@10 over the devices is then at most 0.005 (a function of the
    public device count, the same for every dataset).
    """
    return max(1.0, n_devices / 200.0)


# --------------------------------------------------------------------------- search space


def default_space(base: Mapping[str, object]) -> dict[str, list[object]]:
    """Two hyper-parameters of the run's algorithm, at 0.5, 1 and 2 times their defaults.

    ``sgd``, ``warm-sgd``: ``local-lr`` and ``server-lr``; ``spectral``: ``spectral-top-items``
    and ``spectral-popularity-share``; ``features``: ``feature-scale`` and
    ``feature-smoothing``. The defaults are the algorithm's own (functions of public
    quantities), so the space is the same for every dataset.

    Raises:
        ValueError: the algorithm has nothing to tune by default (give ``--space``).
    """
    from fedrec.common.config import RunConfig

    cfg = RunConfig.from_flat(dict(base))
    keys = {
        "sgd": ("local-lr", "server-lr"),
        "warm-sgd": ("local-lr", "server-lr"),
        "spectral": ("spectral-top-items", "spectral-popularity-share"),
        "features": ("feature-scale", "feature-smoothing"),
    }.get(cfg.algorithm)
    if keys is None:
        raise ValueError(
            f"algorithm {cfg.algorithm} has no default search space: give one with "
            "--space KEY=V1,V2,... (any run-config key, `fedrec simulate --list-keys`)"
        )
    flat = cfg.to_flat()
    space: dict[str, list[object]] = {}
    for key in keys:
        value = flat[key]
        if key == "spectral-popularity-share":
            space[key] = [round(min(0.9, value * f), 4) for f in (0.5, 1, 2)]
        elif isinstance(value, int):
            space[key] = sorted({max(1, int(value * f)) for f in (0.5, 1, 2)})
        else:
            space[key] = [round(value * f, 6) for f in (0.5, 1, 2)]
    return space


def parse_space(items: Sequence[str]) -> dict[str, list[str]]:
    """``["local-lr=0.1,0.5", ...]`` as ``{"local-lr": ["0.1", "0.5"], ...}``.

    Raises:
        ValueError: a malformed item, a data key (the source options set the data), or an
            unknown key (checked when the runs are configured).
    """
    space: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key or not vals:
            raise ValueError(f"--space expects KEY=V1,V2,..., got {item!r}")
        if key.startswith(_DATA_PREFIXES) or key in ("privacy", "algorithm", "epsilon", "delta"):
            raise ValueError(f"--space {key}: not a hyper-parameter to tune (set it directly)")
        space[key] = vals
    return space


def grid(space: Mapping[str, Sequence[object]]) -> list[dict[str, object]]:
    """Every point of the space (the product of its values), in order."""
    keys = list(space)
    return [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*space.values())]


# --------------------------------------------------------------------------- trial data


def _write_events(data, path: Path) -> dict[str, object]:  # noqa: ANN001 - Interactions
    """Write interactions as an event log; the run-config keys that read it back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fh.write("user,item,timestamp\n")
        for u, i, t in zip(data.user, data.item, data.timestamp, strict=True):
            fh.write(f"u{u:06d},i{i:06d},{int(t)}\n")
    return {
        "dataset": "events",
        "data-dir": str(path),
        "events-user-col": "user",
        "events-item-col": "item",
        "events-timestamp-col": "timestamp",
    }


def _trial_keys(base: Mapping[str, object], data_keys: Mapping[str, object]) -> dict[str, object]:
    """``base`` with its data keys replaced by ``data_keys`` (a trial's run-config keys)."""
    kept = {k: v for k, v in base.items() if not k.startswith(_DATA_PREFIXES)}
    return {**kept, **data_keys}


def validation_data(base: Mapping[str, object], out: Path) -> tuple[dict[str, object], dict]:
    """The trials' data for ``--source private``: the target's training half, as an event log.

    A trial run splits it again by DESIGN.md's rule, so its evaluation slice is the
    validation split (each device's last ``max(1, n // 5)`` training interactions) and the
    target's test interactions are in no trial. Returns the trials' run-config keys and the
    target's public sizes.
    """
    from fedrec.common.config import RunConfig
    from fedrec.simulations.federation import federated_dataset

    fed = federated_dataset(RunConfig.from_flat(dict(base)))
    train = fed.split.train
    keys = _write_events(train, out / "data" / "validation-train.csv")
    sizes = _sizes(fed)
    return _trial_keys(base, keys), sizes


def _sizes(fed) -> dict[str, float]:  # noqa: ANN001 - FederatedDataset
    return {
        "devices": int(fed.n_users),
        "items": int(fed.n_items),
        "interactions": round(len(fed.data.user) / max(1, fed.n_real_users), 2),
    }


def shaped_like(devices: int, items: int, interactions: float, *, seed: int):  # noqa: ANN201
    """Synthetic interactions: ``devices`` users, ``items`` items, ``interactions`` per user.

    ``interactions`` is the mean per user
    (:func:`~fedrec.common.data.synthetic.generate_synthetic`), at most half the catalog.
    """
    from fedrec.common.data.synthetic import generate_synthetic

    if devices < 2 or items < 2 or interactions < 1:
        raise ValueError(
            f"--like needs devices >= 2, items >= 2, interactions >= 1; got {devices}, "
            f"{items}, {interactions}"
        )
    mean = min(float(interactions), 0.5 * items)
    return generate_synthetic(n_users=devices, n_items=items, mean_interactions=mean, seed=seed)


def _public_data(args: argparse.Namespace, base: dict, out: Path) -> tuple[dict, str]:
    """The trials' keys for ``--source public`` and a sentence saying what the data is."""
    from fedrec.common.data.loaders import load_dataset
    from fedrec.common.data.splits import temporal_split

    if args.public_dataset:
        data = load_dataset(args.public_dataset, args.public_data_dir or "")
        what = f"the public dataset {args.public_dataset} ({args.public_data_dir})"
    else:
        if args.like:
            like = _parse_like(args.like)
            said = "given by --like"
        else:
            from fedrec.common.config import RunConfig
            from fedrec.simulations.federation import federated_dataset

            like = _sizes(federated_dataset(RunConfig.from_flat(base)))
            said = "read from the target data and treated as public"
        data = shaped_like(
            int(like["devices"]),
            int(like["items"]),
            float(like["interactions"]),
            seed=int(base.get("seed", 0)) + 1,
        )
        what = (
            f"synthetic data shaped like the target ({int(like['devices'])} devices, "
            f"{int(like['items'])} items, {float(like['interactions']):g} interactions per "
            f"device on average, {said})"
        )
    keys = _write_events(temporal_split(data).train, out / "data" / "public-train.csv")
    return _trial_keys(base, keys), what


def _parse_like(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in ("devices", "items", "interactions"):
            raise ValueError(f"--like expects devices=N,items=M,interactions=X, got {text!r}")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--like {key.strip()}: not a number: {value!r}") from None
    if len(out) != 3:
        raise ValueError(f"--like needs devices, items and interactions, got {text!r}")
    return out


# --------------------------------------------------------------------------- trials


def run_trial(keys: Mapping[str, object]) -> dict[str, float]:
    """One federated run on a trial's data: its validation NDCG@10, devices scored, seconds."""
    from fedrec.common.config import RunConfig
    from fedrec.simulations.loop import run_plain

    t0 = time.perf_counter()
    cfg = RunConfig.from_flat(dict(keys))
    res = run_plain(cfg)
    return {
        "ndcg@10": float(res.final.get("ndcg@10", float("nan"))),
        "users": int(res.final.get("users", 0)),
        "epsilon": None if cfg.privacy == "off" else float(cfg.epsilon),
        "seconds": time.perf_counter() - t0,
    }


def _planned_history(keys: Mapping[str, object]) -> list[tuple[float, float, int]]:
    """``(σ, q, steps)`` of every release a device plans in a run of ``keys`` (public)."""
    from fedrec.common.config import RunConfig

    cfg = RunConfig.from_flat(dict(keys))
    if cfg.privacy == "off":
        return [(0.0, 1.0, 1)]
    releases = cfg.algorithm_class().planned_releases(cfg)
    history = [
        (float(s), float(r.sampling_probability), int(r.steps * r.count))
        for s, r in zip(cfg.noise_multipliers(), releases, strict=True)
    ]
    return history + [tuple(h) for h in cfg.evaluation_history()]


@dataclass
class PrivacyPlan:
    """The accounting of a private search (module doc): per trial and in all."""

    count: TrialCount
    delta: float
    score_sigma: float
    trial_epsilon: float
    base_rdp: list[float] = field(default_factory=list)
    rdp: list[float] = field(default_factory=list)
    epsilon: float = 0.0


def _base_rdp(
    trial_base: Mapping[str, object], points: Sequence[Mapping], eps: float, sigma: float
) -> np.ndarray:
    """RDP of one trial (a uniformly drawn point at ``eps``, and its score): max over points."""
    from fedrec.common.config import RunConfig

    out, seen = np.zeros(len(ORDERS)), set()
    for point in points:
        keys = {**trial_base, **point, "epsilon": eps}
        cfg = RunConfig.from_flat(keys)
        # what the calibrated noise depends on (noise_multipliers): one calibration each
        signature = (
            cfg.algorithm_class().planned_releases(cfg),
            cfg.evaluation_history(),
            *(cfg.privacy, cfg.delta, cfg.accountant),
            *(cfg.noise_multiplier, cfg.user_noise_multiplier),
        )
        if signature in seen:
            continue
        seen.add(signature)
        out = np.maximum(out, history_rdp(_planned_history(keys)) + gaussian_rdp(sigma))
    return out


def _search_rdp(base: np.ndarray, count: TrialCount) -> np.ndarray:
    def base_delta(eps_hat: float) -> float:
        from dp_accounting.rdp.rdp_privacy_accountant import compute_delta

        return float(compute_delta(list(ORDERS), list(base), eps_hat)[0])

    return tuning_rdp(base, count, base_delta=base_delta if count.kind == "poisson" else None)


def privacy_plan(
    trial_base: Mapping[str, object],
    points: Sequence[Mapping],
    count: TrialCount,
    *,
    n_devices: int,
    tune_epsilon: float | None = None,
    trial_epsilon: float | None = None,
) -> PrivacyPlan:
    """The per-trial ε and the search's ε (one of the two given; the other computed).

    With ``tune_epsilon``, the largest per-trial ε (to 1 %, at least 1/50 of it) whose
    search spends at most ``tune_epsilon`` at the run's δ.

    Raises:
        ValueError: neither or both given, or no per-trial ε fits ``tune_epsilon``.
    """
    from fedrec.common.config import RunConfig

    if (tune_epsilon is None) == (trial_epsilon is None):
        raise ValueError("give one of --tune-epsilon and --trial-epsilon")
    delta = RunConfig.from_flat(dict(trial_base)).delta
    sigma = score_noise(n_devices)

    def spend(eps: float) -> tuple[float, np.ndarray, np.ndarray]:
        base = _base_rdp(trial_base, points, eps, sigma)
        rdp = _search_rdp(base, count)
        return rdp_epsilon(rdp, delta), base, rdp

    def fits(eps: float) -> bool:
        try:
            return spend(eps)[0] <= tune_epsilon
        except ValueError:  # too small an ε for a calibration
            return False

    if trial_epsilon is None:
        # geometric bisection between a fiftieth of the budget and the budget, to 1 %
        lo, hi = float(tune_epsilon) / 50, float(tune_epsilon)
        if not fits(lo):
            floor = rdp_epsilon(_search_rdp(gaussian_rdp(sigma), count), delta)
            raise ValueError(
                f"--tune-epsilon {tune_epsilon}: no useful per-trial epsilon fits (the score "
                f"releases alone, sigma {sigma:g} for {n_devices} devices, spend "
                f"{floor:.2f}); raise it or lower --mean-trials"
            )
        while hi / lo > 1.01:
            mid = math.sqrt(lo * hi)
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        trial_epsilon = lo
    total, base, rdp = spend(float(trial_epsilon))
    return PrivacyPlan(
        count, delta, sigma, float(trial_epsilon), base.tolist(), rdp.tolist(), total
    )


# --------------------------------------------------------------------------- the search


def _label(point: Mapping[str, object]) -> str:
    return " ".join(f"{k}={v}" for k, v in point.items())


def search(
    trial_base: Mapping[str, object],
    points: Sequence[Mapping[str, object]],
    *,
    plan: PrivacyPlan | None,
    n_devices: int,
    reproducible: bool = False,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> list[dict[str, object]]:
    """Run the trials; each: the point, its validation NDCG@10 (noisy under ``plan``), ε.

    Without ``plan`` every point is run once and scored exactly. With ``plan`` (a private
    search) ``K`` is drawn from ``plan.count``, each trial draws a point uniformly and runs at
    ``plan.trial_epsilon``, and its score is ``(Σ_devices NDCG@10 + N(0, σ²)) / n_devices``.
    Randomness is from OS entropy unless ``reproducible``.
    """
    from fedrec.common.privacy.randomness import NoiseSource

    if plan is None:
        jobs = list(points)
        noise = None
    else:
        rng = np.random.default_rng(seed if reproducible else None)
        k = plan.count.sample(rng)
        jobs = [points[int(rng.integers(len(points)))] for _ in range(k)]
        noise = NoiseSource.seeded([seed, 14]) if reproducible else NoiseSource.secure()
        log(
            f"drew K = {k} trials (E[K] = {plan.count.mean:.2f}), each at epsilon "
            f"{plan.trial_epsilon:.3g}"
        )
    trials = []
    for n, point in enumerate(jobs, 1):
        keys = {**trial_base, **point}
        if plan is not None:
            keys["epsilon"] = plan.trial_epsilon
        r = run_trial(keys)
        score = r["ndcg@10"]
        if noise is not None:
            total = score * r["users"] + float(noise.normal(plan.score_sigma, 1)[0])
            score = total / n_devices
        # only the (noisy) score leaves a private trial: not its exact score or user count
        trials.append(
            {
                "point": dict(point),
                "ndcg@10": score,
                "epsilon": r["epsilon"],
                "seconds": r["seconds"],
            }
        )
        log(
            f"trial {n}/{len(jobs)}: {_label(point)}: validation NDCG@10 {score:.4f} "
            f"({r['seconds']:.0f} s)"
        )
    return trials


def best(trials: Sequence[Mapping[str, object]]) -> Mapping[str, object] | None:
    """The trial of highest score (the first of equals); None without trials."""
    if not trials:
        return None
    return max(trials, key=lambda t: (t["ndcg@10"], -trials.index(t)))


def tune(
    base: Mapping[str, object],
    trial_base: Mapping[str, object],
    space: Mapping[str, Sequence[object]],
    *,
    private: bool,
    n_devices: int,
    count: TrialCount | None = None,
    tune_epsilon: float | None = None,
    trial_epsilon: float | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, object]:
    """Tune ``space`` on the trials' data ``trial_base``; the result :func:`report` prints.

    ``base`` is the target run's keys (for the chosen model's own ε). ``private`` searches
    under :func:`privacy_plan` (unless privacy is off, which it then says); otherwise every
    point is run at the target's ε.
    """
    from fedrec.common.config import RunConfig

    points = grid(space)
    for point in points:  # a bad key or value fails here, before anything runs
        RunConfig.from_flat({**trial_base, **point})
    target = RunConfig.from_flat(dict(base))
    plan = None
    if private and target.privacy != "off":
        plan = privacy_plan(
            trial_base,
            points,
            count or trial_count("tnb", 3.0),
            n_devices=n_devices,
            tune_epsilon=tune_epsilon,
            trial_epsilon=trial_epsilon,
        )
    trials = search(
        trial_base,
        points,
        plan=plan,
        n_devices=n_devices,
        reproducible=bool(RunConfig.from_flat(dict(trial_base)).reproducible),
        seed=target.seed,
        log=log,
    )
    chosen = best(trials)
    out: dict[str, object] = {
        "space": {k: list(v) for k, v in space.items()},
        "trials": trials,
        "chosen": None if chosen is None else chosen["point"],
        "private": private,
        "target": {"privacy": target.privacy, "epsilon": target.epsilon, "delta": target.delta},
    }
    if plan is not None:
        final = _planned_history({**base, **(out["chosen"] or {})})
        both = np.asarray(plan.rdp) + history_rdp(final)
        out["privacy"] = {
            **asdict(plan),
            "orders": list(ORDERS),
            "with_final_run": rdp_epsilon(both, plan.delta),
        }
    return out


# --------------------------------------------------------------------------- command line


def _flags(point: Mapping[str, object]) -> str:
    return " ".join(f"--set {k}={v}" for k, v in point.items())


def report(result: Mapping[str, object], *, source: str, command: str) -> str:
    """The trials' table, the chosen ``--set`` flags and command, and the privacy statement."""
    space = list(result["space"])
    lines = [
        "| # | " + " | ".join(space) + " | validation NDCG@10 | ε of the trial |",
        "| --- | " + " | ".join("---" for _ in space) + " | --- | --- |",
    ]
    for n, t in enumerate(result["trials"], 1):
        eps = t["epsilon"]
        eps_text = "-" if eps is None else f"{eps:.3g}"
        vals = " | ".join(str(t["point"][k]) for k in space)
        lines.append(f"| {n} | {vals} | {t['ndcg@10']:.4f} | {eps_text} |")
    chosen = result["chosen"]
    lines.append("")
    if chosen is None:
        lines.append("chosen: nothing (no trial was drawn); the algorithm's defaults stand")
    else:
        lines.append(f"chosen: {_flags(chosen)}")
        lines.append(f"  {command} {_flags(chosen)}")
    lines += ["", "privacy: " + privacy_statement(result, source=source)]
    return "\n".join(lines) + "\n"


def privacy_statement(result: Mapping[str, object], *, source: str) -> str:
    """One paragraph: which source, what the tuning spent, and the chosen model's total."""
    target = result["target"]
    if not result["private"]:
        return (
            f"tuned on {source}: no privacy of the target data spent by the tuning. "
            f"The chosen model's run spends its own epsilon {target['epsilon']:g} "
            f"(delta {target['delta']:g})."
            if target["privacy"] != "off"
            else f"tuned on {source}; the run is not private (privacy off)."
        )
    if "privacy" not in result:
        return (
            "tuned on the private data's validation split with privacy off: NOT private, "
            "no epsilon is claimed for the tuning or the model."
        )
    p = result["privacy"]
    count = p["count"]
    dist = (
        f"Poisson (mean {count['mu']:g}; Papernot & Steinke Thm 6)"
        if count["kind"] == "poisson"
        else f"truncated negative binomial (eta {count['eta']:g}, gamma {count['gamma']:.4g}, "
        f"mean {TrialCount(**count).mean:.2f}; Papernot & Steinke Thm 2)"
    )
    return (
        f"tuned on {source}. K ~ {dist}; each trial a DP run at epsilon "
        f"{p['trial_epsilon']:.3g} (calibrated down so that the search fits its budget) and a "
        f"Gaussian score release (sigma {p['score_sigma']:g}, sensitivity 1). The tuning spends "
        f"epsilon {p['epsilon']:.3f} at delta {p['delta']:g} per device "
        f"({target['privacy']}; RDP, an upper bound). The chosen model's own run at epsilon "
        f"{target['epsilon']:g} together with the tuning: epsilon {p['with_final_run']:.3f} "
        f"at delta {p['delta']:g} (RDP composition). Recorded in tune.json; the devices' "
        "ledgers do not hold the tuning."
    )


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of ``fedrec tune`` (and ``python -m fedrec.simulations.tune``)."""
    from fedrec.common.config import ALGORITHMS, PRIVACY_MODES

    ap.add_argument("--dataset", default="synthetic", help="the target data (as for simulate)")
    ap.add_argument("--data-dir", default="", help="the target data's folder or file")
    ap.add_argument("--algorithm", choices=ALGORITHMS, default="warm-sgd")
    ap.add_argument("--privacy", choices=PRIVACY_MODES, default="distributed")
    ap.add_argument("--epsilon", type=float, default=None, help="the chosen model's epsilon")
    ap.add_argument("--delta", type=float, default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any run-config key of the target run, repeatable (not tuned)",
    )
    ap.add_argument(
        "--space",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="a hyper-parameter and its values, repeatable (default: two keys of "
        "the algorithm at 0.5, 1, 2 x their defaults)",
    )
    ap.add_argument(
        "--source",
        choices=("public", "private"),
        required=True,
        help="public: synthetic data shaped like the target, or --public-dataset "
        "(no privacy cost); private: the target's validation split (accounted)",
    )
    ap.add_argument(
        "--like",
        default="",
        metavar="devices=N,items=M,interactions=X",
        help="--source public: the public shape (default: read from the target)",
    )
    ap.add_argument("--public-dataset", default="", help="--source public: a public dataset")
    ap.add_argument("--public-data-dir", default="")
    ap.add_argument(
        "--tune-epsilon",
        type=float,
        default=None,
        help="--source private: the epsilon the whole search may spend "
        "(default: --epsilon); each trial's epsilon is calibrated to fit",
    )
    ap.add_argument(
        "--trial-epsilon",
        type=float,
        default=None,
        help="--source private: fix each trial's epsilon instead",
    )
    ap.add_argument("--trials-distribution", choices=("tnb", "poisson"), default="tnb")
    ap.add_argument("--mean-trials", type=float, default=3.0, help="E[K] (default 3)")
    ap.add_argument("--eta", type=float, default=0.0, help="tnb: eta (0 logarithmic)")
    ap.add_argument("--out", default="runs/tune")


def _base(args: argparse.Namespace) -> dict[str, object]:
    base: dict[str, object] = {"dataset": args.dataset, "data-dir": args.data_dir}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        base[key.strip()] = value.strip()
    named = {
        "algorithm": args.algorithm,
        "privacy": args.privacy,
        "epsilon": args.epsilon,
        "delta": args.delta,
        "seed": args.seed,
    }
    base.update({k: v for k, v in named.items() if v is not None})
    return base


def _command(args: argparse.Namespace) -> str:
    parts = ["fedrec simulate"]
    if args.dataset != "synthetic" or args.data_dir:
        parts += [f"--dataset {args.dataset}", f"--data-dir {args.data_dir}"]
    parts += [f"--algorithm {args.algorithm}", f"--privacy {args.privacy}"]
    parts += [
        f"--{k} {v}" for k in ("epsilon", "delta", "seed") if (v := getattr(args, k)) is not None
    ]
    parts += [f"--set {s}" for s in args.set]
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    """Tune as the options say; print the report and write ``tune.json`` and ``tune.md``."""
    import torch

    from fedrec.common.config import RunConfig

    torch.set_num_threads(1)
    if args.source == "public" and (args.tune_epsilon or args.trial_epsilon):
        raise ValueError("--tune-epsilon/--trial-epsilon apply to --source private only")
    if args.public_dataset and args.source != "public":
        raise ValueError("--public-dataset applies to --source public only")
    base = _base(args)
    target = RunConfig.from_flat(base)  # bad keys fail here, before any data is read
    out = Path(args.out)
    space = parse_space(args.space) if args.space else default_space(base)
    for point in grid(space):  # a bad key or value of the space fails before any data is read
        RunConfig.from_flat({**base, **point})
    private = args.source == "private"
    if private:
        trial_base, sizes = validation_data(base, out)
        source = (
            f"the private data's validation split ({target.dataset}: each device's last "
            "max(1, n // 5) training interactions; test interactions untouched)"
        )
    else:
        trial_base, source = _public_data(args, base, out)
        trial_base["reproducible"] = True  # public data: nothing to protect, figures repeat
        sizes = {"devices": target.known_devices or 0}
    count = trial_count(args.trials_distribution, args.mean_trials, args.eta) if private else None
    tune_eps = args.tune_epsilon
    if private and args.trial_epsilon is None and tune_eps is None:
        tune_eps = target.epsilon
    print(
        f"fedrec tune: {args.algorithm}, privacy {args.privacy}, source {args.source}; "
        f"{len(grid(space))} points in the space",
        flush=True,
    )
    result = tune(
        base,
        trial_base,
        space,
        private=private,
        n_devices=int(sizes.get("devices") or 1),
        count=count,
        tune_epsilon=tune_eps,
        trial_epsilon=args.trial_epsilon,
        log=lambda msg: print(msg, flush=True),
    )
    result["source"] = source
    text = report(result, source=source, command=_command(args))
    out.mkdir(parents=True, exist_ok=True)
    (out / "tune.json").write_text(json.dumps(result, indent=2, default=float))
    (out / "tune.md").write_text(text)
    print(text + f"written {out / 'tune.json'}, {out / 'tune.md'}")
    return 0


def main(argv: list[str] | None = None) -> None:
    """Command line of the tuning."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(ap)
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
