"""fedrec's core, shared by devices and servers and free of Flower.

Subpackages: :mod:`~fedrec.common.data`, :mod:`~fedrec.common.model`,
:mod:`~fedrec.common.privacy`, :mod:`~fedrec.common.algorithms`,
:mod:`~fedrec.common.evaluation`, :mod:`~fedrec.common.audit`; the typed run configuration is
:mod:`fedrec.common.config`.
"""

from fedrec.common._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {"RunConfig": "config"})
