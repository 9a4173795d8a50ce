"""Every bad run-config value is refused from the command line before anything trains.

Each case goes through ``fedrec simulate`` as a user types it. It must return exit status 2
with one line ``fedrec simulate: error: ...`` naming the key (or option) at fault, no
traceback, and never reach training (the round loop is replaced by a tripwire).
"""

import pytest

from fedrec.cli import main

# (command-line arguments, what the one error line must name)
CASES = [
    # privacy budget
    (["--epsilon", "nan"], "'epsilon' = nan"),
    (["--epsilon", "inf"], "'epsilon' = inf"),
    (["--epsilon", "-1"], "'epsilon' = -1.0"),
    (["--epsilon", "0"], "'epsilon' = 0.0"),
    (["--epsilon", "1e9"], "'epsilon' = 1000000000.0"),
    (["--epsilon", "1e300"], "'epsilon' = 1e+300"),
    (["--set", "epsilon=abc"], "'epsilon' = 'abc'"),
    (["--delta", "0"], "'delta' = 0.0"),
    (["--delta", "1"], "'delta' = 1.0"),
    (["--delta", "0.999"], "'delta' = 0.999"),
    (["--delta", "nan"], "'delta' = nan"),
    (["--delta=-1e-5"], "'delta' = -1e-05"),
    (["--delta", "0.05"], "'delta' = 0.05"),
    (["--privacy", "user", "--population", "200000"], "1/population = 1/200000"),
    (["--privacy", "user", "--set", "synthetic-users=2000", "--delta", "1e-3"], "1/2000"),
    # noise
    (["--set", "noise-multiplier=nan"], "'noise-multiplier' = nan"),
    (["--set", "noise-multiplier=-1"], "'noise-multiplier' = -1.0"),
    (["--set", "noise-multiplier=inf"], "'noise-multiplier' = inf"),
    (["--set", "noise-multiplier=0.1"], "'noise-multiplier' = 0.1"),
    (["--privacy", "local", "--set", "noise-multiplier=0.5"], "one round alone spends epsilon"),
    (["--privacy", "user", "--set", "user-noise-multiplier=nan"], "'user-noise-multiplier'"),
    (["--privacy", "user", "--set", "user-noise-multiplier=-2"], "'user-noise-multiplier'"),
    (["--privacy", "user", "--set", "user-noise-multiplier=0.2"], "'user-noise-multiplier'"),
    (["--epsilon", "1", "--set", "eval-noise-multiplier=0.3"], "eval-noise-multiplier 0.3"),
    (["--set", "eval-noise-multiplier=nan"], "'eval-noise-multiplier' = nan"),
    (["--set", "eval-noise-multiplier=-1"], "'eval-noise-multiplier' = -1.0"),
    # clipping and norms
    (["--set", "max-update-norm=nan"], "'max-update-norm' = nan"),
    (["--set", "max-update-norm=inf"], "'max-update-norm' = inf"),
    (["--set", "max-update-norm=0"], "'max-update-norm' = 0.0"),
    (["--set", "max-update-norm=-5"], "'max-update-norm' = -5.0"),
    (["--set", "max-grad-norm=nan"], "'max-grad-norm' = nan"),
    (["--set", "max-grad-norm=0"], "'max-grad-norm' = 0.0"),
    (["--set", "max-grad-norm=inf"], "'max-grad-norm' = inf"),
    (["--privacy", "user", "--set", "user-clip=0"], "'user-clip' = 0.0"),
    (["--privacy", "user", "--set", "user-clip=nan"], "'user-clip' = nan"),
    # local training
    (["--set", "local-epochs=inf"], "'local-epochs' = inf"),
    (["--set", "local-epochs=1e6"], "1000000 local steps per round"),
    (["--set", "local-epochs=0"], "'local-epochs' = 0.0"),
    (["--set", "local-epochs=nan"], "'local-epochs' = nan"),
    (["--set", "sample-rate=0.0001"], "local steps per round"),
    (["--set", "sample-rate=0"], "'sample-rate' = 0.0"),
    (["--set", "sample-rate=1.5"], "'sample-rate' = 1.5"),
    (["--set", "sample-rate=nan"], "'sample-rate' = nan"),
    (["--set", "init-std=nan"], "'init-std' = nan"),
    (["--set", "init-std=-1"], "'init-std' = -1.0"),
    (["--set", "init-std=0"], "'init-std' = 0.0"),
    (["--set", "local-lr=nan"], "'local-lr' = nan"),
    (["--set", "local-lr=inf"], "'local-lr' = inf"),
    (["--set", "local-lr=-0.1"], "'local-lr' = -0.1"),
    (["--set", "l2=nan"], "'l2' = nan"),
    (["--set", "l2=inf"], "'l2' = inf"),
    (["--set", "l2=-1"], "'l2' = -1.0"),
    (["--set", "user-lr-scale=nan"], "'user-lr-scale' = nan"),
    (["--set", "user-lr-scale=inf"], "'user-lr-scale' = inf"),
    (["--set", "user-lr-scale=-1"], "'user-lr-scale' = -1.0"),
    (["--set", "n-negatives=0"], "'n-negatives' = 0"),
    (["--set", "batch-size-norm=0"], "'batch-size-norm' = 0.0"),
    (["--set", "batch-size-norm=inf"], "'batch-size-norm' = inf"),
    (["--set", "loss=mse"], "'loss' = 'mse'"),
    (["--set", "local-optimizer=rmsprop"], "'local-optimizer' = 'rmsprop'"),
    # server
    (["--set", "server-lr=nan"], "'server-lr' = nan"),
    (["--set", "server-lr=inf"], "'server-lr' = inf"),
    (["--set", "server-lr=0"], "'server-lr' = 0.0"),
    (["--set", "server-optimizer=sgdm"], "'server-optimizer' = 'sgdm'"),
    (["--set", "server-beta1=1"], "'server-beta1' = 1.0"),
    (["--set", "server-beta2=nan"], "'server-beta2' = nan"),
    (["--set", "server-tau=0"], "'server-tau' = 0.0"),
    (["--set", "dropout-tolerance=1"], "'dropout-tolerance' = 1.0"),
    (["--set", "simulated-dropout=-0.1"], "'simulated-dropout' = -0.1"),
    (["--set", "dropout-policy=retry"], "'dropout-policy' = 'retry'"),
    (["--set", "accountant=xyz"], "'accountant' = 'xyz'"),
    (["--set", "privacy=maybe"], "'privacy' = 'maybe'"),
    # rounds, sampling, evaluation
    (["--rounds", "0"], "'num-rounds' = 0"),
    (["--set", "num-rounds=1.5"], "'num-rounds' = '1.5'"),
    (["--set", "num-rounds=1e9"], "'num-rounds' = '1e9'"),
    (["--set", "fraction-train=0"], "'fraction-train' = 0.0"),
    (["--set", "fraction-train=2"], "'fraction-train' = 2.0"),
    (["--set", "fraction-evaluate=-0.1"], "'fraction-evaluate' = -0.1"),
    (["--set", "eval-every=0"], "'eval-every' = 0"),
    (["--set", "ks=0"], "'ks' = '0'"),
    (["--set", "ks=a,b"], "'ks' = 'a,b'"),
    # model, data, algorithm
    (["--set", "dim=0"], "'dim' = 0"),
    (["--set", "dim=100000"], "'dim' = 100000"),
    (["--set", "dim=abc"], "'dim' = 'abc'"),
    (["--seed", "-1"], "'seed' = -1"),
    (["--population", "-5"], "'population' = -5"),
    (["--set", "synthetic-users=0"], "'synthetic-users' = 0"),
    (["--set", "split=future"], "'split' = 'future'"),
    (["--set", "reproducible=maybe"], "'reproducible' = 'maybe'"),
    (["--set", "item-bias=2"], "'item-bias' = '2'"),
    (["--set", "events-user-col=u"], "'events-user-col' is set but dataset is 'synthetic'"),
    (["--columns", "user=u,item=i"], "'events-user-col' is set but dataset is 'synthetic'"),
    (["--dataset", "events", "--columns", "users=u"], "--columns expects ROLE=COLUMN"),
    (["--algorithm", "spectral", "--set", "spectral-popularity-share=1"], "popularity-share"),
    (["--algorithm", "features", "--set", "feature-smoothing=0"], "'feature-smoothing' = 0.0"),
    # the command line itself
    (["--set", "num-round=3"], "unknown run-config key 'num-round'"),
    (["--set", "epsilon"], "--set expects KEY=VALUE"),
]


@pytest.fixture
def tripwire(monkeypatch):
    """Training must never start: the in-process engine's entry point fails the test."""
    import fedrec.simulations.loop as loop

    def trained(cfg, **kwargs):
        raise AssertionError(f"training started with a bad configuration: {cfg}")

    monkeypatch.setattr(loop, "run_plain", trained)


@pytest.mark.parametrize(("args", "needle"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_a_bad_value_is_one_line_naming_the_key_and_nothing_trains(
    args, needle, tripwire, tmp_path, capsys
):
    rc = main(["simulate", "--engine", "loop", "--run-dir", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedrec simulate: error: "), err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err and len(lines[0]) < 400


def test_the_table_has_at_least_sixty_cases():
    assert len(CASES) >= 60 and len({tuple(a) for a, _ in CASES}) == len(CASES)


def test_a_good_configuration_passes_the_same_checks(tripwire, tmp_path):
    """The tripwire fires for a sound configuration: the checks do not refuse everything."""
    with pytest.raises(AssertionError, match="training started"):
        main(["simulate", "--engine", "loop", "--run-dir", str(tmp_path / "run")])


def test_every_key_has_limits_and_list_keys_shows_them(capsys):
    from dataclasses import fields

    from fedrec.common.config import RunConfig
    from fedrec.common.config_checks import LIMITS

    numbers = {f.name for f in fields(RunConfig) if str(f.type) != "str"}
    assert numbers <= set(LIMITS)
    assert main(["simulate", "--list-keys"]) == 0
    out = capsys.readouterr().out
    assert "epsilon" in out and "a finite number in (0, 1e+12]" in out


def test_a_run_config_from_flower_is_checked_the_same_way():
    from fedrec.common.config import RunConfig

    with pytest.raises(ValueError, match=r"'max-update-norm' = inf: expected a finite number"):
        RunConfig.from_flat({"max-update-norm": float("inf")})
    with pytest.raises(ValueError, match=r"'dim' = True"):
        RunConfig(dim=True)
    with pytest.raises(ValueError, match=r"'epsilon' = '8'"):
        RunConfig(epsilon="8")
    assert RunConfig(epsilon=8).epsilon == 8.0 and isinstance(RunConfig(epsilon=8).epsilon, float)
