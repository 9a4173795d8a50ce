"""``fedrec baselines``: most-popular and centralized MF reference numbers on a split."""

from __future__ import annotations

import argparse

from fedrec.cli._common import add_dataset_args, load_from_args, print_metrics_table, write_json

METRIC_KEYS = (
    "ndcg@10",
    "recall@10",
    "hr@10",
    "precision@10",
    "coverage@10",
    "ndcg@20",
    "recall@20",
)


def register(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    """Add the subcommand."""
    p = sub.add_parser(
        name,
        help=help_text,
        description=(
            "Evaluate the most-popular list and centralized matrix factorization (with a "
            "small hyper-parameter search on a validation slice cut from train) on the "
            "DESIGN.md protocol: per-user temporal split, full ranking of all unseen items."
        ),
    )
    add_dataset_args(p)
    p.add_argument("--split", choices=("temporal", "random"), default="temporal")
    p.add_argument(
        "--no-search", action="store_true", help="skip the search; train the documented default MF"
    )
    p.add_argument("--out", default="baselines.json", help="JSON output (default: %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the baselines and print/write them."""
    from rich.console import Console

    from fedrec.common.data.splits import random_split, temporal_split
    from fedrec.simulations.baselines import run_baselines

    console = Console()
    data = load_from_args(args)
    split = temporal_split(data) if args.split == "temporal" else random_split(data, seed=args.seed)
    console.print(
        f"[bold]{data.name}[/]: {data.n_users} users, {data.n_items} items, "
        f"{len(data)} interactions; {args.split} split: {len(split.train)} train, "
        f"{len(split.test)} test"
    )
    result = run_baselines(split, search=not args.no_search, seed=args.seed, log=console.print)
    result["dataset"] = {
        "name": data.name,
        "users": data.n_users,
        "items": data.n_items,
        "interactions": len(data),
        "split": args.split,
    }
    print_metrics_table(
        f"Full-ranking metrics on {data.name} ({args.split} split)",
        {
            "most-popular": result["most_popular"],
            "centralized MF": result["centralized_mf"]["metrics"],
        },
        METRIC_KEYS,
    )
    s = result["most_popular_sampled_99_negatives"]
    console.print(
        f"(sampled metrics, 99 negatives, for comparison with papers only: "
        f"most-popular HR@10 {s['sampled_hr@10']:.4f}, "
        f"NDCG@10 {s['sampled_ndcg@10']:.4f})"
    )
    path = write_json(args.out, result)
    console.print(f"written {path}")
    return 0
