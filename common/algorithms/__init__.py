"""Federated algorithms: the release-based spectral and features algorithms' maths."""

from fedrec.common._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "PHASES": "spectral",
    "SpectralSpec": "spectral",
    "contribution": "spectral",
    "factorize": "spectral",
    "feature_table": "features",
    "noise_multipliers": "spectral",
    "phase_of_round": "spectral",
    "profile_fold_in": "features",
    "select_items": "spectral",
})
