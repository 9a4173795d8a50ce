"""The privacy-utility sweep: every mode runs, the table and the plot are written."""

import json

import pytest

from fedrec.simulations.sweep import RECIPES, UNITS, run_sweep, write_outputs


@pytest.mark.slow
def test_sweep_runs_every_mode_and_writes_table_and_plot(tmp_path):
    base = {
        "dataset": "synthetic",
        "synthetic-users": 24,
        "synthetic-items": 30,
        "dim": 4,
        "num-rounds": 3,
        "eval-every": 3,
    }
    logged = []
    result = run_sweep(
        base,
        recipe="quick",
        epsilons=[4.0],
        modes=["local", "distributed", "user"],
        log=logged.append,
    )
    modes = [(r["mode"], r["epsilon"]) for r in result["runs"]]
    assert modes == [("off", None), ("local", 4.0), ("distributed", 4.0), ("user", 4.0)]
    for r in result["runs"]:
        assert 0 <= r["quality"]["ndcg@10"] <= 1
        assert r["config"]["privacy"] == r["mode"]
    user = next(r for r in result["runs"] if r["mode"] == "user")
    assert user["config"]["delta"] == RECIPES["quick"]["user"]["delta"] == 1e-4
    paths = write_outputs(result, tmp_path)
    assert [p.name for p in paths] == ["sweep.json", "sweep.md", "sweep.png"]
    table = (tmp_path / "sweep.md").read_text()
    assert "most-popular" in table and "| distributed | example | 4 | 1e-05 |" in table
    assert f"| user | {UNITS['user']} | 4 | 0.0001 |" in table
    assert "User-level δ = 0.0001 per user" in table
    assert (tmp_path / "sweep.png").stat().st_size > 1000
    assert json.loads((tmp_path / "sweep.json").read_text())["recipe"] == "quick"


def test_sweep_labels_name_a_mode_and_a_variant(tmp_path):
    import pytest

    base = {
        "dataset": "synthetic",
        "synthetic-users": 24,
        "synthetic-items": 30,
        "dim": 4,
        "num-rounds": 3,
        "eval-every": 3,
    }
    result = run_sweep(
        base, recipe="quick", epsilons=[8.0], modes=["user-spectral"], log=lambda _m: None
    )
    run = result["runs"][-1]
    assert run["mode"] == "user-spectral"
    assert run["config"]["privacy"] == "user" and run["config"]["algorithm"] == "spectral"
    write_outputs(result, tmp_path)
    assert "| user-spectral | user | 8 | 0.0001 |" in (tmp_path / "sweep.md").read_text()
    with pytest.raises(ValueError, match="no recipe"):
        run_sweep(base, recipe="quick", epsilons=[8.0], modes=["user-als"])
    assert RECIPES["ml-100k"]["distributed"]["algorithm"] == "spectral"
    assert RECIPES["ml-100k"]["local"]["algorithm"] == "features"


def test_sweep_runs_off_variants_once_as_references(tmp_path):
    base = {
        "dataset": "synthetic",
        "synthetic-users": 24,
        "synthetic-items": 30,
        "dim": 4,
        "num-rounds": 3,
        "eval-every": 3,
    }
    result = run_sweep(
        base,
        recipe="quick",
        epsilons=[2.0, 8.0],
        modes=["off-features", "local-features"],
        log=lambda _m: None,
    )
    modes = [(r["mode"], r["epsilon"]) for r in result["runs"]]
    assert modes == [
        ("off", None),
        ("off-features", None),
        ("local-features", 2.0),
        ("local-features", 8.0),
    ]
    ref = result["runs"][1]["config"]
    assert ref["privacy"] == "off" and ref["algorithm"] == "features"
    write_outputs(result, tmp_path)
    assert "| off-features | - | - | - |" in (tmp_path / "sweep.md").read_text()


class _FeaturesWithoutLocal(
    __import__("fedrec.common.algorithms.features", fromlist=["Features"]).Features
):
    """A registered algorithm whose table refuses local DP (for the sweep's skip path)."""

    name = "features-no-local"
    modes = {
        "off": None,
        "local": "no device noise for this test",
        "distributed": None,
        "user": None,
    }


def test_sweep_runs_a_registered_algorithm_in_every_mode_with_its_defaults(
    tmp_path, capsys, monkeypatch
):
    from fedrec.cli import main as fedrec_main
    from fedrec.common.algorithms.features import Features
    from fedrec.common.algorithms.registry import REGISTRY

    monkeypatch.setitem(REGISTRY, "features-no-local", f"{__name__}:_FeaturesWithoutLocal")
    base = {"dataset": "synthetic", "synthetic-users": 24, "synthetic-items": 30}
    logged = []
    result = run_sweep(
        base,
        recipe=None,
        epsilons=[8.0],
        modes=["local", "distributed", "user"],
        algorithm="features-no-local",
        log=logged.append,
    )
    modes = [(r["mode"], r["epsilon"]) for r in result["runs"]]
    assert modes == [("off", None), ("distributed", 8.0), ("user", 8.0)]
    assert "no device noise for this test" in result["refused"]["local"]
    assert any(line.startswith("local: skipped") for line in logged)
    for r in result["runs"]:  # nothing tuned: the algorithm's own defaults
        assert r["config"]["algorithm"] == "features-no-local"
        for key, value in Features.defaults.items():
            assert r["config"][key] == value
    write_outputs(result, tmp_path)
    assert "local: not run (" in (tmp_path / "sweep.md").read_text()
    # the command line: --algorithm and --recipe exclude each other
    assert (
        fedrec_main(
            ["sweep", "--algorithm", "features", "--recipe", "quick", "--out", str(tmp_path)]
        )
        == 2
    )
    assert "not both" in capsys.readouterr().err
    with pytest.raises(ValueError, match="algorithm must be one of"):
        run_sweep(base, recipe=None, epsilons=[8.0], modes=["local"], algorithm="als")
