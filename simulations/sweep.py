"""The privacy-utility sweep: NDCG@10 against ε, per privacy mode, beside the baselines.

``python -m fedrec.simulations.sweep --dataset ml-100k --data-dir PATH --epsilons 1,3,8``

runs, on the same split: most-popular, non-private federated MF, and for each mode
(``--modes local,distributed,user``) and each ε a federated run with the noise calibrated to
that ε (δ per mode from the recipe: 1e-5 example-level, 1e-4 user-level). Every federated
run uses the plain loop of :mod:`fedrec.simulations.loop` (the same device and server code
as the Flower simulation, with the secure sum computed in the clear, without the engine's
overhead; ``--engine flower`` runs them on Flower instead). It writes ``sweep.json``,
``sweep.md`` and ``sweep.png`` (NDCG@10 against ε per mode, with most-popular and
non-private as horizontal lines).

Recipes (``--recipe``) are named sets of run-config overrides in :data:`RECIPES`, one per
sweep label; a label is a privacy mode, optionally with a suffix naming a variant
(``distributed-sgd`` runs ``--privacy distributed`` with DP-SGD rounds, where the ML-100K
recipe of ``distributed`` is the spectral algorithm, the better of the two there; the ML-100K
``local`` recipe is the features algorithm, ``local-sgd`` DP-SGD). A label of mode ``off``
(``off-features``: exact popularity with the public features) is a non-private reference, run
once per seed and drawn as a line. Pass ``--set KEY=VALUE`` to change any key for every run.
``--algorithm NAME`` sweeps a registered algorithm with its own defaults in every mode, no
recipe (a mode the algorithm cannot run in is skipped, with the table's reason in
``sweep.md``). The command line seeds noise and sampling (``reproducible = true``, said in
``sweep.md``) so that figures repeat seed for seed; ``--set reproducible=false`` draws them
from OS entropy.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fedrec.common.config import RunConfig

__all__ = ["RECIPES", "run_sweep", "add_arguments", "run", "main"]

#: Named run-config overrides per privacy mode (measured on ML-100K; see the issue notes).
RECIPES: dict[str, dict[str, dict[str, object]]] = {
    "ml-100k": {
        "off": {
            "num-rounds": 100,
            "fraction-train": 0.2,
            "dim": 64,
            "loss": "bce",
            "n-negatives": 8,
            "l2": 0.01,
            "server-optimizer": "fedadam",
            "server-lr": 0.03,
            "eval-every": 20,
        },
        "off-features": {
            "algorithm": "features",
            "num-rounds": 1,
            "fraction-train": 1.0,
            "dim": 32,
            "eval-every": 1,
        },
        "local": {
            "algorithm": "features",
            "num-rounds": 1,
            "fraction-train": 1.0,
            "dim": 32,
            "eval-every": 1,
            "delta": 1e-5,
        },
        "local-sgd": {
            "num-rounds": 6,
            "fraction-train": 0.5,
            "dim": 8,
            "loss": "bce",
            "n-negatives": 4,
            "sample-rate": 1.0,
            "local-epochs": 10,
            "local-lr": 0.5,
            "max-grad-norm": 1.0,
            "server-lr": 24.0,
            "batch-size-norm": 85.0,
            "eval-every": 6,
            "delta": 1e-5,
        },
        "distributed": {
            "algorithm": "spectral",
            "num-rounds": 2,
            "fraction-train": 1.0,
            "dim": 8,
            "spectral-top-items": 300,
            "spectral-max-items": 100,
            "spectral-popularity-share": 0.2,
            "dropout-tolerance": 0.1,
            "eval-every": 2,
            "delta": 1e-5,
        },
        "distributed-features": {
            "algorithm": "features",
            "num-rounds": 1,
            "fraction-train": 1.0,
            "dim": 32,
            "eval-every": 1,
            "dropout-tolerance": 0.1,
            "delta": 1e-5,
        },
        "distributed-sgd": {
            "num-rounds": 50,
            "fraction-train": 0.1,
            "dim": 2,
            "loss": "bce",
            "n-negatives": 8,
            "sample-rate": 1.0,
            "local-epochs": 1,
            "local-lr": 0.5,
            "batch-size-norm": 10.0,
            "server-optimizer": "fedadam",
            "server-lr": 0.1,
            "dropout-tolerance": 0.1,
            "eval-every": 50,
            "delta": 1e-5,
        },
        "user": {
            "algorithm": "spectral",
            "num-rounds": 2,
            "fraction-train": 1.0,
            "dim": 8,
            "spectral-top-items": 300,
            "spectral-popularity-share": 0.2,
            "eval-every": 2,
            "delta": 1e-4,
        },
        "user-features": {
            "algorithm": "features",
            "num-rounds": 1,
            "fraction-train": 1.0,
            "dim": 32,
            "eval-every": 1,
            "delta": 1e-4,
        },
        "user-sgd": {
            "num-rounds": 20,
            "fraction-train": 0.5,
            "dim": 32,
            "loss": "bce",
            "n-negatives": 8,
            "l2": 0.01,
            "local-epochs": 10,
            "sample-rate": 1.0,
            "local-lr": 0.5,
            "batch-size-norm": 40.0,
            "server-optimizer": "fedadam",
            "server-lr": 0.05,
            "user-clip": 0.5,
            "eval-every": 20,
            "delta": 1e-4,
        },
    },
    "quick": {
        "off": {"num-rounds": 10, "fraction-train": 0.25, "eval-every": 10},
        "local": {"num-rounds": 10, "fraction-train": 0.25, "eval-every": 10},
        "distributed": {
            "num-rounds": 10,
            "fraction-train": 0.25,
            "local-epochs": 1,
            "server-optimizer": "fedadam",
            "server-lr": 0.05,
            "eval-every": 10,
        },
        "user": {
            "num-rounds": 10,
            "fraction-train": 0.5,
            "server-optimizer": "fedadam",
            "server-lr": 0.05,
            "eval-every": 10,
            "delta": 1e-4,
        },
        "distributed-spectral": {
            "algorithm": "spectral",
            "num-rounds": 2,
            "fraction-train": 1.0,
            "eval-every": 2,
            "spectral-top-items": 50,
        },
        "user-spectral": {
            "algorithm": "spectral",
            "num-rounds": 2,
            "fraction-train": 1.0,
            "eval-every": 2,
            "spectral-top-items": 50,
            "delta": 1e-4,
        },
        "local-features": {
            "algorithm": "features",
            "num-rounds": 1,
            "fraction-train": 1.0,
            "dim": 16,
            "eval-every": 1,
        },
        "off-features": {
            "algorithm": "features",
            "num-rounds": 1,
            "fraction-train": 1.0,
            "dim": 16,
            "eval-every": 1,
        },
    },
}

#: The unit of privacy and δ convention of each mode (for the table and the plot).
UNITS = {"local": "example", "distributed": "example", "user": "user"}


def privacy_of(label: str) -> str:
    """The privacy mode of a sweep label: ``distributed-sgd`` runs ``--privacy distributed``."""
    return label.split("-", 1)[0]


def unit_of(label: str) -> str:
    """The unit of privacy of a sweep label's mode."""
    return UNITS.get(privacy_of(label), "-")


def _run(cfg: RunConfig, engine: str) -> dict[str, object]:
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


def algorithm_recipe(name: str, modes: list[str]) -> dict[str, dict[str, object]]:
    """A recipe that runs algorithm ``name`` with its own defaults in every mode of ``modes``.

    Nothing is tuned: each run takes the algorithm's
    :attr:`~fedrec.common.algorithms.base.Algorithm.defaults`, then the run-config defaults,
    then ``--set``. The non-private reference is the same algorithm with privacy off.
    """
    from fedrec.common.algorithms.registry import algorithm_class

    algorithm_class(name)  # a clear error for an unknown name
    return {"off": {"algorithm": name}, **{m: {"algorithm": name} for m in modes}}


def _jobs(modes: list[str], epsilons: list[float]) -> list[tuple[str, float | None]]:
    """One seed's runs: the non-private model, then each label (at each ε unless it is off)."""
    jobs: list[tuple[str, float | None]] = [("off", None)]
    for mode in modes:
        if privacy_of(mode) == "off":  # a non-private reference: no ε to sweep
            jobs.append((mode, None))
        else:
            jobs.extend((mode, eps) for eps in epsilons)
    return jobs


def run_sweep(
    base: dict[str, object],
    *,
    recipe: str | None,
    epsilons: list[float],
    modes: list[str],
    engine: str = "loop",
    seeds: list[int] = (0,),
    algorithm: str | None = None,
    log=print,
) -> dict[str, object]:
    """Run the sweep; returns ``{"most_popular": …, "runs": [...], "refused": {...}}``.

    With ``algorithm``, every mode runs that algorithm with its defaults (no recipe); a mode
    the algorithm cannot run in is skipped, and the reason from the privacy modes' table is
    logged and kept under ``"refused"``.
    """
    from fedrec.common.algorithms.registry import algorithm_class
    from fedrec.common.privacy.mechanisms import refusal
    from fedrec.simulations.baselines import most_popular
    from fedrec.simulations.federation import federated_dataset

    refused: dict[str, str] = {}
    if algorithm is not None:
        recipes = algorithm_recipe(algorithm, modes)
        probe = RunConfig.from_flat({**base, "algorithm": algorithm, "privacy": "off"})
        for mode in modes:
            probe.privacy = privacy_of(mode)  # the table's verdict, before any run
            reason = refusal(algorithm_class(algorithm), probe)
            if reason is not None:
                refused[mode] = reason
                log(f"{mode}: skipped ({reason})")
        modes = [m for m in modes if m not in refused]
        recipe = f"algorithm {algorithm}"
    else:
        recipes = RECIPES[recipe]
    unknown = [m for m in modes if m not in recipes or m == "off"]
    if unknown:
        raise ValueError(
            f"no recipe {unknown} in {recipe!r}; choose from "
            f"{sorted(k for k in recipes if k != 'off')}"
        )
    cfg0 = RunConfig.from_flat(base)
    pop = most_popular(federated_dataset(cfg0).split)
    log(f"most-popular NDCG@10 {pop['ndcg@10']:.4f}")
    runs = []
    for seed in seeds:
        for mode, eps in _jobs(modes, epsilons):
            overrides = {"privacy": privacy_of(mode), "seed": seed}
            if eps is not None:
                overrides["epsilon"] = eps
            r = _run(RunConfig.from_flat({**base, **recipes[mode], **overrides}), engine)
            runs.append({"mode": mode, "epsilon": eps, "seed": seed, **r})
            label = mode if eps is None else f"{mode} eps {eps:g}"
            log(
                f"{label} seed {seed}: NDCG@10 "
                f"{r['quality'].get('ndcg@10', float('nan')):.4f} ({r['seconds']:.0f} s)"
            )
    return {
        "most_popular": pop,
        "runs": runs,
        "recipe": recipe,
        "engine": engine,
        "base": base,
        "refused": refused,
    }


def _groups(runs: list[dict]) -> dict[tuple[str, float | None], list[float]]:
    """NDCG@10 per (sweep label, ε), one value per seed."""
    groups: dict[tuple[str, float | None], list[float]] = {}
    for r in runs:
        groups.setdefault((r["mode"], r["epsilon"]), []).append(r["quality"].get("ndcg@10"))
    return groups


def _table(result: dict[str, object]) -> str:
    """``sweep.md``: medians over seeds beside most-popular, and the notes the runs need."""
    import statistics

    runs = result["runs"]
    pop = result["most_popular"]["ndcg@10"]
    deltas = {(r["mode"], r["epsilon"]): r["config"].get("delta") for r in runs}
    lines = [
        "| mode | unit | epsilon | delta | NDCG@10 (median over seeds) | seeds | "
        "beats most-popular |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| most-popular | - | - | - | {pop:.4f} | - | - |",
    ]
    for (mode, eps), vals in _groups(runs).items():
        med = statistics.median(vals)
        delta = "-" if eps is None else f"{deltas.get((mode, eps)):g}"
        unit = unit_of(mode) if eps is not None else "-"
        lines.append(
            f"| {mode} | {unit} | {'-' if eps is None else f'{eps:g}'}"
            f" | {delta} | {med:.4f} | {len(vals)} | {'yes' if med > pop else 'no'} |"
        )
    notes = []
    if any(str(r["config"].get("reproducible")).lower() == "true" for r in runs):
        notes.append(
            "Seeded runs (reproducible = true): the figures repeat exactly, and the "
            "runs are not private against anyone who knows the seed."
        )
    for mode, reason in (result.get("refused") or {}).items():
        notes.append(f"{mode}: not run ({reason}).")
    user_deltas = sorted(
        {
            float(r["config"]["delta"])
            for r in runs
            if r["epsilon"] is not None and privacy_of(r["mode"]) == "user"
        }
    )
    if user_deltas:
        notes.append(
            f"User-level δ = {', '.join(f'{d:g}' for d in user_deltas)} per user: each "
            "user's guarantee may fail with that probability; δ means little unless "
            "it is well below 1/(number of users)."
        )
    return "\n".join(lines + [part for note in notes for part in ("", note)]) + "\n"


def _plot(result: dict[str, object], path: Path) -> None:
    """``sweep.png``: NDCG@10 against ε per label; most-popular and non-private as lines."""
    import statistics

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _groups(result["runs"])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.axhline(
        result["most_popular"]["ndcg@10"], color="gray", linestyle="--", label="most-popular"
    )
    off = groups.get(("off", None))
    if off:
        ax.axhline(
            statistics.median(off), color="black", linestyle=":", label="non-private federated"
        )
    for mode in sorted(m for m, e in groups if e is None and m != "off"):
        ax.axhline(
            statistics.median(groups[(mode, None)]),
            color="tab:brown",
            linestyle="-.",
            label=f"{mode} (non-private)",
        )
    for mode in sorted({m for m, e in groups if e is not None}):
        pts = sorted(
            (e, statistics.median(v)) for (m, e), v in groups.items() if m == mode and e is not None
        )
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            marker="o",
            label=f"{mode} DP ({unit_of(mode)}-level)",
        )
    ax.set_xscale("log")
    epsilons = sorted({e for _, e in groups if e is not None})
    if epsilons:  # ticks at the swept ε, written plainly
        ax.set_xticks(epsilons, [f"{e:g}" for e in epsilons])
        ax.minorticks_off()
    ax.set_xlabel("epsilon (example-level: local, distributed; user-level: user)")
    ax.set_ylabel("NDCG@10")
    ax.set_title("Privacy-utility")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
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
        "--recipe",
        default=None,
        choices=sorted(RECIPES),
        help="default: ml-100k for MovieLens data, quick otherwise",
    )
    ap.add_argument(
        "--algorithm",
        default=None,
        metavar="NAME",
        help="run this registered algorithm with its own defaults in every mode "
        "(no recipe; modes it cannot run in are skipped with the reason)",
    )
    ap.add_argument("--epsilons", default="1,3,8")
    ap.add_argument("--modes", default="local,distributed,user")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--engine", choices=("loop", "flower"), default="loop")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default="runs/sweep")


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
        base[k] = v
    if args.algorithm and args.recipe:
        raise ValueError("give --algorithm or --recipe, not both")
    recipe = (
        None
        if args.algorithm
        else (args.recipe or ("ml-100k" if args.dataset.startswith("ml-") else "quick"))
    )
    result = run_sweep(
        base,
        recipe=recipe,
        epsilons=[float(e) for e in args.epsilons.split(",")],
        modes=args.modes.split(","),
        engine=args.engine,
        seeds=[int(s) for s in args.seeds.split(",")],
        algorithm=args.algorithm,
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
