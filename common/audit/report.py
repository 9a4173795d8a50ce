"""Recompute every device's ε from a run's signed ledgers, and check it.

:func:`audit_run` is what ``fedrec audit RUN`` does. For every ledger in ``RUN/ledgers``
(layout in :mod:`fedrec.common.audit.ledger`):

1. verify the hash chain and the signatures with the signer's public key
   (``ledgers/keys/<device_id>.pub.pem``); name the first bad record of a tampered ledger;
2. replay the recorded releases through independent accountants (PLD from Google's
   ``dp_accounting`` and PRV from Opacus as the tight ones, RDP as a check; the exact analytic
   Gaussian accountant as well when no release is sampled);
3. flag accountants that disagree beyond their stated errors (two tight brackets
   ``[ε - error, ε]`` that do not meet; RDP, an upper bound, below a tight lower bound);
4. compare with the ε the device claimed in its last record, and with its budget;
5. summarise (max / median / min ε over devices, user-level ε from ``server.jsonl``) and write
   ``report.json``, ``report.md`` and two plots (ε over rounds, ε distribution).

ε depends only on the multiset of ``(σ, q) → steps`` (:func:`~fedrec.common.privacy.accounting.
canonical_history`), so the work is one evaluation per *distinct* history, not per device.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedrec.common.audit.ledger import (
    FORMAT,
    LedgerError,
    library_versions,
    load_public_key,
    releases_from_ledger,
    verify_ledger,
)
from fedrec.common.privacy.accounting import (
    ACCOUNTANTS,
    DEFAULT_EPS_ERROR,
    History,
    PrivacyEvent,
    accountant_error,
    brackets_overlap,
    canonical_history,
    epsilon,
)
from fedrec.common.privacy.randomness import SEEDED_WARNING

__all__ = [
    "AuditReport",
    "LedgerAudit",
    "audit_run",
    "find_ledger_dir",
    "REPORT_FORMAT",
    "AUDIT_VALUE_DISCRETIZATION_INTERVAL",
]

REPORT_FORMAT = "fedrec-audit/1"
SERVER_ID = "server"
_CURVE_KEY_LIMIT = 200  # distinct prefixes above which the ε-over-rounds curve uses RDP
_CURVE_INTERVAL = 1e-3  # coarsest PLD grid for intermediate points of the curve
AUDIT_VALUE_DISCRETIZATION_INTERVAL = 1e-3
"""The audit's default PLD grid: 10x coarser than ``dp_accounting``'s default and about 10x
faster. The pessimistic (connect-the-dots) ε barely moves (1.8289 instead of 1.8282 for
q = 0.01, σ = 1, 1000 steps), but the *stated* error, ``interval × steps``, grows tenfold:
pass ``value_discretization_interval=1e-4`` for a tighter disagreement check."""
_SLACK = 1e-6


@dataclass
class LedgerAudit:
    """The audit of one ledger (one device, or the server).

    Attributes:
        device_id: The signer (the file stem).
        path: The ledger file.
        unit: Unit of privacy of its records (``"example"``, ``"user"``, or ``"mixed"``).
        n_records: Records that could be parsed.
        integrity: ``"ok"``, ``"tampered"``, ``"no-key"`` (no public key to check it with) or
            ``"unreadable"``.
        first_bad_seq: First bad record of a tampered ledger.
        reason: Why it is not ``"ok"``.
        target_delta: δ the ε values are at.
        epsilon: ε per accountant (``nan`` where an accountant failed; see ``failures``).
        error: Stated error per accountant (how far above the true ε its value may be).
        certified_epsilon: The smallest tight upper bound (the ε the audit stands behind).
        lower_epsilon: The largest tight lower bound ``ε - error``.
        claimed_epsilon: The device's own cumulative ε in its last record.
        claim_accountant: Which accountant the device says it used.
        claim_status: ``"match"``, ``"conservative"`` (claims more than recomputed),
            ``"within-error"``, ``"under-claimed"`` (claims less than any valid accounting
            allows), ``"none"`` (no claim) or ``"unchecked"``.
        budget_epsilon: The budget checked against (the audit's, else the declared one).
        budget_source: ``"audit"``, ``"declared"`` or ``None``.
        over_budget: ``certified_epsilon > budget_epsilon``.
        disagreements: Accountant pairs that disagree beyond their stated errors, in words.
        notes: Other observations (δ changed between records, mixed units, …).
        rounds: Rounds with a release, in order.
        steps: Total steps released.
        sampling: Sampling types seen (``"poisson"``, ``"none"``).
        noise_multipliers: Distinct noise multipliers seen.
        randomness: Where the noise came from, as recorded (``"os-entropy"``, ``"seeded"``;
            ``"unrecorded"`` for records of format 1).
        failures: Accountant name → error message, where one could not compute ε.
    """

    device_id: str
    path: str
    unit: str = "example"
    n_records: int = 0
    integrity: str = "ok"
    first_bad_seq: int | None = None
    reason: str = ""
    target_delta: float = math.nan
    epsilon: dict[str, float] = field(default_factory=dict)
    error: dict[str, float] = field(default_factory=dict)
    certified_epsilon: float = math.nan
    lower_epsilon: float = math.nan
    claimed_epsilon: float | None = None
    claim_accountant: str | None = None
    claim_status: str = "none"
    budget_epsilon: float | None = None
    budget_source: str | None = None
    over_budget: bool = False
    disagreements: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)
    steps: int = 0
    sampling: list[str] = field(default_factory=list)
    noise_multipliers: list[float] = field(default_factory=list)
    randomness: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    # (round, ε after that round) with the curve accountant, and the claims per round.
    curve: list[tuple[int, float]] = field(default_factory=list, repr=False)
    claimed_curve: list[tuple[int, float]] = field(default_factory=list, repr=False)

    @property
    def tampered(self) -> bool:
        """Whether the ledger failed verification (or could not be verified)."""
        return self.integrity != "ok"


@dataclass
class AuditReport:
    """Everything :func:`audit_run` found; ``to_dict()`` is what ``report.json`` holds."""

    source: str
    ledger_dir: str
    out_dir: str | None
    accountants: tuple[str, ...]
    budget: float | None
    target_delta: float | None
    value_discretization_interval: float
    eps_error: float
    devices: list[LedgerAudit]
    server: LedgerAudit | None
    primary_accountant: str
    curve_accountant: str
    curve_interval: float | None
    curve_rounds: list[int]
    curve_max: list[float]
    curve_median: list[float]
    claimed_curve_max: list[float]
    distinct_histories: int
    elapsed_s: float = 0.0
    files: dict[str, str] = field(default_factory=dict)
    created: str = ""

    @property
    def ledgers(self) -> list[LedgerAudit]:
        """Device ledgers, then the server's."""
        return self.devices + ([self.server] if self.server is not None else [])

    @property
    def tampered(self) -> list[LedgerAudit]:
        """Ledgers that failed verification."""
        return [a for a in self.ledgers if a.tampered]

    @property
    def over_budget(self) -> list[LedgerAudit]:
        """Ledgers whose certified ε exceeds their budget."""
        return [a for a in self.ledgers if a.over_budget]

    @property
    def disagreements(self) -> list[LedgerAudit]:
        """Ledgers on which accountants disagree beyond their stated errors."""
        return [a for a in self.ledgers if a.disagreements]

    @property
    def under_claimed(self) -> list[LedgerAudit]:
        """Ledgers whose device claimed less ε than any valid accounting allows."""
        return [a for a in self.ledgers if a.claim_status == "under-claimed"]

    @property
    def ok(self) -> bool:
        """No tampered ledger and nobody over budget (what ``fedrec audit`` exits 0 on)."""
        return not self.tampered and not self.over_budget

    def summary(self, accountant: str | None = None) -> dict[str, float | int | None]:
        """Max / median / min device ε (example level) for one accountant."""
        name = accountant or self.primary_accountant
        if name == "certified":
            values = [a.certified_epsilon for a in self.devices]
        else:
            values = [a.epsilon.get(name, math.nan) for a in self.devices]
        values = [v for v in values if not math.isnan(v)]
        if not values:
            return {"n": 0, "max": None, "median": None, "min": None}
        return {
            "n": len(values),
            "max": max(values),
            "median": statistics.median(values),
            "min": min(values),
        }

    def to_dict(self) -> dict[str, Any]:
        """Return the machine-readable report (JSON-safe: ∞ as ``"inf"``, NaN as null)."""
        summaries = {name: self.summary(name) for name in (*self.accountants, "certified")}
        data = {
            "format": REPORT_FORMAT,
            "created": self.created,
            "source": self.source,
            "ledger_dir": self.ledger_dir,
            "ledger_format": FORMAT,
            "ok": self.ok,
            "settings": {
                "accountants": list(self.accountants),
                "primary_accountant": self.primary_accountant,
                "budget": self.budget,
                "target_delta_override": self.target_delta,
                "value_discretization_interval": self.value_discretization_interval,
                "prv_eps_error": self.eps_error,
                "auditor_versions": library_versions(),
            },
            "assumptions": _assumptions(self),
            "summary": {
                "devices": len(self.devices),
                "distinct_histories": self.distinct_histories,
                "example_level": summaries,
                "user_level": _ledger_dict(self.server) if self.server is not None else None,
            },
            "flags": {
                "tampered": [
                    {"device_id": a.device_id, "first_bad_seq": a.first_bad_seq, "reason": a.reason}
                    for a in self.tampered
                ],
                "over_budget": [
                    {
                        "device_id": a.device_id,
                        "certified_epsilon": a.certified_epsilon,
                        "budget_epsilon": a.budget_epsilon,
                    }
                    for a in self.over_budget
                ],
                "disagreements": [
                    {"device_id": a.device_id, "details": a.disagreements}
                    for a in self.disagreements
                ],
                "under_claimed": [
                    {
                        "device_id": a.device_id,
                        "claimed_epsilon": a.claimed_epsilon,
                        "lower_epsilon": a.lower_epsilon,
                    }
                    for a in self.under_claimed
                ],
            },
            "curves": {
                "accountant": self.curve_accountant,
                "pld_interval_between_final_points": self.curve_interval,
                "rounds": self.curve_rounds,
                "max": self.curve_max,
                "median": self.curve_median,
                "claimed_max": self.claimed_curve_max,
            },
            "devices": [_ledger_dict(a) for a in self.devices],
            "files": self.files,
            "elapsed_s": self.elapsed_s,
        }
        return _json_safe(data)


# --------------------------------------------------------------------------- discovery


def find_ledger_dir(path: str | Path) -> Path:
    """Return the ledgers folder of a run directory, or ``path`` itself if it holds ledgers."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; give a run directory or its ledgers/.")
    if path.is_file():
        raise ValueError(f"{path} is a file; give a run directory or its ledgers/ folder.")
    if (path / "ledgers").is_dir():
        return path / "ledgers"
    if any(path.glob("*.jsonl")):
        return path
    raise ValueError(
        f"{path} has neither a ledgers/ folder nor *.jsonl ledgers; is it a run directory "
        "written with DP on?"
    )


def _default_out_dir(source: Path, ledger_dir: Path) -> Path:
    if ledger_dir != source:
        return source / "audit"
    if ledger_dir.name == "ledgers":
        return ledger_dir.parent / "audit"
    return ledger_dir / "audit"


# --------------------------------------------------------------------------- evaluation

_Key = tuple[History, float]  # (canonical history, δ)


def _evaluate(args: tuple[_Key, tuple[str, ...], float, float]) -> dict[str, Any]:
    (history, delta), accountants, interval, eps_error = args
    releases = [PrivacyEvent(s, q, n) for s, q, n in history]
    out: dict[str, Any] = {"epsilon": {}, "error": {}, "failures": {}}
    for name in accountants:
        try:
            out["epsilon"][name] = epsilon(
                releases,
                target_delta=delta,
                accountant=name,
                value_discretization_interval=interval,
                eps_error=eps_error,
            )
            out["error"][name] = accountant_error(
                name, releases, value_discretization_interval=interval, eps_error=eps_error
            )
        except Exception as exc:  # noqa: BLE001 - one accountant's failure is a finding
            out["epsilon"][name] = math.nan
            out["error"][name] = math.nan
            out["failures"][name] = f"{type(exc).__name__}: {exc}"
    return out


def _accountants_for(history: History, requested: Sequence[str]) -> tuple[str, ...]:
    names = list(requested)
    if history and all(q is None for _, q, _ in history) and "analytic" not in names:
        names.append("analytic")  # exact when nothing is sampled
    return tuple(names)


def _evaluate_all(
    jobs: dict[_Key, tuple[str, ...]], interval: float, eps_error: float, workers: int
) -> dict[_Key, dict[str, Any]]:
    keys = list(jobs)
    args = [(key, jobs[key], interval, eps_error) for key in keys]
    if workers > 1 and len(keys) > 1:
        _warm_imports()  # once here, inherited by forked workers
        # Longest (most steps) first, for a balanced pool.
        order = sorted(range(len(keys)), key=lambda i: -sum(n for *_, n in keys[i][0]))
        with _pool(workers) as pool:
            results = list(pool.map(_evaluate, [args[i] for i in order], chunksize=1))
        return {keys[i]: res for i, res in zip(order, results, strict=True)}
    return {key: _evaluate(a) for key, a in zip(keys, args, strict=True)}


def _pool(workers: int) -> ProcessPoolExecutor:
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx)


def _warm_imports() -> None:
    import dp_accounting.pld.privacy_loss_distribution  # noqa: F401
    import opacus.accountants  # noqa: F401


def _resolve_workers(workers: int | None, n_jobs: int) -> int:
    if workers is not None:
        return max(1, int(workers))
    if n_jobs < 2:
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, cpus or 1, n_jobs))


# --------------------------------------------------------------------------- per ledger


def _read_ledger(
    path: Path, key_dir: Path, device_id: str, all_signatures: bool = True
) -> tuple[LedgerAudit, list[dict]]:
    audit = LedgerAudit(device_id=device_id, path=str(path))
    key_path = key_dir / f"{device_id}.pub.pem"
    try:
        if not key_path.exists():
            from fedrec.common.audit.ledger import Ledger

            records = Ledger.read(path)
            audit.integrity = "no-key"
            audit.reason = f"no public key at {key_path}; the ledger cannot be verified"
        else:
            result = verify_ledger(
                path,
                load_public_key(key_path),
                expected_device_id=device_id,
                all_signatures=all_signatures,
            )
            records = result.records
            if not result.ok:
                audit.integrity = "tampered"
                audit.first_bad_seq = result.first_bad_seq
                audit.reason = result.reason
    except (OSError, ValueError, LedgerError) as exc:
        audit.integrity = "unreadable"
        audit.reason = f"{type(exc).__name__}: {exc}"
        records = []
    audit.n_records = len(records)
    return audit, records


def _read_all(
    files: Sequence[Path], key_dir: Path, all_signatures: bool
) -> list[tuple[LedgerAudit, list[dict]]]:
    """Read and verify every ledger (serially: a process pool loses to pickling here)."""
    return [_read_ledger(file, key_dir, file.stem, all_signatures) for file in files]


def _describe(audit: LedgerAudit, records: list[dict]) -> list[PrivacyEvent]:
    """Fill the descriptive fields; return the releases (skipping records that are not)."""
    releases: list[PrivacyEvent] = []
    rounds: list[int] = []
    units, sampling, sigmas, deltas, sources = set(), set(), set(), [], set()
    for record in records:
        try:
            (release,) = releases_from_ledger([record])
        except (LedgerError, ValueError) as exc:
            audit.notes.append(f"record seq {record.get('seq')!r} skipped: {exc}")
            continue
        releases.append(release)
        rounds.append(int(record.get("round", -1)))
        units.add(record.get("unit"))
        sampling.add(record["sampling"]["type"])
        sigmas.add(release.noise_multiplier)
        sources.add(str(record["mechanism"].get("randomness", "unrecorded")))
        if isinstance(record.get("target_delta"), (int, float)):
            deltas.append(float(record["target_delta"]))
        if record.get("relation") != "add/remove":
            audit.notes.append(
                f"record seq {record.get('seq')!r}: relation {record.get('relation')!r}"
            )
    audit.rounds = rounds
    audit.steps = sum(r.steps for r in releases)
    audit.sampling = sorted(s for s in sampling if s)
    audit.noise_multipliers = sorted(sigmas)
    audit.randomness = sorted(sources)
    if "seeded" in sources:
        audit.notes.append(SEEDED_WARNING)
    units.discard(None)
    if len(units) == 1:
        audit.unit = next(iter(units))
    elif units:
        audit.unit = "mixed"
        audit.notes.append(f"records mix units of privacy ({sorted(units)})")
    if deltas:
        audit.target_delta = deltas[-1]
        if len(set(deltas)) > 1:
            audit.notes.append(
                f"δ changed between records ({sorted(set(deltas))}); audited at the last, "
                f"{deltas[-1]:g}"
            )
    return releases


def _judge(audit: LedgerAudit, result: dict[str, Any], records: list[dict]) -> None:
    audit.epsilon = dict(result["epsilon"])
    audit.error = dict(result["error"])
    audit.failures = dict(result["failures"])
    tight = [
        n for n, e in audit.epsilon.items() if ACCOUNTANTS[n].kind == "tight" and not math.isnan(e)
    ]
    if tight:
        audit.certified_epsilon = min(audit.epsilon[n] for n in tight)
        audit.lower_epsilon = max(audit.epsilon[n] - audit.error[n] for n in tight)
    elif "rdp" in audit.epsilon and not math.isnan(audit.epsilon["rdp"]):
        audit.certified_epsilon = audit.epsilon["rdp"]
    for i, a in enumerate(tight):
        for b in tight[i + 1 :]:
            ea, eb = audit.epsilon[a], audit.epsilon[b]
            if not brackets_overlap(ea, audit.error[a], eb, audit.error[b], slack=_SLACK):
                audit.disagreements.append(
                    f"{a} {ea:.6g} (error ≤ {audit.error[a]:.3g}) and {b} {eb:.6g} "
                    f"(error ≤ {audit.error[b]:.3g}) cannot both hold"
                )
    rdp = audit.epsilon.get("rdp", math.nan)
    if tight and not math.isnan(rdp) and rdp < audit.lower_epsilon - _SLACK:
        audit.disagreements.append(
            f"rdp {rdp:.6g} is below the tight lower bound {audit.lower_epsilon:.6g} "
            "(RDP is an upper bound; one of the accountants is wrong)"
        )
    # The device's own claim, from its last record.
    last = records[-1] if records else {}
    claimed = last.get("claimed_epsilon")
    audit.claim_accountant = last.get("accountant")
    if isinstance(claimed, (int, float)) and not isinstance(claimed, bool):
        audit.claimed_epsilon = float(claimed)
        audit.claim_status = _claim_status(audit)
    audit.claimed_curve = [
        (int(r["round"]), float(r["claimed_epsilon"]))
        for r in records
        if isinstance(r.get("claimed_epsilon"), (int, float)) and isinstance(r.get("round"), int)
    ]


def _claim_status(audit: LedgerAudit) -> str:
    claimed = audit.claimed_epsilon
    assert claimed is not None
    if not math.isnan(audit.lower_epsilon) and claimed < audit.lower_epsilon - _SLACK:
        return "under-claimed"
    name = audit.claim_accountant
    if name not in audit.epsilon or math.isnan(audit.epsilon[name]):
        return "unchecked"
    same = audit.epsilon[name]
    if math.isinf(same) or math.isinf(claimed):
        return "match" if same == claimed else "conservative" if claimed > same else "within-error"
    tolerance = _SLACK * max(1.0, abs(same))
    if abs(claimed - same) <= tolerance:
        return "match"
    return "conservative" if claimed > same else "within-error"


def _set_budget(audit: LedgerAudit, records: list[dict], budget: float | None) -> None:
    declared = None
    for record in reversed(records):
        value = record.get("budget_epsilon")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            declared = float(value)
            break
    if budget is not None and audit.unit != "user":
        audit.budget_epsilon, audit.budget_source = float(budget), "audit"
    elif declared is not None:
        audit.budget_epsilon, audit.budget_source = declared, "declared"
    if audit.budget_epsilon is not None and not math.isnan(audit.certified_epsilon):
        audit.over_budget = audit.certified_epsilon > audit.budget_epsilon + 1e-12


# --------------------------------------------------------------------------- the audit


def audit_run(
    path: str | Path,
    *,
    accountants: Sequence[str] = ("pld", "prv", "rdp"),
    budget: float | None = None,
    target_delta: float | None = None,
    out_dir: str | Path | None = None,
    write: bool = True,
    plots: bool = True,
    workers: int | None = None,
    value_discretization_interval: float = AUDIT_VALUE_DISCRETIZATION_INTERVAL,
    eps_error: float = DEFAULT_EPS_ERROR,
    all_signatures: bool = True,
) -> AuditReport:
    """Audit a run's ledgers; write ``report.json``, ``report.md`` and plots.

    Args:
        path: A run directory with ``ledgers/``, or a ledgers folder.
        accountants: Accountants to replay with (``"pld"``, ``"prv"``, ``"rdp"``;
            ``"analytic"`` is added for ledgers with no sampled release). The first tight
            one is the primary (its ε is the one summarised first).
        budget: An example-level ε budget to check every device ledger against (overrides
            declared budgets; user-level ledgers keep their declared budget, a different
            guarantee).
        target_delta: Audit at this δ instead of the δ each ledger records.
        out_dir: Where to write the reports (default ``RUN/audit``).
        write: Write the report files (``False``: only return the report).
        plots: Also write the PNG plots.
        workers: Processes for the accountants (default: up to 8 when there are many
            distinct histories; 1 disables).
        value_discretization_interval: PLD grid spacing (see
            :data:`AUDIT_VALUE_DISCRETIZATION_INTERVAL`).
        eps_error: Opacus PRV ``eps_error``.
        all_signatures: Check every record's signature (default). ``False`` checks each
            chain's last one only, which authenticates every signed byte through the chain
            but not earlier records' signature fields (see
            :func:`~fedrec.common.audit.ledger.verify_ledger`).
    """
    start = time.perf_counter()
    accountants = _checked_accountants(accountants, budget, target_delta)
    source = Path(path)
    ledger_dir = find_ledger_dir(source)
    files = sorted(ledger_dir.glob("*.jsonl"))
    if not files:
        raise ValueError(f"no *.jsonl ledgers in {ledger_dir}.")

    report = _audit_ledgers(
        source,
        ledger_dir,
        files,
        accountants,
        budget=budget,
        target_delta=target_delta,
        workers=workers,
        value_discretization_interval=value_discretization_interval,
        eps_error=eps_error,
        all_signatures=all_signatures,
    )
    if write:
        out = Path(out_dir) if out_dir is not None else _default_out_dir(source, ledger_dir)
        _write_report(report, out, plots, start)
    report.elapsed_s = time.perf_counter() - start
    return report


def _audit_ledgers(
    source: Path,
    ledger_dir: Path,
    files: Sequence[Path],
    accountants: tuple[str, ...],
    *,
    budget: float | None,
    target_delta: float | None,
    workers: int | None,
    value_discretization_interval: float,
    eps_error: float,
    all_signatures: bool,
) -> AuditReport:
    """Read, verify and judge every ledger of ``files``; the report (not yet written)."""
    per_ledger = _read_ledgers(files, ledger_dir / "keys", all_signatures, target_delta)
    audits = [audit for audit, _, _ in per_ledger]
    jobs, results = _final_epsilons(
        per_ledger, accountants, budget, workers, value_discretization_interval, eps_error
    )

    primary = next((n for n in accountants if ACCOUNTANTS[n].kind == "tight"), accountants[0])
    devices = [a for a in audits if a.device_id != SERVER_ID]
    server = next((a for a in audits if a.device_id == SERVER_ID), None)
    _population_notes(devices, server)
    curve_acc, curve_interval = _device_curves(
        per_ledger,
        devices,
        results,
        accountants,
        workers,
        value_discretization_interval,
        eps_error,
    )
    curve_rounds, curve_max, curve_median, claimed_max = _curves(devices)

    return AuditReport(
        source=str(source),
        ledger_dir=str(ledger_dir),
        out_dir=None,
        accountants=accountants,
        budget=budget,
        target_delta=target_delta,
        value_discretization_interval=value_discretization_interval,
        eps_error=eps_error,
        devices=devices,
        server=server,
        primary_accountant=primary,
        curve_accountant=curve_acc,
        curve_interval=curve_interval if curve_acc == "pld" else None,
        curve_rounds=curve_rounds,
        curve_max=curve_max,
        curve_median=curve_median,
        claimed_curve_max=claimed_max,
        distinct_histories=len(jobs),
        created=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    )


def _checked_accountants(
    accountants: Sequence[str], budget: float | None, target_delta: float | None
) -> tuple[str, ...]:
    """The accountants without repeats, after checking :func:`audit_run`'s arguments."""
    accountants = tuple(dict.fromkeys(accountants))
    if not accountants:
        raise ValueError("give at least one accountant (pld, prv, rdp).")
    for name in accountants:
        if name not in ACCOUNTANTS:
            raise ValueError(f"unknown accountant {name!r}; choose from {', '.join(ACCOUNTANTS)}.")
    if budget is not None and not budget > 0:
        raise ValueError(f"budget must be a positive ε, got {budget!r}.")
    if target_delta is not None and not 0 < target_delta < 1:
        raise ValueError(f"target_delta must be in (0, 1), got {target_delta!r}.")
    return accountants


def _read_ledgers(
    files: Sequence[Path], key_dir: Path, all_signatures: bool, target_delta: float | None
) -> list[tuple[LedgerAudit, list[dict], list[PrivacyEvent]]]:
    """Each ledger's audit (described, its δ set), records and releases, in file order."""
    per_ledger: list[tuple[LedgerAudit, list[dict], list[PrivacyEvent]]] = []
    for audit, records in _read_all(files, key_dir, all_signatures):
        releases = _describe(audit, records)
        if target_delta is not None:
            audit.target_delta = float(target_delta)
        elif math.isnan(audit.target_delta):
            audit.target_delta = 1e-5
            audit.notes.append("no δ recorded; audited at 1e-5")
        per_ledger.append((audit, records, releases))
    return per_ledger


def _final_epsilons(
    per_ledger: Sequence[tuple[LedgerAudit, list[dict], list[PrivacyEvent]]],
    accountants: tuple[str, ...],
    budget: float | None,
    workers: int | None,
    value_discretization_interval: float,
    eps_error: float,
) -> tuple[dict[_Key, tuple[str, ...]], dict[_Key, dict[str, Any]]]:
    """Judge each ledger's final ε and budget; return the jobs run and their results.

    One evaluation per distinct (history, δ), with each ledger's claim accountant.
    """
    jobs: dict[_Key, tuple[str, ...]] = {}
    keys: list[_Key] = []
    for audit, records, releases in per_ledger:
        key = (canonical_history(releases), audit.target_delta)
        names = list(_accountants_for(key[0], accountants))
        claim = records[-1].get("accountant") if records else None
        if claim in ACCOUNTANTS and claim not in names and claim != "analytic":
            names.append(claim)
        jobs[key] = tuple(dict.fromkeys((*jobs.get(key, ()), *names)))
        keys.append(key)
    n_workers = _resolve_workers(workers, len(jobs))
    results = _evaluate_all(jobs, value_discretization_interval, eps_error, n_workers)
    for (audit, records, _), key in zip(per_ledger, keys, strict=True):
        _judge(audit, results[key], records)
        _set_budget(audit, records, budget)
    return jobs, results


def _population_notes(devices: Sequence[LedgerAudit], server: LedgerAudit | None) -> None:
    """Notes on device ledgers with user units and on a server δ too large for the population."""
    for audit in devices:
        if audit.unit == "user":
            audit.notes.append("a device ledger with unit 'user' (expected in server.jsonl)")
    if server is not None and devices and server.target_delta >= 1.0 / len(devices):
        server.notes.append(
            f"user-level δ = {server.target_delta:g} is not well below 1/population "
            f"(1/{len(devices)} devices audited): the guarantee allows leaking a whole user"
        )


def _device_curves(
    per_ledger: Sequence[tuple[LedgerAudit, list[dict], list[PrivacyEvent]]],
    devices: Sequence[LedgerAudit],
    results: dict[_Key, dict[str, Any]],
    accountants: tuple[str, ...],
    workers: int | None,
    value_discretization_interval: float,
    eps_error: float,
) -> tuple[str, float]:
    """Set each device's ε-over-rounds curve; return the curve's accountant and PLD interval.

    ε after each round with a release, per device. Drawn with PLD (on a grid no finer than
    _CURVE_INTERVAL where the value is not already known from the final ε), or with RDP when
    PLD is not among the accountants or the prefixes are too many; PRV would cost as much as
    PLD on the fine grid per point.
    """
    curve_acc = "pld" if "pld" in accountants else "rdp"
    curve_interval = max(value_discretization_interval, _CURVE_INTERVAL)
    prefix_keys: dict[_Key, tuple[str, ...]] = {}
    device_prefixes: list[list[tuple[int, _Key]]] = []
    for audit, _, releases in per_ledger:
        if audit.device_id == SERVER_ID:
            continue
        points = _round_prefixes(audit, releases)
        device_prefixes.append(points)
        for _, key in points:
            prefix_keys[key] = (curve_acc,)
    if curve_acc != "rdp" and len(set(prefix_keys) - set(results)) > _CURVE_KEY_LIMIT:
        curve_acc = "rdp"  # cheap and exact for its bound; labelled as such
        prefix_keys = dict.fromkeys(prefix_keys, ("rdp",))
    todo = {
        k: v
        for k, v in prefix_keys.items()
        if k not in results or curve_acc not in results[k]["epsilon"]
    }
    curve_results = _evaluate_all(
        todo, curve_interval, eps_error, _resolve_workers(workers, len(todo))
    )
    for audit, points in zip(devices, device_prefixes, strict=True):
        audit.curve = [
            (rnd, (curve_results.get(key) or results[key])["epsilon"][curve_acc])
            for rnd, key in points
        ]
    return curve_acc, curve_interval


def _round_prefixes(audit: LedgerAudit, releases: Sequence[PrivacyEvent]) -> list[tuple[int, _Key]]:
    """``(round, (history so far, δ))`` after each round with a release (its last release)."""
    points: list[tuple[int, _Key]] = []
    totals: dict[tuple[float, float | None], int] = {}
    for i, (rnd, release) in enumerate(zip(audit.rounds, releases, strict=True)):
        if not release.is_noop:
            group = (release.noise_multiplier, release.sampling_probability)
            totals[group] = totals.get(group, 0) + release.steps
        if i + 1 < len(audit.rounds) and audit.rounds[i + 1] == rnd:
            continue  # several releases in one round: the ε after the last
        prefix = canonical_history(PrivacyEvent(s, q, n) for (s, q), n in totals.items())
        points.append((rnd, (prefix, audit.target_delta)))
    return points


def _write_report(report: AuditReport, out: Path, plots: bool, start: float) -> None:
    """Write ``report.md``, ``report.json`` and (with ``plots``) the plots into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    report.out_dir = str(out)
    if plots:
        report.files.update(_write_plots(report, out))
    report.files["report_md"] = str(out / "report.md")
    report.files["report_json"] = str(out / "report.json")
    report.elapsed_s = time.perf_counter() - start
    (out / "report.md").write_text(render_markdown(report), encoding="utf-8")
    (out / "report.json").write_text(
        json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )


def _curves(
    devices: Sequence[LedgerAudit],
) -> tuple[list[int], list[float], list[float], list[float]]:
    rounds = sorted({rnd for a in devices for rnd, _ in a.curve})
    if not rounds:
        return [], [], [], []
    columns: list[list[float]] = []
    claimed_columns: list[list[float]] = []
    for audit in devices:
        columns.append(_forward_fill(audit.curve, rounds))
        if audit.claimed_curve:
            claimed_columns.append(_forward_fill(audit.claimed_curve, rounds))
    curve_max, curve_median, claimed_max = [], [], []
    for i in range(len(rounds)):
        values = [c[i] for c in columns if not math.isnan(c[i])]
        curve_max.append(max(values) if values else math.nan)
        curve_median.append(statistics.median(values) if values else math.nan)
        claims = [c[i] for c in claimed_columns if not math.isnan(c[i])]
        claimed_max.append(max(claims) if claims else math.nan)
    return rounds, curve_max, curve_median, claimed_max


def _forward_fill(points: Iterable[tuple[int, float]], rounds: Sequence[int]) -> list[float]:
    by_round: dict[int, float] = {}
    for rnd, value in points:
        by_round[rnd] = value
    out, current = [], 0.0
    for rnd in rounds:
        current = by_round.get(rnd, current)
        out.append(current)
    return out


# --------------------------------------------------------------------------- output


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _ledger_dict(audit: LedgerAudit) -> dict[str, Any]:
    data = asdict(audit)
    data.pop("curve")
    data.pop("claimed_curve")
    return data


def _assumptions(report: AuditReport) -> dict[str, Any]:
    sampling = sorted({s for a in report.devices for s in a.sampling})
    deltas = sorted({a.target_delta for a in report.devices if not math.isnan(a.target_delta)})
    out = {
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
        "ledger are not accounted (verification shows none were removed or altered, except "
        "records cut off the end, which only the server's view can reveal)",
        "randomness": (
            "as recorded per release, not verified: 'os-entropy' noise and sampling cannot be "
            "replayed; 'seeded' ones (reproducible runs) can by anyone who knows the seed, so "
            "their guarantee does not hold against such a party"
        ),
        "claims": "a device's claim is its last record's claimed_epsilon; 'match' means the "
        f"same accountant here gives the same ε within {_SLACK:g} (relative)",
    }
    return out


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if math.isinf(value):
        return "∞"
    return f"{value:.{digits}f}"


def render_markdown(report: AuditReport) -> str:
    """Return the human report (Markdown)."""
    lines: list[str] = []
    for section in (
        _md_summary,
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
    status = "PASS" if report.ok else "FAIL"
    add(f"# Privacy audit: {status}")
    add("")
    add(
        f"- Source: `{report.source}` ({len(report.devices)} device ledgers"
        + (", server ledger" if report.server is not None else "")
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
        add(f"- Budget checked: ε ≤ {report.budget:g} for every ledger (audit setting)")
    else:
        add("- Budget checked: each ledger's declared `budget_epsilon`, where declared")
    add("")
    return lines


def _md_assumptions(report: AuditReport) -> list[str]:
    """The assumptions section."""
    lines: list[str] = []
    add = lines.append
    add("## Assumptions")
    add("")
    assumptions = _assumptions(report)
    add(f"- **Unit of privacy (devices):** {assumptions['unit_of_privacy']['devices']}.")
    add(f"- **Unit of privacy (server):** {assumptions['unit_of_privacy']['server']}.")
    add(f"- **Neighbouring relation:** {assumptions['neighbouring_relation']}.")
    deltas = ", ".join(f"{d:g}" for d in assumptions["target_delta"]) or "—"
    add(f"- **δ:** {deltas} (as recorded per ledger unless overridden).")
    add(f"- **Mechanism:** {assumptions['mechanism']}.")
    add(f"- **Sampling:** {assumptions['sampling']}.")
    add(f"- **Composition:** {assumptions['composition']}.")
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
    add(f"- **Claims:** {assumptions['claims']}.")
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
        add(
            f"- {a.device_id}: claimed {_fmt(a.claimed_epsilon)} ({a.claim_accountant}), "
            f"tight lower bound {_fmt(a.lower_epsilon)}"
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
            if report.curve_accountant == "pld":
                how = (
                    "PLD; points that are not a device's final ε on a grid of "
                    f"{report.curve_interval:g}"
                )
            else:
                how = "RDP upper bound" + (
                    ", because the histories were too many to draw with PLD"
                    if "pld" in report.accountants
                    else ""
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
    add(f"Reports: `report.json` (machine-readable, format `{REPORT_FORMAT}`), this file.")
    add("")
    return lines


def _write_plots(report: AuditReport, out: Path) -> dict[str, str]:
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
