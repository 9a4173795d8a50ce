"""``off``: no differential privacy (a non-private reference; nothing is promised).

Updates of the item table are averaged weighted by the devices' example counts (which
devices may send here, since nothing is protected). Raw statistics of a device's data (the
spectral and features algorithms' item indicators) still only travel inside a secure sum.
"""

from __future__ import annotations

from fedrec.common.privacy.mechanisms.base import PrivacyMechanism

__all__ = ["Off"]


class Off(PrivacyMechanism):
    """No noise anywhere; example-weighted means."""

    name = "off"
    unit = None
    trust = "none: updates are not differentially private"
