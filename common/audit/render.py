"""The audit report for people: Markdown, one self-contained HTML page, and the plots.

:func:`render_markdown` writes ``report.md``; :func:`render_html` writes the same report as
one HTML page with the plots embedded (no file beside it needed); :func:`write_plots` draws
ε over rounds and the distribution of ε over devices. :func:`trust_statement` is the part
every rendering (and ``report.json``) leads with: the trust model of the run's privacy mode,
what the audit verified and what it took on trust.
"""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedrec.common.privacy.accounting import ACCOUNTANTS
from fedrec.common.privacy.randomness import SEEDED_WARNING

if TYPE_CHECKING:
    from fedrec.common.audit.report import AuditReport

__all__ = ["render_markdown", "render_html", "write_plots", "trust_statement", "assumptions"]

_TRUST_MODELS = {
    "local": "Example-level DP, local: each device adds its full DP-SGD noise before anything "
    "leaves it, and the server is not trusted with privacy at all. A device's ledger is the "
    "record of what it released; the server countersigns what it received.",
    "distributed": "Example-level DP, distributed: each device adds a share of the noise and "
    "SecAgg+ shows the server only sums, which carry the full noise. The server is "
    "honest-but-curious (follows the protocol) and devices do not collude with it. Device "
    "ledgers record the noise each device provisioned for; the server's ledgers/secure-sum/ "
    "record the noise actually present in each sum.",
    "user": "User-level DP (DP-FedAvg over the secure sum): the server samples devices "
    "(Poisson); each device bounds its own whole contribution and sends it only inside "
    "SecAgg+, so the server sees sums; the server adds the noise to the sum and is trusted to "
    "(its ledger, server.jsonl, is the record of the releases).",
    "off": "No differential privacy: nothing is promised.",
}


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if math.isinf(value):
        return "∞"
    return f"{value:.{digits}f}"


# --------------------------------------------------------------------------- what was checked


def trust_statement(report: AuditReport) -> dict[str, Any]:
    """The trust model, what was verified, what was taken on trust (``report.json`` keys)."""
    return {
        "trust_model": _trust_model(report),
        "verified": _verified(report),
        "taken_on_trust": _on_trust(report),
    }


def _trust_model(report: AuditReport) -> dict[str, Any]:
    mode = report.mode
    if mode is not None:
        return {"mode": mode, "description": _TRUST_MODELS.get(mode, mode)}
    units = {a.unit for a in report.devices}
    text = (
        "Unknown: there is no run manifest to say the run's privacy mode. The ledgers show "
        + ("example-level releases by devices (local or distributed DP)" if units else "")
        + (" and " if units and report.server else "")
        + ("user-level releases by a server (DP-FedAvg)" if report.server else "")
        + "."
    )
    return {"mode": None, "description": text}


def _item(check: str, status: str, detail: str) -> dict[str, str]:
    return {"check": check, "status": status, "detail": detail}


def _verified(report: AuditReport) -> list[dict[str, str]]:
    """One item per check: verified, FAILED or not checked, with what it covered."""
    failed = {f.check for f in report.findings}
    items = [_manifest_item(report, failed), _keys_item(report, failed)]
    ledgers = report.ledgers
    records = sum(a.n_records for a in ledgers)
    bad = [a for a in ledgers if a.integrity == "tampered" or a.integrity == "unreadable"]
    items.append(
        _item(
            "signatures and hash chains",
            "FAILED" if bad else "verified",
            f"{len(ledgers)} ledger(s), {records} record(s): "
            + (f"{len(bad)} ledger(s) failed" if bad else "every chain and signature intact"),
        )
    )
    items.append(_receipts_item(report, failed))
    items.append(_accounting_item(report, failed))
    return items


def _manifest_item(report: AuditReport, failed: set[str]) -> dict[str, str]:
    manifest = report.context.manifest
    if manifest is None:
        return _item(
            "run manifest",
            "not checked",
            "no run manifest (ledgers collected without one): the population, the planned "
            "participations, ε, δ and the budget of the run could not be cross-checked",
        )
    if not manifest.ok:
        return _item("run manifest", "FAILED", "; ".join(manifest.problems))
    fp = (manifest.operator_fingerprint or "")[:16]
    how = (
        "pinned by the auditor (--operator-key)"
        if manifest.operator_pinned
        else "taken from the manifest itself: compare it with the fingerprint the operator "
        "published (or pin it with --operator-key)"
    )
    return _item(
        "run manifest",
        "verified",
        f"signature verified with operator key {fp}…, {how}; "
        f"{len(manifest.keys)} devices enrolled, policy ε "
        f"{manifest.policy.get('epsilon_budget')}, δ {manifest.policy.get('delta')}",
    )


def _keys_item(report: AuditReport, failed: set[str]) -> dict[str, str]:
    n = len(report.ledgers)
    if report.context.keys_pinned:
        status = "FAILED" if "key" in failed else "verified"
        return _item(
            "device keys",
            status,
            f"{n} ledger(s) verified with the keys pinned at enrollment in the signed key "
            "registry; key files beside the ledgers only compared with it",
        )
    return _item(
        "device keys",
        "FAILED" if "key" in failed else "not pinned",
        "keys taken from ledgers/keys beside the ledgers: not pinned, so a ledger replaced "
        "together with its key file would pass",
    )


def _receipts_item(report: AuditReport, failed: set[str]) -> dict[str, str]:
    receipts = report.context.receipts
    if receipts is None:
        if report.context.keys_pinned:
            return _item("server receipts", "FAILED", "the receipts could not be read")
        return _item(
            "server receipts",
            "not checked",
            "no receipts: records cut off the end of a ledger and deleted devices cannot be "
            "detected",
        )
    bad = failed & {"receipts", "truncated", "missing"}
    countersigned = {str(r["device_id"]) for r in receipts.receipts}
    return _item(
        "server receipts",
        "FAILED" if bad else "verified",
        f"{len(receipts.receipts)} receipt(s) for {len(countersigned)} device(s), signed with "
        "the operator key"
        + (f", sealed after round {receipts.last_round}" if receipts.sealed else ", NOT sealed")
        + ": every record the server countersigned must be in its device's ledger, at its seq, "
        "with its hash (catches records cut off the end, deleted devices, rewritten ledgers)",
    )


def _accounting_item(report: AuditReport, failed: set[str]) -> dict[str, str]:
    sources = sorted({a.budget_source for a in report.ledgers if a.budget_source})
    budget = {
        "audit": "the audit's --budget",
        "policy": "the run's policy (manifest)",
        "declared": "each ledger's own declaration (self-declared: not trustworthy)",
    }
    pld = [a.error.get("pld", math.nan) for a in report.ledgers]
    pld = [e for e in pld if not math.isnan(e)]
    grid = f"; largest stated PLD error {max(pld):.2g}" if pld else ""
    status = "FAILED" if failed & {"budget", "claim"} else "verified"
    return _item(
        "accounting",
        status,
        f"ε recomputed for every ledger with {', '.join(report.accountants)}{grid}; every "
        "record's claim checked against a proven lower bound of ε after it; budget from "
        + (", ".join(budget[s] for s in sources) if sources else "nowhere (none declared)"),
    )


def _on_trust(report: AuditReport) -> list[str]:
    randomness = sorted({r for a in report.ledgers for r in a.randomness})
    out = [
        "that each release's Gaussian noise was actually drawn with the recorded noise "
        "multiplier: the audit sees records, not noise (randomness as recorded: "
        + (", ".join(randomness) or "—")
        + ")",
        "that contributions were clipped to the recorded max_grad_norm (the sensitivity)",
        "that the sampling was what the records say: 'poisson' releases are accounted with "
        "amplification at the recorded rate, which holds only if each example really was "
        "included independently with that probability",
        "the unit of privacy and the add/remove neighbouring relation, as recorded",
        "that the code on the devices and the server did what its records describe",
    ]
    if report.mode == "distributed":
        out.append(
            "that SecAgg+ showed the server only sums, and the noise present in each sum "
            "(ledgers/secure-sum/, not replayed by this audit)"
        )
    if report.mode == "user":
        out.append(
            "that the devices bounded their contributions and the server added the noise its "
            "ledger records to the secure sum (the server is trusted to add it in this mode)"
        )
    manifest = report.context.manifest
    if manifest is not None and manifest.ok and not manifest.operator_pinned:
        out.append(
            f"the operator key ({(manifest.operator_fingerprint or '')[:16]}…), taken from the "
            "manifest: pin it with --operator-key"
        )
    if report.context.receipts is not None:
        out.append(
            "releases the server never received (a reply lost on the way, a federated "
            "evaluation) have no receipt: records after a device's last countersigned one "
            "are accounted but their completeness is not checked"
        )
    out.append(
        "no empirical audit in this report: `fedrec canary` gives an empirical lower bound "
        "on ε (the largest ε it can detect is stated there)"
    )
    return out


def assumptions(report: AuditReport) -> dict[str, Any]:
    """The accounting's assumptions (``report.json``'s ``assumptions``)."""
    sampling = sorted({s for a in report.devices for s in a.sampling})
    deltas = sorted({a.target_delta for a in report.devices if not math.isnan(a.target_delta)})
    return {
        "unit_of_privacy": {
            "devices": "one example (one interaction) of one device, accounted over all of "
            "that device's rounds (example-level DP, local DP-SGD)",
            "server": "one user (all of one device's data), server-side DP-FedAvg noise "
            "(user-level DP)",
        },
        "neighbouring_relation": "add/remove one unit",
        "target_delta": deltas if report.target_delta is None else [report.target_delta],
        "accountants": {n: asdict(ACCOUNTANTS[n]) for n in report.accountants},
        "sampling": (
            f"as recorded ({', '.join(sampling) or 'none'}): 'poisson' releases are accounted "
            "with amplification by Poisson sampling at the recorded rate, which assumes each "
            "example really was included independently with that probability; 'none' gets "
            "no amplification"
        ),
        "mechanism": "Gaussian noise of std noise_multiplier x max_grad_norm added to the "
        "sum of per-unit contributions clipped to max_grad_norm",
        "composition": "every recorded release of a ledger composes; records not in the "
        "ledger are not accounted (verification shows none were removed or altered; the "
        "server's receipts show none were cut off the end, where there are receipts)",
        "randomness": (
            "as recorded per release, not verified: 'os-entropy' noise and sampling cannot be "
            "replayed; 'seeded' ones (reproducible runs) can by anyone who knows the seed, so "
            "their guarantee does not hold against such a party"
        ),
        "claims": "every record's claimed_epsilon must be at least the proven lower bound of "
        "ε after it (a tight accountant's value less its proven error); 'match' means the "
        "last claim equals the same accountant's value here within 1e-6 (relative)",
        "pld_grid": "refined per history: ε on the finest grid used, its stated error the fall "
        "of ε in the last 4x refinement (connect-the-dots converges about quadratically, so "
        "the error left is well below it); the proven bound interval x steps is reported too",
    }


# --------------------------------------------------------------------------- Markdown


def render_markdown(report: AuditReport) -> str:
    """Return the human report (Markdown)."""
    lines: list[str] = []
    for section in (
        _md_summary,
        _md_verdict,
        _md_trust,
        _md_assumptions,
        _md_epsilon,
        _md_findings,
        _md_claims_and_notes,
        _md_plots,
        _md_devices,
    ):
        lines.extend(section(report))
    return "\n".join(lines)


def _md_summary(report: AuditReport) -> list[str]:
    """The title and the audit's settings."""
    lines: list[str] = []
    add = lines.append
    add(f"# Privacy audit: {'PASS' if report.ok else 'FAIL'}")
    add("")
    add(
        f"- Source: `{report.source}` ({len(report.devices)} device ledgers"
        + (", server ledger" if report.server is not None else "")
        + (", run manifest" if report.context.manifest is not None else ", no run manifest")
        + ")"
    )
    seeded = [a.device_id for a in report.ledgers if "seeded" in a.randomness]
    if seeded:
        add(f"- **Noise: {len(seeded)} ledger(s) record SEEDED noise** — {SEEDED_WARNING}")
    add(
        f"- Created: {report.created}; audited in {report.elapsed_s:.1f} s "
        f"({report.distinct_histories} distinct release histories)"
    )
    add(f"- Accountants: {', '.join(report.accountants)} (primary: {report.primary_accountant})")
    if report.budget is not None:
        add(f"- Budget checked: ε ≤ {report.budget:g} for every device ledger (audit setting)")
    elif report.context.policy.get("epsilon_budget") is not None:
        add(
            f"- Budget checked: ε ≤ {report.context.policy['epsilon_budget']:g}, the run's "
            "declared policy (manifest)"
        )
    else:
        add(
            "- Budget checked: each ledger's own declared `budget_epsilon` (self-declared: "
            "pass `--budget` to check against the budget you expect)"
        )
    add("")
    return lines


def _md_verdict(report: AuditReport) -> list[str]:
    lines = ["## Verdict", ""]
    if report.ok:
        lines.append("**PASS**: every check below that could be made passed.")
    else:
        lines.append(f"**FAIL** on {len(report.findings)} finding(s):")
        lines.append("")
        for f in report.findings[:100]:
            lines.append(f"- **{f.check}**: {f.message}")
        if len(report.findings) > 100:
            lines.append(f"- … and {len(report.findings) - 100} more (report.json has all)")
    lines.append("")
    return lines


def _md_trust(report: AuditReport) -> list[str]:
    statement = trust_statement(report)
    lines = ["## Trust model", "", statement["trust_model"]["description"], ""]
    lines += ["## What was verified", ""]
    lines += ["| check | status | what it covered |", "| --- | --- | --- |"]
    for item in statement["verified"]:
        lines.append(f"| {item['check']} | {item['status']} | {item['detail']} |")
    lines += ["", "## What was taken on trust", ""]
    lines += [f"- {text}" for text in statement["taken_on_trust"]]
    lines.append("")
    return lines


def _md_assumptions(report: AuditReport) -> list[str]:
    """The assumptions section."""
    lines: list[str] = []
    add = lines.append
    add("## Assumptions")
    add("")
    a = assumptions(report)
    add(f"- **Unit of privacy (devices):** {a['unit_of_privacy']['devices']}.")
    add(f"- **Unit of privacy (server):** {a['unit_of_privacy']['server']}.")
    add(f"- **Neighbouring relation:** {a['neighbouring_relation']}.")
    deltas = ", ".join(f"{d:g}" for d in a["target_delta"]) or "—"
    add(f"- **δ:** {deltas} (the run's policy where there is a manifest, else as recorded).")
    add(f"- **Mechanism:** {a['mechanism']}.")
    add(f"- **Sampling:** {a['sampling']}.")
    add(f"- **Composition:** {a['composition']}.")
    add(
        "- **Accountants and their stated errors** (each value is an upper bound on ε; a tight "
        "one is at most its error above the true ε):"
    )
    for name in report.accountants:
        info = ACCOUNTANTS[name]
        add(f"  - `{name}`: {info.library}; {info.kind}; error: {info.error}.")
    add(
        "  - `analytic` (added for ledgers with no sampled release): "
        f"{ACCOUNTANTS['analytic'].library}; exact."
    )
    add(f"- **PLD grid:** {a['pld_grid']}.")
    add(f"- **Claims:** {a['claims']}.")
    add("")
    return lines


def _md_epsilon(report: AuditReport) -> list[str]:
    """The example-level (devices) and user-level (server) ε sections."""
    lines: list[str] = []
    add = lines.append
    add("## Example-level ε over devices")
    add("")
    add("| accountant | devices | max | median | min |")
    add("| --- | ---: | ---: | ---: | ---: |")
    for name in (*report.accountants, "certified"):
        s = report.summary(name)
        add(f"| {name} | {s['n']} | {_fmt(s['max'])} | {_fmt(s['median'])} | {_fmt(s['min'])} |")
    add("")
    add("`certified` is the smallest tight upper bound per device, the ε the audit stands behind.")
    add("")
    if report.server is not None:
        srv = report.server
        add("## User-level ε (server, DP-FedAvg)")
        add("")
        add(
            f"- Unit: {srv.unit}; δ = {srv.target_delta:g}; integrity: {srv.integrity}; "
            f"{srv.n_records} releases, sampling: {', '.join(srv.sampling) or '—'}"
        )
        for name, value in srv.epsilon.items():
            add(f"- {name}: ε = {_fmt(value)} (stated error ≤ {_fmt(srv.error.get(name))})")
        add(f"- Certified: ε = {_fmt(srv.certified_epsilon)}")
        if srv.budget_epsilon is not None:
            verdict = "OVER BUDGET" if srv.over_budget else "within budget"
            add(f"- Budget {srv.budget_epsilon:g} ({srv.budget_source}): {verdict}")
        add("")
    return lines


def _md_findings(report: AuditReport) -> list[str]:
    """The findings: tampered ledgers, over budget, disagreements, under-claims."""
    lines: list[str] = []
    add = lines.append
    add("## Findings")
    add("")
    tampered = report.tampered
    add(f"### Tampered or unverifiable ledgers: {len(tampered)}")
    add("")
    if tampered:
        add("| ledger | status | first bad seq | reason |")
        add("| --- | --- | ---: | --- |")
        for a in tampered:
            seq = "—" if a.first_bad_seq is None else str(a.first_bad_seq)
            add(f"| {a.device_id} | {a.integrity} | {seq} | {a.reason} |")
        add("")
    over = report.over_budget
    add(f"### Over budget: {len(over)}")
    add("")
    if over:
        add("| ledger | certified ε | budget | source |")
        add("| --- | ---: | ---: | --- |")
        for a in over[:50]:
            add(
                f"| {a.device_id} | {_fmt(a.certified_epsilon)} | {a.budget_epsilon:g} | "
                f"{a.budget_source} |"
            )
        if len(over) > 50:
            add(f"| … {len(over) - 50} more (report.json has all) | | | |")
        add("")
    dis = report.disagreements
    add(f"### Accountants disagreeing beyond their stated errors: {len(dis)}")
    add("")
    for a in dis[:50]:
        add(f"- {a.device_id}: " + "; ".join(a.disagreements))
    if len(dis) > 50:
        add(f"- … and {len(dis) - 50} more (report.json has all)")
    if dis:
        add("")
    under = report.under_claimed
    add(f"### Devices claiming less ε than recomputed: {len(under)}")
    add("")
    for a in under[:50]:
        seqs = ", ".join(str(s) for s in a.under_claimed_seqs[:10])
        add(
            f"- {a.device_id}: records seq {seqs} under-claim; last claim "
            f"{_fmt(a.claimed_epsilon)} ({a.claim_accountant}), proven lower bound of the "
            f"final ε {_fmt(a.lower_epsilon)}"
        )
    if under:
        add("")
    return lines


def _md_claims_and_notes(report: AuditReport) -> list[str]:
    """The claims, notes and accountant failures (the end of the findings)."""
    lines: list[str] = []
    add = lines.append
    statuses: dict[str, int] = {}
    for a in report.devices:
        statuses[a.claim_status] = statuses.get(a.claim_status, 0) + 1
    add("### Claims")
    add("")
    add(", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())) or "no device ledgers")
    add("")
    notes = [(a.device_id, note) for a in report.ledgers for note in a.notes]
    if notes:
        add(f"### Notes: {len(notes)}")
        add("")
        for dev, note in notes[:20]:
            add(f"- {dev}: {note}")
        if len(notes) > 20:
            add(f"- … and {len(notes) - 20} more (report.json has all)")
        add("")
    failures = [(a.device_id, f) for a in report.ledgers for f in a.failures.items()]
    if failures:
        add(f"### Accountant failures: {len(failures)}")
        add("")
        for dev, (name, msg) in failures[:20]:
            add(f"- {dev}: {name}: {msg}")
        add("")
    return lines


def _md_plots(report: AuditReport) -> list[str]:
    """The plots section, when there are plots."""
    lines: list[str] = []
    add = lines.append
    if report.files.get("plot_rounds") or report.files.get("plot_hist"):
        add("## Plots")
        add("")
        if report.files.get("plot_rounds"):
            add(f"![ε over rounds]({Path(report.files['plot_rounds']).name})")
            how = {"prv": "PRV, the upper end of its bracket", "rdp": "RDP upper bound"}.get(
                report.curve_accountant, report.curve_accountant
            )
            add(f"*ε over rounds, max and median over devices ({how}).*")
            add("")
        if report.files.get("plot_hist"):
            add(f"![ε distribution]({Path(report.files['plot_hist']).name})")
            add("*Distribution of the certified example-level ε over devices.*")
            add("")
    return lines


def _md_devices(report: AuditReport) -> list[str]:
    """The table of devices and the closing line."""
    lines: list[str] = []
    add = lines.append
    add("## Devices (largest certified ε first, at most 50)")
    add("")
    add(
        "| device | ε certified | "
        + " | ".join(report.accountants)
        + " | claimed | claim | budget | integrity |"
    )
    add(
        "| --- | ---: | "
        + " | ".join("---:" for _ in report.accountants)
        + " | ---: | --- | ---: | --- |"
    )
    ranked = sorted(
        report.devices,
        key=lambda a: -a.certified_epsilon if not math.isnan(a.certified_epsilon) else 0.0,
    )
    for a in ranked[:50]:
        cells = " | ".join(_fmt(a.epsilon.get(n)) for n in report.accountants)
        budget = "—" if a.budget_epsilon is None else f"{a.budget_epsilon:g}"
        add(
            f"| {a.device_id} | {_fmt(a.certified_epsilon)} | {cells} | "
            f"{_fmt(a.claimed_epsilon)} | {a.claim_status} | {budget} | {a.integrity} |"
        )
    add("")
    from fedrec.common.audit.report import REPORT_FORMAT

    add(
        f"Reports: `report.json` (machine-readable, format `{REPORT_FORMAT}`), `report.md`, "
        "`report.html` (one page, plots embedded)."
    )
    add("")
    return lines


def write_plots(report: AuditReport, out: Path) -> dict[str, str]:
    """Draw ε over rounds and the distribution of ε over devices into ``out``; their paths."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    files: dict[str, str] = {}
    if report.curve_rounds:
        fig = Figure(figsize=(6.4, 4.0), dpi=110)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot(report.curve_rounds, report.curve_max, label="max over devices", marker=".")
        ax.plot(report.curve_rounds, report.curve_median, label="median over devices", marker=".")
        if any(not math.isnan(v) for v in report.claimed_curve_max):
            ax.plot(
                report.curve_rounds,
                report.claimed_curve_max,
                linestyle="--",
                label="max claimed by devices",
            )
        budgets = {a.budget_epsilon for a in report.devices if a.budget_epsilon is not None}
        if len(budgets) == 1:
            ax.axhline(budgets.pop(), color="red", linewidth=0.8, label="budget")
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        deltas = sorted({a.target_delta for a in report.devices})
        delta_text = f"{deltas[0]:g}" if len(deltas) == 1 else "recorded δ"
        ax.set_ylabel(f"example-level ε ({report.curve_accountant}, δ={delta_text})")
        ax.set_title("Example-level ε over rounds")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out / "epsilon_over_rounds.png"
        fig.savefig(path)
        files["plot_rounds"] = str(path)
    values = [
        a.certified_epsilon
        for a in report.devices
        if not math.isnan(a.certified_epsilon) and not math.isinf(a.certified_epsilon)
    ]
    if values:
        fig = Figure(figsize=(6.4, 4.0), dpi=110)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.hist(values, bins=min(40, max(5, len(set(values)))), color="tab:blue", alpha=0.8)
        ax.set_xlabel("certified example-level ε")
        ax.set_ylabel("devices")
        ax.set_title(f"ε over {len(values)} devices")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out / "epsilon_distribution.png"
        fig.savefig(path)
        files["plot_hist"] = str(path)
    return files


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;
line-height:1.45;color:#1a1a1a}table{border-collapse:collapse;margin:.5rem 0}
td,th{border:1px solid #ccc;padding:.2rem .5rem;vertical-align:top}th{background:#f3f3f3}
code{background:#f3f3f3;padding:0 .2rem}img{max-width:100%}h1.fail{color:#b00020}
h1.pass{color:#1b5e20}
"""


def render_html(report: AuditReport) -> str:
    """The report as one self-contained HTML page (the plots embedded as data URIs)."""
    images = {
        Path(v).name: Path(v)
        for k, v in report.files.items()
        if k.startswith("plot_") and Path(v).is_file()
    }
    body = _markdown_to_html(render_markdown(report), images)
    verdict = "pass" if report.ok else "fail"
    body = body.replace("<h1>", f'<h1 class="{verdict}">', 1)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Privacy audit: {'PASS' if report.ok else 'FAIL'}</title>"
        f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


def _inline(text: str, images: dict[str, Path]) -> str:
    """Inline Markdown of the report (images, code, bold, italics) as HTML."""

    def image(match: re.Match[str]) -> str:
        alt, name = match.group(1), match.group(2)
        path = images.get(name)
        if path is None:
            return html.escape(alt)
        data = base64.b64encode(path.read_bytes()).decode()
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'

    out = html.escape(text, quote=False)
    out = re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", image, out)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"(?<![*\w])\*([^*]+)\*(?![*\w])", r"<em>\1</em>", out)


def _markdown_to_html(markdown: str, images: dict[str, Path]) -> str:
    """The subset of Markdown :func:`render_markdown` writes, as HTML."""
    out: list[str] = []
    lines = markdown.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line[level:].strip(), images)}</h{level}>")
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip().strip("|").split(" | ")])
                i += 1
            out.append(_table(rows, images))
            continue
        elif line.lstrip().startswith("- "):
            items = []
            while i < len(lines) and lines[i].lstrip().startswith("- "):
                nested = lines[i].startswith("  ")
                text = _inline(lines[i].lstrip()[2:], images)
                style = ' style="margin-left:1.5rem"' if nested else ""
                items.append(f"<li{style}>{text}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif line.strip():
            out.append(f"<p>{_inline(line, images)}</p>")
        i += 1
    return "\n".join(out)


def _table(rows: list[list[str]], images: dict[str, Path]) -> str:
    head, body = rows[0], [r for r in rows[1:] if not all(set(c) <= set("-: ") for c in r)]
    cells = "".join(f"<th>{_inline(c, images)}</th>" for c in head)
    trs = "".join(
        "<tr>" + "".join(f"<td>{_inline(c, images)}</td>" for c in row) + "</tr>" for row in body
    )
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{trs}</tbody></table>"
