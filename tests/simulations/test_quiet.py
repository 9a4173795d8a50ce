import logging
import os
import warnings

import pytest

from fedrec.simulations.quiet import RAY_ACCEL_ENV_VAR, quiet_engine

# what flwr 1.42's run_simulation logs (flwr/supercore/logger.py, warn_deprecated_feature)
DEPRECATION_TEMPLATE = """DEPRECATED FEATURE: %s

            This is a deprecated feature. It will be removed
            entirely in future versions of Flower.
        """
RUN_SIMULATION_NAME = (
    "The `run_simulation` function is deprecated and will be removed in a future version of "
    "Flower. Please use `flwr run` in the CLI instead to run your simulation."
)


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def flwr_log():
    from flwr.supercore.logger import console_handler

    logger = logging.getLogger("flwr")
    collect = _Collect()
    logger.addHandler(collect)
    saved = (logger.level, console_handler.level, console_handler.timestamps)
    logger.setLevel(logging.DEBUG)  # as importing flwr leaves it (an earlier test may not)
    try:
        yield collect.messages
    finally:
        logger.removeHandler(collect)
        logger.setLevel(saved[0])
        console_handler.setLevel(saved[1])
        console_handler.timestamps = saved[2]


@pytest.fixture
def no_ray_env(monkeypatch):
    monkeypatch.delenv(RAY_ACCEL_ENV_VAR, raising=False)


def _ray_would_warn() -> bool:
    """The exact condition on which ray.init shows its accelerator FutureWarning."""
    from ray._private import accelerators
    from ray._private.ray_constants import env_bool

    return env_bool(accelerators.RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO_ENV_VAR, True)


def _log_all(logger: logging.Logger) -> None:
    logger.debug("Constructed ActorPool with: %s actors", 2)
    logger.warning(DEPRECATION_TEMPLATE, RUN_SIMULATION_NAME)
    logger.warning(DEPRECATION_TEMPLATE, "something else is deprecated")
    logger.warning("a real Flower warning")
    logger.error("a real Flower error")


def test_quiet_drops_flower_debug_and_the_run_simulation_deprecation_only(flwr_log):
    logger = logging.getLogger("flwr")
    with quiet_engine(verbose=False):
        _log_all(logger)
    assert not any("ActorPool" in m for m in flwr_log)
    assert not any("run_simulation" in m for m in flwr_log)
    assert any("something else is deprecated" in m for m in flwr_log)
    assert "a real Flower warning" in flwr_log and "a real Flower error" in flwr_log
    flwr_log.clear()
    _log_all(logger)  # restored on exit
    assert len(flwr_log) == 5


def test_quiet_turns_off_rays_accelerator_warning_and_keeps_other_warnings(no_ray_env):
    assert _ray_would_warn()
    with quiet_engine(verbose=False):
        assert os.environ[RAY_ACCEL_ENV_VAR] == "0"
        assert not _ray_would_warn()
        with pytest.warns(RuntimeWarning, match="unrelated"):
            warnings.warn("unrelated", RuntimeWarning, stacklevel=1)
        with pytest.warns(FutureWarning, match="another future"):
            warnings.warn("another future", FutureWarning, stacklevel=1)
    assert RAY_ACCEL_ENV_VAR not in os.environ and _ray_would_warn()


def test_quiet_respects_a_ray_setting_the_user_made(monkeypatch):
    monkeypatch.setenv(RAY_ACCEL_ENV_VAR, "1")
    with quiet_engine(verbose=False):
        assert os.environ[RAY_ACCEL_ENV_VAR] == "1"
    assert os.environ[RAY_ACCEL_ENV_VAR] == "1"


def test_verbose_leaves_everything_on(flwr_log, no_ray_env):
    logger = logging.getLogger("flwr")
    logger.setLevel(logging.WARNING)  # as an earlier caller may have left it
    with quiet_engine(verbose=True):
        _log_all(logger)
        assert _ray_would_warn()
    assert len(flwr_log) == 5 and any("run_simulation" in m for m in flwr_log)
    assert logger.level == logging.WARNING and logger.propagate  # restored


def test_verbose_prints_flowers_log_once(flwr_log):
    """Flower's own handler prints it; the root logger (Opacus adds a handler) does not."""
    logger, root = logging.getLogger("flwr"), logging.getLogger()
    at_root = _Collect()
    root.addHandler(at_root)
    try:
        with quiet_engine(verbose=True):
            logger.debug("Registered %s nodes", 500)
    finally:
        root.removeHandler(at_root)
    assert flwr_log == ["Registered 500 nodes"] and at_root.messages == []
    assert logger.propagate


def test_flowers_console_handler_is_restored_after_verbose_logging(flwr_log):
    from flwr.supercore.logger import console_handler, update_console_handler

    before = (console_handler.level, console_handler.timestamps)
    with quiet_engine(verbose=True):
        # what run_simulation(verbose_logging=True) does
        update_console_handler(level=logging.DEBUG, timestamps=True, colored=True)
    assert (console_handler.level, console_handler.timestamps) == before


def test_restored_after_an_error(flwr_log, no_ray_env):
    logger = logging.getLogger("flwr")
    level, filters = logger.level, list(logger.filters)
    with pytest.raises(RuntimeError), quiet_engine(verbose=False):
        raise RuntimeError("boom")
    assert logger.level == level and logger.filters == filters
    assert RAY_ACCEL_ENV_VAR not in os.environ
