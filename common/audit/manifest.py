"""The run manifest: the run's declared privacy policy and its key registry, signed.

Format ``fedrec-manifest/1`` (``RUN/manifest.json``, written at enrollment, before any device
trains) is one JSON object:

``format``       ``"fedrec-manifest/1"``
``created``      ISO 8601 UTC time of enrollment
``run``          ``{"engine", "algorithm", "rounds", "devices_per_round", "reproducible"}``
``policy``       the declared policy every ledger is audited against:
                 ``{"privacy", "unit", "relation", "epsilon_budget", "delta", "accountant",
                 "planned_participations", "device_releases", "server_releases"}``; a release
                 is ``{"noise_multiplier", "sampling_probability", "steps", "count",
                 "purpose"}`` (``sampling_probability`` null: no sampling)
``trust``        the privacy mode's trust model, in words
``devices``      the key registry: ``{"count": N, "keys": {device_id: public key}}``, each key
                 the 32 raw bytes of an Ed25519 public key in base64; its fingerprint (what
                 reports show) is the SHA-256 of those bytes
``operator``     ``{"public_key", "fingerprint"}``: the operator (server) key that signs this
                 manifest, the receipts (:mod:`fedrec.common.audit.receipts`) and the server's
                 ledgers
``receipts``     the receipts file, relative to the run directory
``signature``    base64 Ed25519 signature, by the operator key, of the SHA-256 of the canonical
                 JSON of every other key (as for a ledger record)

The manifest pins what the audit must not take from the folder it audits: device keys (a key
file beside a ledger is checked against the registry, never trusted), the population, the
planned participations, ε and δ. The operator key it names is itself only as trustworthy as
the way the auditor got it: pass the operator's published public key (``fedrec audit
--operator-key``) to pin it; otherwise the report says it was taken from the manifest.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedrec.common.audit.keystore import fingerprint, public_key_from_raw, raw_public_key
from fedrec.common.audit.ledger import DeviceKey, LedgerError, _dumps, _utc_now
from fedrec.common.audit.receipts import RECEIPTS_FILE

if TYPE_CHECKING:
    from fedrec.common.config import RunConfig

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_FILE",
    "Manifest",
    "policy_of",
    "write_manifest",
    "load_manifest",
]

MANIFEST_FORMAT = "fedrec-manifest/1"
MANIFEST_FILE = "manifest.json"


def _digest(body: Mapping[str, Any]) -> bytes:
    return hashlib.sha256(_dumps({k: v for k, v in body.items() if k != "signature"})).digest()


def policy_of(cfg: RunConfig) -> dict[str, Any]:
    """The declared privacy policy of a run configuration (public quantities only)."""
    from fedrec.common.privacy.mechanisms import MECHANISMS

    algorithm = cfg.algorithm_class()
    releases = []
    if cfg.privacy != "off":
        sigmas = cfg.noise_multipliers()
        for sigma, planned in zip(sigmas, algorithm.planned_releases(cfg), strict=True):
            q = float(planned.sampling_probability)
            releases.append(
                {
                    "noise_multiplier": float(sigma),
                    "sampling_probability": None if q >= 1.0 else q,
                    "steps": int(planned.steps),
                    "count": int(planned.count),
                    "purpose": cfg.algorithm,
                }
            )
    evaluation = [
        {
            "noise_multiplier": float(sigma),
            "sampling_probability": None,
            "steps": int(steps),
            "count": 1,
            "purpose": "evaluation",
        }
        for sigma, _, steps in cfg.evaluation_history()
    ]
    user = cfg.privacy == "user"
    return {
        "privacy": cfg.privacy,
        "unit": MECHANISMS[cfg.privacy].unit,
        "relation": "add/remove",
        "epsilon_budget": float(cfg.epsilon) if cfg.privacy != "off" else None,
        "delta": float(cfg.delta) if cfg.privacy != "off" else None,
        "accountant": "pld" if user else cfg.accountant,
        "planned_participations": int(cfg.planned_participations),
        "device_releases": [] if user else releases + evaluation,
        "server_releases": releases if user else [],
    }


def write_manifest(
    run_dir: str | Path,
    *,
    policy: Mapping[str, Any],
    run: Mapping[str, Any],
    trust: str,
    device_keys: Mapping[str, DeviceKey | Ed25519PublicKey],
    operator_key: DeviceKey,
) -> Path:
    """Enroll the devices: sign and write ``RUN/manifest.json``; returns its path."""
    body: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "created": _utc_now(),
        "run": dict(run),
        "policy": dict(policy),
        "trust": trust,
        "devices": {
            "count": len(device_keys),
            "keys": {
                str(d): base64.b64encode(raw_public_key(k)).decode()
                for d, k in sorted(device_keys.items())
            },
        },
        "operator": {
            "public_key": base64.b64encode(raw_public_key(operator_key)).decode(),
            "fingerprint": fingerprint(operator_key),
        },
        "receipts": RECEIPTS_FILE,
    }
    body["signature"] = base64.b64encode(operator_key.sign(_digest(body))).decode()
    path = Path(run_dir) / MANIFEST_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(body, indent=1, sort_keys=True, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


@dataclass
class Manifest:
    """A run manifest as read, with what is wrong with it (``problems`` empty: verified).

    Attributes:
        path: the file.
        data: its JSON object.
        operator_key: the key that signed it (the pinned one when the auditor gave one).
        operator_pinned: whether the auditor gave the operator key (else it is the
            manifest's own: the report says so).
        keys: the registry, device id → public key.
        problems: why the manifest cannot be relied on (bad signature, not the pinned key,
            malformed); with any, nothing in it is used.
    """

    path: Path
    data: dict[str, Any]
    operator_key: Ed25519PublicKey | None
    operator_pinned: bool = False
    keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Signed by the operator key and well formed."""
        return not self.problems

    @property
    def policy(self) -> dict[str, Any]:
        """The declared policy."""
        return dict(self.data.get("policy") or {})

    @property
    def operator_fingerprint(self) -> str | None:
        """The fingerprint of the key that signed the manifest."""
        return None if self.operator_key is None else fingerprint(self.operator_key)

    def receipts_path(self) -> Path:
        """The receipts file it names."""
        return self.path.parent / str(self.data.get("receipts") or RECEIPTS_FILE)


def load_manifest(path: str | Path, operator_key: Ed25519PublicKey | None = None) -> Manifest:
    """Read and verify a manifest (with the pinned ``operator_key`` when the auditor has one)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        problems = [f"unreadable: {exc}"]
        return Manifest(path, {}, operator_key, operator_key is not None, {}, problems)
    manifest = Manifest(path, data, operator_key, operator_key is not None)
    if data.get("format") != MANIFEST_FORMAT:
        manifest.problems.append(
            f"format {data.get('format')!r} is not {MANIFEST_FORMAT!r}; this fedrec cannot check it"
        )
        return manifest
    try:
        own = public_key_from_raw(str(data["operator"]["public_key"]))
        keys = {str(d): public_key_from_raw(str(k)) for d, k in data["devices"]["keys"].items()}
        signature = base64.b64decode(str(data["signature"]), validate=True)
    except (KeyError, TypeError, ValueError, LedgerError) as exc:
        manifest.problems.append(f"malformed: {type(exc).__name__}: {exc}")
        return manifest
    if operator_key is None:
        manifest.operator_key = own
    elif fingerprint(own) != fingerprint(operator_key):
        manifest.problems.append(
            f"it names operator key {fingerprint(own)[:16]}…, not the pinned operator key "
            f"{fingerprint(operator_key)[:16]}…: the manifest was replaced"
        )
        return manifest
    try:
        manifest.operator_key.verify(signature, _digest(data))  # type: ignore[union-attr]
    except InvalidSignature:
        manifest.problems.append(
            "its signature does not verify with the operator key: it was edited after signing"
        )
        return manifest
    manifest.keys = keys
    return manifest
