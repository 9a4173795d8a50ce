"""Helpers shared by the subcommands: dataset arguments and table printing."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = [
    "add_dataset_args",
    "add_columns_arg",
    "columns_to_config",
    "load_from_args",
    "print_metrics_table",
]

#: ``--columns`` roles and the run-config keys they set.
COLUMN_ROLES = {
    "user": "events-user-col",
    "item": "events-item-col",
    "weight": "events-weight-col",
    "timestamp": "events-timestamp-col",
}


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
        help="folder with the dataset's files as distributed (e.g. ml-100k/ with u.data); "
        "for --dataset events, the CSV or Parquet file",
    )
    add_columns_arg(p)
    p.add_argument("--seed", type=int, default=0, help="seed of everything random")


def add_columns_arg(p: argparse.ArgumentParser) -> None:
    """``--columns user=COL,item=COL[,weight=COL][,timestamp=COL]`` (``--dataset events``)."""
    p.add_argument(
        "--columns",
        default=None,
        metavar="user=COL,item=COL[,weight=COL][,timestamp=COL]",
        help="--dataset events: which columns of the file hold the user ids, the item ids and, "
        "optionally, a numeric weight and a time (unix seconds or ISO-8601); e.g. "
        "--columns user=account,item=sku,timestamp=when",
    )


def columns_to_config(text: str | None) -> dict[str, str]:
    """``--columns`` as run-config keys (``{"events-user-col": "account", ...}``).

    Raises:
        ValueError: not ``ROLE=COLUMN`` pairs of the known roles.
    """
    if text is None:
        return {}
    out: dict[str, str] = {}
    for part in text.split(","):
        role, sep, column = part.partition("=")
        role, column = role.strip(), column.strip()
        if not sep or role not in COLUMN_ROLES or not column:
            raise ValueError(
                f"--columns expects ROLE=COLUMN pairs separated by commas, ROLE one of "
                f"{', '.join(COLUMN_ROLES)}; got {part.strip()!r} in {text!r}"
            )
        if COLUMN_ROLES[role] in out:
            raise ValueError(f"--columns names the {role} column twice in {text!r}")
        out[COLUMN_ROLES[role]] = column
    return out


def load_from_args(args: argparse.Namespace):
    """Load the dataset the arguments name."""
    from fedrec.common.data.loaders import load_dataset

    columns = columns_to_config(getattr(args, "columns", None))
    if columns and args.dataset != "events":
        raise ValueError(f"--columns applies to --dataset events, not {args.dataset}")
    if args.dataset == "synthetic":
        return load_dataset("synthetic", seed=args.seed)
    if not args.data_dir:
        raise ValueError(f"--dataset {args.dataset} needs --data-dir PATH")
    if not Path(args.data_dir).exists():
        raise FileNotFoundError(f"--data-dir {args.data_dir}: no such file or folder")
    if args.dataset == "events":
        from fedrec.common.config import RunConfig
        from fedrec.simulations.federation import events_mapping

        cfg = RunConfig.from_flat(
            {"dataset": "events", "data-dir": args.data_dir, "privacy": "off", **columns}
        )
        return load_dataset("events", args.data_dir, **events_mapping(cfg))
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
