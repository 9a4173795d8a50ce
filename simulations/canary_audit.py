"""Canary audit: an empirical ε lower bound of federated runs, against what they claim.

``python -m fedrec.simulations.canary_audit [--algorithm sgd] [--privacy local] [--epsilon 8]``
``python -m fedrec.simulations.canary_audit --table [--out FILE.md]``

Runs a small federation with fedrec's own round loop twice: honestly, and with every noise
draw switched off while the run still records and claims its calibrated noise (a broken
implementation). Canaries, each included with probability ½, are canary interactions on one
device (example-level modes) or canary devices whose update is a random direction
(user-level, Andrew et al. 2024); each canary is scored from what the server receives, and
the one-run test of Steinke, Nasr and Jagielski (2023) turns the guesses into an ε lower
bound at 95 % confidence. An honest run's bound must not exceed its claim; a run with the
noise off must be caught (bound above the claim).

The number of canaries is sized so that the claim is detectable: even all-correct guesses
certify at most a *detectable maximum* (about ln(r / 3) for r guesses, and never more than
about ln(0.05/δ) for any number), printed on every row; a claim above it cannot be refuted
and the row says so. ``--table`` audits every algorithm in every privacy mode (refused
combinations shown as refused), at the default claim ε = 8 in about five minutes on two cores.
See docs/privacy.md, "Empirical audit".
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_arguments", "run", "main"]


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Options of ``python -m fedrec.simulations.canary_audit`` and ``fedrec canary``."""
    ap.add_argument(
        "--algorithm",
        default="sgd",
        metavar="LIST",
        help="algorithm(s) to audit, comma-separated, or 'all' (default: %(default)s)",
    )
    ap.add_argument(
        "--privacy",
        default="local",
        metavar="LIST",
        help="privacy mode(s): off, local, distributed, user, comma-separated, or 'all' "
        "(default: %(default)s)",
    )
    ap.add_argument(
        "--table",
        action="store_true",
        help="every algorithm in every privacy mode (--algorithm all --privacy all)",
    )
    ap.add_argument(
        "--epsilon",
        type=float,
        default=8.0,
        help="the runs' budget: their noise is calibrated to it, and the canaries are sized "
        "so that it is detectable (default: %(default)s)",
    )
    ap.add_argument(
        "--delta", type=float, default=1e-5, help="δ of the claim (default: %(default)s)"
    )
    ap.add_argument(
        "--canaries",
        type=int,
        metavar="M",
        help="number of canaries (default: the fewest whose detectable maximum exceeds the claim)",
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of the runs (default: %(default)s)")
    ap.add_argument("--out", metavar="FILE", help="also write the table (Markdown) to FILE")


def _names(text: str, known: tuple[str, ...], what: str) -> tuple[str, ...]:
    if text.strip() == "all":
        return known
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise ValueError(f"--{what}: {', '.join(bad) or 'nothing'} not one of {', '.join(known)}")
    return names


def run(args: argparse.Namespace) -> int:
    """Audit the chosen algorithms and modes, honest and with the noise off; print the table.

    Exit status 1 when an honest run's bound exceeds its claim (a violation), else 0; a
    noise-off run that is not caught is reported in the table with the reason.
    """
    import torch

    from fedrec.common.algorithms.registry import REGISTRY
    from fedrec.simulations.canary_federation import MODES, canary_table, format_table

    torch.set_num_threads(1)
    table = args.table
    algorithms = tuple(REGISTRY) if table else _names(args.algorithm, tuple(REGISTRY), "algorithm")
    modes = MODES if table else _names(args.privacy, MODES, "privacy")
    if not 0 < args.delta < 1 or args.epsilon <= 0:
        raise ValueError("--epsilon must be positive and --delta in (0, 1)")
    rows = canary_table(
        algorithms=algorithms,
        modes=modes,
        epsilon=args.epsilon,
        delta=args.delta,
        seed=args.seed,
        m=args.canaries,
        progress=lambda row: print(
            f"  {row.algorithm}/{row.mode}/{row.variant}: {row.verdict} ({row.seconds:.1f} s)",
            file=sys.stderr,
        ),
    )
    text = format_table(rows)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return 1 if any(r.verdict == "VIOLATION" for r in rows) else 0


def main(argv: list[str] | None = None) -> None:
    """Run the canary audit from the command line."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(ap)
    sys.exit(run(ap.parse_args(argv)))


if __name__ == "__main__":
    main()
