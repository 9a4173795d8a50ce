"""The tamper-evident privacy ledger: one signed, hash-chained record per DP release.

Format ``fedrec-ledger/1.1`` (a public format: auditors rely on it)
=====================================================================

A ledger is a UTF-8 JSON Lines file, one record per line, one file per signer (a device, or
the server), written only by appending. A record is written and ``fsync``-ed *before* the
release it describes leaves the signer (a device appends, then replies). Each record is a JSON
object with these keys (all present; ``null`` where a value does not apply):

``format``           ``"fedrec-ledger/1.1"`` (``"fedrec-ledger/1"`` records, which lack
                     ``mechanism.randomness``, still verify).
``seq``              0, 1, 2, … (position in this ledger).
``device_id``        the signer: a device id, or ``"server"``.
``round``            the federated round of the release (int).
``mechanism``        ``{"type": "gaussian", "noise_multiplier": σ, "max_grad_norm": C,
                     "randomness": R}``; the noise standard deviation is ``σ × C`` (``C`` is
                     the sensitivity); ``R`` is ``"os-entropy"`` (noise and sampling nobody
                     can replay) or ``"seeded"`` (a reproducible run: NOT private against
                     anyone who knows the seed).
``sampling``         ``{"type": "poisson", "probability": q}`` or
                     ``{"type": "none", "probability": null}`` (full batch: no amplification).
``steps``            how many times the sampled mechanism ran in this release (int).
``unit``             unit of privacy: ``"example"`` (one interaction; device DP-SGD) or
                     ``"user"`` (one device's whole data; server-side DP-FedAvg).
``relation``         neighbouring relation: ``"add/remove"``.
``target_delta``     δ the signer accounts at.
``budget_epsilon``   the declared ε budget, or null.
``claimed_epsilon``  the signer's own accountant's cumulative ε after this release, or null.
``accountant``       the name of that accountant (``"prv"``, ``"rdp"``, ``"pld"`` …), or null.
``purpose``          what the release was for (``"dp-sgd"``, ``"dp-fedavg"``, ``"histogram"``
                     …), or null.
``versions``         ``{"fedrec", "opacus", "torch", "dp_accounting"}`` version strings.
``time``             ISO 8601 UTC time of writing, e.g. ``"2026-01-31T12:00:00.000000Z"``.
``prev_hash``        the previous record's ``hash``; 64 zeros for ``seq`` 0.
``hash``             hex SHA-256 of the record's canonical bytes (below).
``signature``        base64 Ed25519 signature, by the signer's key, of the 32 raw bytes of
                     ``hash``.

*Canonical bytes* of a record: the object without ``hash`` and ``signature``, serialized as
``json.dumps(obj, sort_keys=True, separators=(",", ":"))`` (ASCII, no NaN/Infinity), UTF-8.
Each line is the canonical serialization of the *whole* record (``hash`` and ``signature``
included), so a verifier also rejects a line that parses to the same values but is not byte
identical to what was signed. Extra keys are allowed in later minor versions only under a new
``format`` string.

What verification proves, and what it does not: a flipped byte, an edited value, a deleted or
inserted record and a reordered record all break the chain or a signature, and
:func:`verify_ledger` names the first bad ``seq``. Cutting records off the *end* leaves a valid
shorter chain; pass ``expected_head`` (the last ``hash`` the server saw) to detect that: the
audit holds each ledger to the server's signed receipts (:mod:`fedrec.common.audit.receipts`).

Run directory layout (what ``fedrec simulate`` writes and ``fedrec audit`` reads)
---------------------------------------------------------------------------------
::

    RUN/manifest.json                      key registry and policy, signed at enrollment
                                           (:mod:`fedrec.common.audit.manifest`)
    RUN/receipts.jsonl                     the server's receipts
                                           (:mod:`fedrec.common.audit.receipts`)
    RUN/ledgers/<device_id>.jsonl          one ledger per device (unit "example")
    RUN/ledgers/server.jsonl               the server's user-level DP releases, when on
    RUN/ledgers/keys/<device_id>.pub.pem   each signer's Ed25519 public key (PEM, SPKI): a copy
    RUN/ledgers/keys/server.pub.pem        for readers; the audit uses the manifest's registry

Private keys stay with their signer (:meth:`DeviceKey.save` writes the private PEM where it is
told and the public PEM beside it); a simulation keeps them in a keystore outside the run
directory (:mod:`fedrec.common.audit.keystore`), and only public keys belong in a run. A
``device_id`` is the file stem, so it must be a safe file name (letters, digits, ``._-``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedrec.common.privacy.events import PrivacyEvent

__all__ = [
    "FORMAT",
    "FORMATS",
    "RANDOMNESS",
    "GENESIS_HASH",
    "UNITS",
    "RELATIONS",
    "DeviceKey",
    "Ledger",
    "LedgerError",
    "VerifyResult",
    "verify_ledger",
    "releases_from_ledger",
    "canonical_bytes",
    "record_hash",
    "load_public_key",
    "public_key_path",
    "library_versions",
]

FORMAT = "fedrec-ledger/1.1"
#: Formats :func:`verify_ledger` accepts (1.1 adds ``mechanism.randomness``).
FORMATS = ("fedrec-ledger/1", FORMAT)
GENESIS_HASH = "0" * 64
UNITS = ("example", "user")
#: Where a release's noise came from (``mechanism.randomness``).
RANDOMNESS = ("os-entropy", "seeded")
RELATIONS = ("add/remove",)
_REQUIRED = (
    "format",
    "seq",
    "device_id",
    "round",
    "mechanism",
    "sampling",
    "steps",
    "unit",
    "relation",
    "target_delta",
    "budget_epsilon",
    "claimed_epsilon",
    "accountant",
    "purpose",
    "versions",
    "time",
    "prev_hash",
    "hash",
    "signature",
)
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]+$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class LedgerError(ValueError):
    """A ledger cannot be written or read as asked (bad fields, a broken chain on reopen)."""


def canonical_bytes(record: Mapping[str, Any]) -> bytes:
    """Return the bytes a record's ``hash`` covers (canonical JSON minus hash, signature)."""
    body = {k: v for k, v in record.items() if k not in ("hash", "signature")}
    return _dumps(body)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def record_hash(record: Mapping[str, Any]) -> str:
    """Hex SHA-256 of :func:`canonical_bytes`."""
    return hashlib.sha256(canonical_bytes(record)).hexdigest()


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """Versions of the libraries whose maths a record relies on (``"unknown"`` if absent)."""
    out = {}
    for key, dist in (
        ("fedrec", "fedrec"),
        ("opacus", "opacus"),
        ("torch", "torch"),
        ("dp_accounting", "dp-accounting"),
    ):
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = "unknown"
    return out


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- keys


def public_key_path(private_path: str | Path) -> Path:
    """Return where :meth:`DeviceKey.save` puts the public key (``NAME.pub.pem``)."""
    path = Path(private_path)
    name = path.name
    for suffix in (".key.pem", ".pem", ".key"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(name + ".pub.pem")


def load_public_key(key: Ed25519PublicKey | str | Path | bytes) -> Ed25519PublicKey:
    """Load an Ed25519 public key from a key object, PEM bytes or a PEM file path."""
    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, DeviceKey):
        return key.public_key
    data = key if isinstance(key, bytes) else Path(key).read_bytes()
    loaded = serialization.load_pem_public_key(data)
    if not isinstance(loaded, Ed25519PublicKey):
        raise LedgerError(
            f"expected an Ed25519 public key, got {type(loaded).__name__}; ledgers are signed "
            "with Ed25519 (DeviceKey.generate())."
        )
    return loaded


class DeviceKey:
    """A signer's Ed25519 key pair (a device's, or the server's)."""

    __slots__ = ("_key", "_seed")

    def __init__(self, private_key: Ed25519PrivateKey):
        if not isinstance(private_key, Ed25519PrivateKey):
            raise TypeError("DeviceKey wraps an Ed25519PrivateKey.")
        self._key: Ed25519PrivateKey | None = private_key
        self._seed: bytes | None = None

    @classmethod
    def from_seed(cls, seed: bytes) -> DeviceKey:
        """The key pair whose private key is the 32 bytes ``seed`` (RFC 8032's private key).

        It holds only the seed until its private key is first used (to sign, or for
        :attr:`public_key`; then it keeps it): enrolling a million simulated devices reads each
        one's :meth:`public_bytes_raw`, derived and dropped, so their keys cost 32 bytes each
        rather than OpenSSL's key object (about 500 bytes).
        """
        if len(seed) != 32:
            raise ValueError(f"an Ed25519 seed is 32 bytes, got {len(seed)}")
        key = cls.__new__(cls)
        key._key, key._seed = None, bytes(seed)
        return key

    @property
    def _private(self) -> Ed25519PrivateKey:
        """The private key, built from the seed (and kept) on first use."""
        if self._key is None:
            self._key = Ed25519PrivateKey.from_private_bytes(self._seed)  # type: ignore[arg-type]
        return self._key

    @classmethod
    def generate(cls) -> DeviceKey:
        """Generate a key pair from the operating system's secure random source."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: str | Path) -> DeviceKey:
        """Load the private key PEM (PKCS#8, unencrypted) written by :meth:`save`."""
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise LedgerError(f"{path}: not an Ed25519 private key.")
        return cls(key)

    @classmethod
    def load_or_generate(cls, path: str | Path, public_path: str | Path | None = None) -> DeviceKey:
        """The key stored at ``path``, or a new one saved there (with its public PEM)."""
        if Path(path).exists():
            return cls.load(path)
        key = cls.generate()
        key.save(path, public_path=public_path)
        return key

    def save(self, path: str | Path, public_path: str | Path | None = None) -> Path:
        """Write the private key PEM (mode 0600) and the public PEM; returns the public path.

        The public key goes to ``public_path`` or, by default, :func:`public_key_path` of
        ``path`` (``keys/dev1.pem`` → ``keys/dev1.pub.pem``).
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = self.private_pem()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        pub = Path(public_path) if public_path is not None else public_key_path(path)
        self.save_public(pub)
        return pub

    def save_public(self, path: str | Path) -> Path:
        """Write only the public key PEM (what an auditor gets)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.public_pem())
        return path

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The public half (a seed-only key builds and keeps its private key: it will sign)."""
        return self._private.public_key()

    def public_bytes_raw(self) -> bytes:
        """The public half's 32 raw bytes; a seed-only key derives them and keeps only its seed."""
        key = self._key or Ed25519PrivateKey.from_private_bytes(self._seed)  # type: ignore[arg-type]
        return key.public_key().public_bytes_raw()

    def private_pem(self) -> bytes:
        """Return the private key as unencrypted PKCS#8 PEM (for the signer's own storage)."""
        return self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public_pem(self) -> bytes:
        """Return the public key as PEM (SubjectPublicKeyInfo)."""
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` with Ed25519."""
        return self._private.sign(data)


# --------------------------------------------------------------------------- verification


@dataclass
class VerifyResult:
    """Outcome of :func:`verify_ledger`.

    Attributes:
        ok: The whole file is an intact, correctly signed chain.
        records: Every record that could be parsed, in file order (also past a bad one, so an
            auditor can still see what a tampered ledger claims).
        first_bad_seq: ``None`` when ``ok``; else the sequence number at which the chain
            breaks: the first bad record's position (records ``0 .. first_bad_seq - 1`` are
            intact; a deleted record is named by the ``seq`` that is missing).
        reason: What is wrong, in words ("" when ``ok``).
        line: 1-based line number of the first bad line (``None`` when ``ok``).
    """

    ok: bool
    records: list[dict[str, Any]] = field(default_factory=list)
    first_bad_seq: int | None = None
    reason: str = ""
    line: int | None = None

    @property
    def intact_records(self) -> list[dict[str, Any]]:
        """The records before the first bad one (all of them when ``ok``)."""
        if self.ok or self.first_bad_seq is None:
            return list(self.records)
        return self.records[: self.first_bad_seq]


def _check_fields(record: Mapping[str, Any]) -> str:
    """'' if the record has the format's shape, else what is wrong."""
    missing = [k for k in _REQUIRED if k not in record]
    if missing:
        return f"missing keys {missing}"
    extra = sorted(set(record) - set(_REQUIRED))
    if extra:
        return f"unexpected keys {extra}"
    if record["format"] not in FORMATS:
        return f"format {record['format']!r} is not one of {FORMATS}"
    mech = record["mechanism"]
    if not isinstance(mech, dict) or mech.get("type") != "gaussian":
        return "mechanism is not {'type': 'gaussian', ...}"
    samp = record["sampling"]
    if not isinstance(samp, dict) or samp.get("type") not in ("poisson", "none"):
        return "sampling type is not 'poisson' or 'none'"
    if not (isinstance(record["hash"], str) and _HEX64.match(record["hash"])):
        return "hash is not 64 lowercase hex digits"
    return ""


def verify_ledger(
    path: str | Path,
    public_key: Ed25519PublicKey | str | Path | bytes,
    *,
    expected_device_id: str | None = None,
    expected_head: str | None = None,
    all_signatures: bool = True,
) -> VerifyResult:
    """Check a ledger's hash chain and signatures; name the first bad record.

    Every line must be valid JSON in canonical form, of format ``fedrec-ledger/1``, with
    ``seq`` equal to its position, ``prev_hash`` equal to the previous record's ``hash``,
    ``hash`` equal to the SHA-256 of its canonical bytes, and a signature that verifies with
    ``public_key``. Optionally every ``device_id`` must be ``expected_device_id`` and the last
    ``hash`` must be ``expected_head`` (which catches records cut off the end).

    With ``all_signatures=False`` only the last record's signature is checked when everything
    else is intact: its hash commits, through ``prev_hash``, to every earlier record's signed
    contents, so the one signature authenticates everything that was signed (as strongly as
    SHA-256 resists collisions) at a fraction of the cost; any failure falls back to the full
    check, so the first bad record is named as with ``all_signatures=True``. What it cannot
    notice is damage to an earlier record's ``signature`` field itself (no hash covers it), so
    the default checks every signature.
    """
    key = load_public_key(public_key)
    raw = Path(path).read_bytes()
    lines = raw.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the final newline (or an empty file)
    if not all_signatures:
        records, bad = _scan(lines, key, expected_device_id, sign_all=False)
        if bad is None:
            bad = _tail_problems(raw, lines, records, expected_head)
        if bad is None:
            return VerifyResult(True, records)
    records, bad = _scan(lines, key, expected_device_id, sign_all=True)
    if bad is None:
        bad = _tail_problems(raw, lines, records, expected_head)
    if bad is None:
        return VerifyResult(True, records)
    seq, reason, lineno = bad
    return VerifyResult(False, records, seq, reason, lineno)


_Bad = tuple[int, str, int]  # (seq, reason, line)


def _scan(
    lines: list[bytes], key: Ed25519PublicKey, expected_device_id: str | None, *, sign_all: bool
) -> tuple[list[dict[str, Any]], _Bad | None]:
    records: list[dict[str, Any]] = []
    bad: _Bad | None = None
    prev_hash = GENESIS_HASH
    last = len(lines) - 1
    for index, line in enumerate(lines):
        lineno = index + 1
        try:
            record = json.loads(line.decode("utf-8"))
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (UnicodeDecodeError, ValueError) as exc:
            bad = bad or (index, f"line {lineno} is not a valid JSON record ({exc})", lineno)
            continue
        records.append(record)
        if bad is None:
            problem = _check_record(
                record,
                line,
                index,
                prev_hash,
                key if sign_all or index == last else None,
                expected_device_id,
            )
            if problem:
                bad = (index, f"line {lineno}: {problem}", lineno)
            else:
                prev_hash = record["hash"]
    return records, bad


def _tail_problems(
    raw: bytes, lines: list[bytes], records: list[dict[str, Any]], expected_head: str | None
) -> _Bad | None:
    if raw and not raw.endswith(b"\n"):
        return (len(lines) - 1, f"line {len(lines)} has no final newline (torn write)", len(lines))
    head = records[-1]["hash"] if records else GENESIS_HASH
    if expected_head is not None and head != expected_head:
        n = len(records)
        return (
            n,
            f"the last hash is not the expected head: records after seq {n - 1} are missing "
            "or the ledger was replaced",
            n + 1,
        )
    return None


def _check_record(
    record: dict[str, Any],
    line: bytes,
    index: int,
    prev_hash: str,
    key: Ed25519PublicKey | None,
    expected_device_id: str | None,
) -> str:
    """'' when the record at position ``index`` is intact and chains on ``prev_hash``."""
    problem = _check_fields(record)
    if problem:
        return problem
    try:
        canonical_line = _dumps(record)
    except ValueError:
        canonical_line = b""
    if canonical_line != line:
        return "not in canonical form (the line was edited after signing)"
    digest = record_hash(record)
    if digest != record["hash"]:
        return f"record seq {record['seq']!r}: hash does not match its contents (edited)"
    try:
        signature = base64.b64decode(record["signature"], validate=True)
        if key is not None:  # None: authenticated through the chain by a later signature
            key.verify(signature, bytes.fromhex(digest))
    except (InvalidSignature, ValueError, TypeError):
        return (
            f"record seq {record['seq']!r}: signature does not verify with the given public key "
            "(wrong key, or a forged record)"
        )
    seq = record["seq"]
    if seq != index:
        if isinstance(seq, int) and seq > index:
            return f"seq {index} is missing or out of order (found seq {seq} in its place)"
        return f"found seq {seq!r} where seq {index} belongs (records reordered or duplicated)"
    if record["prev_hash"] != prev_hash:
        return f"seq {index}: prev_hash does not match the previous record's hash (chain broken)"
    if expected_device_id is not None and record["device_id"] != expected_device_id:
        return f"seq {index}: device_id {record['device_id']!r} is not {expected_device_id!r}"
    return ""


def releases_from_ledger(records: Iterable[Mapping[str, Any]]) -> list[PrivacyEvent]:
    """Return the :class:`PrivacyEvent` of each record, in order."""
    out = []
    for record in records:
        try:
            sigma = record["mechanism"]["noise_multiplier"]
            sampling = record["sampling"]
            q = sampling["probability"] if sampling["type"] == "poisson" else None
            out.append(PrivacyEvent(sigma, q, record["steps"]))
        except (KeyError, TypeError) as exc:
            raise LedgerError(
                f"record seq {record.get('seq')!r} does not describe a release: {exc}"
            ) from exc
    return out


# --------------------------------------------------------------------------- writing


def _finite_or_none(name: str, value: float | None, *, positive: bool = False) -> float | None:
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise LedgerError(
            f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}."
        )
    return value


class Ledger:
    """An append-only, hash-chained, signed ledger file of one signer.

    Opening an existing file verifies it with the signing key's public half and continues its
    chain; a broken chain is refused (:class:`LedgerError`) rather than extended. One writer
    per file.

    Args:
        path: The ``.jsonl`` file (created with its folder if missing).
        signing_key: The signer's key.
        device_id: Recorded in every record; defaults to the file stem.
    """

    def __init__(self, path: str | Path, signing_key: DeviceKey, *, device_id: str | None = None):
        self.path = Path(path)
        self._key = signing_key
        self.device_id = device_id if device_id is not None else self.path.stem
        if not _SAFE_ID.match(self.device_id):
            raise LedgerError(
                f"device_id {self.device_id!r} must use only letters, digits and '._-' "
                "(it names the ledger file in a run directory)."
            )
        self._next_seq = 0
        self._prev_hash = GENESIS_HASH
        if self.path.exists() and self.path.stat().st_size > 0:
            result = verify_ledger(self.path, signing_key.public_key)
            if not result.ok:
                raise LedgerError(
                    f"{self.path}: refusing to extend a broken ledger: {result.reason}. "
                    "Move it aside for the auditor and start a new one."
                )
            if result.records:
                self._next_seq = len(result.records)
                self._prev_hash = result.records[-1]["hash"]

    def __len__(self) -> int:
        return self._next_seq

    @property
    def head(self) -> str:
        """The last record's hash (the genesis hash when empty)."""
        return self._prev_hash

    def append(
        self,
        event: PrivacyEvent,
        *,
        round: int,
        target_delta: float,
        relation: str = "add/remove",
        budget_epsilon: float | None = None,
        claimed_epsilon: float | None = None,
        accountant: str | None = None,
        time: str | None = None,
        versions: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Write, sign and ``fsync`` one release's record; return it.

        Call this *before* the release leaves the signer: when it returns, the record is on
        disk. ``event`` is the release (:class:`~fedrec.common.privacy.events.PrivacyEvent`:
        noise multiplier, sampling, steps, sensitivity, unit, purpose, randomness); the
        keywords are the signer's context: the round, the δ it accounts at, its budget, its
        accountant's cumulative ε after this release.
        """
        if event.randomness not in RANDOMNESS:
            raise LedgerError(f"randomness must be one of {RANDOMNESS}, got {event.randomness!r}.")
        if event.unit not in UNITS:
            raise LedgerError(f"unit must be one of {UNITS}, got {event.unit!r}.")
        if relation not in RELATIONS:
            raise LedgerError(f"relation must be one of {RELATIONS}, got {relation!r}.")
        if isinstance(round, bool) or int(round) != round:
            raise LedgerError(f"round must be an int, got {round!r}.")
        delta = float(target_delta)
        if not 0 < delta < 1:
            raise LedgerError(f"target_delta must be in (0, 1), got {target_delta!r}.")
        q = event.sampling_probability
        record: dict[str, Any] = {
            "format": FORMAT,
            "seq": self._next_seq,
            "device_id": self.device_id,
            "round": int(round),
            "mechanism": {
                "type": "gaussian",
                "noise_multiplier": event.noise_multiplier,
                "max_grad_norm": _finite_or_none(
                    "max_grad_norm", event.max_grad_norm, positive=True
                ),
                "randomness": event.randomness,
            },
            "sampling": (
                {"type": "none", "probability": None}
                if q is None
                else {"type": "poisson", "probability": q}
            ),
            "steps": event.steps,
            "unit": event.unit,
            "relation": relation,
            "target_delta": delta,
            "budget_epsilon": _finite_or_none("budget_epsilon", budget_epsilon),
            "claimed_epsilon": _finite_or_none("claimed_epsilon", claimed_epsilon),
            "accountant": accountant,
            "purpose": event.purpose,
            "versions": dict(versions) if versions is not None else library_versions(),
            "time": time if time is not None else _utc_now(),
            "prev_hash": self._prev_hash,
        }
        digest = record_hash(record)
        record["hash"] = digest
        record["signature"] = base64.b64encode(self._key.sign(bytes.fromhex(digest))).decode()
        _append_durably(self.path, _dumps(record) + b"\n")
        self._next_seq += 1
        self._prev_hash = digest
        return record

    @staticmethod
    def read(path: str | Path) -> list[dict[str, Any]]:
        """Every record of a ledger file, parsed but *not* verified (see :func:`verify_ledger`)."""
        out = []
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    out.append(json.loads(line))
                except ValueError as exc:
                    raise LedgerError(f"{path}, line {lineno}: not valid JSON ({exc}).") from exc
        return out


def _append_durably(path: Path, line: bytes) -> None:
    """Append ``line`` to ``path`` and ``fsync`` it (and the folder when the file is new)."""
    created = not path.exists()
    if created:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
