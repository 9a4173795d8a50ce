"""Lazy re-exports for package ``__init__`` modules (PEP 562).

A package re-exports its public names from its private modules without importing them until
one is used, so that ``import fedrec.common.privacy.policy`` (numpy only) does not pull in
torch through a sibling such as ``dpsgd``: the SDK must start without torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, names: Mapping[str, str]
) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` for a package whose ``names`` live in submodules.

    Args:
        package: the package's ``__name__``.
        names: public name → submodule (relative to the package) that defines it.
    """

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(f"{package}.{names[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(names)

    return sorted(names), __getattr__, __dir__
