import json

from fedrec.cli import main


def test_simulate_command_writes_a_run_directory(tmp_path, capsys):
    run_dir = tmp_path / "run"
    rc = main(
        [
            "simulate",
            "--engine",
            "loop",
            "--rounds",
            "2",
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
    assert summary["rounds"] == 2 and summary["privacy"]["epsilon_max"] <= 8.0
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
