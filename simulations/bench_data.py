"""Benchmark of the data layer: synthetic generation and dataset loading times.

Run ``python -m fedrec.simulations.bench_data [--data-dir ../shared/datasets/ml-100k]``. It
prints the median of ``--repeats`` runs (after one warm-up) of:

* ``generate_synthetic`` with 1,000 users × 500 items (target: < 1 s) and 20,000 users × 500
  items (target: < 10 s);
* ``load_ml100k`` on ``--data-dir`` with a warm file cache (target: < 1 s), when given.

These targets used to be asserted in tests; timing assertions fail on a busy machine without
anything being wrong, so they are measured here instead.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

__all__ = ["median_seconds", "add_arguments", "run", "main"]

TARGETS_S = {"synthetic 1,000 x 500": 1.0, "synthetic 20,000 x 500": 10.0, "load ml-100k": 1.0}


def median_seconds(fn: Callable[[], object], repeats: int, *, warmup: bool = True) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after one warm-up call if asked."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number at least 1, got {text!r}")
    return value


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Options of ``python -m fedrec.simulations.bench_data`` and ``fedrec bench data``."""
    ap.add_argument("--data-dir", default="", help="an ml-100k folder (u.data, u.item)")
    ap.add_argument("--repeats", type=_at_least_one, default=5)


def run(args: argparse.Namespace) -> int:
    """Print the table."""
    from fedrec.common.data.synthetic import generate_synthetic

    jobs: dict[str, Callable[[], object]] = {
        "synthetic 1,000 x 500": lambda: generate_synthetic(n_users=1000, n_items=500, seed=0),
        "synthetic 20,000 x 500": lambda: generate_synthetic(n_users=20_000, n_items=500, seed=0),
    }
    if args.data_dir:
        from fedrec.common.data.loaders import load_ml100k

        jobs["load ml-100k"] = lambda: load_ml100k(args.data_dir)
    print(f"median of {args.repeats} runs after a warm-up")
    print(f"  {'job':<24} {'seconds':>8} {'target':>8}")
    for name, fn in jobs.items():
        sec = median_seconds(fn, args.repeats)
        target = TARGETS_S[name]
        print(
            f"  {name:<24} {sec:8.3f} {'< ' + format(target, 'g'):>8}"
            f"  {'ok' if sec < target else 'MISSED'}"
        )
    return 0


def main(argv: list[str] | None = None) -> None:
    """Print the table."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(ap)
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
