"""``fedrec audit PATH``: check a run's signed ledgers against its manifest and receipts.

Exit status: 0 when every check that could be made passed, 1 on any finding (a tampered or
unverifiable ledger, a key that is not the enrolled one, records the server countersigned
that are missing, an under-claim, a device over budget, a manifest or receipts that do not
verify), 2 for bad input (from :func:`fedrec.cli.main`).
"""

from __future__ import annotations

import argparse
import json
import math

__all__ = ["register", "run"]

_DESCRIPTION = """\
Verify every ledger's hash chain and signatures with the device keys the run manifest pinned
at enrollment, check every device ledger against the server's signed receipts (records cut
off the end, deleted devices, rewritten ledgers), replay the recorded DP releases through
independent accountants (PLD from dp_accounting and PRV from Opacus as the tight bounds, RDP
as a check), check every record's claimed epsilon and each device's epsilon against the
run's budget, and write report.md, report.json, report.html (one page, plots embedded) and
plots. The report states the run's trust model, what was verified and what was taken on
trust.

PATH is a run directory (as `fedrec simulate` writes it: manifest.json, receipts.jsonl,
ledgers/) or a ledgers folder an auditor collected (<device_id>.jsonl, server.jsonl,
keys/<device_id>.pub.pem); without a manifest, keys come from keys/ (not pinned), the budget
is each ledger's own, and the report says what could not be cross-checked.
"""

_EPILOG = """\
exit status: 0 every check passed; 1 a finding (tampered or unverifiable ledger, swapped
key, missing records or devices, under-claim, over budget, bad manifest or receipts); 2 bad
input.

examples:
  fedrec audit runs/LATEST --operator-key runs/LATEST.keystore/server.pub.pem
  fedrec audit runs/LATEST --budget 8 --out /tmp/audit
  fedrec audit collected/ledgers --accountants pld,rdp --json
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
        help="check every device's example-level ε against this budget (default: the run's "
        "policy in its manifest; without one, each ledger's self-declared budget)",
    )
    parser.add_argument(
        "--operator-key",
        metavar="PEM",
        help="the operator's public key, obtained out of band (a simulation's is "
        "RUN.keystore/server.pub.pem): the manifest must be signed with it (default: the "
        "manifest's own key, and the report says it was not pinned)",
    )
    parser.add_argument(
        "--manifest",
        metavar="FILE",
        help="the run manifest (default: PATH/manifest.json when there is one)",
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
        metavar="X",
        help="a fixed PLD discretization interval, with the proven error X x steps (default: "
        "a grid refined per history until epsilon moves by at most 0.5%% in a 4x refinement)",
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
        manifest=args.manifest,
        operator_key=args.operator_key,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, allow_nan=False))
        return 0 if report.ok else 1
    _print(report)
    return 0 if report.ok else 1


def _print(report) -> None:  # noqa: ANN001 - an AuditReport
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from fedrec.common.audit.render import trust_statement

    console = Console(highlight=False)
    table = Table(title=f"Example-level ε, {len(report.devices)} devices")
    table.caption = "unit: one example; add/remove neighbours"
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
    for item in trust_statement(report)["verified"]:
        colour = {"verified": "green", "FAILED": "red"}.get(item["status"], "yellow")
        console.print(f"  [{colour}]{item['status']:>11}[/{colour}]  {item['check']}")
    status = "[green]PASS[/green]" if report.ok else "[red]FAIL[/red]"
    console.print(
        f"{status}  findings: {len(report.findings)}  tampered: {len(report.tampered)}  "
        f"over budget: {len(report.over_budget)}  under-claimed: {len(report.under_claimed)}  "
        f"accountant disagreements: {len(report.disagreements)}  ({report.elapsed_s:.1f} s)"
    )
    for finding in report.findings[:20]:
        console.print(f"  [red]{finding.check}[/red] {escape(finding.message)}")
    if len(report.findings) > 20:
        console.print(f"  … and {len(report.findings) - 20} more (report.md has all)")
    for key in ("report_md", "report_json", "report_html", "plot_rounds", "plot_hist"):
        if key in report.files:
            console.print(f"  {key.replace('_', ' ')}: {report.files[key]}")
