"""The server's receipts: a countersignature of every device release the server received.

Format ``fedrec-receipt/1`` (a public format, beside ``fedrec-ledger/1.1``)
==========================================================================

``RUN/receipts.jsonl`` is a UTF-8 JSON Lines file written only by appending, hash-chained and
signed with the operator's (server's) key exactly as a ledger is
(:mod:`fedrec.common.audit.ledger`: canonical JSON, ``hash`` = SHA-256 of the record without
``hash`` and ``signature``, Ed25519 ``signature`` of the 32 raw bytes of ``hash``; each line is
the canonical serialization of the whole record). A device that releases something appends
the record to its own ledger *before* the release leaves, and sends the record's ``seq`` and
``hash`` (its ledger's head) with the release; the server writes one receipt for it:

``format``        ``"fedrec-receipt/1"``
``seq``           0, 1, 2, … (position in the receipts file)
``kind``          ``"receipt"``; or ``"seal"``, the server's last record of a run that ended
                  (every other field below is null in a seal, but ``round``, the last round)
``round``         the federated round in which the release arrived
``device_id``     the device's ledger id, as the device reported it
``node``          the transport's node id of the device (Flower's node id; the device index
                  in-process)
``device_seq``    the ``seq`` of the device's ledger record of this release
``device_hash``   that record's ``hash``: it commits, through the device's chain, to every
                  earlier record of the device
``time``          ISO 8601 UTC time of writing
``prev_hash``, ``hash``, ``signature``  as in a ledger

The audit (:mod:`fedrec.common.audit.crosscheck`) reads the receipts with the operator key the
run manifest pins, and checks every device ledger against them: a record the server
countersigned must be in the device's ledger, at its ``seq``, with its ``hash``. Records cut
off the end, a deleted device, and a ledger replaced or re-signed after the fact all fail that
check, whoever holds the device's key. Receipts cut off the end of *this* file would hide
that, so the server seals the file when the run ends: receipts that do not end with a seal
belong to a run that did not finish, or were cut.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedrec.common.audit.ledger import (
    GENESIS_HASH,
    DeviceKey,
    LedgerError,
    _append_durably,
    _dumps,
    _utc_now,
    record_hash,
)

__all__ = [
    "RECEIPT_FORMAT",
    "RECEIPTS_FILE",
    "HEAD_RECORD",
    "ReceiptLog",
    "ReceiptsResult",
    "ledger_head",
    "verify_receipts",
]

RECEIPT_FORMAT = "fedrec-receipt/1"
#: Where a run keeps its receipts (relative to the run directory).
RECEIPTS_FILE = "receipts.jsonl"
#: The name of the record (a Flower ``ConfigRecord``: ``device_id``, ``seq``, ``hash``) in
#: which a device's reply carries its ledger head.
HEAD_RECORD = "fedrec.ledger-head"
_FIELDS = (
    "format",
    "seq",
    "kind",
    "round",
    "device_id",
    "node",
    "device_seq",
    "device_hash",
    "time",
    "prev_hash",
    "hash",
    "signature",
)


def ledger_head(record: Mapping[str, Any], device_id: str) -> dict[str, Any]:
    """What a device sends with a release so that the server can countersign it."""
    return {"device_id": str(device_id), "seq": int(record["seq"]), "hash": str(record["hash"])}


class ReceiptLog:
    """The server's append-only receipts file (one writer).

    Opening an existing file verifies it with ``key`` and continues its chain; a broken one
    is refused.
    """

    def __init__(self, path: str | Path, key: DeviceKey):
        self.path = Path(path)
        self._key = key
        self._next_seq = 0
        self._prev_hash = GENESIS_HASH
        if self.path.exists() and self.path.stat().st_size > 0:
            result = verify_receipts(self.path, key.public_key)
            if not result.ok:
                raise LedgerError(
                    f"{self.path}: refusing to extend broken receipts: {result.reason}"
                )
            if result.records:
                self._next_seq = len(result.records)
                self._prev_hash = result.records[-1]["hash"]

    def __len__(self) -> int:
        return self._next_seq

    def countersign(
        self, server_round: int, heads: Iterable[tuple[int, Mapping[str, Any]]]
    ) -> list[dict[str, Any]]:
        """Write one receipt per ``(node, head)`` received; one ``fsync`` for the batch.

        ``head`` is what the device sent (:func:`ledger_head`); a malformed head is skipped
        (the device then has no receipt for that release, which the audit reports).
        """
        bodies = []
        for node, head in heads:
            try:
                device_id, dseq, dhash = str(head["device_id"]), int(head["seq"]), str(head["hash"])
            except (KeyError, TypeError, ValueError):
                continue
            bodies.append(
                {
                    "kind": "receipt",
                    "round": int(server_round),
                    "device_id": device_id,
                    "node": int(node),
                    "device_seq": dseq,
                    "device_hash": dhash,
                }
            )
        return self._write(bodies)

    def seal(self, last_round: int) -> dict[str, Any]:
        """Write the run's closing record (the audit fails receipts that do not end with one)."""
        body = dict.fromkeys(("device_id", "node", "device_seq", "device_hash"))
        return self._write([{**body, "kind": "seal", "round": int(last_round)}])[0]

    def _write(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        lines: list[bytes] = []
        out: list[dict[str, Any]] = []
        for body in bodies:
            record = {"format": RECEIPT_FORMAT, "seq": self._next_seq, **body}
            record["time"] = _utc_now()
            record["prev_hash"] = self._prev_hash
            digest = record_hash(record)
            record["hash"] = digest
            record["signature"] = base64.b64encode(self._key.sign(bytes.fromhex(digest))).decode()
            lines.append(_dumps(record) + b"\n")
            out.append(record)
            self._next_seq += 1
            self._prev_hash = digest
        if lines:
            _append_durably(self.path, b"".join(lines))
        return out


@dataclass
class ReceiptsResult:
    """Outcome of :func:`verify_receipts`: the intact records, and what is wrong past them."""

    ok: bool
    records: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""

    @property
    def receipts(self) -> list[dict[str, Any]]:
        """The receipts (seals left out)."""
        return [r for r in self.records if r["kind"] == "receipt"]

    @property
    def sealed(self) -> bool:
        """Whether the (intact) file ends with the server's seal."""
        return self.ok and bool(self.records) and self.records[-1]["kind"] == "seal"

    @property
    def last_round(self) -> int | None:
        """The round of the last record (the seal's: the run's last round)."""
        return int(self.records[-1]["round"]) if self.records else None


def verify_receipts(path: str | Path, public_key: Ed25519PublicKey) -> ReceiptsResult:
    """Check the receipts' chain and signatures; the records before the first bad one."""
    raw = Path(path).read_bytes()
    lines = raw.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    records: list[dict[str, Any]] = []
    prev = GENESIS_HASH
    for index, line in enumerate(lines):
        problem = _check(line, index, prev, public_key)
        if isinstance(problem, str):
            return ReceiptsResult(False, records, f"line {index + 1}: {problem}")
        records.append(problem)
        prev = problem["hash"]
    if raw and not raw.endswith(b"\n"):
        return ReceiptsResult(False, records[:-1], f"line {len(lines)} has no final newline")
    return ReceiptsResult(True, records)


def _check(
    line: bytes, index: int, prev_hash: str, public_key: Ed25519PublicKey
) -> dict[str, Any] | str:
    """The record of ``line``, or what is wrong with it."""
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return f"not a JSON record ({exc})"
    if not isinstance(record, dict) or sorted(record) != sorted(_FIELDS):
        return f"not a receipt (keys: {sorted(record) if isinstance(record, dict) else '?'})"
    if record["format"] != RECEIPT_FORMAT:
        return f"format {record['format']!r} is not {RECEIPT_FORMAT!r}"
    if record["kind"] not in ("receipt", "seal"):
        return f"kind {record['kind']!r} is not 'receipt' or 'seal'"
    if _dumps(record) != line:
        return "not in canonical form (edited after signing)"
    digest = record_hash(record)
    if digest != record["hash"]:
        return "hash does not match its contents (edited)"
    try:
        signature = base64.b64decode(record["signature"], validate=True)
        public_key.verify(signature, bytes.fromhex(digest))
    except (InvalidSignature, ValueError, TypeError):
        return "signature does not verify with the operator key"
    if record["seq"] != index:
        return f"seq {record['seq']!r} where seq {index} belongs (deleted or reordered)"
    if record["prev_hash"] != prev_hash:
        return "prev_hash does not match the previous receipt (chain broken)"
    return record
