"""Recompute every device's ε from a run's signed ledgers, and check what can be checked.

:func:`audit_run` is what ``fedrec audit RUN`` does:

1. read the run manifest (``RUN/manifest.json``, :mod:`fedrec.common.audit.manifest`) and
   verify its signature with the operator key (pinned by the auditor, or the manifest's own,
   which the report then says); it gives the key registry, the population and the policy;
2. verify every ledger's hash chain and signatures with the key *registered at enrollment*
   (a key file beside a ledger is only compared with the registry; without a manifest the key
   files are used and the report says they were not pinned), and name the first bad record;
3. check every device ledger against the server's signed receipts
   (:mod:`fedrec.common.audit.receipts`): records cut off the end, deleted devices and
   rewritten records fail (:mod:`fedrec.common.audit.crosscheck`);
4. replay the recorded releases through independent accountants (PLD from Google's
   ``dp_accounting`` on a grid refined per history, :func:`~fedrec.common.privacy.accounting.
   pld_estimate`, and PRV from Opacus as the tight ones, RDP as a check; the exact analytic
   Gaussian accountant when nothing is sampled), and flag accountants that disagree beyond
   their stated errors;
5. check the claim of *every* record against a tight lower bound of ε after it, and each
   device's ε against the run's budget (the manifest's policy; ``--budget`` overrides; without
   a manifest, each ledger's own declaration, which the report calls self-declared);
6. write ``report.json``, ``report.md``, one self-contained ``report.html`` and the plots
   (:mod:`fedrec.common.audit.render`), stating the trust model, what was verified and what
   was taken on trust.

ε depends only on the multiset of ``(σ, q) → steps`` (:func:`~fedrec.common.privacy.accounting.
canonical_history`), so the work is one evaluation per *distinct* history, not per device.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedrec.common.audit.crosscheck import (
    SERVER_ID,
    Finding,
    KeySource,
    check_receipts,
    diagnose_signer,
    policy_notes,
)
from fedrec.common.audit.keystore import fingerprint
from fedrec.common.audit.ledger import (
    FORMAT,
    Ledger,
    LedgerError,
    library_versions,
    load_public_key,
    releases_from_ledger,
    verify_ledger,
)
from fedrec.common.audit.manifest import MANIFEST_FILE, Manifest, load_manifest
from fedrec.common.audit.receipts import ReceiptsResult, verify_receipts
from fedrec.common.privacy.accounting import (
    ACCOUNTANTS,
    DEFAULT_EPS_ERROR,
    DEFAULT_VALUE_DISCRETIZATION_INTERVAL,
    PLD_START_INTERVAL,
    History,
    PrivacyEvent,
    accountant_error,
    brackets_overlap,
    canonical_history,
    epsilon,
    pld_estimate,
)
from fedrec.common.privacy.randomness import SEEDED_WARNING

__all__ = [
    "AuditReport",
    "Finding",
    "LedgerAudit",
    "audit_run",
    "find_ledger_dir",
    "render_markdown",
    "REPORT_FORMAT",
    "AUDIT_VALUE_DISCRETIZATION_INTERVAL",
]

REPORT_FORMAT = "fedrec-audit/2"
AUDIT_VALUE_DISCRETIZATION_INTERVAL = PLD_START_INTERVAL
"""The audit's first PLD grid. Each history's grid is then refined (4x at a time) until ε
moves by at most 0.5 % (or 0.001) in a refinement, which is what the audit states as PLD's
error (:func:`~fedrec.common.privacy.accounting.pld_estimate`): 1e-3 alone overstates
ε = 0.2557 as 0.2671 (q = 0.001, σ = 1, 3,000 steps). ``fedrec audit --pld-interval X`` fixes
the grid instead, with the worst-case error ``X × steps``."""
_SLACK = 1e-6


@dataclass
class LedgerAudit:
    """The audit of one ledger (one device, or the server).

    Attributes:
        device_id: The signer (the file stem).
        path: The ledger file.
        unit: Unit of privacy of its records (``"example"``, ``"user"``, or ``"mixed"``).
        n_records: Records that could be parsed.
        integrity: ``"ok"``, ``"tampered"``, ``"no-key"`` (no public key to check it with),
            ``"not-enrolled"`` (not in the manifest's key registry) or ``"unreadable"``.
        first_bad_seq: First bad record of a tampered ledger.
        reason: Why it is not ``"ok"``.
        key_source: ``"registry"`` (the key pinned at enrollment) or ``"folder"`` (the key
            file beside the ledger: not pinned).
        key_fingerprint: SHA-256 of the key it was verified with.
        target_delta: δ the ε values are at.
        epsilon: ε per accountant (``nan`` where an accountant failed; see ``failures``).
        error: Stated error per accountant (how far above the true ε its value may be; for
            PLD measured from the convergence of its grid).
        bound: Proven bound on that error per accountant (PLD: ``interval × steps``).
        pld_interval: The PLD grid spacing the final ε was computed on.
        certified_epsilon: The smallest tight upper bound (the ε the audit stands behind).
        lower_epsilon: The largest proven lower bound ``ε - bound`` of a tight accountant.
        claimed_epsilon: The device's own cumulative ε in its last record.
        claim_accountant: Which accountant the device says it used.
        claim_status: The last record's claim: ``"match"``, ``"conservative"`` (claims more
            than recomputed), ``"within-error"``, ``"under-claimed"`` (claims less than any
            valid accounting allows), ``"none"`` (no claim) or ``"unchecked"``.
        under_claimed_seqs: Every record whose claim is below the lower bound of ε after it.
        budget_epsilon: The budget checked against.
        budget_source: ``"audit"`` (``--budget``), ``"policy"`` (the run manifest),
            ``"declared"`` (the ledger's own, without a manifest) or ``None``.
        over_budget: ``certified_epsilon > budget_epsilon``.
        receipts: Releases of this ledger the server countersigned.
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
    key_source: str | None = None
    key_fingerprint: str | None = None
    target_delta: float = math.nan
    epsilon: dict[str, float] = field(default_factory=dict)
    error: dict[str, float] = field(default_factory=dict)
    bound: dict[str, float] = field(default_factory=dict)
    pld_interval: float | None = None
    certified_epsilon: float = math.nan
    lower_epsilon: float = math.nan
    claimed_epsilon: float | None = None
    claim_accountant: str | None = None
    claim_status: str = "none"
    under_claimed_seqs: list[int] = field(default_factory=list)
    budget_epsilon: float | None = None
    budget_source: str | None = None
    over_budget: bool = False
    receipts: int = 0
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
    # (seq, round, claimed ε or None, key of the history up to and with this record)
    prefixes: list[tuple[int, int, float | None, Any]] = field(default_factory=list, repr=False)

    @property
    def tampered(self) -> bool:
        """Whether the ledger failed verification (or could not be verified)."""
        return self.integrity != "ok"


@dataclass
class AuditContext:
    """What the audit knew beyond the ledgers: the manifest, the receipts, the key source.

    Attributes:
        run_dir: The run directory (where a manifest would be).
        manifest: The manifest as read (``None``: there was none).
        receipts: The receipts as verified (``None``: none read).
        keys_pinned: Whether ledgers were verified with keys from a signed registry.
        findings: Problems found outside any one ledger (manifest, receipts).
    """

    run_dir: Path
    manifest: Manifest | None = None
    receipts: ReceiptsResult | None = None
    keys_pinned: bool = False
    findings: list[Finding] = field(default_factory=list)

    @property
    def policy(self) -> dict[str, Any]:
        """The declared policy of a verified manifest (``{}`` without one)."""
        return self.manifest.policy if self.manifest is not None and self.manifest.ok else {}

    def to_dict(self) -> dict[str, Any]:
        """The manifest and receipts part of ``report.json``."""
        m, r = self.manifest, self.receipts
        return {
            "manifest": None
            if m is None
            else {
                "path": str(m.path),
                "verified": m.ok,
                "problems": m.problems,
                "operator_fingerprint": m.operator_fingerprint,
                "operator_key_pinned": m.operator_pinned,
                "devices_enrolled": len(m.keys),
                "policy": m.policy if m.ok else None,
                "trust": m.data.get("trust") if m.ok else None,
            },
            "receipts": None
            if r is None
            else {
                "verified": r.ok,
                "problem": r.reason,
                "receipts": len(r.receipts),
                "sealed": r.sealed,
                "last_round": r.last_round,
            },
            "keys_pinned": self.keys_pinned,
        }


@dataclass
class AuditReport:
    """Everything :func:`audit_run` found; ``to_dict()`` is what ``report.json`` holds."""

    source: str
    ledger_dir: str
    out_dir: str | None
    accountants: tuple[str, ...]
    budget: float | None
    target_delta: float | None
    value_discretization_interval: float | None
    eps_error: float
    devices: list[LedgerAudit]
    server: LedgerAudit | None
    primary_accountant: str
    curve_accountant: str
    curve_rounds: list[int]
    curve_max: list[float]
    curve_median: list[float]
    claimed_curve_max: list[float]
    distinct_histories: int
    context: AuditContext
    findings: list[Finding] = field(default_factory=list)
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
        """Ledgers with a record that claims less ε than any valid accounting allows."""
        return [a for a in self.ledgers if a.under_claimed_seqs]

    @property
    def ok(self) -> bool:
        """Nothing failed (what ``fedrec audit`` exits 0 on); :attr:`findings` says why not."""
        return not self.findings

    @property
    def mode(self) -> str | None:
        """The run's privacy mode, from its manifest (``None`` without one)."""
        return self.context.policy.get("privacy")

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
        from fedrec.common.audit.render import assumptions, trust_statement

        summaries = {name: self.summary(name) for name in (*self.accountants, "certified")}
        data = {
            "format": REPORT_FORMAT,
            "created": self.created,
            "source": self.source,
            "ledger_dir": self.ledger_dir,
            "ledger_format": FORMAT,
            "ok": self.ok,
            "verdict": "PASS" if self.ok else "FAIL",
            "findings": [asdict(f) for f in self.findings],
            "settings": {
                "accountants": list(self.accountants),
                "primary_accountant": self.primary_accountant,
                "budget": self.budget,
                "target_delta_override": self.target_delta,
                "value_discretization_interval": self.value_discretization_interval,
                "prv_eps_error": self.eps_error,
                "auditor_versions": library_versions(),
            },
            **self.context.to_dict(),
            **trust_statement(self),
            "assumptions": assumptions(self),
            "summary": {
                "devices": len(self.devices),
                "distinct_histories": self.distinct_histories,
                "example_level": summaries,
                "user_level": _ledger_dict(self.server) if self.server is not None else None,
            },
            "flags": _flags(self),
            "curves": {
                "accountant": self.curve_accountant,
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


def _flags(report: AuditReport) -> dict[str, list[dict[str, Any]]]:
    return {
        "tampered": [
            {"device_id": a.device_id, "first_bad_seq": a.first_bad_seq, "reason": a.reason}
            for a in report.tampered
        ],
        "over_budget": [
            {
                "device_id": a.device_id,
                "certified_epsilon": a.certified_epsilon,
                "budget_epsilon": a.budget_epsilon,
                "budget_source": a.budget_source,
            }
            for a in report.over_budget
        ],
        "disagreements": [
            {"device_id": a.device_id, "details": a.disagreements} for a in report.disagreements
        ],
        "under_claimed": [
            {
                "device_id": a.device_id,
                "seqs": a.under_claimed_seqs,
                "claimed_epsilon": a.claimed_epsilon,
                "lower_epsilon": a.lower_epsilon,
            }
            for a in report.under_claimed
        ],
    }


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


def _run_root(source: Path, ledger_dir: Path) -> Path:
    """The folder a manifest and receipts would be in."""
    if ledger_dir != source or ledger_dir.name == "ledgers":
        return ledger_dir.parent
    return ledger_dir


def _default_out_dir(source: Path, ledger_dir: Path) -> Path:
    if ledger_dir != source:
        return source / "audit"
    if ledger_dir.name == "ledgers":
        return ledger_dir.parent / "audit"
    return ledger_dir / "audit"


# --------------------------------------------------------------------------- evaluation

_Key = tuple[History, float]  # (canonical history, δ)


def _evaluate(args: tuple[_Key, tuple[str, ...], float | None, float]) -> dict[str, Any]:
    """ε, stated error and proven error bound of one history for each accountant."""
    (history, delta), accountants, interval, eps_error = args
    releases = [PrivacyEvent(s, q, n) for s, q, n in history]
    out: dict[str, Any] = {"epsilon": {}, "error": {}, "bound": {}, "failures": {}}
    out["pld_interval"] = None
    for name in accountants:
        try:
            if name == "pld" and interval is None:
                est = pld_estimate(releases, target_delta=delta)
                value, error, bound = est.epsilon, est.error, est.bound
                out["pld_interval"] = est.interval
            else:
                grid = DEFAULT_VALUE_DISCRETIZATION_INTERVAL if interval is None else interval
                value = epsilon(
                    releases,
                    target_delta=delta,
                    accountant=name,
                    value_discretization_interval=grid,
                    eps_error=eps_error,
                )
                error = bound = accountant_error(
                    name, releases, value_discretization_interval=grid, eps_error=eps_error
                )
                if name == "pld":
                    out["pld_interval"] = grid
        except Exception as exc:  # noqa: BLE001 - one accountant's failure is a finding
            value = error = bound = math.nan
            out["failures"][name] = f"{type(exc).__name__}: {exc}"
        out["epsilon"][name], out["error"][name], out["bound"][name] = value, error, bound
    return out


def _unsampled(history: History) -> bool:
    return bool(history) and all(q is None for _, q, _ in history)


def _accountants_for(history: History, requested: Sequence[str]) -> tuple[str, ...]:
    names = list(requested)
    if _unsampled(history) and "analytic" not in names:
        names.append("analytic")  # exact when nothing is sampled
    return tuple(names)


def _prefix_accountants(requested: Sequence[str]) -> tuple[str, ...]:
    """Accountants for ε after each record: a proven tight bracket, cheaply (PRV first)."""
    if "prv" in requested:
        return ("prv",)
    tight = tuple(n for n in requested if ACCOUNTANTS[n].kind == "tight")
    return tight or tuple(requested[:1])


def _evaluate_all(
    jobs: dict[_Key, tuple[str, ...]], interval: float | None, eps_error: float, workers: int
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
    path: Path, keys: KeySource, device_id: str, all_signatures: bool = True
) -> tuple[LedgerAudit, list[dict]]:
    """Verify one ledger with the key its signer enrolled (or, without a registry, its file)."""
    audit = LedgerAudit(device_id=device_id, path=str(path))
    audit.key_source = "registry" if keys.pinned else "folder"
    key, problem = keys.key(device_id)
    try:
        if key is None:
            records = Ledger.read(path)
            audit.integrity = "not-enrolled" if keys.pinned else "no-key"
            audit.reason = problem + "; the ledger cannot be verified"
        else:
            audit.key_fingerprint = fingerprint(key)
            result = verify_ledger(
                path, key, expected_device_id=device_id, all_signatures=all_signatures
            )
            records = result.records
            if not result.ok:
                audit.integrity = "tampered"
                audit.first_bad_seq = result.first_bad_seq
                audit.reason = result.reason
                if "signature does not verify" in result.reason:
                    audit.reason += diagnose_signer(path, device_id, keys)
    except (OSError, ValueError, LedgerError) as exc:
        audit.integrity = "unreadable"
        audit.reason = f"{type(exc).__name__}: {exc}"
        records = []
    audit.n_records = len(records)
    return audit, records


def _describe(audit: LedgerAudit, records: list[dict]) -> list[tuple[dict, PrivacyEvent]]:
    """Fill the descriptive fields; return each record with its release (skipping others)."""
    pairs: list[tuple[dict, PrivacyEvent]] = []
    units, sampling, sigmas, deltas, sources = set(), set(), set(), [], set()
    for record in records:
        try:
            (release,) = releases_from_ledger([record])
        except (LedgerError, ValueError) as exc:
            audit.notes.append(f"record seq {record.get('seq')!r} skipped: {exc}")
            continue
        pairs.append((record, release))
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
    audit.rounds = [int(r.get("round", -1)) for r, _ in pairs]
    audit.steps = sum(rel.steps for _, rel in pairs)
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
    return pairs


def _set_prefixes(audit: LedgerAudit, pairs: Sequence[tuple[dict, PrivacyEvent]]) -> None:
    """The history after each record (what its claim must cover)."""
    totals: dict[tuple[float, float | None], int] = {}
    audit.prefixes = []
    for record, release in pairs:
        if not release.is_noop:
            group = (release.noise_multiplier, release.sampling_probability)
            totals[group] = totals.get(group, 0) + release.steps
        prefix = canonical_history(PrivacyEvent(s, q, n) for (s, q), n in totals.items())
        claimed = record.get("claimed_epsilon")
        if not isinstance(claimed, (int, float)) or isinstance(claimed, bool):
            claimed = None
        seq, rnd = int(record.get("seq", -1)), int(record.get("round", -1))
        audit.prefixes.append((seq, rnd, claimed, (prefix, audit.target_delta)))


def _judge(audit: LedgerAudit, result: dict[str, Any], records: list[dict]) -> None:
    """Final ε, certified value, proven lower bound, disagreements, and the last claim."""
    audit.epsilon = dict(result["epsilon"])
    audit.error = dict(result["error"])
    audit.bound = dict(result["bound"])
    audit.failures = dict(result["failures"])
    audit.pld_interval = result.get("pld_interval")
    tight = [
        n for n, e in audit.epsilon.items() if ACCOUNTANTS[n].kind == "tight" and not math.isnan(e)
    ]
    if tight:
        audit.certified_epsilon = min(audit.epsilon[n] for n in tight)
        audit.lower_epsilon = _lower(result, tight)
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
    last = records[-1] if records else {}
    claimed = last.get("claimed_epsilon")
    audit.claim_accountant = last.get("accountant")
    if isinstance(claimed, (int, float)) and not isinstance(claimed, bool):
        audit.claimed_epsilon = float(claimed)
        audit.claim_status = _claim_status(audit)
    audit.claimed_curve = [
        (rnd, float(c)) for _, rnd, c, _ in audit.prefixes if c is not None and rnd >= 0
    ]


def _lower(result: dict[str, Any], names: Sequence[str] | None = None) -> float:
    """The largest proven lower bound ``ε - bound`` among tight accountants (``nan``: none)."""
    names = names or [n for n in result["epsilon"] if ACCOUNTANTS[n].kind == "tight"]
    values = [
        result["epsilon"][n] - result["bound"][n]
        for n in names
        if not math.isnan(result["epsilon"][n]) and not math.isnan(result["bound"][n])
    ]
    return max(values) if values else math.nan


def _claim_status(audit: LedgerAudit) -> str:
    claimed = audit.claimed_epsilon
    assert claimed is not None
    if not math.isnan(audit.lower_epsilon) and claimed < audit.lower_epsilon - _tolerance(claimed):
        return "under-claimed"
    name = audit.claim_accountant
    if name not in audit.epsilon or math.isnan(audit.epsilon[name]):
        return "unchecked"
    same = audit.epsilon[name]
    if math.isinf(same) or math.isinf(claimed):
        return "match" if same == claimed else "conservative" if claimed > same else "within-error"
    if abs(claimed - same) <= _tolerance(same):
        return "match"
    return "conservative" if claimed > same else "within-error"


def _tolerance(value: float) -> float:
    return _SLACK * max(1.0, abs(value)) if math.isfinite(value) else 0.0


def _check_claims(audit: LedgerAudit, results: dict[_Key, dict[str, Any]]) -> list[Finding]:
    """Every record's claim against the proven lower bound of ε after it."""
    under: list[tuple[int, int, float, float]] = []
    for seq, rnd, claimed, key in audit.prefixes:
        if claimed is None or key not in results:
            continue
        lower = _lower(results[key])
        if not math.isnan(lower) and claimed < lower - _tolerance(lower):
            under.append((seq, rnd, claimed, lower))
    audit.under_claimed_seqs = [seq for seq, *_ in under]
    if not under:
        return []
    seq, rnd, claimed, lower = under[0]
    more = f" ({len(under)} records under-claim)" if len(under) > 1 else ""
    where = "its last record" if seq == audit.prefixes[-1][0] else "an earlier record"
    return [
        Finding(
            audit.device_id,
            "claim",
            f"{audit.device_id}: record seq {seq} (round {rnd}, {where}) claims ε "
            f"{claimed:.4f}, but its releases up to there give at least ε {lower:.4f}: an "
            f"under-claim{more}",
        )
    ]


def _set_budget(
    audit: LedgerAudit, records: list[dict], budget: float | None, policy: dict[str, Any]
) -> None:
    """The budget to check against: the audit's, else the run's policy, else the declared."""
    declared = None
    for record in reversed(records):
        value = record.get("budget_epsilon")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            declared = float(value)
            break
    if budget is not None and audit.unit != "user":
        audit.budget_epsilon, audit.budget_source = float(budget), "audit"
    elif policy.get("epsilon_budget") is not None:
        audit.budget_epsilon, audit.budget_source = float(policy["epsilon_budget"]), "policy"
    elif declared is not None:
        audit.budget_epsilon, audit.budget_source = declared, "declared"
    if audit.budget_epsilon is not None and not math.isnan(audit.certified_epsilon):
        audit.over_budget = audit.certified_epsilon > audit.budget_epsilon + 1e-12


def _budget_finding(audit: LedgerAudit, records: list[dict]) -> list[Finding]:
    if not audit.over_budget:
        return []
    source = {
        "audit": "the audit's budget (--budget)",
        "policy": "the run's budget (manifest)",
        "declared": "the budget the ledger declares",
    }[audit.budget_source or "declared"]
    declared = {r.get("budget_epsilon") for r in records} - {None}
    extra = ""
    if audit.budget_source != "declared" and declared and declared != {audit.budget_epsilon}:
        extra = f"; the ledger declares {', '.join(f'{d:g}' for d in sorted(declared))}"
    return [
        Finding(
            audit.device_id,
            "budget",
            f"{audit.device_id}: certified ε {audit.certified_epsilon:.4f} exceeds "
            f"{source}, {audit.budget_epsilon:g}{extra}",
        )
    ]


def _integrity_findings(audit: LedgerAudit, keys: KeySource) -> list[Finding]:
    out = []
    if audit.integrity != "ok":
        check = "key" if audit.integrity in ("no-key", "not-enrolled") else "integrity"
        seq = "" if audit.first_bad_seq is None else f" at seq {audit.first_bad_seq}"
        message = f"{audit.device_id}: {audit.integrity}{seq}: {audit.reason}"
        out.append(Finding(audit.device_id, check, message))
    swapped = keys.key_file_problem(audit.device_id)
    if swapped:
        out.append(Finding(audit.device_id, "key", f"{audit.device_id}: {swapped}"))
    return out


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
    value_discretization_interval: float | None = None,
    eps_error: float = DEFAULT_EPS_ERROR,
    all_signatures: bool = True,
    manifest: str | Path | None = None,
    operator_key: Ed25519PublicKey | str | Path | bytes | None = None,
) -> AuditReport:
    """Audit a run's ledgers; write ``report.json``, ``report.md``, ``report.html``, plots.

    Args:
        path: A run directory with ``ledgers/``, or a ledgers folder.
        accountants: Accountants to replay with (``"pld"``, ``"prv"``, ``"rdp"``;
            ``"analytic"`` is added for ledgers with no sampled release). The first tight
            one is the primary (its ε is the one summarised first).
        budget: An example-level ε budget to check every device ledger against (overrides
            the manifest's and declared budgets; user-level ledgers keep theirs).
        target_delta: Audit at this δ instead of the run's (manifest) or the recorded one.
        out_dir: Where to write the reports (default ``RUN/audit``).
        write: Write the report files (``False``: only return the report).
        plots: Also write the PNG plots (embedded in the HTML page too).
        workers: Processes for the accountants (default: up to 8 when there are many
            distinct histories; 1 disables).
        value_discretization_interval: A fixed PLD grid (``None``, the default: refined per
            history, :func:`~fedrec.common.privacy.accounting.pld_estimate`).
        eps_error: Opacus PRV ``eps_error``.
        all_signatures: Check every record's signature (default). ``False`` checks each
            chain's last one only (see :func:`~fedrec.common.audit.ledger.verify_ledger`).
        manifest: The run manifest (default ``RUN/manifest.json`` when there is one).
        operator_key: The operator's public key (PEM file, bytes or key), to pin the key
            that signed the manifest; without it the manifest's own key is used, and the
            report says so.
    """
    start = time.perf_counter()
    accountants = _checked_accountants(accountants, budget, target_delta)
    source = Path(path)
    ledger_dir = find_ledger_dir(source)
    files = sorted(ledger_dir.glob("*.jsonl"))
    context = _load_context(_run_root(source, ledger_dir), manifest, operator_key)
    if not files and context.manifest is None:
        raise ValueError(f"no *.jsonl ledgers in {ledger_dir}.")
    report = _audit_ledgers(
        source,
        ledger_dir,
        files,
        accountants,
        context,
        budget=budget,
        target_delta=target_delta,
        workers=workers,
        interval=value_discretization_interval,
        eps_error=eps_error,
        all_signatures=all_signatures,
    )
    if write:
        out = Path(out_dir) if out_dir is not None else _default_out_dir(source, ledger_dir)
        _write_report(report, out, plots, start)
    report.elapsed_s = time.perf_counter() - start
    return report


def _load_context(
    run_root: Path,
    manifest: str | Path | None,
    operator_key: Ed25519PublicKey | str | Path | bytes | None,
) -> AuditContext:
    """Read and verify the manifest and the receipts, if there are any."""
    context = AuditContext(run_dir=run_root)
    pinned = load_public_key(operator_key) if operator_key is not None else None
    path = Path(manifest) if manifest is not None else run_root / MANIFEST_FILE
    if manifest is not None and not path.is_file():
        raise FileNotFoundError(f"no manifest at {path}.")
    if not path.is_file():
        if pinned is not None:
            context.findings.append(
                Finding(
                    "manifest",
                    "manifest",
                    f"manifest: none at {path}, so the pinned operator key checks nothing",
                )
            )
        return context
    context.manifest = load_manifest(path, pinned)
    for problem in context.manifest.problems:
        context.findings.append(Finding("manifest", "manifest", f"manifest: {problem}"))
    if not context.manifest.ok:
        return context
    context.keys_pinned = True
    receipts = context.manifest.receipts_path()
    if not receipts.is_file():
        context.findings.append(
            Finding(
                "receipts",
                "receipts",
                f"receipts: {receipts.name} is missing; the manifest names it (deleted)",
            )
        )
        return context
    key = context.manifest.operator_key
    assert key is not None
    context.receipts = verify_receipts(receipts, key)
    if not context.receipts.ok:
        context.findings.append(
            Finding("receipts", "receipts", f"receipts: {context.receipts.reason}")
        )
    elif not context.receipts.sealed:
        context.findings.append(
            Finding(
                "receipts",
                "receipts",
                f"receipts: {receipts.name} does not end with the server's seal: the run did "
                "not finish, or receipts were cut off the end",
            )
        )
    return context


def _key_source(ledger_dir: Path, context: AuditContext) -> KeySource:
    if not context.keys_pinned or context.manifest is None:
        return KeySource(ledger_dir / "keys", None)
    registry = dict(context.manifest.keys)
    if context.manifest.operator_key is not None:
        registry[SERVER_ID] = context.manifest.operator_key
    return KeySource(ledger_dir / "keys", registry)


def _audit_ledgers(
    source: Path,
    ledger_dir: Path,
    files: Sequence[Path],
    accountants: tuple[str, ...],
    context: AuditContext,
    *,
    budget: float | None,
    target_delta: float | None,
    workers: int | None,
    interval: float | None,
    eps_error: float,
    all_signatures: bool,
) -> AuditReport:
    """Read, verify, cross-check and judge every ledger of ``files``; the report (unwritten)."""
    keys = _key_source(ledger_dir, context)
    delta = target_delta if target_delta is not None else context.policy.get("delta")
    per_ledger = _read_ledgers(files, keys, all_signatures, delta)
    findings = list(context.findings)
    findings += _cross_check(per_ledger, context, keys)
    jobs, results = _all_epsilons(per_ledger, accountants, workers, interval, eps_error)
    for audit, records in per_ledger:
        _judge(audit, results[_final_key(audit)], records)
        _set_budget(audit, records, budget, context.policy)
        findings += _check_claims(audit, results) + _budget_finding(audit, records)
    audits = [audit for audit, _ in per_ledger]
    devices = [a for a in audits if a.device_id != SERVER_ID]
    server = next((a for a in audits if a.device_id == SERVER_ID), None)
    _population_notes(devices, server, context)
    curve_acc = _prefix_accountants(accountants)[0]
    for audit in devices:
        audit.curve = _round_points(audit, results, curve_acc)
    curve_rounds, curve_max, curve_median, claimed_max = _curves(devices)
    primary = next((n for n in accountants if ACCOUNTANTS[n].kind == "tight"), accountants[0])
    return AuditReport(
        source=str(source),
        ledger_dir=str(ledger_dir),
        out_dir=None,
        accountants=accountants,
        budget=budget,
        target_delta=target_delta,
        value_discretization_interval=interval,
        eps_error=eps_error,
        devices=devices,
        server=server,
        primary_accountant=primary,
        curve_accountant=curve_acc,
        curve_rounds=curve_rounds,
        curve_max=curve_max,
        curve_median=curve_median,
        claimed_curve_max=claimed_max,
        distinct_histories=len({_final_key(a) for a in audits}),
        context=context,
        findings=_ordered(findings),
        created=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    )


def _ordered(findings: list[Finding]) -> list[Finding]:
    """Run-wide findings first, then by device; no repeats."""
    run_wide = ("manifest", "receipts")
    unique = list(dict.fromkeys(findings))
    return sorted(unique, key=lambda f: (f.subject not in run_wide, f.subject))


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
    files: Sequence[Path], keys: KeySource, all_signatures: bool, delta: float | None
) -> list[tuple[LedgerAudit, list[dict]]]:
    """Each ledger's audit (described, its δ and prefixes set) and records, in file order.

    Serially: a process pool loses to pickling here.
    """
    per_ledger: list[tuple[LedgerAudit, list[dict]]] = []
    for file in files:
        audit, records = _read_ledger(file, keys, file.stem, all_signatures)
        pairs = _describe(audit, records)
        if delta is not None:
            audit.target_delta = float(delta)
        elif math.isnan(audit.target_delta):
            audit.target_delta = 1e-5
            audit.notes.append("no δ recorded; audited at 1e-5")
        _set_prefixes(audit, pairs)
        per_ledger.append((audit, records))
    return per_ledger


def _cross_check(
    per_ledger: Sequence[tuple[LedgerAudit, list[dict]]], context: AuditContext, keys: KeySource
) -> list[Finding]:
    """Integrity and key findings; with a verified manifest, the receipts and the policy."""
    findings: list[Finding] = []
    for audit, records in per_ledger:
        findings += _integrity_findings(audit, keys)
        if context.keys_pinned:
            audit.notes += policy_notes(audit.device_id, records, context.policy)
    if not context.keys_pinned or context.manifest is None or context.receipts is None:
        return findings
    ledgers = {a.device_id: records for a, records in per_ledger}
    found, notes = check_receipts(context.receipts.receipts, ledgers, context.manifest.keys)
    counts: dict[str, int] = {}
    for r in context.receipts.receipts:
        counts[str(r["device_id"])] = counts.get(str(r["device_id"]), 0) + 1
    for audit, _ in per_ledger:
        audit.receipts = counts.get(audit.device_id, 0)
        if audit.device_id in notes:
            audit.notes.append(notes[audit.device_id])
    return findings + found


def _final_key(audit: LedgerAudit) -> _Key:
    return audit.prefixes[-1][3] if audit.prefixes else ((), audit.target_delta)


def _all_epsilons(
    per_ledger: Sequence[tuple[LedgerAudit, list[dict]]],
    accountants: tuple[str, ...],
    workers: int | None,
    interval: float | None,
    eps_error: float,
) -> tuple[dict[_Key, tuple[str, ...]], dict[_Key, dict[str, Any]]]:
    """ε of every distinct final history (every accountant) and prefix (a tight bracket).

    One evaluation per distinct (history, δ), with each ledger's claim accountant too.
    """
    jobs: dict[_Key, tuple[str, ...]] = {}

    def add(key: _Key, names: Sequence[str]) -> None:
        jobs[key] = tuple(dict.fromkeys((*jobs.get(key, ()), *names)))

    prefix_names = _prefix_accountants(accountants)
    for audit, records in per_ledger:
        for *_, key in audit.prefixes:
            add(key, _accountants_for(key[0], prefix_names))
        names = list(_accountants_for(_final_key(audit)[0], accountants))
        claim = records[-1].get("accountant") if records else None
        if claim in ACCOUNTANTS and claim not in names and claim != "analytic":
            names.append(claim)
        add(_final_key(audit), names)
    results = _evaluate_all(jobs, interval, eps_error, _resolve_workers(workers, len(jobs)))
    return jobs, results


def _population_notes(
    devices: Sequence[LedgerAudit], server: LedgerAudit | None, context: AuditContext
) -> None:
    """Notes on device ledgers with user units and on a server δ too large for the population."""
    for audit in devices:
        if audit.unit == "user":
            audit.notes.append("a device ledger with unit 'user' (expected in server.jsonl)")
    manifest = context.manifest
    population = len(manifest.keys) if manifest is not None and manifest.ok else len(devices)
    where = "enrolled" if manifest is not None and manifest.ok else "audited"
    if server is not None and population and server.target_delta >= 1.0 / population:
        server.notes.append(
            f"user-level δ = {server.target_delta:g} is not well below 1/population "
            f"(1/{population} devices {where}): the guarantee allows leaking a whole user"
        )


def _round_points(
    audit: LedgerAudit, results: dict[_Key, dict[str, Any]], accountant: str
) -> list[tuple[int, float]]:
    """``(round, ε after that round's last record)`` with the curve accountant."""
    points: list[tuple[int, float]] = []
    for i, (_, rnd, _, key) in enumerate(audit.prefixes):
        if i + 1 < len(audit.prefixes) and audit.prefixes[i + 1][1] == rnd:
            continue  # several releases in one round: the ε after the last
        value = results[key]["epsilon"].get(accountant, math.nan) if key in results else math.nan
        points.append((rnd, value))
    return points


def _write_report(report: AuditReport, out: Path, plots: bool, start: float) -> None:
    """Write ``report.md``, ``report.json``, ``report.html`` and (with ``plots``) the plots."""
    from fedrec.common.audit.render import render_html, render_markdown, write_plots

    out.mkdir(parents=True, exist_ok=True)
    report.out_dir = str(out)
    if plots:
        report.files.update(write_plots(report, out))
    for key, name in (("report_md", "report.md"), ("report_json", "report.json")):
        report.files[key] = str(out / name)
    report.files["report_html"] = str(out / "report.html")
    report.elapsed_s = time.perf_counter() - start
    (out / "report.md").write_text(render_markdown(report), encoding="utf-8")
    (out / "report.html").write_text(render_html(report), encoding="utf-8")
    (out / "report.json").write_text(
        json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )


def render_markdown(report: AuditReport) -> str:
    """Return the human report (Markdown; :mod:`fedrec.common.audit.render`)."""
    from fedrec.common.audit.render import render_markdown as render

    return render(report)


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


def _forward_fill(points: Sequence[tuple[int, float]], rounds: Sequence[int]) -> list[float]:
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
    for private in ("curve", "claimed_curve", "prefixes"):
        data.pop(private)
    return data
