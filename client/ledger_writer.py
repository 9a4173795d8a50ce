"""Writes a device's privacy events into its signed ledger before the update leaves.

The device's Ed25519 key lives in the device's own storage (``key_dir``); its public half is
published beside the ledgers (``ledgers/keys/<device_id>.pub.pem``) so an auditor can verify
the signatures. See :mod:`fedrec.common.audit.ledger` for the format.
"""

from __future__ import annotations

from pathlib import Path

from fedrec.client.device import PrivacyEvent
from fedrec.common.audit.ledger import DeviceKey, Ledger

__all__ = ["LedgerWriter"]


class LedgerWriter:
    """A callable ``on_release`` hook for :class:`~fedrec.client.device.Device`.

    Args:
        device_id: the device's id (names the ledger file).
        ledger_dir: folder of ledgers (``RUN/ledgers`` in a simulation).
        key_dir: the device's private storage for its signing key; defaults to
            ``ledger_dir/../devices/<device_id>`` (a simulation's stand-in for the device).
        unit: unit of privacy recorded (``"example"`` for device DP-SGD).
    """

    def __init__(self, device_id: str, ledger_dir: str | Path, *, key_dir: str | Path | None = None,
                 unit: str = "example"):
        self.device_id = device_id
        self.ledger_dir = Path(ledger_dir)
        self.key_dir = Path(key_dir) if key_dir is not None else (
            self.ledger_dir.parent / "devices" / device_id)
        self.unit = unit
        self._ledger: Ledger | None = None

    def _open(self) -> Ledger:
        if self._ledger is None:
            key = DeviceKey.load_or_generate(self.key_dir / "ledger-key.pem",
                                             public_path=self.key_dir / "ledger-key.pub.pem")
            pub = self.ledger_dir / "keys" / f"{self.device_id}.pub.pem"
            if not pub.exists():
                key.save_public(pub)
            self._ledger = Ledger(self.ledger_dir / f"{self.device_id}.jsonl", key,
                                  device_id=self.device_id)
        return self._ledger

    def __call__(self, event: PrivacyEvent) -> None:
        """Append the event; returns only once the record is on disk."""
        self._open().append(
            round=event.server_round, noise_multiplier=event.noise_multiplier,
            max_grad_norm=event.max_grad_norm, sampling_probability=event.sample_rate,
            steps=event.steps, target_delta=event.target_delta, unit=self.unit,
            budget_epsilon=event.budget_epsilon, claimed_epsilon=event.claimed_epsilon,
            accountant=event.accountant, purpose=event.purpose, randomness=event.randomness,
        )
