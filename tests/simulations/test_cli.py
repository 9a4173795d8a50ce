import json

import pytest

from fedrec.cli import main


def test_simulate_command_writes_a_run_directory(tmp_path, capsys):
    run_dir = tmp_path / "run"
    rc = main(
        [
            "simulate",
            "--engine",
            "loop",
            "--rounds",
            "3",
            "--set",
            "synthetic-users=30",
            "--set",
            "synthetic-items=40",
            "--set",
            "accountant=rdp",
            "--run-dir",
            str(run_dir),
        ]
    )
    assert rc == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["privacy"]["epsilon_max"] <= 8.0
    assert summary["privacy"]["algorithm"] == "warm-sgd"
    assert "most_popular" in summary
    out = capsys.readouterr().out
    assert "epsilon spent" in out and "most-popular" in out


def test_bad_input_is_one_clear_line_not_a_traceback(capsys):
    assert main(["simulate", "--set", "num-round=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown run-config key 'num-round'" in err and "Traceback" not in err
    assert main(["simulate", "--dataset", "ml-100k"]) == 2
    assert "--data-dir" in capsys.readouterr().err
    assert main(["baselines", "--dataset", "ml-1m", "--data-dir", "/nonexistent"]) == 2


def test_simulate_spectral_user_level_from_the_command_line(tmp_path, capsys):
    run_dir = tmp_path / "run"
    rc = main(
        [
            "simulate",
            "--engine",
            "loop",
            "--algorithm",
            "spectral",
            "--privacy",
            "user",
            "--delta",
            "1e-4",
            "--set",
            "synthetic-users=40",
            "--set",
            "synthetic-items=30",
            "--set",
            "spectral-top-items=20",
            "--run-dir",
            str(run_dir),
        ]
    )
    assert rc == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    priv = summary["privacy"]
    assert summary["rounds"] == 2 and priv["algorithm"] == "spectral"
    config = json.loads((run_dir / "config.json").read_text())["run_config"]
    assert config["fraction-train"] == 1.0 and config["num-rounds"] == 2
    assert (run_dir / "item_embeddings.npz").exists()
    assert priv["unit"].startswith("user") and 7.9 < priv["epsilon_max"] <= 8.0 + 1e-6
    assert "algorithm spectral" in capsys.readouterr().out
    assert main(["simulate", "--algorithm", "spectral", "--rounds", "5"]) == 2
    assert "exactly 2 rounds" in capsys.readouterr().err


def test_simulate_features_from_the_command_line(tmp_path, capsys):
    run_dir = tmp_path / "run"
    rc = main(
        [
            "simulate",
            "--engine",
            "loop",
            "--algorithm",
            "features",
            "--epsilon",
            "4",
            "--set",
            "synthetic-users=30",
            "--set",
            "synthetic-items=30",
            "--run-dir",
            str(run_dir),
        ]
    )
    assert rc == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())["run_config"]
    assert (config["num-rounds"], config["fraction-train"], config["dim"]) == (1, 1.0, 64)
    assert summary["privacy"]["algorithm"] == "features"
    assert 3.9 < summary["privacy"]["epsilon_max"] <= 4.0 + 1e-6
    assert "algorithm features" in capsys.readouterr().out
    assert main(["simulate", "--algorithm", "features", "--rounds", "3"]) == 2
    assert "exactly 1 round" in capsys.readouterr().err


@pytest.mark.slow
def test_a_private_run_is_reported_beside_its_non_private_reference(tmp_path, capsys, monkeypatch):
    import matplotlib.axes

    from fedrec.common.config import RunConfig
    from fedrec.simulations.loop import run_plain

    drawn = []
    real_axhline = matplotlib.axes.Axes.axhline

    def axhline(self, y=0, *args, **kwargs):
        drawn.append((kwargs.get("label"), y))
        return real_axhline(self, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "axhline", axhline)
    keys = {"synthetic-users": 30, "synthetic-items": 40, "num-rounds": 2, "seed": 3}
    keys.update({"algorithm": "sgd", "privacy": "local"})
    flags = [x for k, v in keys.items() for x in ("--set", f"{k}={v}")]
    run_dir = tmp_path / "run"
    assert main(["simulate", "--engine", "loop", *flags, "--run-dir", str(run_dir)]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    # the same algorithm and split, trained without privacy (seeded, in-process)
    expected = run_plain(RunConfig.from_flat({**keys, "privacy": "off"})).final
    assert summary["non_private"] == json.loads(json.dumps(expected))
    out = capsys.readouterr().out
    assert "sgd without privacy (same split)" in out and "most-popular (same split)" in out
    # the quality plot draws most-popular and the non-private reference as lines
    assert ("most-popular NDCG@10", summary["most_popular"]["ndcg@10"]) in drawn
    assert ("non-private NDCG@10", summary["non_private"]["ndcg@10"]) in drawn
    assert (run_dir / "plots" / "quality.png").stat().st_size > 1000
    # --no-reference skips it; a run without privacy is its own reference
    assert (
        main(
            [
                "simulate",
                "--engine",
                "loop",
                *flags,
                "--no-reference",
                "--run-dir",
                str(tmp_path / "r2"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "r2" / "summary.json").read_text())["non_private"] is None
    assert (
        main(
            [
                "simulate",
                "--engine",
                "loop",
                *flags,
                "--privacy",
                "off",
                "--run-dir",
                str(tmp_path / "r3"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "r3" / "summary.json").read_text())["non_private"] is None
