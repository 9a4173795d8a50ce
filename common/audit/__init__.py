"""Audit: the signed privacy ledger, the accounting audit of a run, the empirical canary audit."""

from fedrec.common._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "AUDIT_VALUE_DISCRETIZATION_INTERVAL": "report",
        "AuditReport": "report",
        "CanaryAuditResult": "canary",
        "DeviceKey": "ledger",
        "FORMAT": "ledger",
        "FORMATS": "ledger",
        "GENESIS_HASH": "ledger",
        "Ledger": "ledger",
        "LedgerAudit": "report",
        "LedgerError": "ledger",
        "RANDOMNESS": "ledger",
        "RELATIONS": "ledger",
        "REPORT_FORMAT": "report",
        "UNITS": "ledger",
        "VerifyResult": "ledger",
        "audit_run": "report",
        "canonical_bytes": "ledger",
        "find_ledger_dir": "report",
        "library_versions": "ledger",
        "load_public_key": "ledger",
        "one_run_epsilon_lower_bound": "canary",
        "one_run_p_value": "canary",
        "public_key_path": "ledger",
        "record_hash": "ledger",
        "releases_from_ledger": "ledger",
        "run_canary_audit": "canary",
        "verify_ledger": "ledger",
    },
)
