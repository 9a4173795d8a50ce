"""Where a simulation keeps the private keys that must never be published with its run.

A run directory is meant to be handed to an auditor, so it holds public keys only. The private
keys live in a *keystore*, a folder outside the run directory:

::

    KEYSTORE/server.key.pem      the operator's (server's) Ed25519 key: signs the run manifest
                                 with its key registry, the receipts and the server's ledgers
    KEYSTORE/server.pub.pem      its public half (what an auditor pins: ``fedrec audit
                                 --operator-key``)
    KEYSTORE/devices.secret      32 random bytes from which each simulated device's Ed25519
                                 key is derived (HKDF-SHA256 with the device id as ``info``)

By default the keystore of ``runs/X`` is the sibling folder ``runs/X.keystore``
(:func:`keystore_path`); the ``keystore`` run-config key chooses another place. A simulation
stands in for thousands of devices, so it derives their keys from one secret instead of
writing a key file per device; a deployed device generates its own key in its own store
(:mod:`fedrec.client.storage`) and nothing of it is ever here.

The key registry of a run (device id → public key, signed with the operator key) is written
at enrollment, before any device trains: see :mod:`fedrec.common.audit.manifest`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedrec.common.audit.ledger import DeviceKey, LedgerError

__all__ = [
    "Keystore",
    "keystore_path",
    "fingerprint",
    "raw_public_key",
    "public_key_from_raw",
]

_SECRET = "devices.secret"
_SERVER = "server.key.pem"
_SERVER_PUBLIC = "server.pub.pem"
_INFO = b"fedrec-device-ledger-key/1:"


def keystore_path(run_dir: str | Path, chosen: str | Path = "") -> Path:
    """The keystore of a run: ``chosen`` if given, else the sibling ``RUN.keystore`` folder."""
    if chosen:
        return Path(chosen).expanduser()
    run = Path(run_dir).expanduser().absolute()
    return run.with_name(run.name + ".keystore")


def raw_public_key(key: Ed25519PublicKey | DeviceKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key (a seed-only device key keeps only its seed)."""
    if isinstance(key, DeviceKey):
        return key.public_bytes_raw()
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_from_raw(text: str) -> Ed25519PublicKey:
    """The public key of :func:`raw_public_key`'s bytes in base64 (as the registry holds it)."""
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except ValueError as exc:
        raise LedgerError(f"not a base64 Ed25519 public key: {text!r} ({exc})") from None


def fingerprint(key: Ed25519PublicKey | DeviceKey) -> str:
    """SHA-256 of the raw public key, hex: how reports name a key."""
    return hashlib.sha256(raw_public_key(key)).hexdigest()


class Keystore:
    """The private keys of one simulation (the operator's and its devices'), outside the run.

    Args:
        path: the keystore folder (created, mode 0700, with its secrets on first use).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def for_run(cls, run_dir: str | Path, chosen: str | Path = "") -> Keystore:
        """The keystore of a run (:func:`keystore_path`)."""
        return cls(keystore_path(run_dir, chosen))

    def _ensure(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)

    def server_key(self) -> DeviceKey:
        """The operator's key (generated on first use)."""
        return _server_key(str(self.path.absolute()))

    def server_public_path(self) -> Path:
        """Where the operator's public key is (written with the key)."""
        return self.path / _SERVER_PUBLIC

    def device_key(self, device_id: str) -> DeviceKey:
        """The key of simulated device ``device_id`` (derived from the keystore's secret)."""
        secret = _device_secret(str(self.path.absolute()))
        seed = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO + device_id.encode()
        ).derive(secret)
        return DeviceKey.from_seed(seed)


def _write_new(path: Path, data: bytes) -> bool:
    """Write ``data`` to a new file (0600); False when another process created it first."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return True


@functools.lru_cache(maxsize=16)
def _device_secret(folder: str) -> bytes:
    path = Path(folder) / _SECRET
    if not path.exists():
        Keystore(folder)._ensure()
        _write_new(path, secrets.token_bytes(32).hex().encode())
    text = path.read_text().strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) != 32:
        raise LedgerError(f"{path} is not a keystore secret (64 hex digits).")
    return secret


@functools.lru_cache(maxsize=16)
def _server_key(folder: str) -> DeviceKey:
    path = Path(folder) / _SERVER
    if not path.exists():
        Keystore(folder)._ensure()
        key = DeviceKey.generate()
        if _write_new(path, key.private_pem()):
            key.save_public(Path(folder) / _SERVER_PUBLIC)
    return DeviceKey.load(path)
