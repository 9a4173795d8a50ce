"""``fedrec attack``: the poisoning table (attacks x defences x privacy modes).

Fake devices promote one item (:mod:`fedrec.simulations.poisoning`); every privacy mode is
run with each defence that fits it (:data:`~fedrec.simulations.poisoning.DEFENCES`), clean
and under each attack and fake share, on the in-process engine. The table gives the target's
ER@10 among genuine users and the model's NDCG@10, then the best defence per mode at 5%
within-norm fakes and whether it meets the bar (ER@10 <= 0.05 at an NDCG@10 cost <= 0.01).
"""

from __future__ import annotations

import argparse

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    """Add ``fedrec attack``."""
    p = sub.add_parser(
        name,
        help=help_text,
        description=(
            "Poisoning attacks and defences: fake devices promote the least popular item; "
            "prints target ER@10 among genuine users and NDCG@10 per privacy mode, defence, "
            "attack and fake share (in-process engine, noise and sampling seeded). "
            "See docs/poisoning.md."
        ),
    )
    p.add_argument("--dataset", default="ml-100k", help="dataset name (default: %(default)s)")
    p.add_argument("--data-dir", default="", help="the dataset's folder (ml-100k: u.data)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a small synthetic federation instead (seconds per run; for tests)",
    )
    p.add_argument("--modes", default="off,local,distributed,user", help="privacy modes")
    p.add_argument("--attacks", default="within-norm,fedrecattack", help="attack kinds")
    p.add_argument("--shares", default="1,5,10", help="fake shares in percent of all devices")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default: 20; quick 8)")
    p.add_argument("--fraction", type=float, default=None, help="cohort fraction per round")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (default: 2)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default="", help="also write the table (.md) and rows (.json) here")
    p.set_defaults(func=run)


def _base(args: argparse.Namespace) -> dict[str, object]:
    from fedrec.simulations.poisoning import QUICK_SETTINGS, TABLE_SETTINGS

    if args.quick:
        base: dict[str, object] = dict(QUICK_SETTINGS)
    else:
        if args.dataset != "synthetic" and not args.data_dir:
            raise ValueError(f"dataset {args.dataset!r} needs --data-dir (the folder of its files)")
        base = {"dataset": args.dataset, "data-dir": args.data_dir, **TABLE_SETTINGS}
    base["seed"] = args.seed
    if args.rounds is not None:
        base["num-rounds"] = args.rounds
    if args.fraction is not None:
        base["fraction-train"] = args.fraction
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        base[key.strip()] = value.strip()
    return base


def _list(text: str, what: str, convert=str) -> list:  # noqa: ANN001
    try:
        items = [convert(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--{what} {text!r}: expected a comma-separated list") from None
    if not items:
        raise ValueError(f"--{what} is empty")
    return items


def run(args: argparse.Namespace) -> int:
    """Run the table and print it (Markdown)."""
    import json
    import sys
    from pathlib import Path

    from fedrec.common.config import RunConfig
    from fedrec.simulations.poisoning import ATTACKS, render_table, run_table

    base = _base(args)
    cfg = RunConfig.from_flat(base)
    modes = _list(args.modes, "modes")
    attacks = _list(args.attacks, "attacks")
    bad = [a for a in attacks if a not in ATTACKS or a == "none"]
    if bad:
        raise ValueError(f"--attacks {bad}: expected some of {', '.join(ATTACKS[1:])}")
    shares = [s / 100 for s in _list(args.shares, "shares", float)]
    if any(not 0 < s < 0.5 for s in shares):
        raise ValueError(f"--shares {args.shares!r}: expected percentages in (0, 50)")
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if not args.quick else (lambda s: None)
    rows = run_table(base, modes=modes, attacks=attacks, shares=shares, jobs=args.jobs, log=log)
    header = [
        f"Attack table: {cfg.dataset}, algorithm {cfg.algorithm}, dim {cfg.dim}, "
        f"{cfg.num_rounds} rounds, cohort {cfg.fraction_train:g} of the devices per round, "
        f"local-epochs {cfg.local_epochs:g}, epsilon {cfg.epsilon:g} (example-level; user-level "
        f"delta 1e-4), seed {cfg.seed}, noise and sampling seeded; target = item "
        f"{int(float(rows[0]['target']))} (the least popular in train); ER@10 among genuine users.",
    ]
    text = render_table(rows, header)
    print(text, end="")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(text, encoding="utf-8")
        out.with_suffix(".json").write_text(json.dumps({"base": base, "rows": rows}, indent=1))
    return 0
