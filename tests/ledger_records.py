"""Test helper: write a ledger record from the flat fields tests like to spell out."""

from fedrec.common.privacy.events import PrivacyEvent

_EVENT_FIELDS = (
    "noise_multiplier",
    "sampling_probability",
    "steps",
    "max_grad_norm",
    "unit",
    "purpose",
    "randomness",
)


def append_record(ledger, **fields):
    """``ledger.append(PrivacyEvent(...), **context)`` from one flat mapping of fields."""
    event = {k: fields.pop(k) for k in _EVENT_FIELDS if k in fields}
    return ledger.append(PrivacyEvent(**event), **fields)
