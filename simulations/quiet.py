"""Flower's simulation engine without its known-harmless noise, unless verbose.

:func:`quiet_engine` wraps the call into the engine (``fedrec simulate``, without
``--verbose``) so that the job prints its progress and final table and nothing else:

* Flower's own logger, ``flwr``, is set to WARNING. Importing ``flwr`` sets it to DEBUG
  (``flwr/supercore/logger.py``), and its DEBUG records (backend config, actor pool, "ServerApp
  finished running", ...) reach any handler on the root logger. Flower's warnings and errors
  still show.
* The one deprecation warning of ``flwr.simulation.run_simulation`` is dropped by a filter on
  the ``flwr`` logger that matches that message only (see "Entry point" below).
* Ray's FutureWarning "Tip: In future versions of Ray, Ray will no longer override accelerator
  visible devices env var if num_gpus=0 ..." is turned off where Ray decides to show it: Ray
  warns in ``ray.init`` (``ray/_private/worker.py``) unless ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO``
  is ``0``, so the environment variable is set to ``0`` (only when it is unset) before Ray
  starts. That opts into the behaviour Ray announces as its future default: actors asking for
  no GPU are no longer given an emptied ``CUDA_VISIBLE_DEVICES``. Nothing in fedrec uses a
  GPU (the engine asks for ``num_gpus`` 0 and every tensor stays on the CPU), so results are
  unchanged.

With ``verbose=True`` nothing is filtered: the ``flwr`` logger is let through at DEBUG
(Flower's own default), whatever an earlier caller set it to, and the runner passes
``verbose_logging=True`` so that Flower's own console handler prints it. While it does, the
``flwr`` logger does not also propagate to the root logger, as Flower itself does in notebooks
(``set_logger_propagation`` in ``flwr/simulation/run_simulation.py``): Opacus installs a root
handler at import (``logging.basicConfig`` in ``opacus/utils/module_utils.py``), which would
print every line a second time.

Everything is restored on exit: the logger's level, filters and propagation, its handlers'
settings (which ``run_simulation(verbose_logging=True)`` changes for good) and the
environment variable.

Entry point (flwr 1.42): the runner keeps ``flwr.simulation.run_simulation``. Its only
non-deprecated replacement is ``flwr run`` (``flwr/cli/run/run.py``), which is not an in-process
API: it builds a FAB from the app folder on disk, starts (``flwr/cli/local_superlink.py``) a
detached ``flower-superlink --simulation --isolation subprocess`` that listens on 127.0.0.1
ports and keeps state under ``FLWR_HOME``, submits the run over the Control API and returns;
the simulation itself runs in another process (``flwr-simulation``,
``run_simulation_process`` in ``flwr/simulation/app.py``, which talks to the SuperLink over
its SimulationIo API). The apps would then be loaded from their ``module:attribute`` strings,
so the ``on_round`` callback (progress bar, ``SimulationResult.rounds``, the RuntimeError when
no round completed) could not reach back into this process. The other in-process entry
points are no better: ``flwr.simulation.start_simulation`` is deprecated too
(``flwr/simulation/legacy_app.py``) and ``flwr.simulation.run_simulation._run_simulation``,
which ``run_simulation`` calls after its warning, is private. ``run_simulation``
(``flwr/simulation/run_simulation.py``) is still exported by ``flwr.simulation`` and fully
working in 1.42; only its warning is silenced, here, by exact message.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["FLOWER_LOGGER", "RAY_ACCEL_ENV_VAR", "RUN_SIMULATION_DEPRECATION", "quiet_engine"]

FLOWER_LOGGER = "flwr"
RAY_ACCEL_ENV_VAR = "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"
# the start of the message flwr 1.42's run_simulation passes to warn_deprecated_feature
RUN_SIMULATION_DEPRECATION = "DEPRECATED FEATURE: The `run_simulation` function is deprecated"


class _DropRunSimulationDeprecation(logging.Filter):
    """Drops Flower's warning that ``run_simulation`` is deprecated, and nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for that warning (drop it), True for every other record."""
        if record.levelno != logging.WARNING:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to judge
            return True
        return not message.startswith(RUN_SIMULATION_DEPRECATION)


@contextmanager
def quiet_engine(verbose: bool = False) -> Iterator[None]:
    """Silence Flower's DEBUG log, its ``run_simulation`` deprecation and Ray's accelerator tip.

    Args:
        verbose: leave every message on (the ``flwr`` logger through at DEBUG, printed once
            by its own handler).
    """
    # its import sets the `flwr` logger to DEBUG; have that happen before, not inside
    import flwr.supercore.logger  # noqa: F401

    logger = logging.getLogger(FLOWER_LOGGER)
    saved_level, saved_propagate = logger.level, logger.propagate
    saved_handlers = [
        (h, h.level, {a: getattr(h, a) for a in ("timestamps", "colored") if hasattr(h, a)})
        for h in logger.handlers
    ]
    drop = _DropRunSimulationDeprecation()
    set_env = False
    try:
        if verbose:
            logger.setLevel(logging.DEBUG)
            if logger.handlers:  # Flower's console handler prints it; the root's would again
                logger.propagate = False
        else:
            logger.setLevel(logging.WARNING)
            logger.addFilter(drop)
            if RAY_ACCEL_ENV_VAR not in os.environ:
                os.environ[RAY_ACCEL_ENV_VAR] = "0"
                set_env = True
        yield
    finally:
        if set_env:
            os.environ.pop(RAY_ACCEL_ENV_VAR, None)
        logger.removeFilter(drop)
        logger.setLevel(saved_level)
        logger.propagate = saved_propagate
        for handler, level, attrs in saved_handlers:
            handler.setLevel(level)
            for name, value in attrs.items():
                setattr(handler, name, value)
