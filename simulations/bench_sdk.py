"""Benchmark of the client SDK: ``recommend(10)`` latency, import time, resident memory.

Run ``python -m fedrec.simulations.bench_sdk`` (``--help`` for options). For each catalog size
(1,682 / 100,000 / 1,000,000 items, d = 32 by default) it opens a fresh store, gives it a
random item table and catalog, records a short history, stores a user embedding (as a trained
device has), and times ``FedRecClient.recommend(10)`` with the default options (seen items
excluded), then with every re-ranking option on (MMR λ = 0.3, a freshness boost, an
availability predicate, explanations). It then measures, each in a fresh interpreter, the time
to ``import fedrec.client.sdk`` and the resident set size (VmRSS) after the import, after
opening a store with a 1,682-item table, and after importing the training stack (torch,
Opacus), which the SDK loads only on the first ``train_round``.

Targets (issue 6): p50 < 1 ms at 1,682 items, < 10 ms at 100,000, < 100 ms at 1,000,000.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["bench_recommend", "bench_import", "add_arguments", "run", "main"]

TARGETS_MS = {1682: 1.0, 100_000: 10.0, 1_000_000: 100.0}


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _make_client(folder: Path, n_items: int, dim: int, seed: int):
    from fedrec.client.sdk import Catalog, Event, FedRecClient

    rng = np.random.default_rng(seed)
    ids = tuple(f"item-{i}" for i in range(n_items))
    published = {
        ids[i]: float(t)
        for i, t in zip(
            range(0, n_items, max(1, n_items // 1000)),
            rng.uniform(0, 1e6, size=n_items),
            strict=False,
        )
    }
    table = {
        "item_embedding.weight": rng.normal(scale=0.1, size=(n_items, dim)).astype(np.float32),
        "item_bias.weight": rng.normal(scale=0.01, size=(n_items, 1)).astype(np.float32),
    }
    path = folder / f"bench-{n_items}.db"
    client = FedRecClient.open(
        path, catalog=Catalog(ids, published_at=published), sign_ledger=False
    )
    client.receive_model(table)
    history = rng.choice(n_items, size=min(50, n_items // 2), replace=False)
    client.record_many(Event("purchase", ids[i], 1e6 + k) for k, i in enumerate(history))
    client.store.put_arrays(
        "user_state", {"user_embedding": rng.normal(scale=0.1, size=(1, dim)).astype(np.float32)}
    )
    client.close()
    return FedRecClient.open(path)


def bench_recommend(
    n_items: int, *, dim: int = 32, repeats: int | None = None, seed: int = 0
) -> dict[str, float]:
    """Latency of ``recommend(10)`` (seconds) on an ``n_items`` catalog."""
    from fedrec.client.sdk import Freshness

    repeats = repeats or (2000 if n_items <= 10_000 else 200 if n_items <= 200_000 else 40)
    with tempfile.TemporaryDirectory() as tmp:
        client = _make_client(Path(tmp), n_items, dim, seed)
        try:
            status = client.recommend(10).status
            out: dict[str, float] = {"n_items": n_items, "repeats": repeats}
            runs = {
                "plain": lambda: client.recommend(10),
                "all_options": lambda: client.recommend(
                    10,
                    diversity=0.3,
                    explain=True,
                    freshness=Freshness(weight=0.3, half_life=86400.0, now=1e6),
                    available=lambda item: not item.endswith("7"),
                ),
            }
            for name, call in runs.items():
                for _ in range(min(20, repeats)):
                    call()
                times = []
                for _ in range(repeats if name == "plain" else max(10, repeats // 4)):
                    t = time.perf_counter()
                    call()
                    times.append(time.perf_counter() - t)
                out[f"{name}_p50"] = statistics.median(times)
                out[f"{name}_p99"] = _percentile(times, 99)
            out["status"] = status  # type: ignore[assignment]
            return out
        finally:
            client.close()


_CHILD = r"""
import json, sys, time
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out = {"rss_start_mb": rss_mb()}
t = time.perf_counter()
import fedrec.client.sdk as sdk
out["import_s"] = time.perf_counter() - t
out["rss_after_import_mb"] = rss_mb()
out["heavy_modules"] = sorted({m.split(".")[0] for m in sys.modules
                               if m.split(".")[0] in ("torch", "opacus", "ray", "scipy", "flwr")})
import numpy as np, tempfile, pathlib
rng = np.random.default_rng(0)
with tempfile.TemporaryDirectory() as tmp:
    path = pathlib.Path(tmp) / "d.db"
    c = sdk.FedRecClient.open(path, catalog=[str(i) for i in range(1682)], sign_ledger=False)
    c.receive_model({"item_embedding.weight": rng.normal(size=(1682, 32)).astype(np.float32),
                     "item_bias.weight": np.zeros((1682, 1), np.float32)})
    c.close()
    t = time.perf_counter()
    c = sdk.FedRecClient.open(path)
    out["open_s"] = time.perf_counter() - t
    c.recommend(10)
    out["rss_after_open_mb"] = rss_mb()
    if "--training" in sys.argv:
        t = time.perf_counter()
        import fedrec.client.device, fedrec.common.audit.ledger
        out["training_import_s"] = time.perf_counter() - t
        out["rss_after_training_import_mb"] = rss_mb()
    c.close()
print(json.dumps(out))
"""


def bench_import(*, repeats: int = 3, training: bool = True) -> dict[str, float]:
    """Import time and RSS of the SDK, each run in a fresh interpreter (medians)."""
    runs = []
    for k in range(repeats):
        args = [sys.executable, "-c", _CHILD] + (["--training"] if training and k == 0 else [])
        done = subprocess.run(args, check=True, capture_output=True, text=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    out: dict[str, float] = {}
    for key in runs[0]:
        values = [r[key] for r in runs if key in r]
        out[key] = values[0] if isinstance(values[0], list) else statistics.median(values)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m fedrec.simulations.bench_sdk`` and ``fedrec bench sdk``."""
    parser.add_argument("--sizes", type=int, nargs="+", default=[1682, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--no-training-import", action="store_true", help="skip timing the torch/Opacus import"
    )


def run(args: argparse.Namespace) -> int:
    """Print the benchmark table; exit status 1 when a latency target is missed."""
    import os

    print(
        f"fedrec client SDK benchmark (python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, d={args.dim})"
    )
    print(
        f"{'items':>10} {'p50 ms':>8} {'p99 ms':>8} {'target':>8} "
        f"{'all-opts p50':>13} {'all-opts p99':>13}  status"
    )
    ok = True
    for n in args.sizes:
        r = bench_recommend(n, dim=args.dim, repeats=args.repeats)
        target = TARGETS_MS.get(n)
        p50 = r["plain_p50"] * 1e3
        met = "" if target is None else ("ok" if p50 < target else "MISSED")
        ok = ok and met != "MISSED"
        print(
            f"{n:>10} {p50:>8.3f} {r['plain_p99'] * 1e3:>8.3f} "
            f"{'<' + format(target, 'g') if target else '-':>8} "
            f"{r['all_options_p50'] * 1e3:>13.3f} {r['all_options_p99'] * 1e3:>13.3f}  "
            f"{r['status']} {met}"
        )
    imp = bench_import(training=not args.no_training_import)
    print(
        f"import fedrec.client.sdk: {imp['import_s'] * 1e3:.0f} ms (fresh interpreter, "
        f"median of 3); loads {imp['heavy_modules'] or 'no torch/opacus/scipy/flwr/ray'}"
    )
    print(f"open a store (1,682-item table): {imp['open_s'] * 1e3:.1f} ms")
    print(
        f"RSS: interpreter {imp['rss_start_mb']:.0f} MB, after import "
        f"{imp['rss_after_import_mb']:.0f} MB, after open + recommend "
        f"{imp['rss_after_open_mb']:.0f} MB"
    )
    if "training_import_s" in imp:
        print(
            f"first train_round also imports torch + Opacus: "
            f"{imp['training_import_s']:.1f} s, RSS then "
            f"{imp['rss_after_training_import_mb']:.0f} MB"
        )
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """Print the benchmark table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
