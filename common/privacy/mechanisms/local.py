"""``local``: example-level DP where each device adds its full noise; the server is untrusted.

Every contribution leaves the device already private (its DP-SGD steps or Gaussian release,
accounted in the device's own accountant and ledger before it leaves), so the server may see
each one: the aggregate is a plain (uniformly weighted) mean or sum.
"""

from __future__ import annotations

from fedrec.common.privacy.mechanisms.base import PrivacyMechanism

__all__ = ["Local"]


class Local(PrivacyMechanism):
    """Full noise on every device; devices weighted uniformly (counts are data)."""

    name = "local"
    unit = "example"
    device_noise = True
    trust = "none: each device adds its full noise; the server sees every update"
