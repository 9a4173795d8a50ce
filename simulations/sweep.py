"""The privacy-utility sweep: NDCG@10 against ε, per algorithm and privacy mode.

``fedrec sweep --dataset ml-100k --data-dir PATH --algorithms warm-sgd,sgd,spectral,features,
popularity --modes off,local,distributed,user --epsilons 1,3,8``

runs, on the same split: most-popular, then every algorithm of ``--algorithms`` (default: every
registered algorithm the data supports; ``features`` needs public item metadata) in every mode
of ``--modes``, at each ε for a private mode and once per seed for ``off`` (the algorithm's
non-private reference). No run is tuned to the dataset: each takes its algorithm's own
:attr:`~fedrec.common.algorithms.base.Algorithm.defaults` (functions of public quantities
only), then :class:`~fedrec.common.config.RunConfig`'s defaults, then ``--set KEY=VALUE`` (which
changes every run). δ is the run config's (1e-5 per interaction) for example-level modes and
:func:`user_delta` of the number of devices for user-level DP. A mode an algorithm cannot run
in (the privacy modes' table, or data without the metadata it needs) is skipped and the reason
kept in ``sweep.md``.

Every federated run uses the plain loop of :mod:`fedrec.simulations.loop` (the same device and
server code as the Flower simulation, with the secure sum computed in the clear, without the
engine's overhead; ``--engine flower`` runs them on Flower instead). It writes ``sweep.json``,
``sweep.md`` (medians over seeds and each seed's figure) and ``sweep.png`` (one panel per
private mode: NDCG@10 against ε per algorithm, each algorithm's non-private run and
most-popular as horizontal lines). The command line seeds noise and sampling
(``reproducible = true``, said in ``sweep.md``) so that figures repeat seed for seed;
``--set reproducible=false`` draws them from OS entropy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from fedrec.common.config import PRIVACY_MODES, RunConfig

__all__ = [
    "UNITS",
    "USER_DELTA_CAP",
    "user_delta",
    "run_once",
    "default_algorithms",
    "run_sweep",
    "write_outputs",
    "add_arguments",
    "run",
    "main",
]

#: The unit of privacy of each private mode (for the table and the plot).
UNITS = {"local": "example", "distributed": "example", "user": "user"}

#: The largest user-level δ the sweep uses, whatever the population.
USER_DELTA_CAP = 1e-5


def user_delta(n_devices: int) -> float:
    """User-level δ for a population of ``n_devices``: ``min(1e-5, 1 / (10 · n_devices))``.

    A function of a public quantity, the same for every dataset: δ is the chance that a user's
    guarantee fails outright, so it stays at least ten times below 1/population (943 ML-100K
    users: 1e-5; 20,000 devices: 5e-6).
    """
    if n_devices < 1:
        raise ValueError(f"user_delta needs at least one device, got {n_devices}")
    return min(USER_DELTA_CAP, 1.0 / (10.0 * n_devices))


def unit_of(mode: str) -> str:
    """The unit of privacy of a mode (``-`` for ``off``)."""
    return UNITS.get(mode, "-")


def run_once(cfg: RunConfig, engine: str = "loop") -> dict[str, object]:
    """One federated run: its final evaluation, seconds and flat config."""
    t0 = time.perf_counter()
    if engine == "flower":
        from fedrec.simulations.runner import simulate

        res = simulate(cfg)
        quality = res.summary.get("quality") or {}
    else:
        from fedrec.simulations.loop import run_plain

        res_plain = run_plain(cfg)
        quality = next((r["eval"] for r in reversed(res_plain.rounds) if "eval" in r), {})
    return {"quality": quality, "seconds": time.perf_counter() - t0, "config": cfg.to_flat()}


def _has_features(cfg: RunConfig) -> bool:
    """Whether the run's dataset has public item metadata (genres or release years)."""
    from fedrec.simulations.federation import federated_features

    try:
        return federated_features(cfg).shape[1] > 0
    except ValueError:
        return False


def default_algorithms(base: dict[str, object]) -> list[str]:
    """Every registered algorithm the data supports (``features`` needs item metadata)."""
    from fedrec.common.algorithms.registry import REGISTRY, algorithm_class

    cfg = RunConfig.from_flat(base)
    feats = None
    out = []
    for name in REGISTRY:
        if algorithm_class(name).needs_item_features:
            feats = _has_features(cfg) if feats is None else feats
            if not feats:
                continue
        out.append(name)
    return out


def _refusals(base: dict[str, object], algorithms: list[str], modes: list[str]) -> dict[str, str]:
    """``"algorithm/mode"`` → why it is not run (the modes' table, or missing metadata)."""
    from fedrec.common.algorithms.registry import algorithm_class
    from fedrec.common.privacy.mechanisms import refusal

    refused: dict[str, str] = {}
    feats = None
    for name in algorithms:
        cls = algorithm_class(name)  # a clear error for an unknown name
        if cls.needs_item_features:
            feats = _has_features(RunConfig.from_flat(base)) if feats is None else feats
            if not feats:
                for mode in modes:
                    refused[f"{name}/{mode}"] = "the dataset has no public item metadata"
                continue
        probe = RunConfig.from_flat({**base, "algorithm": name, "privacy": "off"})
        for mode in modes:
            probe.privacy = mode  # the table's verdict, before any run
            reason = refusal(cls, probe)
            if reason is not None:
                refused[f"{name}/{mode}"] = reason
    return refused


def _jobs(
    algorithms: list[str], modes: list[str], epsilons: list[float], refused: dict[str, str]
) -> list[tuple[str, str, float | None]]:
    """One seed's runs: per algorithm, ``off`` once and each private mode at each ε."""
    jobs: list[tuple[str, str, float | None]] = []
    for name in algorithms:
        for mode in modes:
            if f"{name}/{mode}" in refused:
                continue
            if mode == "off":
                jobs.append((name, mode, None))
            else:
                jobs.extend((name, mode, eps) for eps in epsilons)
    return jobs


def run_sweep(
    base: dict[str, object],
    *,
    algorithms: list[str] | None = None,
    modes: list[str] = PRIVACY_MODES,
    epsilons: list[float] = (1.0, 3.0, 8.0),
    engine: str = "loop",
    seeds: list[int] = (0,),
    log=print,
) -> dict[str, object]:
    """Run the sweep; returns ``{"most_popular": …, "runs": [...], "refused": {...}, …}``.

    ``"most_popular"`` holds the medians over seeds of most-popular's metrics (each seed's
    split: synthetic data depends on the seed), ``"most_popular_per_seed"`` its NDCG@10.

    Each run takes its algorithm's defaults, the run-config defaults, then ``base``; user-level
    runs get δ = :func:`user_delta` of the population unless ``base`` sets ``delta``. A
    combination that cannot run is logged and kept under ``"refused"`` (``"algorithm/mode"``).

    Raises:
        ValueError: an unknown mode or algorithm, or no ε for a private mode.
    """
    from fedrec.simulations.baselines import most_popular
    from fedrec.simulations.federation import federated_dataset

    modes = list(modes)
    bad = [m for m in modes if m not in PRIVACY_MODES]
    if bad:
        raise ValueError(f"--modes: unknown mode(s) {bad}; choose from {', '.join(PRIVACY_MODES)}")
    if any(m != "off" for m in modes) and not epsilons:
        raise ValueError("--epsilons: give at least one epsilon for the private modes")
    algorithms = list(algorithms) if algorithms else default_algorithms(base)
    refused = _refusals(base, algorithms, modes)
    for key, reason in refused.items():
        log(f"{key}: skipped ({reason})")
    per_seed = {}  # the data may depend on the seed (synthetic data): most-popular per seed
    for seed in seeds:
        fed = federated_dataset(RunConfig.from_flat({**base, "seed": seed}))
        per_seed[seed] = most_popular(fed.split)
        log(f"most-popular NDCG@10 {per_seed[seed]['ndcg@10']:.4f} seed {seed}")
    pop = {k: statistics.median(m[k] for m in per_seed.values()) for k in per_seed[seeds[0]]}
    udelta = user_delta(fed.n_users)
    runs = []
    for seed in seeds:
        for name, mode, eps in _jobs(algorithms, modes, epsilons, refused):
            overrides: dict[str, object] = {"algorithm": name, "privacy": mode, "seed": seed}
            if eps is not None:
                overrides["epsilon"] = eps
            if mode == "user" and "delta" not in base:
                overrides["delta"] = udelta
            label = f"{name} {mode}" + ("" if eps is None else f" eps {eps:g}")
            try:
                r = run_once(RunConfig.from_flat({**base, **overrides}), engine)
            except ValueError as exc:  # a setting this run cannot work with: said, not fatal
                refused[f"{label} seed {seed}"] = str(exc)
                log(f"{label} seed {seed}: not run ({exc})")
                continue
            runs.append({"algorithm": name, "mode": mode, "epsilon": eps, "seed": seed, **r})
            log(
                f"{label} seed {seed}: NDCG@10 "
                f"{r['quality'].get('ndcg@10', float('nan')):.4f} ({r['seconds']:.0f} s)"
            )
    return {
        "most_popular": pop,
        "most_popular_per_seed": {str(k): m["ndcg@10"] for k, m in per_seed.items()},
        "runs": runs,
        "algorithms": algorithms,
        "modes": modes,
        "epsilons": list(epsilons),
        "n_devices": fed.n_users,
        "user_delta": udelta,
        "engine": engine,
        "base": base,
        "refused": refused,
    }


def _groups(runs: list[dict]) -> dict[tuple[str, str, float | None], list[float]]:
    """NDCG@10 per (algorithm, mode, ε), one value per seed, in run order."""
    groups: dict[tuple[str, str, float | None], list[float]] = {}
    for r in runs:
        key = (r["algorithm"], r["mode"], r["epsilon"])
        groups.setdefault(key, []).append(r["quality"].get("ndcg@10"))
    return groups


def _notes(result: dict[str, object]) -> list[str]:
    runs = result["runs"]
    notes = []
    if any(str(r["config"].get("reproducible")).lower() == "true" for r in runs):
        notes.append(
            "Seeded runs (reproducible = true): the figures repeat exactly, and the "
            "runs are not private against anyone who knows the seed."
        )
    for key, reason in (result.get("refused") or {}).items():
        notes.append(f"{key}: not run ({reason}).")
    user_deltas = sorted({float(r["config"]["delta"]) for r in runs if r["mode"] == "user"})
    if user_deltas:
        n = result.get("n_devices")
        notes.append(
            f"User-level δ = {', '.join(f'{d:g}' for d in user_deltas)} per user "
            f"(min(1e-5, 1/(10·N)) for N = {n} devices unless --set delta): each user's "
            "guarantee may fail with that probability."
        )
    return notes


def _table(result: dict[str, object]) -> str:
    """``sweep.md``: medians and per-seed figures beside most-popular, then the notes."""
    runs = result["runs"]
    pop = result["most_popular"]["ndcg@10"]
    pop_seeds = ", ".join(f"{v:.4f}" for v in (result.get("most_popular_per_seed") or {}).values())
    deltas = {(r["algorithm"], r["mode"], r["epsilon"]): r["config"].get("delta") for r in runs}
    lines = [
        "| algorithm | mode | unit | epsilon | delta | NDCG@10 (median) | per seed | "
        "beats most-popular |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| most-popular | - | - | - | - | {pop:.4f} | {pop_seeds} | - |",
    ]
    for (name, mode, eps), vals in _groups(runs).items():
        med = statistics.median(vals)
        delta = "-" if eps is None else f"{deltas[(name, mode, eps)]:g}"
        seeds = ", ".join(f"{v:.4f}" for v in vals)
        lines.append(
            f"| {name} | {mode} | {unit_of(mode)} | {'-' if eps is None else f'{eps:g}'}"
            f" | {delta} | {med:.4f} | {seeds} | {'yes' if med > pop else 'no'} |"
        )
    notes = _notes(result)
    return "\n".join(lines + [part for note in notes for part in ("", note)]) + "\n"


def _plot(result: dict[str, object], path: Path) -> None:
    """``sweep.png``: a panel per private mode, a line per algorithm; references as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _groups(result["runs"])
    private = [m for m in result["modes"] if m != "off"] or ["off"]
    algorithms = list(dict.fromkeys(a for a, _, _ in groups))
    colors = {a: f"C{i % 10}" for i, a in enumerate(algorithms)}
    fig, axes = plt.subplots(
        1, len(private), figsize=(4.2 * len(private), 4), sharey=True, squeeze=False
    )
    for ax, mode in zip(axes[0], private, strict=True):
        ax.axhline(result["most_popular"]["ndcg@10"], color="gray", linestyle="--", lw=1.5)
        for name in algorithms:
            off = groups.get((name, "off", None))
            if off:
                ax.axhline(statistics.median(off), color=colors[name], linestyle=":", lw=1)
            pts = sorted(
                (e, statistics.median(v))
                for (a, m, e), v in groups.items()
                if a == name and m == mode and e is not None
            )
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=colors[name])
        epsilons = sorted({e for (_, m, e) in groups if m == mode and e is not None})
        if epsilons:  # ticks at the swept ε, written plainly
            ax.set_xscale("log")
            ax.set_xticks(epsilons, [f"{e:g}" for e in epsilons])
            ax.minorticks_off()
        ax.set_title(f"{mode} ({unit_of(mode)}-level DP)" if mode != "off" else "non-private")
        ax.set_xlabel("epsilon")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("NDCG@10")
    handles = [plt.Line2D([], [], color="gray", linestyle="--", label="most-popular")]
    handles += [plt.Line2D([], [], color=colors[a], marker="o", label=a) for a in algorithms]
    handles.append(plt.Line2D([], [], color="black", linestyle=":", label="non-private (dotted)"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(result: dict[str, object], out: Path) -> list[Path]:
    """``sweep.json``, ``sweep.md`` and ``sweep.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(result, indent=2, default=float))
    (out / "sweep.md").write_text(_table(result))
    _plot(result, out / "sweep.png")
    return [out / "sweep.json", out / "sweep.md", out / "sweep.png"]


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The sweep's options (``python -m fedrec.simulations.sweep`` and ``fedrec sweep``)."""
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--data-dir", default="")
    ap.add_argument(
        "--algorithms",
        "--algorithm",
        dest="algorithms",
        default="",
        metavar="NAME[,NAME...]",
        help="registered algorithms, each with its own defaults in every mode "
        "(default: every one the data supports)",
    )
    ap.add_argument("--epsilons", default="1,3,8")
    ap.add_argument(
        "--modes",
        default=",".join(PRIVACY_MODES),
        help="privacy modes; off runs each algorithm's non-private reference once per seed",
    )
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--engine", choices=("loop", "flower"), default="loop")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default="runs/sweep")


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(e) for e in text.split(",") if e.strip()]
    except ValueError:
        raise ValueError(f"{what} expects comma-separated numbers, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    """Run the sweep the parsed options describe, write and print its outputs."""
    import torch

    torch.set_num_threads(1)
    # research figures repeat seed for seed: noise and sampling are seeded (and labelled so)
    base: dict[str, object] = {
        "dataset": args.dataset,
        "data-dir": args.data_dir,
        "reproducible": True,
    }
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        base[k.strip()] = v.strip()
    result = run_sweep(
        base,
        algorithms=[a.strip() for a in args.algorithms.split(",") if a.strip()] or None,
        modes=[m.strip() for m in args.modes.split(",") if m.strip()],
        epsilons=_floats(args.epsilons, "--epsilons"),
        engine=args.engine,
        seeds=[int(s) for s in _floats(args.seeds, "--seeds")],
    )
    for p in write_outputs(result, Path(args.out)):
        print("written", p)
    print(Path(args.out, "sweep.md").read_text())
    return 0


def main(argv: list[str] | None = None) -> None:
    """Command line of the sweep."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(ap)
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
