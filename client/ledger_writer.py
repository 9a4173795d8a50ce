"""Writes a device's privacy events into its signed ledger before the update leaves.

The device's Ed25519 key lives in the device's own storage (``key_dir``); its public half is
published beside the ledgers (``ledgers/keys/<device_id>.pub.pem``) so an auditor can verify
the signatures. See :mod:`fedrec.common.audit.ledger` for the format.
"""

from __future__ import annotations

from pathlib import Path

from fedrec.common.audit.ledger import DeviceKey, Ledger
from fedrec.common.privacy.events import PrivacyEvent

__all__ = ["LedgerWriter"]


class LedgerWriter:
    """A callable ``on_release`` hook for :class:`~fedrec.client.device.Device`.

    Args:
        device_id: the device's id (names the ledger file).
        ledger_dir: folder of ledgers (``RUN/ledgers`` in a simulation).
        key_dir: the device's private storage for its signing key; defaults to
            ``ledger_dir/../devices/<device_id>`` (a simulation's stand-in for the device).
    """

    def __init__(
        self, device_id: str, ledger_dir: str | Path, *, key_dir: str | Path | None = None
    ):
        self.device_id = device_id
        self.ledger_dir = Path(ledger_dir)
        self.key_dir = (
            Path(key_dir)
            if key_dir is not None
            else (self.ledger_dir.parent / "devices" / device_id)
        )
        self._ledger: Ledger | None = None

    def _open(self) -> Ledger:
        if self._ledger is None:
            key = DeviceKey.load_or_generate(
                self.key_dir / "ledger-key.pem", public_path=self.key_dir / "ledger-key.pub.pem"
            )
            pub = self.ledger_dir / "keys" / f"{self.device_id}.pub.pem"
            if not pub.exists():
                key.save_public(pub)
            self._ledger = Ledger(
                self.ledger_dir / f"{self.device_id}.jsonl", key, device_id=self.device_id
            )
        return self._ledger

    def __call__(self, event: PrivacyEvent, **context: object) -> None:
        """Append the event (with its signer context); returns once the record is on disk."""
        self._open().append(event, **context)  # type: ignore[arg-type]
