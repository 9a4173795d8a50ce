"""The ``fedrec`` command line.

Each subcommand lives in its own module of this package, which exposes
``register(subparsers)``; modules are imported lazily per command so that ``fedrec --help``
stays fast and ``fedrec audit`` does not pull in Flower or Ray.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["main", "build_parser", "dispatch"]

# subcommand name -> (module in fedrec.cli, one-line help)
_COMMANDS: dict[str, tuple[str, str]] = {
    "baselines": ("baselines", "most-popular and centralized MF on a dataset (reference numbers)"),
    "simulate": ("simulate", "federated DP training on Flower's simulation engine (the main job)"),
    "audit": ("audit", "recompute and check every device's epsilon from a run's ledgers"),
    "certs": ("deploy", "generate a CA and the SuperLink's TLS certificate (real deployment)"),
    "node-keys": ("deploy", "generate SuperNode authentication key pairs (real deployment)"),
    "connection": ("deploy", "add a SuperLink connection (TLS) for `flwr` to FLWR_HOME"),
    "deploy-app": ("deploy", "write the Flower App of a real deployment, for `flwr run`"),
    "superlink": ("deploy", "start flower-superlink with TLS and SuperNode authentication"),
    "supernode": ("deploy", "start flower-supernode for one device and its SQLite store"),
    "sweep": ("tools", "privacy-utility sweep: NDCG@10 against epsilon per algorithm and mode"),
    "shapes": ("tools", "development shapes: the defaults against the baselines on each"),
    "tune": (
        "tools",
        "hyper-parameter search on a validation split: public, or privately accounted",
    ),
    "bench": ("tools", "benchmarks: engine, local (training), data, sdk"),
    "canary": (
        "tools",
        "canary audit: empirical epsilon lower bounds of federated runs against their claims",
    ),
    "limits": ("tools", "noisy-popularity bound: what local DP can at best learn"),
    "attack": ("attack", "poisoning table: fake devices against each privacy mode's defences"),
}

_EPILOG = """\
start here:
  fedrec simulate                       federated DP run on built-in synthetic data
  fedrec baselines --dataset ml-100k --data-dir PATH
                                        most-popular and centralized MF reference numbers
  fedrec audit runs/LATEST              recompute epsilon from the run's signed ledgers
  fedrec sweep --epsilons 1,3,8         NDCG@10 against epsilon, beside the baselines
  fedrec bench TOOL                     benchmarks (engine, local, data, sdk)

`fedrec COMMAND --help` explains each command's options.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="fedrec",
        description="Privacy-preserving federated recommendation on Flower, Opacus and "
        "differential privacy accountants.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in _COMMANDS.items():
        try:
            mod = importlib.import_module(f"fedrec.cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name == f"fedrec.cli.{module}":
                continue  # not built yet
            raise
        mod.register(sub, name, help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedrec`` console script; returns the exit status."""
    return dispatch(build_parser(), argv)


def dispatch(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; bad input is one line, exit status 2."""
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        # Bad input from the user: one clear line, no traceback from deep inside.
        print(f"fedrec {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
