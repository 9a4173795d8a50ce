"""What the audit checks around each ledger: pinned keys, the server's receipts, the manifest.

A ledger's own chain and signatures prove that nobody edited it *with someone else's key*.
They cannot prove that it is the device's ledger, that it is complete, or that the budget it
declares is the run's. Those need facts from outside the audited folder, which the run
manifest (:mod:`fedrec.common.audit.manifest`) and the server's receipts
(:mod:`fedrec.common.audit.receipts`) provide:

* :class:`KeySource` gives the key each ledger is verified with: the key registered at
  enrollment when there is a verified manifest (a key file beside the ledger is only compared
  with it), else the key file beside the ledger (and the report says it was not pinned);
* :func:`diagnose_signer` names whose key a ledger was really signed with;
* :func:`check_receipts` checks every device ledger against what the server countersigned
  (records cut off the end, a deleted device, a rewritten record);
* :func:`policy_notes` compares a ledger's own declarations with the run's policy.

Every problem is a :class:`Finding`: the device (or ``manifest``, ``receipts``), the check
and a sentence that names both.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedrec.common.audit.keystore import fingerprint
from fedrec.common.audit.ledger import LedgerError, load_public_key

__all__ = [
    "Finding",
    "KeySource",
    "diagnose_signer",
    "check_receipts",
    "policy_notes",
    "SERVER_ID",
]

SERVER_ID = "server"


@dataclass(frozen=True)
class Finding:
    """One reason an audit fails: whom it concerns, which check, what is wrong (in words)."""

    subject: str
    check: str
    message: str


def _short(key: Ed25519PublicKey) -> str:
    return fingerprint(key)[:16] + "…"


class KeySource:
    """The public key each ledger is verified with, and where it came from.

    Args:
        key_dir: the ``keys/`` folder beside the ledgers.
        registry: device id → key pinned at enrollment (from a verified manifest), with the
            operator key under ``"server"``; ``None`` when there is no verified manifest.
    """

    def __init__(self, key_dir: Path, registry: Mapping[str, Ed25519PublicKey] | None):
        self.key_dir = key_dir
        self.registry = dict(registry) if registry is not None else None

    @property
    def pinned(self) -> bool:
        """Whether keys come from a signed registry (not from the audited folder)."""
        return self.registry is not None

    def file_key(self, device_id: str) -> Ed25519PublicKey | None:
        """The key file beside the ledgers, if there is a readable one."""
        path = self.key_dir / f"{device_id}.pub.pem"
        try:
            return load_public_key(path) if path.exists() else None
        except (ValueError, LedgerError):
            return None

    def key(self, device_id: str) -> tuple[Ed25519PublicKey | None, str]:
        """``(key, problem)``: the key to verify with, or why there is none."""
        if self.registry is None:
            key = self.file_key(device_id)
            if key is None:
                return None, f"no public key at {self.key_dir / (device_id + '.pub.pem')}"
            return key, ""
        if device_id not in self.registry:
            return None, "is not in the key registry of the run manifest (never enrolled)"
        return self.registry[device_id], ""

    def key_file_problem(self, device_id: str) -> str:
        """With a registry: why the key file beside the ledger is not the enrolled key."""
        if self.registry is None or device_id not in self.registry:
            return ""
        path = self.key_dir / f"{device_id}.pub.pem"
        if not path.exists():
            return ""
        found = self.file_key(device_id)
        if found is None:
            return f"{path.name} is not a readable Ed25519 public key"
        if fingerprint(found) != fingerprint(self.registry[device_id]):
            return (
                f"the key file {path.name} ({_short(found)}) is not the key enrolled for "
                f"{device_id} ({_short(self.registry[device_id])}): the key was swapped"
            )
        return ""


def diagnose_signer(path: Path, device_id: str, keys: KeySource) -> str:
    """Whose key signed a ledger that does not verify with its enrolled key (a clause)."""
    try:
        record = json.loads(path.read_bytes().split(b"\n", 1)[0])
        digest = bytes.fromhex(record["hash"])
        signature = base64.b64decode(record["signature"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""

    def signed_by(key: Ed25519PublicKey) -> bool:
        try:
            key.verify(signature, digest)
        except InvalidSignature:
            return False
        return True

    found = keys.file_key(device_id)
    beside = found is not None and signed_by(found)
    for other, key in (keys.registry or {}).items():
        if other != device_id and signed_by(key):
            also = " (so is the key file beside it)" if beside else ""
            return f"; it is signed with the key enrolled for {other}{also}"
    if beside and found is not None:
        return (
            f"; it is signed with the key file beside it ({_short(found)}), not with the key "
            f"enrolled for {device_id}"
        )
    return "; it is signed with a key that is not enrolled for any device"


def _receipts_by_device(receipts: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping]]:
    out: dict[str, list[Mapping]] = {}
    for r in receipts:
        out.setdefault(str(r["device_id"]), []).append(r)
    return out


def check_receipts(
    receipts: Sequence[Mapping[str, Any]],
    ledgers: Mapping[str, Sequence[Mapping[str, Any]]],
    enrolled: Iterable[str] | None,
) -> tuple[list[Finding], dict[str, str]]:
    """Check device ledgers against the server's receipts.

    Args:
        receipts: the verified receipts.
        ledgers: device id → its records (only ledgers that exist).
        enrolled: the registry's device ids (``None``: no registry).

    Returns:
        The findings, and per device a note on records the server never countersigned.
    """
    findings: list[Finding] = []
    notes: dict[str, str] = {}
    by_device = _receipts_by_device(receipts)
    enrolled_set = set(enrolled) if enrolled is not None else None
    for device_id, got in sorted(by_device.items()):
        if enrolled_set is not None and device_id not in enrolled_set:
            findings.append(
                Finding(
                    device_id,
                    "receipts",
                    f"{device_id}: the server countersigned {len(got)} release(s) of a device "
                    "that is not in the key registry",
                )
            )
            continue
        records = ledgers.get(device_id)
        if records is None:
            rounds = ", ".join(str(r["round"]) for r in got[:8])
            findings.append(
                Finding(
                    device_id,
                    "missing",
                    f"{device_id}: its ledger is missing, but the server countersigned "
                    f"{len(got)} of its release(s) (rounds {rounds}): the device's ledger "
                    "was deleted",
                )
            )
            continue
        findings += _device_receipts(device_id, got, records)
        last = max(int(r["device_seq"]) for r in got)
        extra = len(records) - 1 - last
        if extra > 0:
            notes[device_id] = (
                f"{extra} record(s) after seq {last}, the last the server countersigned "
                "(releases whose reply never reached the server: dropped, or evaluations)"
            )
    for device_id, records in ledgers.items():
        if device_id != SERVER_ID and device_id not in by_device and records:
            notes[device_id] = "the server countersigned none of its records"
    return findings, notes


def _device_receipts(
    device_id: str, got: Sequence[Mapping[str, Any]], records: Sequence[Mapping[str, Any]]
) -> list[Finding]:
    """The findings of one device's ledger against its receipts (at most one of each kind)."""
    missing = [r for r in got if int(r["device_seq"]) >= len(records)]
    wrong = [
        r
        for r in got
        if int(r["device_seq"]) < len(records)
        and (
            records[int(r["device_seq"])].get("hash") != r["device_hash"]
            or records[int(r["device_seq"])].get("round") != r["round"]
        )
    ]
    out = []
    if missing:
        first = min(missing, key=lambda r: int(r["device_seq"]))
        end = len(records) - 1
        out.append(
            Finding(
                device_id,
                "truncated",
                f"{device_id}: the ledger ends at seq {end}, but the server countersigned seq "
                f"{first['device_seq']} (round {first['round']}) and {len(missing) - 1} more: "
                "records were cut off the end",
            )
        )
    if wrong:
        first = min(wrong, key=lambda r: int(r["device_seq"]))
        out.append(
            Finding(
                device_id,
                "receipts",
                f"{device_id}: record seq {first['device_seq']} is not the record the server "
                f"countersigned in round {first['round']} ({len(wrong)} record(s) differ): "
                "the ledger was rewritten after the fact",
            )
        )
    return out


def policy_notes(
    device_id: str, records: Sequence[Mapping[str, Any]], policy: Mapping[str, Any]
) -> list[str]:
    """Where a ledger's own declarations differ from the run's policy (notes, not failures).

    What counts is checked against the policy anyway (ε at the policy's δ, the policy's
    budget); these notes say where the ledger disagreed with it.
    """
    notes: list[str] = []
    budget = policy.get("epsilon_budget")
    declared = {r.get("budget_epsilon") for r in records} - {None}
    if budget is not None and declared and declared != {budget}:
        shown = ", ".join(f"{d:g}" for d in sorted(declared))
        notes.append(
            f"declares budget {shown}; checked against the run's budget {budget:g} (manifest)"
        )
    delta = policy.get("delta")
    deltas = {r.get("target_delta") for r in records} - {None}
    if delta is not None and deltas and deltas != {delta}:
        shown = ", ".join(f"{d:g}" for d in sorted(deltas))
        notes.append(f"records δ {shown}; audited at the run's δ {delta:g} (manifest)")
    if device_id != SERVER_ID:
        planned = policy.get("planned_participations")
        training = [r for r in records if r.get("purpose") != "evaluation"]
        if isinstance(planned, int) and len(training) > planned:
            notes.append(
                f"{len(training)} training releases, more than the {planned} the run planned"
            )
        sigmas = [float(p["noise_multiplier"]) for p in policy.get("device_releases") or []]
        low = [
            r
            for r in records
            if sigmas and float(r["mechanism"]["noise_multiplier"]) < min(sigmas) * (1 - 1e-9)
        ]
        if low:
            notes.append(
                f"{len(low)} release(s) with less noise than the run planned "
                f"(σ {low[0]['mechanism']['noise_multiplier']:g} < {min(sigmas):g})"
            )
    return notes
