"""Benchmark of population scale: seconds per round and peak memory at 10^3 - 10^5 devices.

``python -m fedrec.simulations.bench_scale [--devices 1000,10000,100000] [--rounds 3]
[--engines loop,flower] [--repeats 3] [--data-dir ../shared/datasets/ml-100k]`` runs, for
each engine and population, a user-level DP run (DP-FedAvg over the simulated secure sum; the
server adds the noise, clip 0.5, noise multiplier 1.0; MF with d = 32 and one local SGD step;
each device sampled with probability 10 %, at most 10,000 expected a round) in a fresh Python
process (δ = min(1e-5, 0.1/devices), well below 1/population), and prints:

* s/round: the median over the ``--rounds`` measured rounds of each run (before them one
  round, which builds devices and starts engines, and on Flower one after them, which also
  evaluates, are run but not measured), then the median over ``--repeats`` runs. The
  in-process transport runs the training rounds alone (no evaluation, nothing written);
  Flower's engine runs ``fedrec simulate``'s whole path (run directory, ledgers,
  checkpoints);
* peak RSS: the process's ``ru_maxrss``;
* peak PSS: the largest sum, over the process and its descendants (Flower's Ray services and
  workers), of their proportional set sizes (``/proc/PID/smaps_rollup``, sampled every 0.2 s):
  a page shared by k processes counts 1/k in each, so the sum is what the run holds of the
  machine's memory; for Flower's engine also the sum of their RSS, which counts shared pages
  once per process (``--by-process``: each process's PSS at the peak);
* NDCG@10 of the real users after the run (synthetic devices hold no test items; unmeasured
  time), the seconds taken to build the population (the devices' data), on Flower's engine
  those taken to enroll the devices (each one's key and the signed manifest), and the whole
  run's wall time;
* flower/loop: the ratio of the medians, where both ran.

Devices beyond the real users are synthetic (``--population``: resampled from the real users'
training data; with ``--data-dir`` the real users are ML-100K's, otherwise 1,000 synthetic
users of 1,682 items). A Flower run is skipped, with the estimate that decided it, when the
largest population it ran took more than ``--flower-budget`` seconds a round scaled linearly in
the cohort. Run one benchmark at a time: they measure wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported lazily at run time (the parent process never needs it)
    from fedrec.common.config import RunConfig

__all__ = ["scale_config", "add_arguments", "run", "main", "tree_memory_mb", "tree_rss_mb"]

#: The cohort: each device sampled with this probability ...
FRACTION = 0.1
#: ... unless that makes more than this many devices a round (expected).
MAX_COHORT = 10_000
#: Real users of the synthetic dataset without ``--data-dir`` (the rest of a population is
#: resampled from them).
SYNTHETIC_USERS = 1000


def scale_config(devices: int, rounds: int, data_dir: str = "") -> dict[str, object]:
    """The run configuration (kebab-case keys) of one benchmark point."""
    cfg: dict[str, object] = {
        "algorithm": "sgd",
        "privacy": "user",
        "num-rounds": rounds,
        "fraction-train": min(FRACTION, MAX_COHORT / devices),
        "user-clip": 0.5,
        "user-noise-multiplier": 1.0,
        "dim": 32,
        "local-epochs": 1.0,
        "sample-rate": 1.0,
        "eval-every": 10**6,
        "fraction-evaluate": 0.0,
        "population": devices,
        "delta": min(1e-5, 0.1 / devices),  # well below 1/population
    }
    if data_dir:
        cfg.update({"dataset": "ml-100k", "data-dir": data_dir})
    else:
        users = min(SYNTHETIC_USERS, devices)
        cfg.update({"dataset": "synthetic", "synthetic-users": users, "synthetic-items": 1682})
    return cfg


def _tree(root: int) -> list[int]:
    """Process ``root`` and all its descendants, from ``/proc``."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out


def _rollup(pid: int) -> dict[str, int]:
    """``Rss`` and ``Pss`` (kB) of one process from ``/proc/PID/smaps_rollup`` (empty: gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("Rss", "Pss"):
                    out[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return out


def tree_memory_mb(root: int) -> tuple[float, float]:
    """Resident memory (MB) of process ``root`` and its descendants: (RSS summed, PSS summed).

    The RSS sum counts a page shared by ``k`` processes ``k`` times (libraries, Ray's object
    store); the PSS sum (proportional set size, ``/proc/PID/smaps_rollup``) counts it once,
    split between them: what the process tree holds of the machine's memory.
    """
    rss = pss = 0
    for pid in _tree(root):
        roll = _rollup(pid)
        rss, pss = rss + roll.get("Rss", 0), pss + roll.get("Pss", 0)
    return rss / 1024, pss / 1024


def tree_rss_mb(root: int) -> float:
    """Resident memory (MB) of process ``root`` and all its descendants, summed."""
    return tree_memory_mb(root)[0]


class _TreePeak:
    """The largest :func:`tree_memory_mb` of this process (RSS and PSS), sampled in a thread.

    ``by_process`` keeps, at the PSS peak, each process's PSS and command line (where the
    memory is).
    """

    def __init__(self, every: float = 0.2) -> None:
        self.peak = self.pss = 0.0
        self.every = every
        self.by_process: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            procs = []
            for pid in _tree(os.getpid()):
                roll = _rollup(pid)
                if roll:
                    procs.append((pid, roll.get("Rss", 0) / 1024, roll.get("Pss", 0) / 1024))
            self.peak = max(self.peak, sum(p[1] for p in procs))
            pss = sum(p[2] for p in procs)
            if pss > self.pss:
                self.pss = pss
                self.by_process = sorted(((p[2], _name(p[0])) for p in procs), reverse=True)
            self._stop.wait(self.every)

    def __enter__(self) -> _TreePeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _name(pid: int) -> str:
    """A process's command line, shortened (``?`` once it has gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(a.decode(errors="replace") for a in args if a)
    return text[:80]


def child(
    engine: str, devices: int, rounds: int, data_dir: str, workers: int | None = None
) -> dict[str, object]:
    """Run one benchmark point in this process; what the parent prints (JSON-able).

    ``workers``: Flower's cohort workers (``None``: ``fedrec simulate``'s default, one per CPU).
    """
    import torch

    from fedrec.common.config import RunConfig

    torch.set_num_threads(1)
    cfg = RunConfig.from_flat(scale_config(devices, rounds, data_dir))
    records: list[dict[str, object]] = []
    enrolled = float("nan")
    with tempfile.TemporaryDirectory() as tmp, _TreePeak() as tree:
        cfg = cfg.replace(run_dir=str(Path(tmp) / "run"))
        t0 = time.perf_counter()
        if engine == "loop":
            records = _loop_rounds(cfg)
        else:
            records, enrolled = _flower_rounds(cfg, workers)
        wall = time.perf_counter() - t0
    seconds = [float(r["seconds"]) for r in records]  # type: ignore[arg-type]
    sampled = [int(r.get("sampled", 0) or 0) for r in records]  # type: ignore[call-overload]
    measured = slice(1, None if engine == "loop" else -1)  # Flower's last round evaluates
    return {
        "seconds": seconds,
        "sampled": sampled,
        "measured": seconds[measured] or seconds,
        "cohort": statistics.mean(sampled[measured] or sampled),
        "wall": wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "tree_peak_mb": tree.peak,
        "tree_pss_mb": tree.pss,
        "ndcg10": float(dict(records[-1].get("eval") or {}).get("ndcg@10", float("nan"))),  # type: ignore[call-overload]
        "population_seconds": float(records[-1].get("population_seconds", float("nan"))),  # type: ignore[arg-type]
        "enroll_seconds": enrolled,
        "pss_by_process": [[round(mb, 1), name] for mb, name in tree.by_process[:12]],
    }


def _flower_rounds(cfg: RunConfig, workers: int | None) -> tuple[list[dict[str, object]], float]:
    """``fedrec simulate``'s rounds on Flower's engine, and the seconds its enrolment took.

    The population is built first, timed (the run uses this process's cached copy); the
    enrolment (each device's key and the signed manifest) is the time between the run
    directory's ``config.json`` and ``manifest.json``, written just before and after it.
    """
    from fedrec.simulations.federation import federated_dataset
    from fedrec.simulations.runner import simulate

    records: list[dict[str, object]] = []
    t0 = time.perf_counter()
    federated_dataset(cfg)
    built = time.perf_counter() - t0
    simulate(cfg, on_round=records.append, reference=False, workers=workers)
    run = Path(cfg.run_dir)
    try:
        enrolled = (run / "manifest.json").stat().st_mtime - (run / "config.json").stat().st_mtime
    except OSError:
        enrolled = float("nan")
    records[-1]["population_seconds"] = built
    return records, enrolled


def _loop_rounds(cfg: object) -> list[dict[str, object]]:
    """The training rounds of the in-process transport (no evaluation, nothing written)."""
    import numpy as np

    from fedrec.server.coordinator import make_coordinator
    from fedrec.server.round_loop import run_round
    from fedrec.simulations.federation import federated_dataset
    from fedrec.simulations.in_process import InProcessTransport
    from fedrec.simulations.loop import _Devices

    t0 = time.perf_counter()
    fed = federated_dataset(cfg)  # type: ignore[arg-type]
    built = time.perf_counter() - t0
    coord = make_coordinator(cfg, fed.n_items, ledger_dir=None)
    devices = _Devices(fed, cfg, None)
    transport = InProcessTransport(
        fed.n_users, devices.get, devices.done, rng=np.random.default_rng([cfg.seed, 7])
    )
    records = []
    for rnd in range(1, cfg.num_rounds + 1):  # type: ignore[attr-defined]
        t0 = time.perf_counter()
        record = run_round(coord, transport, rnd).to_dict()
        record["seconds"] = time.perf_counter() - t0
        records.append(record)
    # unmeasured: the real users' quality (synthetic devices hold no test items)
    sums = [devices.get(u).evaluate(coord.state, (10,)) for u in range(fed.n_real_users)]
    records[-1]["eval"] = coord.combine_evaluation([x for x in sums if x])
    records[-1]["population_seconds"] = built
    return records


def measure(
    engine: str, devices: int, rounds: int, data_dir: str, workers: int | None = None
) -> dict[str, object]:
    """One benchmark point in a fresh Python process (its own peak memory)."""
    spec = json.dumps([engine, devices, rounds, data_dir, workers])
    out = subprocess.run(
        [sys.executable, "-m", "fedrec.simulations.bench_scale", "--child", spec],
        capture_output=True,
        text=True,
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{engine} at {devices} devices failed: {' | '.join(tail)}")
    return json.loads(lines[-1])


def _positive_list(text: str) -> list[int]:
    try:
        values = [int(float(v)) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated whole numbers >= 1 like 1000,10000, got {text!r}"
        )
    return values


def _engines(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names or any(n not in ("loop", "flower") for n in names):
        raise argparse.ArgumentTypeError(
            f"engines are loop (in-process) and flower, comma-separated, got {text!r}"
        )
    return names


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Options of ``python -m fedrec.simulations.bench_scale`` and ``fedrec bench scale``."""
    ap.add_argument(
        "--devices",
        type=_positive_list,
        default=[1000, 10_000, 100_000],
        help="comma-separated populations (default 1000,10000,100000)",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="measured rounds per run (default 3; one before them, and on Flower one after "
        "them, run unmeasured)",
    )
    ap.add_argument(
        "--engines",
        type=_engines,
        default=["loop", "flower"],
        help="loop (the in-process transport) and/or flower (default both)",
    )
    ap.add_argument("--repeats", type=int, default=3, help="runs per point (median; default 3)")
    ap.add_argument(
        "--data-dir",
        default="",
        help="ML-100K's folder: its users are the real ones (default: 1,000 synthetic users)",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=None,
        help="Flower's cohort workers (default: one per CPU, as `fedrec simulate`)",
    )
    ap.add_argument(
        "--by-process",
        action="store_true",
        help="also print each process's PSS at the peak (where the memory is)",
    )
    ap.add_argument(
        "--flower-budget",
        type=float,
        default=120.0,
        help="skip a Flower point estimated slower than this many s/round (default 120)",
    )


def _point(engine: str, devices: int, args: argparse.Namespace) -> dict[str, float]:
    """Medians over ``--repeats`` fresh processes of one engine at one population."""
    rounds = args.rounds + (1 if engine == "loop" else 2)  # the unmeasured rounds
    workers = getattr(args, "workers", None)
    runs = [measure(engine, devices, rounds, args.data_dir, workers) for _ in range(args.repeats)]

    def median(key: str) -> float:
        return statistics.median(float(r[key]) for r in runs)  # type: ignore[arg-type]

    return {
        "s/round": statistics.median(statistics.median(r["measured"]) for r in runs),  # type: ignore[arg-type]
        "peak": median("peak_rss_mb"),
        "tree": median("tree_peak_mb"),
        "pss": median("tree_pss_mb"),
        "ndcg": median("ndcg10"),
        "build": median("population_seconds"),
        "enroll": median("enroll_seconds"),
        "wall": median("wall"),
        "cohort": median("cohort"),
        "by_process": max(runs, key=lambda r: float(r["tree_pss_mb"]))["pss_by_process"],  # type: ignore[arg-type]
    }


def run(args: argparse.Namespace) -> int:
    """Measure every point and print the table."""
    if args.rounds < 1 or args.repeats < 1:
        raise SystemExit("--rounds and --repeats must be at least 1")
    data = f"ML-100K users ({args.data_dir})" if args.data_dir else "up to 1,000 synthetic users"
    print(
        f"user-level DP, secure sum, cohort {FRACTION:.0%} (at most {MAX_COHORT:,}); {data}; "
        f"median s/round of {args.rounds} rounds, median of {args.repeats} fresh processes"
    )
    print(
        f"  {'engine':7s} {'devices':>8s} {'cohort':>7s} {'s/round':>9s} {'peak RSS':>10s} "
        f"{'peak PSS':>10s} {'NDCG@10':>8s}  (PSS summed over all processes; NDCG@10 of the "
        "real users)"
    )
    done: dict[tuple[str, int], dict[str, float]] = {}
    for devices in args.devices:
        for engine in args.engines:
            skip = _too_slow(engine, devices, done, args.flower_budget)
            if skip:
                print(f"  {engine:7s} {devices:8,d}  skipped ({skip})")
                continue
            point = done[(engine, devices)] = _point(engine, devices, args)
            memory = f"{point['peak']:7.0f} MB {point['pss']:7.0f} MB {point['ndcg']:8.4f}"
            if engine == "flower":
                memory += f"  (RSS summed {point['tree']:.0f} MB)"
            print(
                f"  {engine:7s} {devices:8,d} {point['cohort']:7.0f} "
                f"{point['s/round']:9.3f} {memory}"
            )
            built = f"      population (devices' data) built in {point['build']:.1f} s"
            if engine == "flower":
                built += f", devices enrolled (keys, manifest) in {point['enroll']:.1f} s"
            print(f"{built}; {point['wall']:.0f} s the whole run")
            if args.by_process:
                for mb, name in point["by_process"]:  # type: ignore[union-attr]
                    print(f"      {mb:8.1f} MB PSS  {name}")
        if ("loop", devices) in done and ("flower", devices) in done:
            ratio = done[("flower", devices)]["s/round"] / done[("loop", devices)]["s/round"]
            print(f"  flower/loop at {devices:,} devices: {ratio:.2f}x")
    return 0


def _too_slow(
    engine: str, devices: int, done: dict[tuple[str, int], dict[str, float]], budget: float
) -> str:
    """Why a Flower point is skipped (empty: run it): the largest measured one, scaled."""
    if engine != "flower":
        return ""
    measured = [(d, p) for (e, d), p in done.items() if e == "flower" and d < devices]
    if not measured:
        return ""
    d, p = max(measured)
    estimate = p["s/round"] * min(FRACTION * devices, MAX_COHORT) / max(1.0, p["cohort"])
    if estimate <= budget:
        return ""
    return f"too slow: est. {estimate:.0f} s/round from {p['s/round']:.1f} s at {d:,} devices"


def main(argv: list[str] | None = None) -> None:
    """Print the scale figures (or, with ``--child``, measure one point as JSON)."""
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--child"]:
        engine, devices, rounds, data_dir, workers = json.loads(argv[1])
        print(json.dumps(child(engine, int(devices), int(rounds), str(data_dir), workers)))
        return
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(ap)
    raise SystemExit(run(ap.parse_args(argv)))


if __name__ == "__main__":
    main()
