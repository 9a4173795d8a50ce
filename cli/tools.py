"""``fedrec sweep``, ``shapes``, ``bench TOOL``, ``canary``, ``limits`` and ``tune``.

The research and benchmark tools of :mod:`fedrec.simulations`. Each tool's options are defined
once, by ``add_arguments(parser)`` in its module, which its own ``main()`` (``python -m
fedrec.simulations.<module>``) uses too; its ``run(args)`` runs it. The modules load torch,
Opacus and Flower only when a tool runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType

__all__ = ["BENCHMARKS", "TOOLS", "register"]

#: ``fedrec NAME`` -> (module in fedrec.simulations, keyword arguments of its
#: ``add_arguments``, name of its run function)
TOOLS: dict[str, tuple[str, dict[str, str], str]] = {
    "sweep": ("sweep", {}, "run"),
    "shapes": ("shapes", {}, "run"),
    "canary": ("canary_audit", {}, "run"),
    "limits": ("limits", {}, "run"),
    "tune": ("tune", {}, "run"),
}

#: ``fedrec bench NAME`` -> (module, ``add_arguments`` keyword arguments, run function, help)
BENCHMARKS: dict[str, tuple[str, dict[str, str], str, str]] = {
    "engine": (
        "benchmark",
        {"part": "engine"},
        "run_engine",
        "wall time per round: Flower's simulation engine against the plain loop",
    ),
    "local": (
        "benchmark",
        {"part": "local"},
        "run_local",
        "local training per device-epoch: non-private, DP-SGD, Opacus' per-sample hooks",
    ),
    "accounting": (
        "benchmark",
        {"part": "accounting"},
        "run_accounting",
        "one round's epsilon at rounds 10 and 1,000: incremental against from scratch",
    ),
    "data": ("bench_data", {}, "run", "synthetic data generation and ML-100K loading times"),
    "scale": (
        "bench_scale",
        {},
        "run",
        "s/round and peak memory at 10^3-10^5 devices, in-process and on Flower",
    ),
    "sdk": (
        "bench_sdk",
        {},
        "run",
        "client SDK: recommend(10) latency, import time, resident memory",
    ),
}


def register(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    """Add ``fedrec NAME`` (a tool of :data:`TOOLS`, or ``bench`` and its benchmarks)."""
    if name == "bench":
        _register_bench(sub, name, help_text)
        return
    module, kwargs, func = TOOLS[name]
    _add_tool(sub, name, help_text, module, kwargs, func, command=f"fedrec {name}")


def _register_bench(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = sub.add_parser(
        name,
        help=help_text,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Benchmarks of fedrec (scripts that print figures; not tests). "
        "`fedrec bench TOOL --help` explains each one's options.",
    )
    tools = p.add_subparsers(dest="bench", metavar="TOOL")
    for tool, (module, kwargs, func, tool_help) in BENCHMARKS.items():
        shared = module == "benchmark"  # one module, two commands: say which part this is
        _add_tool(
            tools,
            tool,
            tool_help,
            module,
            kwargs,
            func,
            command=f"fedrec {name} {'local|engine|accounting' if shared else tool}",
            lead=f"fedrec {name} {tool}: {tool_help}.\n\n" if shared else "",
        )

    def show_help(_args: argparse.Namespace) -> int:
        p.print_help()
        return 0

    p.set_defaults(func=show_help)  # `fedrec bench` alone; a TOOL sets its own func


def _add_tool(
    sub: argparse._SubParsersAction,
    name: str,
    help_text: str,
    module: str,
    kwargs: dict[str, str],
    func: str,
    *,
    command: str,
    lead: str = "",
) -> None:
    """A subparser whose options and run function come from ``fedrec.simulations.<module>``.

    Its description is the module's docstring, with ``command`` for the module path.
    """
    mod: ModuleType = importlib.import_module(f"fedrec.simulations.{module}")
    doc = (mod.__doc__ or "").replace(f"python -m fedrec.simulations.{module}", command)
    p = sub.add_parser(
        name,
        help=help_text,
        description=lead + doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mod.add_arguments(p, **kwargs)
    p.set_defaults(func=getattr(mod, func))
