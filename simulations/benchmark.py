"""Benchmarks of the federated job (a script that prints figures; not a test).

``python -m fedrec.simulations.benchmark [--quick]`` prints:

1. local training time per device-epoch: non-private, our DP-SGD (exact per-example clipping
   from one backward pass + Opacus' ``DPOptimizerFastGradientClipping``), and, as a
   reference, Opacus' default per-sample gradient hooks (``GradSampleModule``) on the same
   model and data; medians of several repetitions, ratios measured in the same run;
2. wall time per round of Flower's simulation engine against the same device and server
   code in a plain loop in one process (median over rounds after the first; the engine's
   start-up is reported separately);
3. (``fedrec bench accounting``) the time of one round's ε at rounds 10 and 1,000 (and any
   asked) and their ratio: the server's user-level PLD (on a grid that coarsens as the
   composition widens) and a device's RDP, extended from the previous round's composition as
   runs do, and a device's PRV, which is always from scratch; beside a composition of the
   whole history from scratch (what the audit does, and what every round cost before).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedrec.common.config import RunConfig
from fedrec.simulations.bench_data import median_seconds

if TYPE_CHECKING:  # torch, Opacus, dp_accounting load on use, not when the command line is parsed
    import torch

    from fedrec.common.model.mf import MatrixFactorization
    from fedrec.common.privacy.dpsgd import DPConfig, LocalConfig


def opacus_hooks_epoch(
    model: MatrixFactorization,
    positives: np.ndarray,
    local: LocalConfig,
    dp: DPConfig,
    gen: torch.Generator,
) -> None:
    """One round with Opacus' default per-sample hooks (reference implementation)."""
    import torch
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    from fedrec.common.model.training import example_losses, gather, sample_negatives

    class Pairwise(torch.nn.Module):
        def __init__(self, mf):
            super().__init__()
            self.mf = mf

        def forward(self, items):
            g = gather(self.mf, torch.zeros(len(items), dtype=torch.long), items)
            return example_losses(g, loss=local.loss, l2=local.l2)

    gsm = GradSampleModule(Pairwise(model))
    n = len(positives)
    opt = DPOptimizer(
        torch.optim.SGD(model.trainable_parameters(), lr=local.lr),
        noise_multiplier=dp.noise_multiplier,
        max_grad_norm=dp.max_grad_norm,
        expected_batch_size=max(1, int(local.sample_rate * n)),
        generator=gen,
    )
    pos = torch.as_tensor(positives)
    sampler = UniformWithReplacementSampler(
        num_samples=n, sample_rate=local.sample_rate, generator=gen, steps=local.steps
    )
    for batch in sampler:
        opt.zero_grad()
        if batch:
            p = pos[torch.as_tensor(batch)]
            items = torch.cat([p.unsqueeze(1), sample_negatives(p, model.n_items, 1, gen)], 1)
            with warnings.catch_warnings():  # Opacus' hooks on an embedding-only model
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                gsm(items).mean().backward()
        opt.step()
    gsm._close()


def bench_local(n_items: int, dim: int, n_examples: int, reps: int) -> dict[str, float]:
    """Seconds per device-epoch for each implementation, and ratios to non-private."""
    import torch

    from fedrec.common.model.mf import MatrixFactorization
    from fedrec.common.privacy.accountant import make_accountant
    from fedrec.common.privacy.dpsgd import DPConfig, LocalConfig, train_local

    gen = torch.Generator().manual_seed(0)
    positives = torch.randperm(n_items, generator=gen)[:n_examples].numpy()
    local = LocalConfig(epochs=1.0, sample_rate=0.25, lr=0.1)
    dp = DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, accountant="rdp")

    def run(kind: str) -> None:
        model = MatrixFactorization(1, n_items, dim, generator=gen)
        if kind == "non-private":
            train_local(model, positives, local=local, dp=None, generator=gen)
        elif kind == "dp-sgd (fedrec)":
            train_local(
                model,
                positives,
                local=local,
                dp=dp,
                accountant=make_accountant("rdp"),
                generator=gen,
            )
        else:
            opacus_hooks_epoch(model, positives, local, dp, gen)

    out = {}
    for kind in ("non-private", "dp-sgd (fedrec)", "opacus per-sample hooks"):
        run(kind)  # warm-up
        out[kind] = median_seconds(lambda k=kind: run(k), reps, warmup=False) / local.epochs
    return out


def bench_rounds(users: int, rounds: int) -> dict[str, float]:
    """Median seconds per round, Flower engine against the plain loop (same config)."""
    from fedrec.simulations.loop import run_plain
    from fedrec.simulations.runner import simulate

    cfg = RunConfig(
        synthetic_users=users,
        synthetic_items=400,
        num_rounds=rounds,
        eval_every=10**6,
        fraction_evaluate=0.0,
        accountant="rdp",
        fraction_train=0.25,
    )
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:  # devices write their ledgers in both engines
        t0 = time.perf_counter()
        plain = run_plain(cfg, ledger_dir=Path(tmp) / "ledgers")
        plain_rounds = _round_times(plain.rounds)
        plain_total = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = simulate(cfg.replace(run_dir=f"{tmp}/run"))
        flower_total = time.perf_counter() - t0
    flower_rounds = [float(r["seconds"]) for r in res.rounds]
    return {
        "plain loop s/round": statistics.median(plain_rounds[1:] or plain_rounds),
        "flower s/round": statistics.median(flower_rounds[1:] or flower_rounds),
        "flower first round s": flower_rounds[0],
        "plain total s": plain_total,
        "flower total s (incl. engine start)": flower_total,
    }


#: (name, accountant, noise multiplier, sampling rate, steps per round) of the accounting bench
ACCOUNTING_CASES = (
    ("user-level (server)", "pld", 1.0, 0.1, 1),
    ("device DP-SGD", "rdp", 1.5, 0.1, 10),
    ("device DP-SGD", "prv", 1.5, 0.1, 10),
)

#: PRV is timed up to this many steps: from scratch, its time and memory grow with the steps
#: (2 s at 10,000 steps; 53 s and a 14.5 GB peak at 100,000 on the development machine).
PRV_MAX_STEPS = 20_000


def bench_accounting(
    rounds: tuple[int, ...], reps: int, delta: float = 1e-5
) -> list[dict[str, object]]:
    """Seconds of one round's ε at each round number, as a run spends them (medians).

    ``"round s"``: what round ``n`` costs in a run. PLD and RDP: the composition after
    ``n - 1`` rounds (built beforehand, not timed) extended by round ``n`` and asked for ε, as
    :func:`~fedrec.common.privacy.accountant.epsilon_of` does; PRV: a device's Opacus accountant
    from scratch (Opacus sizes its mesh by the total steps). ``"from scratch s"``: the whole
    history composed again, what every round cost before (PLD: the audit's
    :func:`~fedrec.common.privacy.accounting.epsilon` on its 1e-4 grid, caches emptied).
    PLD rows also give the grid (spacing and points of the composed PLD), ``"audit epsilon"``
    (the audit's :func:`~fedrec.common.privacy.accounting.pld_estimate`, which the claim must
    not be below) and
    ``"mean round s"``: the mean round of one run over rounds 2 to ``n`` (the rounds that coarsen
    the grid included; round 1 also builds the one-step PLDs a process keeps). PRV rows past
    :data:`PRV_MAX_STEPS` steps are ``{"skipped": steps}``.
    """
    means = _pld_run_means(ACCOUNTING_CASES[0][2:], max(rounds), delta)
    rows: list[dict[str, object]] = []
    for name, kind, sigma, q, steps in ACCOUNTING_CASES:
        for n in rounds:
            if kind == "prv" and steps * n > PRV_MAX_STEPS:
                rows.append({"case": name, "accountant": kind, "round": n, "skipped": steps * n})
                continue
            rows.append(_accounting_row(name, kind, (sigma, q, steps), n, reps, delta))
    for row in rows:
        if row["accountant"] == "pld":
            row["mean round s"] = means[int(row["round"]) - 1]
    return rows


def _pld_run_means(release: tuple[float, float, int], rounds: int, delta: float) -> list[float]:
    """Mean seconds of a round over rounds 2..n of one run, for every n up to ``rounds``."""
    from fedrec.common.privacy.accountant import Composition

    sigma, q, steps = release
    state, total, means = Composition("pld"), 0.0, []
    for n in range(1, rounds + 1):
        start = time.perf_counter()
        state = state.extended(sigma, q, steps)
        state.epsilon(delta)
        if n > 1:
            total += time.perf_counter() - start
        means.append(total / (n - 1) if n > 1 else math.nan)
    return means


def _accounting_row(
    name: str, kind: str, release: tuple[float, float, int], n: int, reps: int, delta: float
) -> dict[str, object]:
    from fedrec.common.privacy import accountant, accounting
    from fedrec.common.privacy.events import PrivacyEvent

    sigma, q, steps = release
    row: dict[str, object] = {"case": name, "accountant": kind, "round": n}

    def scratch() -> float:
        if kind != "pld":  # a device's Opacus accountant, as devices account (PRV) or did (RDP)
            acc = accountant.make_accountant(kind)
            acc.history = [(sigma, q, steps * n)]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return float(acc.get_epsilon(delta=delta))
        accounting._pld_composed.cache_clear()
        accounting._epsilon_cached.cache_clear()
        return accounting.epsilon(
            [PrivacyEvent(sigma, q, steps * n)], target_delta=delta, accountant=kind
        )

    if kind in accountant.INCREMENTAL:
        prev = accountant.composition_of(kind, ((sigma, q, steps * (n - 1)),) if n > 1 else ())
        last = prev.extended(sigma, q, steps)
        row["epsilon"] = last.epsilon(delta)
        row["round s"] = median_seconds(
            lambda: prev.extended(sigma, q, steps).epsilon(delta), reps, warmup=False
        )
        if kind == "pld":
            row["grid"] = (last.interval, last.support)
            row["audit epsilon"] = accounting.pld_estimate(
                [PrivacyEvent(sigma, q, steps * n)], target_delta=delta
            ).epsilon
    row["from scratch s"] = median_seconds(scratch, reps, warmup=False)
    if kind not in accountant.INCREMENTAL:
        row["epsilon"], row["round s"] = scratch(), row["from scratch s"]
    return row


def _round_times(rounds: list[dict[str, object]]) -> list[float]:
    return [float(r["seconds"]) for r in rounds]


def add_arguments(ap: argparse.ArgumentParser, part: str = "all") -> None:
    """Options of ``python -m fedrec.simulations.benchmark`` and ``fedrec bench local|engine``.

    ``part`` is "all" (the module: both parts), "local" (the local-training figures) or
    "engine" (the simulation rounds, which take only ``--quick``).
    """
    if part not in ("all", "local", "engine", "accounting"):
        raise ValueError(f"part must be all, local, engine or accounting, got {part!r}")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and rounds")
    if part == "accounting":
        ap.add_argument(
            "--rounds",
            default="10,1000",
            help="comma-separated round numbers at which one round's ε is timed (default 10,1000)",
        )
        return
    if part == "engine":
        return
    ap.add_argument("--items", type=int, default=1682, help="catalog size (ML-100K: 1682)")
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument(
        "--examples",
        type=int,
        default=85,
        help="a device's interactions (ML-100K train median is about 50-90)",
    )


def run_local(args: argparse.Namespace) -> int:
    """Print the local-training figures (1. in the module's description)."""
    import torch

    torch.set_num_threads(1)
    reps = 5 if args.quick else 15
    local = bench_local(args.items, args.dim, args.examples, reps)
    base = local["non-private"]
    print(
        f"local training per device-epoch ({args.items} items, d={args.dim}, "
        f"{args.examples} interactions, sampling rate 0.25; median of {reps}):"
    )
    for kind, sec in local.items():
        print(f"  {kind:26s} {sec * 1e3:8.2f} ms   {sec / base:5.2f}x non-private")
    return 0


def run_engine(args: argparse.Namespace) -> int:
    """Print the simulation-round figures (2. in the module's description)."""
    import torch

    torch.set_num_threads(1)
    rounds = bench_rounds(users=120 if args.quick else 400, rounds=4 if args.quick else 8)
    print("simulation rounds (synthetic, fraction 0.25, DP on, no evaluation):")
    for k, v in rounds.items():
        print(f"  {k:36s} {v:8.3f}")
    ratio = rounds["flower s/round"] / rounds["plain loop s/round"]
    print(f"  flower/plain per round: {ratio:.2f}x")
    return 0


def run_accounting(args: argparse.Namespace) -> int:
    """Print one round's accounting time at the given rounds (3. in the module's description)."""
    try:
        rounds = tuple(int(r) for r in str(args.rounds).split(","))
    except ValueError:
        rounds = ()
    if not rounds or min(rounds) < 1:
        raise SystemExit(f"--rounds must be round numbers >= 1 like 10,1000, got {args.rounds!r}")
    reps = 3 if args.quick else 7
    print_accounting(bench_accounting(rounds, reps), reps)
    return 0


def print_accounting(rows: list[dict[str, object]], reps: int) -> None:
    """Print :func:`bench_accounting`'s rows, then each case's later rounds over its first."""
    rounds = [int(str(r["round"])) for r in rows]
    print(f"one round's epsilon (delta 1e-5; median of {reps}):")
    print(
        f"  {'case':20s} {'acct':4s} {'round':>6s} {'epsilon':>8s} {'round':>11s} "
        f"{'mean 2..n':>11s} {'from scratch':>13s}  grid"
    )
    for row in rows:
        head = f"  {row['case']:20s} {row['accountant']:4s} {row['round']:6d}"
        if "skipped" in row:
            print(f"{head}  skipped: {row['skipped']:,} steps from scratch (PRV_MAX_STEPS)")
            continue
        mean = row.get("mean round s")
        mean = None if mean is None or math.isnan(float(str(mean))) else mean
        grid = row.get("grid")
        print(
            f"{head} {float(str(row['epsilon'])):8.3f} {_ms(row['round s'])} "
            f"{_ms(mean) if mean is not None else '':>11s} {_ms(row['from scratch s']):>13s}"
            + (f"  {grid[0]:g} x {grid[1]:,}" if isinstance(grid, tuple) else "")
            + _over_audit(row)
        )
    first = min(rounds)
    for name, kind, *_ in ACCOUNTING_CASES:
        times = {
            int(str(r["round"])): float(str(r["round s"]))
            for r in rows
            if r["accountant"] == kind and "round s" in r
        }
        ratios = [
            f"round {n:,} / round {first:,} = {t / times[first]:.2f}x"
            for n, t in sorted(times.items())
            if n != first and first in times
        ]
        if ratios:
            print(f"  {name} ({kind}): " + "; ".join(ratios))


def _over_audit(row: dict[str, object]) -> str:
    """How far the claim lies above the audit's PLD value (the audit fails one below it)."""
    if "audit epsilon" not in row:
        return ""
    gap = float(str(row["epsilon"])) / float(str(row["audit epsilon"])) - 1
    return f"  {gap * 100:+.4f} % vs audit"


def _ms(seconds: object) -> str:
    return f"{float(seconds) * 1e3:8.2f} ms"


def run(args: argparse.Namespace) -> int:
    """Print every benchmark figure: local training, then simulation rounds."""
    run_local(args)
    return run_engine(args)


def main(argv: list[str] | None = None) -> None:
    """Print the benchmark figures."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(ap)
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
