"""The privacy-utility sweep: registered algorithms with their own defaults in every mode."""

import json

import pytest

from fedrec.simulations import sweep
from fedrec.simulations.sweep import UNITS, default_algorithms, run_sweep, user_delta, write_outputs

SMALL = {"dataset": "synthetic", "synthetic-users": 24, "synthetic-items": 30}


def test_user_delta_is_a_function_of_the_population():
    assert user_delta(943) == 1e-5  # 1/(10·943) is larger: the cap
    assert user_delta(20_000) == pytest.approx(5e-6)
    assert user_delta(10**6) == pytest.approx(1e-7)
    for n in (1, 24, 943, 20_000, 10**6):
        assert user_delta(n) <= 1.0 / (10 * n)
    with pytest.raises(ValueError, match="at least one device"):
        user_delta(0)


@pytest.mark.slow
def test_sweep_runs_each_algorithm_in_every_mode_with_its_defaults(tmp_path, monkeypatch):
    from fedrec.common.algorithms.popularity import Popularity

    # a cap of 1 leaves 1/(10·N): the user-level runs must take δ from the population
    monkeypatch.setattr(sweep, "USER_DELTA_CAP", 1.0)
    logged = []
    result = run_sweep(
        SMALL,
        algorithms=["popularity"],
        modes=["off", "local", "distributed", "user"],
        epsilons=[8.0],
        seeds=[0, 1],
        log=logged.append,
    )
    jobs = [(r["algorithm"], r["mode"], r["epsilon"], r["seed"]) for r in result["runs"]]
    one_seed = [("off", None), ("local", 8.0), ("distributed", 8.0), ("user", 8.0)]
    assert jobs == [("popularity", m, e, s) for s in (0, 1) for m, e in one_seed]
    for r in result["runs"]:
        assert 0 <= r["quality"]["ndcg@10"] <= 1
        assert r["config"]["privacy"] == r["mode"] and r["config"]["seed"] == r["seed"]
        for key, value in Popularity.defaults.items():  # nothing tuned to the data
            assert r["config"][key] == value
        expected = 1.0 / (10 * 24) if r["mode"] == "user" else 1e-5
        assert r["config"]["delta"] == pytest.approx(expected)
    assert result["n_devices"] == 24 and result["user_delta"] == pytest.approx(1 / 240)
    assert logged[0].startswith("most-popular NDCG@10")
    paths = write_outputs(result, tmp_path)
    assert [p.name for p in paths] == ["sweep.json", "sweep.md", "sweep.png"]
    table = (tmp_path / "sweep.md").read_text()
    pop = result["most_popular"]["ndcg@10"]
    pops = result["most_popular_per_seed"]  # each seed's synthetic data: its own baseline
    assert list(pops) == ["0", "1"] and pops["0"] != pops["1"]
    assert pop == pytest.approx((pops["0"] + pops["1"]) / 2)
    assert (
        f"| most-popular | - | - | - | - | {pop:.4f} | {pops['0']:.4f}, {pops['1']:.4f} |" in table
    )
    off = [r["quality"]["ndcg@10"] for r in result["runs"] if r["mode"] == "off"]
    median = (off[0] + off[1]) / 2  # each seed's non-private run, and their median
    assert f"| popularity | off | - | - | - | {median:.4f} | {off[0]:.4f}, {off[1]:.4f} |" in table
    assert f"| popularity | user | {UNITS['user']} | 8 | 0.00416667 |" in table
    assert "| popularity | distributed | example | 8 | 1e-05 |" in table
    assert "User-level δ = 0.00416667 per user" in table and "N = 24 devices" in table
    assert (tmp_path / "sweep.png").stat().st_size > 1000
    assert json.loads((tmp_path / "sweep.json").read_text())["algorithms"] == ["popularity"]


class _PopularityWithoutLocal(
    __import__("fedrec.common.algorithms.popularity", fromlist=["Popularity"]).Popularity
):
    """A registered algorithm whose table refuses local DP (for the sweep's skip path)."""

    name = "popularity-no-local"
    modes = {
        "off": None,
        "local": "no device noise for this test",
        "distributed": None,
        "user": None,
    }


def test_sweep_skips_a_mode_the_algorithm_cannot_run_in(tmp_path, monkeypatch):
    from fedrec.common.algorithms.registry import REGISTRY

    monkeypatch.setitem(REGISTRY, "popularity-no-local", f"{__name__}:_PopularityWithoutLocal")
    logged = []
    result = run_sweep(
        SMALL,
        algorithms=["popularity-no-local"],
        modes=["local", "distributed"],
        epsilons=[8.0],
        log=logged.append,
    )
    assert [(r["mode"], r["epsilon"]) for r in result["runs"]] == [("distributed", 8.0)]
    assert "no device noise" in result["refused"]["popularity-no-local/local"]
    assert any(line.startswith("popularity-no-local/local: skipped") for line in logged)
    write_outputs(result, tmp_path)
    assert "popularity-no-local/local: not run (" in (tmp_path / "sweep.md").read_text()


def test_default_algorithms_are_the_registered_ones_the_data_supports(tmp_path):
    from fedrec.common.algorithms.registry import REGISTRY

    assert default_algorithms(SMALL) == list(REGISTRY)  # synthetic data has public genres
    events = tmp_path / "events.csv"
    rows = [f"u{u},i{(u * 7 + k) % 13},{u * 100 + k}" for u in range(12) for k in range(6)]
    events.write_text("user,item,t\n" + "\n".join(rows) + "\n")
    base = {
        "dataset": "events",
        "data-dir": str(events),
        "events-user-col": "user",
        "events-item-col": "item",
        "events-timestamp-col": "t",
    }
    plain = default_algorithms(base)  # an event log has no item metadata
    assert "features" not in plain and plain == [a for a in REGISTRY if a != "features"]
    result = run_sweep(
        base, algorithms=["features"], modes=["off"], epsilons=[], log=lambda _m: None
    )
    assert result["runs"] == [] and "no public item metadata" in result["refused"]["features/off"]


def test_sweep_command_line(tmp_path, capsys):
    from fedrec.cli import main as fedrec_main

    assert fedrec_main(["sweep", "--modes", "off,central", "--out", str(tmp_path)]) == 2
    assert "unknown mode(s) ['central']" in capsys.readouterr().err
    assert fedrec_main(["sweep", "--algorithm", "als", "--out", str(tmp_path)]) == 2
    assert "algorithm must be one of" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the per-dataset recipes are gone
        fedrec_main(["sweep", "--recipe", "ml-100k"])
    args = [f"--set=synthetic-{k}={v}" for k, v in (("users", 24), ("items", 30))]
    code = fedrec_main(
        ["sweep", "--algorithm", "popularity", "--modes", "off,user", "--epsilons", "8"]
        + args
        + ["--out", str(tmp_path)]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "| popularity | off |" in out and "| popularity | user | user | 8 | 1e-05 |" in out


@pytest.mark.slow
def test_sweep_of_the_sgd_family_in_every_mode(tmp_path):
    result = run_sweep(
        {**SMALL, "dim": 4, "num-rounds": 4},
        algorithms=["sgd", "warm-sgd"],
        modes=["off", "local", "distributed", "user"],
        epsilons=[4.0],
        log=lambda _m: None,
    )
    jobs = [(r["algorithm"], r["mode"]) for r in result["runs"]]
    assert jobs == [
        (a, m) for a in ("sgd", "warm-sgd") for m in ("off", "local", "distributed", "user")
    ]
    for r in result["runs"]:
        assert r["config"]["num-rounds"] == 4 and r["config"]["algorithm"] == r["algorithm"]
        assert 0 <= r["quality"]["ndcg@10"] <= 1
    write_outputs(result, tmp_path)
    assert (tmp_path / "sweep.png").stat().st_size > 1000
