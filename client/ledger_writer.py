"""Writes a device's privacy events into its signed ledger before the update leaves.

The device's Ed25519 key is the device's own: a simulation derives it from its keystore,
outside the run directory (:class:`~fedrec.common.audit.keystore.Keystore`); only its public
half is published beside the ledgers (``ledgers/keys/<device_id>.pub.pem``), and the run
manifest pins it at enrollment. See :mod:`fedrec.common.audit.ledger` for the format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedrec.common.audit.ledger import DeviceKey, Ledger
from fedrec.common.privacy.events import PrivacyEvent

__all__ = ["LedgerWriter"]


class LedgerWriter:
    """A callable ``on_release`` hook for :class:`~fedrec.client.device.Device`.

    Args:
        device_id: the device's id (names the ledger file).
        ledger_dir: folder of ledgers (``RUN/ledgers`` in a simulation).
        key: the device's signing key.
    """

    def __init__(self, device_id: str, ledger_dir: str | Path, *, key: DeviceKey):
        self.device_id = device_id
        self.ledger_dir = Path(ledger_dir)
        self.key = key
        self._ledger: Ledger | None = None

    def _open(self) -> Ledger:
        if self._ledger is None:
            pub = self.ledger_dir / "keys" / f"{self.device_id}.pub.pem"
            if not pub.exists():
                self.key.save_public(pub)
            self._ledger = Ledger(
                self.ledger_dir / f"{self.device_id}.jsonl", self.key, device_id=self.device_id
            )
        return self._ledger

    def __call__(self, event: PrivacyEvent, **context: object) -> dict[str, Any]:
        """Append the event (with its signer context); returns the record, once on disk."""
        return self._open().append(event, **context)  # type: ignore[arg-type]
