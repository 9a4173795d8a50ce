"""Helpers shared by the subcommands: dataset arguments and table printing."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_dataset_args", "load_from_args", "print_metrics_table"]


def add_dataset_args(p: argparse.ArgumentParser) -> None:
    """``--dataset``, ``--data-dir`` and ``--seed``."""
    from fedrec.common.data.loaders import DATASETS

    p.add_argument(
        "--dataset",
        default="synthetic",
        choices=DATASETS,
        help="which loader to use (default: synthetic, built in, no download)",
    )
    p.add_argument(
        "--data-dir",
        default="",
        help="folder with the dataset's files as distributed (e.g. ml-100k/ with u.data)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of everything random")


def load_from_args(args: argparse.Namespace):
    """Load the dataset the arguments name."""
    from fedrec.common.data.loaders import load_dataset

    if args.dataset == "synthetic":
        return load_dataset("synthetic", seed=args.seed)
    if not args.data_dir:
        raise ValueError(f"--dataset {args.dataset} needs --data-dir PATH")
    if not Path(args.data_dir).exists():
        raise FileNotFoundError(f"--data-dir {args.data_dir}: no such folder")
    return load_dataset(args.dataset, args.data_dir)


def print_metrics_table(
    title: str, rows: dict[str, dict[str, float]], keys: tuple[str, ...]
) -> None:
    """A rich table: one row per method, one column per metric key."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("method")
    for k in keys:
        table.add_column(k, justify="right")
    for name, metrics in rows.items():
        table.add_row(name, *(f"{metrics[k]:.4f}" if k in metrics else "-" for k in keys))
    console = Console()
    if console.width < 120:  # keep metric names readable in logs and narrow terminals
        console = Console(width=120)
    console.print(table)


def write_json(path: str | Path, obj: object) -> Path:
    """Write ``obj`` as JSON (creating parent folders)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=float))
    return path
