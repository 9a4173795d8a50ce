"""Development shapes: the defaults, checked on data of several shapes, never one.

``fedrec shapes --data-dir ../shared/datasets/ml-100k``

builds each shape of :data:`SHAPES` and prints one table per shape: most-popular, centralized
MF (:func:`~fedrec.simulations.baselines.centralized_mf`, its small search on a validation
slice), the non-private federated run of the algorithm (``warm-sgd`` by default) and its
private runs at ε 8 in the modes where the server sees only sums (``distributed``,
example-level, δ 1e-5; ``user``, user-level, δ = :func:`~fedrec.simulations.sweep.user_delta`
of the population), each with NDCG@10 on DESIGN.md's temporal split, whether each private
mode beats most-popular and whether the non-private run reaches 0.9 × centralized MF. Every
run takes the algorithm's own defaults: nothing is set per shape.

The shapes (sizes of the full version; ``--small`` runs the smaller versions the slow test
uses):

* ``ml-100k-heavy``: the ML-100K users with at least 200 interactions (149 users);
* ``ml-100k-light``: the ML-100K users with at most 40 interactions (305 users);
* ``items-10k``: synthetic data with a 10,000-item catalog (1,000 users; small: 400);
* ``heavy-tail``: synthetic data with lognormal activity of log-scale spread 1.5 and mean 100
  over 5,000 items, so that some devices hold 2,000+ interactions (600 users, 4 of them
  with 2,000+; small: 300 users, 1; the build checks that one does);
* ``population-10k``: the synthetic default catalog (400 items) over 10,000 devices
  (small: 2,000).

The ML-100K subsets and the heavy-tailed data are written as event logs under
``OUT/data/`` and read back with the ``events`` loader (their catalog is the items they
hold); the others are ``dataset synthetic`` run configs. Figures are seeded
(``reproducible = true``); ``--seeds 0,1,2`` runs each shape once per seed (the training's
and, for the synthetic shapes, the data's) and reports the median of each figure with the
seeds' own values beside it.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "Shape",
    "SHAPES",
    "build",
    "measure_shape",
    "median_measure",
    "shape_table",
    "add_arguments",
    "run",
]

#: the fewest interactions a device of the heavy-tailed shape must hold (the issue's 2,000+)
HEAVY_DEVICE = 2000


@dataclass(frozen=True)
class Shape:
    """A development shape: how to build its data, full size and small."""

    name: str
    description: str
    #: (output folder, ML-100K folder, small) -> the run-config keys of its data
    make: Callable[[Path, str, bool], dict[str, object]]
    needs_ml100k: bool = False


def _events(data, path: Path) -> dict[str, object]:
    """Write interactions as an event log; the run-config keys that read it back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fh.write("user,item,timestamp\n")
        for u, i, t in zip(data.user, data.item, data.timestamp, strict=True):
            fh.write(f"u{u:06d},i{i:06d},{t}\n")
    return {
        "dataset": "events",
        "data-dir": str(path),
        "events-user-col": "user",
        "events-item-col": "item",
        "events-timestamp-col": "timestamp",
    }


def _ml100k_subset(keep: Callable[[np.ndarray], np.ndarray], tag: str):
    def make(out: Path, ml_dir: str, small: bool) -> dict[str, object]:
        from fedrec.common.data.loaders import load_dataset

        if not ml_dir:
            raise ValueError(f"shape {tag} needs --data-dir (the ml-100k folder)")
        data = load_dataset("ml-100k", ml_dir)
        counts = np.bincount(data.user, minlength=len(data.user_map))
        mask = keep(counts)[data.user]
        sub = type(data)(
            data.user[mask],
            data.item[mask],
            data.weight[mask],
            data.timestamp[mask],
            data.user_map,
            data.item_map,
            name=tag,
        )
        return _events(sub, out / "data" / f"{tag}.csv")

    return make


def _items_10k(out: Path, ml_dir: str, small: bool) -> dict[str, object]:
    users = 400 if small else 1000
    return {"dataset": "synthetic", "synthetic-users": users, "synthetic-items": 10_000}


def _heavy_tail(out: Path, ml_dir: str, small: bool) -> dict[str, object]:
    from fedrec.common.data.synthetic import generate_synthetic

    users = 300 if small else 600
    data = generate_synthetic(
        n_users=users, n_items=5000, mean_interactions=100, activity_sigma=1.5, seed=0
    )
    most = int(np.bincount(data.user).max())
    if most < HEAVY_DEVICE:  # the shape is defined by its heavy devices
        raise RuntimeError(f"heavy-tail: the heaviest device holds {most} < {HEAVY_DEVICE}")
    return _events(data, out / "data" / f"heavy-tail-{users}.csv")


def _population(out: Path, ml_dir: str, small: bool) -> dict[str, object]:
    return {"dataset": "synthetic", "synthetic-users": 2000 if small else 10_000}


#: The development shapes, in the order the tables are printed.
SHAPES: dict[str, Shape] = {
    s.name: s
    for s in (
        Shape(
            "ml-100k-heavy",
            "ML-100K users with >= 200 interactions",
            _ml100k_subset(lambda c: c >= 200, "ml-100k-heavy"),
            needs_ml100k=True,
        ),
        Shape(
            "ml-100k-light",
            "ML-100K users with <= 40 interactions",
            _ml100k_subset(lambda c: c <= 40, "ml-100k-light"),
            needs_ml100k=True,
        ),
        Shape("items-10k", "synthetic, 10,000-item catalog", _items_10k),
        Shape(
            "heavy-tail",
            "synthetic, lognormal activity (sigma 1.5): devices with 2,000+ interactions",
            _heavy_tail,
        ),
        Shape("population-10k", "synthetic default catalog, 10,000 devices", _population),
    )
}


def build(shape: Shape, out: Path, ml_dir: str = "", *, small: bool = False) -> dict:
    """The shape's data as run-config keys (writing its event log where it needs one)."""
    return {**shape.make(out, ml_dir, small), "reproducible": True}


def _sizes(fed) -> dict[str, int]:
    per_device = np.bincount(fed.data.user, minlength=fed.n_real_users)
    return {
        "devices": int(fed.n_users),
        "items": int(fed.n_items),
        "interactions": int(len(fed.data.user)),
        "heaviest_device": int(per_device.max()),
        "devices_2000_plus": int((per_device >= HEAVY_DEVICE).sum()),
    }


def measure_shape(
    base: dict[str, object],
    *,
    algorithm: str = "warm-sgd",
    epsilon: float = 8.0,
    centralized: bool = True,
    search: bool = True,
    engine: str = "loop",
    modes: tuple[str, ...] = ("off", "distributed", "user"),
    log: Callable[[str], None] = print,
) -> dict[str, object]:
    """Most-popular, centralized MF and ``algorithm`` in ``modes`` (private ones at ``epsilon``).

    Every federated run takes ``algorithm``'s defaults; the user-level run's δ is
    :func:`~fedrec.simulations.sweep.user_delta` of the population.
    """
    from fedrec.common.config import RunConfig
    from fedrec.simulations.baselines import centralized_mf, most_popular
    from fedrec.simulations.federation import federated_dataset
    from fedrec.simulations.sweep import run_once, user_delta

    t0 = time.perf_counter()
    fed = federated_dataset(RunConfig.from_flat(base))
    out: dict[str, object] = {"sizes": _sizes(fed), "algorithm": algorithm, "epsilon": epsilon}
    out["most_popular"] = most_popular(fed.split)["ndcg@10"]
    if centralized:
        out["centralized_mf"] = centralized_mf(fed.split, search=search)["metrics"]["ndcg@10"]
    runs = {}
    for mode in modes:
        keys: dict[str, object] = {**base, "algorithm": algorithm, "privacy": mode}
        if mode != "off":
            keys["epsilon"] = epsilon
        if mode == "user":
            keys["delta"] = user_delta(fed.n_users)
        r = run_once(RunConfig.from_flat(keys), engine)
        runs[mode] = {
            "ndcg@10": r["quality"].get("ndcg@10", float("nan")),
            "delta": r["config"]["delta"] if mode != "off" else None,
            "seconds": r["seconds"],
        }
        log(f"  {algorithm} {mode}: NDCG@10 {runs[mode]['ndcg@10']:.4f} ({r['seconds']:.0f} s)")
    out["runs"] = runs
    out["seconds"] = time.perf_counter() - t0
    return out


def median_measure(per_seed: dict[int, dict[str, object]]) -> dict[str, object]:
    """One shape's :func:`measure_shape` results of several seeds as their medians.

    Every NDCG@10 (most-popular, centralized MF, each run) is the median over the seeds; the
    sizes are the first seed's, the seconds the sum; ``seeds`` keeps each seed's figures.
    """
    ms = list(per_seed.values())
    first = ms[0]
    out: dict[str, object] = {**first, "seconds": float(sum(m["seconds"] for m in ms))}
    out["most_popular"] = float(np.median([m["most_popular"] for m in ms]))
    if first.get("centralized_mf") is not None:
        out["centralized_mf"] = float(np.median([m["centralized_mf"] for m in ms]))
    out["runs"] = {
        mode: {**r, "ndcg@10": float(np.median([m["runs"][mode]["ndcg@10"] for m in ms]))}
        for mode, r in first["runs"].items()
    }
    out["seeds"] = {
        seed: {
            "most_popular": m["most_popular"],
            "centralized_mf": m.get("centralized_mf"),
            **{mode: r["ndcg@10"] for mode, r in m["runs"].items()},
        }
        for seed, m in per_seed.items()
    }
    return out


def verdicts(m: dict[str, object]) -> dict[str, bool]:
    """Whether each private mode beats most-popular; non-private >= 0.9 x centralized MF."""
    pop = m["most_popular"]
    out = {
        f"{mode} beats most-popular": m["runs"][mode]["ndcg@10"] > pop
        for mode in ("distributed", "user")
    }
    if m.get("centralized_mf") is not None:
        out["non-private >= 0.9 x centralized MF"] = (
            m["runs"]["off"]["ndcg@10"] >= 0.9 * m["centralized_mf"]
        )
    return out


def shape_table(name: str, m: dict[str, object]) -> str:
    """One shape's Markdown table (a heading, the sizes, one row per model).

    With several seeds (:func:`median_measure`) each figure is the median and a last column
    gives the seeds' own values.
    """
    s = m["sizes"]
    pop, alg, eps = m["most_popular"], m["algorithm"], m["epsilon"]
    mf = m.get("centralized_mf")
    seeds = m.get("seeds") or {}
    many = len(seeds) > 1

    def row(model: str, privacy: str, value: float, check: str, key: str) -> str:
        cells = [model, privacy, f"{value:.4f}", check]
        if many:
            cells.append(" / ".join(f"{v[key]:.4f}" for v in seeds.values()))
        return "| " + " | ".join(cells) + " |"

    head = ["model", "privacy", "NDCG@10" + (" (median)" if many else ""), "check"]
    head += [f"seeds {', '.join(str(k) for k in seeds)}"] if many else []
    lines = [
        f"### {name}: {SHAPES[name].description if name in SHAPES else ''}",
        "",
        f"{s['devices']:,} devices, {s['items']:,} items, {s['interactions']:,} interactions; "
        f"heaviest device {s['heaviest_device']:,} ({s['devices_2000_plus']} with 2,000+); "
        f"{m['seconds']:.0f} s.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + " --- |" * len(head),
        row("most-popular", "-", pop, "-", "most_popular"),
    ]
    if mf is not None:
        lines.append(row("centralized MF", "-", mf, "-", "centralized_mf"))
    off = m["runs"]["off"]["ndcg@10"]
    check = (
        "-"
        if mf is None
        else (f"{'yes' if off >= 0.9 * mf else 'NO'}: {off / mf:.2f} x centralized MF (>= 0.9)")
    )
    lines.append(row(alg, "off (non-private federated)", off, check, "off"))
    for mode, unit in (("distributed", "example"), ("user", "user")):
        r = m["runs"][mode]
        gain = (r["ndcg@10"] / pop - 1) * 100 if pop > 0 else float("nan")
        beats = "beats" if r["ndcg@10"] > pop else "does NOT beat"
        verdict = f"{beats} most-popular ({gain:+.1f}%)"
        privacy = f"{mode}, ε {eps:g} ({unit}-level, δ {r['delta']:g})"
        lines.append(row(alg, privacy, r["ndcg@10"], verdict, mode))
    return "\n".join(lines) + "\n"


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of ``fedrec shapes`` (and ``python -m fedrec.simulations.shapes``)."""
    ap.add_argument(
        "--shapes", default=",".join(SHAPES), help="comma-separated, of: " + ", ".join(SHAPES)
    )
    ap.add_argument("--data-dir", default="", help="the ml-100k folder (for the ML-100K subsets)")
    ap.add_argument("--algorithm", default="warm-sgd")
    ap.add_argument("--epsilon", type=float, default=8.0)
    ap.add_argument("--small", action="store_true", help="the small versions (the slow test's)")
    ap.add_argument("--no-centralized", action="store_true", help="skip centralized MF")
    ap.add_argument("--no-search", action="store_true", help="centralized MF without its search")
    ap.add_argument("--engine", choices=("loop", "flower"), default="loop")
    ap.add_argument(
        "--seeds", default="0", help="comma-separated seeds; several: medians (default 0)"
    )
    ap.add_argument("--out", default="runs/shapes")


def run(args: argparse.Namespace) -> int:
    """Build and measure the shapes; print a table per shape, write shapes.md and shapes.json."""
    import torch

    torch.set_num_threads(1)
    names = [n.strip() for n in args.shapes.split(",") if n.strip()]
    try:
        seeds = [int(x) for x in str(args.seeds).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--seeds: comma-separated integers, not {args.seeds!r}") from None
    if not seeds:
        raise ValueError("--seeds: give at least one seed")
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        raise ValueError(f"--shapes: unknown shape(s) {unknown}; choose from {', '.join(SHAPES)}")
    out = Path(args.out)
    results, tables = {}, []
    for name in names:
        shape = SHAPES[name]
        if shape.needs_ml100k and not args.data_dir:
            print(f"{name}: skipped (needs --data-dir, the ml-100k folder)")
            continue
        print(f"{name}: {shape.description}", flush=True)
        base = build(shape, out, args.data_dir, small=args.small)
        per_seed = {}
        for seed in seeds:
            if len(seeds) > 1:
                print(f" seed {seed}", flush=True)
            per_seed[seed] = measure_shape(
                {**base, "seed": seed},
                algorithm=args.algorithm,
                epsilon=args.epsilon,
                centralized=not args.no_centralized,
                search=not args.no_search,
                engine=args.engine,
                log=lambda msg: print(msg, flush=True),
            )
        m = median_measure(per_seed)
        results[name] = {**m, "verdicts": verdicts(m), "config": base}
        tables.append(shape_table(name, m))
        print(tables[-1], flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "shapes.md").write_text("\n".join(tables))
    (out / "shapes.json").write_text(json.dumps(results, indent=2, default=float))
    print("written", out / "shapes.md", out / "shapes.json")
    return 0


def main(argv: list[str] | None = None) -> None:
    """Command line of the development shapes."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(ap)
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
