"""``fedrec audit PATH``: recompute and check every device's ε from a run's signed ledgers.

Exit status: 0 when every ledger verifies and nobody is over budget, 1 otherwise (2 for bad
input, from :func:`fedrec.cli.main`).
"""

from __future__ import annotations

import argparse
import json
import math

__all__ = ["register", "run"]

_DESCRIPTION = """\
Verify every ledger's hash chain and signatures, replay the recorded DP releases through
independent accountants (PLD from dp_accounting and PRV from Opacus as the tight bounds, RDP
as a check), compare with what the devices claimed and with their budgets, and write
report.md, report.json and plots.

PATH is a run directory containing ledgers/ (as `fedrec simulate` writes it) or a ledgers
folder itself: <device_id>.jsonl, server.jsonl, keys/<device_id>.pub.pem.
"""

_EPILOG = """\
exit status: 0 all ledgers intact and within budget; 1 a ledger is tampered (or has no key)
or a device is over budget; 2 bad input.

examples:
  fedrec audit runs/LATEST
  fedrec audit runs/LATEST --budget 8 --out /tmp/audit
  fedrec audit runs/LATEST/ledgers --accountants pld,rdp --json
"""


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    """Add the ``audit`` subcommand to the ``fedrec`` parser."""
    parser = subparsers.add_parser(
        name,
        help=help_text,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("path", metavar="PATH", help="run directory (with ledgers/) or ledgers/")
    parser.add_argument(
        "--budget",
        type=float,
        metavar="EPS",
        help="check every device's example-level ε against this budget (default: each "
        "ledger's declared budget; the server's user-level ledger keeps its own)",
    )
    parser.add_argument(
        "--out", metavar="DIR", help="where to write the reports (default: PATH/audit)"
    )
    parser.add_argument(
        "--accountants",
        default="pld,prv,rdp",
        metavar="LIST",
        help="comma-separated accountants: pld, prv, rdp (default: %(default)s)",
    )
    parser.add_argument(
        "--delta",
        type=float,
        metavar="DELTA",
        help="audit at this δ instead of the δ each ledger records",
    )
    parser.add_argument(
        "--json", action="store_true", help="print report.json to stdout instead of a table"
    )
    parser.add_argument(
        "--pld-interval",
        type=float,
        default=1e-3,
        metavar="X",
        help="PLD discretization interval; its stated error is X x steps (default: "
        "%(default)g; 1e-4 is tighter and about 10x slower)",
    )
    parser.add_argument("--no-plots", action="store_true", help="do not draw the PNG plots")
    parser.add_argument(
        "--fast-signatures",
        action="store_true",
        help="verify only each chain's last signature (it authenticates every signed byte "
        "through the hash chain, but not earlier records' signature fields)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes for the accountants (default: automatic; 1 disables)",
    )
    parser.set_defaults(func=run)


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if math.isinf(value):
        return "∞"
    return f"{value:.4f}"


def run(args: argparse.Namespace) -> int:
    """Run the audit, print a summary, return the exit status."""
    from fedrec.common.audit.report import audit_run

    accountants = tuple(a.strip() for a in args.accountants.split(",") if a.strip())
    report = audit_run(
        args.path,
        accountants=accountants,
        budget=args.budget,
        target_delta=args.delta,
        out_dir=args.out,
        plots=not args.no_plots,
        workers=args.workers,
        all_signatures=not args.fast_signatures,
        value_discretization_interval=args.pld_interval,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, allow_nan=False))
        return 0 if report.ok else 1

    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    table = Table(title=f"Example-level ε, {len(report.devices)} devices")
    table.caption = "unit: one example; add/remove neighbours; δ as recorded"
    for column in ("accountant", "max", "median", "min"):
        table.add_column(column, justify="left" if column == "accountant" else "right")
    for name in (*report.accountants, "certified"):
        s = report.summary(name)
        table.add_row(name, _fmt(s["max"]), _fmt(s["median"]), _fmt(s["min"]))
    console.print(table)
    if report.server is not None:
        srv = report.server
        console.print(
            f"User-level ε (server, unit: one user, δ={srv.target_delta:g}): "
            + ", ".join(f"{n} {_fmt(v)}" for n, v in srv.epsilon.items())
        )
    status = "[green]PASS[/green]" if report.ok else "[red]FAIL[/red]"
    console.print(
        f"{status}  tampered: {len(report.tampered)}  over budget: {len(report.over_budget)}  "
        f"accountant disagreements: {len(report.disagreements)}  "
        f"under-claimed: {len(report.under_claimed)}  ({report.elapsed_s:.1f} s)"
    )
    for audit in report.tampered[:10]:
        seq = "" if audit.first_bad_seq is None else f" first bad seq {audit.first_bad_seq}:"
        console.print(f"  [red]{audit.integrity}[/red] {audit.device_id}:{seq} {audit.reason}")
    for audit in report.over_budget[:10]:
        console.print(
            f"  [red]over budget[/red] {audit.device_id}: ε {_fmt(audit.certified_epsilon)} > "
            f"{audit.budget_epsilon:g} ({audit.budget_source})"
        )
    for key in ("report_md", "report_json", "plot_rounds", "plot_hist"):
        if key in report.files:
            console.print(f"  {key.replace('_', ' ')}: {report.files[key]}")
    return 0 if report.ok else 1
