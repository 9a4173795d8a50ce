"""``fedrec simulate``: federated (DP) training on Flower's simulation engine."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from fedrec.cli._common import add_columns_arg, columns_to_config, print_metrics_table

if TYPE_CHECKING:
    from rich.console import Console

    from fedrec.common.config import RunConfig


_EPILOG = (
    "Your own event log (CSV with a header, or Parquet), with a column mapping:\n  "
    "fedrec simulate --dataset events --data-dir log.csv \\\n"
    "      --columns user=account,item=sku,weight=qty,timestamp=when\n"
    "(weight and timestamp are optional; times are unix seconds or ISO-8601)\n\n"
    "Any run-config key can be set with --set KEY=VALUE; the keys, with what each allows:\n  "
    "fedrec simulate --list-keys"
)


def register(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    """Add the subcommand."""
    from fedrec.common.algorithms.registry import algorithm_class
    from fedrec.common.config import ALGORITHMS, PRIVACY_MODES
    from fedrec.common.data.loaders import DATASETS

    p = sub.add_parser(
        name,
        help=help_text,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run a federated training on Flower's simulation engine: one simulated device per "
            "user, each training matrix factorization on its own interactions (with Opacus "
            "DP-SGD when --privacy local) and sending only a dense item-table delta.\n\n"
            "With no arguments: the built-in synthetic data, example-level distributed DP "
            "(SecAgg+) with epsilon 8 per device, a spectral warm start then Opacus DP-SGD "
            "rounds, a few minutes on a laptop. Every run writes a run directory (config, "
            "metrics.jsonl, checkpoints, item embeddings, signed privacy ledgers, plots)."
        ),
        epilog=_EPILOG,
    )
    p.add_argument(
        "--dataset", choices=DATASETS, default=None, help="dataset loader (default: synthetic)"
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder with the dataset's files; for --dataset events, the CSV or Parquet file",
    )
    add_columns_arg(p)
    p.add_argument("--rounds", type=int, default=None, help="federated rounds")
    p.add_argument(
        "--privacy",
        choices=PRIVACY_MODES,
        default=None,
        help="off; local (example-level, each device adds its full DP noise); "
        "distributed (example-level, devices add noise shares and "
        "SecAgg+ shows the server only sums; default); user (user-level DP-FedAvg, "
        "noise added by the server)",
    )
    p.add_argument(
        "--algorithm",
        choices=ALGORITHMS,
        default=None,
        help="; ".join(f"{name}: {algorithm_class(name).summary}" for name in ALGORITHMS)
        + " (default warm-sgd, or sgd with --privacy local; each algorithm sets its own "
        "round count unless given)",
    )
    p.add_argument("--epsilon", type=float, default=None, help="per-device epsilon budget")
    p.add_argument("--delta", type=float, default=None, help="delta (default 1e-5)")
    p.add_argument(
        "--population",
        type=int,
        default=None,
        help="devices in all (adds synthetic train-only devices resampled from the "
        "real users; evaluation stays on real users)",
    )
    p.add_argument(
        "--run-dir",
        default=None,
        help="output folder, new or empty (default runs/<timestamp>)",
    )
    p.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue a stopped run from its checkpoint, with its own configuration and engine",
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any run-config key (kebab-case), repeatable",
    )
    _add_engine_args(p)
    p.add_argument("--no-reference", action="store_true", help="skip the non-private reference run")
    p.add_argument("--list-keys", action="store_true", help="list run-config keys and exit")
    p.set_defaults(func=run)


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    """The options that choose and size the engine."""
    p.add_argument(
        "--engine",
        choices=("flower", "loop"),
        default=None,
        help="flower (the simulation engine, default) or loop (the same device "
        "and server code in a plain loop: a reference for benchmarks)",
    )
    p.add_argument("--cpus", type=int, default=None, help="CPUs for the simulation engine")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="flower engine: SuperNodes that each host a shard of the devices and answer "
        "for them in one message a round, with a partial sum where the mode promises sums "
        "(default: the CPU count); 0: one SuperNode per device with Flower's SecAgg+, as "
        "deployed (slow)",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        metavar="HOST:PORT",
        help="flower engine: run on the existing Ray cluster whose head is at HOST:PORT "
        "(`ray start --head` prints it); each worker takes one of the cluster's CPUs "
        "(docs/cluster.md)",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also show Flower's DEBUG log and the engine's known-harmless warnings",
    )


def main_job_defaults(given: dict[str, object]) -> dict[str, object]:
    """The main job's choices for what the command line leaves open.

    Privacy ``distributed`` (the server sees only SecAgg+ sums); algorithm ``warm-sgd`` (a
    spectral warm start, then Opacus DP-SGD rounds) unless the mode is ``local``, where every
    device adds its full noise to each release and ``sgd`` is the default. Everything else is
    :class:`~fedrec.common.config.RunConfig`'s default or the algorithm's own
    (:attr:`~fedrec.common.algorithms.base.Algorithm.defaults`).
    """
    out = dict(given)
    out.setdefault("privacy", "distributed")
    out.setdefault("algorithm", "sgd" if out["privacy"] == "local" else "warm-sgd")
    return out


def config_from_args(args: argparse.Namespace):
    """The :class:`RunConfig` the arguments describe."""
    from fedrec.common.config import RunConfig

    cfg = RunConfig.from_flat(main_job_defaults(_given(args)))
    cfg.check_feasible(n_devices=cfg.known_devices)  # the rest once the data is loaded
    if cfg.dataset == "events":
        from fedrec.simulations.federation import events_mapping

        events_mapping(cfg)  # a missing column mapping names the file's columns
    return cfg


def resume_from_args(args: argparse.Namespace) -> tuple[RunConfig, str]:
    """The stopped run's configuration and engine (``--resume``; other options must agree)."""
    from pathlib import Path

    from fedrec.simulations.runner import resume_config

    if args.run_dir is not None and Path(args.run_dir) != Path(args.resume):
        raise ValueError(
            f"--resume {args.resume} continues the run where it is; drop --run-dir {args.run_dir}"
        )
    given = {k: v for k, v in _given(args).items() if k != "run-dir"}
    return resume_config(args.resume, given, args.engine)


def _given(args: argparse.Namespace) -> dict[str, object]:
    """The run-config keys the command line names (kebab-case), unparsed."""
    flat: dict[str, object] = {}
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        flat[key.strip()] = value.strip()
    named = {
        "dataset": args.dataset,
        "data-dir": args.data_dir,
        "num-rounds": args.rounds,
        "privacy": args.privacy,
        "epsilon": args.epsilon,
        "delta": args.delta,
        "run-dir": args.run_dir,
        "seed": args.seed,
        "population": args.population,
        "algorithm": getattr(args, "algorithm", None),
    }
    flat.update({k: v for k, v in named.items() if v is not None})
    flat.update(columns_to_config(getattr(args, "columns", None)))
    return flat


def run(args: argparse.Namespace) -> int:
    """Run the simulation with a progress bar and print the final table."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from fedrec.common.config import RunConfig

    console = Console()
    if args.list_keys:
        for key, doc in RunConfig.describe().items():
            console.print(f"[bold]{key}[/]: {doc}")
        return 0
    if args.workers is not None and args.workers < 0:
        raise ValueError(
            f"--workers must be 0 (one SuperNode per device) or more, got {args.workers}"
        )
    if args.ray_address is not None and args.engine == "loop":
        raise ValueError("--ray-address runs the flower engine on a cluster: drop --engine loop")
    resume = args.resume is not None
    if resume:
        from fedrec.simulations.runner import run_state

        if run_state(args.resume) == "finished":
            console.print(f"{args.resume} is finished (summary.json written): nothing to resume")
            return 0
        cfg, engine = resume_from_args(args)
    else:
        if args.run_dir is not None:  # before anything is resolved or written
            from fedrec.server.run_directory import refuse_existing

            refuse_existing(args.run_dir)
        cfg, engine = config_from_args(args), args.engine or "flower"
    console.print(_headline(cfg, engine, args.resume))
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("round {task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
    ) as progress:
        task = progress.add_task("training", total=cfg.num_rounds, status="starting")
        if resume:
            progress.update(task, completed=_rounds_done(args.resume))

        def on_round(r: dict[str, object]) -> None:
            ev = r.get("eval") or {}
            status = f"devices {r.get('aggregated', 0)}/{r.get('sampled', 0)}"
            if ev:
                status += f"  NDCG@10 {ev.get('ndcg@10', float('nan')):.4f}"
            if r.get("train_epsilon_max") is not None:
                status += f"  eps max {r['train_epsilon_max']:.2f}"
            progress.update(task, completed=int(r["round"]), status=status)  # type: ignore[call-overload]

        if engine == "flower":
            from fedrec.simulations.runner import simulate

            result = simulate(
                cfg,
                on_round=on_round,
                num_cpus=args.cpus,
                verbose=args.verbose,
                reference=not args.no_reference,
                resume=resume,
                workers=args.workers,
                ray_address=args.ray_address,
            )
            summary, run_dir = result.summary, result.run_dir
        else:
            from fedrec.simulations.runner import simulate_loop

            summary, run_dir = simulate_loop(
                cfg, on_round=on_round, reference=not args.no_reference, resume=resume
            )
    _print_outcome(console, cfg, summary)
    console.print(f"run directory: [bold]{run_dir}[/]")
    return 0


def _headline(cfg: RunConfig, engine: str, resumed: str | None) -> str:
    """The first line: what runs (and, resuming, from where)."""
    text = (
        f"[bold]fedrec simulate[/]: {cfg.dataset}, privacy {cfg.privacy}"
        + (
            f" (epsilon {cfg.epsilon:g}, delta {cfg.delta:g}, "
            f"{'user' if cfg.privacy == 'user' else 'example'}-level)"
            if cfg.privacy != "off"
            else ""
        )
        + f", {cfg.num_rounds} rounds, engine {engine}"
    )
    if resumed is not None:
        text += f"; resuming {resumed} after round {_rounds_done(resumed)}"
    return text


def _rounds_done(run_dir: str) -> int:
    """The last round a stopped run checkpointed (0: none)."""
    from fedrec.server.run_directory import checkpointed_round

    return checkpointed_round(run_dir)


def _print_outcome(console: Console, cfg: RunConfig, summary: dict[str, object]) -> None:
    """The final table beside most-popular, the privacy statement and the run's counts."""
    quality = summary.get("quality") or {}
    print_metrics_table(
        f"Quality after {summary['rounds']} rounds, measured by the simulator "
        f"({summary['devices']} devices, {summary['items']} items)",
        {
            f"federated {cfg.algorithm}, privacy {cfg.privacy}": quality,
            **(
                {f"{cfg.algorithm} without privacy (same split)": summary["non_private"]}
                if summary.get("non_private")
                else {}
            ),
            "most-popular (same split)": summary.get("most_popular") or {},
        },
        ("ndcg@10", "recall@10", "hr@10", "precision@10", "ndcg@20", "recall@20"),
    )
    pop = (summary.get("most_popular") or {}).get("ndcg@10")
    if pop is not None and "ndcg@10" in quality:
        verdict = "beats" if quality["ndcg@10"] > pop else "does NOT beat"
        console.print(
            f"the federated model {verdict} the most-popular list on NDCG@10 "
            f"({quality['ndcg@10']:.4f} vs {pop:.4f})"
        )
    priv = summary["privacy"]
    if priv.get("mode") == "off":
        console.print("privacy: [bold red]off[/] — updates are not differentially private")
    else:
        sigma = priv["noise_multiplier"]
        sigma_text = (
            ", ".join(f"{v:.3f}" for v in sigma) if isinstance(sigma, list) else f"{sigma:.3f}"
        )
        console.print(
            f"privacy: {priv['mode']} DP, unit {priv['unit']}, {priv['relation']}, "
            f"delta {priv['delta']:g}, accountant {priv['accountant']}; epsilon spent: max "
            f"{priv['epsilon_max']:.3f}, median {priv['epsilon_median']:.3f} over "
            f"{priv['devices_with_releases']} devices (budget {priv['budget_epsilon']:g}); "
            f"noise multiplier {sigma_text}; algorithm {priv.get('algorithm', 'sgd')}; "
            f"trust: {priv['trust']}"
        )
        if "randomness" in priv:
            console.print(f"noise: {priv['randomness']}")
    console.print(f"federated evaluation: {priv['evaluation']['federated']}")
    keys = priv.get("keys")
    if keys:
        console.print(
            f"keys: private keys in {keys['keystore']} (never publish it with the run); "
            f"audit with `fedrec audit RUN "
            f"--operator-key {keys['operator_public_key']}` (operator key "
            f"{keys['operator_fingerprint'][:16]}…)"
        )
    console.print(
        f"refusals {summary['refusals']}, dropped replies {summary['dropped']}, "
        f"wall time {summary['wall_seconds']:.1f} s"
    )
