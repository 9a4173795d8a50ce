"""The registry of federated algorithms: ``--algorithm`` names to classes.

Adding an algorithm is one module (a subclass of
:class:`~fedrec.common.algorithms.base.Algorithm`) and one line here; the command line, the
configuration checks, the privacy modes' table, the sweep and the tests take it from here.
"""

from __future__ import annotations

import importlib

from fedrec.common.algorithms.base import Algorithm

__all__ = ["REGISTRY", "algorithm_class", "create"]

#: algorithm name → ``"module:Class"`` (imported when first used)
REGISTRY: dict[str, str] = {
    "sgd": "fedrec.common.algorithms.sgd:SGD",
    "spectral": "fedrec.common.algorithms.spectral:Spectral",
    "features": "fedrec.common.algorithms.features:Features",
    "popularity": "fedrec.common.algorithms.popularity:Popularity",
    "warm-sgd": "fedrec.common.algorithms.warm:WarmSGD",
}


def algorithm_class(name: str) -> type[Algorithm]:
    """The class registered under ``name``.

    Raises:
        ValueError: no algorithm has that name.
    """
    if name not in REGISTRY:
        raise ValueError(f"algorithm must be one of {tuple(REGISTRY)}, got {name!r}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def create(cfg, n_items: int, *, item_features=None) -> Algorithm:  # noqa: ANN001
    """The run's algorithm for a catalog of ``n_items`` (public features where it needs them)."""
    cls = algorithm_class(cfg.algorithm)
    if cls.needs_item_features and item_features is None:
        raise ValueError(f"algorithm {cls.name} needs the catalog's public item features")
    return cls(cfg, n_items, item_features=item_features)
