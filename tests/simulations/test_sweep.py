"""The privacy-utility sweep: every mode runs, the table and the plot are written."""

import json

import pytest

from fedrec.simulations.sweep import RECIPES, UNITS, run_sweep, write_outputs


@pytest.mark.slow
def test_sweep_runs_every_mode_and_writes_table_and_plot(tmp_path):
    base = {"dataset": "synthetic", "synthetic-users": 24, "synthetic-items": 30, "dim": 4,
            "num-rounds": 3, "eval-every": 3}
    logged = []
    result = run_sweep(base, recipe="quick", epsilons=[4.0], modes=["local", "distributed", "user"],
                       log=logged.append)
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
    assert "1e-4 for user-level runs is weak" in table
    assert (tmp_path / "sweep.png").stat().st_size > 1000
    assert json.loads((tmp_path / "sweep.json").read_text())["recipe"] == "quick"


def test_sweep_labels_name_a_mode_and_a_variant(tmp_path):
    import pytest

    base = {"dataset": "synthetic", "synthetic-users": 24, "synthetic-items": 30, "dim": 4,
            "num-rounds": 3, "eval-every": 3}
    result = run_sweep(base, recipe="quick", epsilons=[8.0], modes=["user-spectral"],
                       log=lambda _m: None)
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
    base = {"dataset": "synthetic", "synthetic-users": 24, "synthetic-items": 30, "dim": 4,
            "num-rounds": 3, "eval-every": 3}
    result = run_sweep(base, recipe="quick", epsilons=[2.0, 8.0],
                       modes=["off-features", "local-features"], log=lambda _m: None)
    modes = [(r["mode"], r["epsilon"]) for r in result["runs"]]
    assert modes == [("off", None), ("off-features", None), ("local-features", 2.0),
                     ("local-features", 8.0)]
    ref = result["runs"][1]["config"]
    assert ref["privacy"] == "off" and ref["algorithm"] == "features"
    write_outputs(result, tmp_path)
    assert "| off-features | - | - | - |" in (tmp_path / "sweep.md").read_text()
