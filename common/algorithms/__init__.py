"""Federated algorithms: the release-based spectral and features algorithms' maths."""

from fedrec.common._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "Aggregate": "base",
        "Algorithm": "base",
        "Contribution": "base",
        "ContributionSpec": "base",
        "DeviceView": "base",
        "Features": "features",
        "PHASES": "spectral",
        "PlannedRelease": "base",
        "REGISTRY": "registry",
        "SGD": "sgd",
        "Spectral": "spectral",
        "SpectralSpec": "spectral",
        "State": "base",
        "TABLE_KEYS": "base",
        "Task": "base",
        "algorithm_class": "registry",
        "contribution": "spectral",
        "create": "registry",
        "factorize": "spectral",
        "feature_table": "features",
        "initial_item_table": "sgd",
        "phase_of_round": "spectral",
        "profile_fold_in": "features",
        "select_items": "spectral",
    },
)
