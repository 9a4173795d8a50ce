"""The benchmark scripts run and report every figure they promise (their speed is not tested)."""

import pytest


@pytest.mark.slow
def test_data_benchmark_times_each_job(capsys):
    from fedrec.simulations.bench_data import main, median_seconds

    calls = []
    assert median_seconds(lambda: calls.append(1), 3) >= 0 and len(calls) == 4  # warm-up + 3
    main(["--repeats", "1", "--csv-mb", "1"])
    out = capsys.readouterr().out
    assert "synthetic 1,000 x 500" in out and "synthetic 20,000 x 500" in out
    assert "load ml-100k" not in out  # only with --data-dir


def test_local_training_benchmark_reports_each_variant():
    from fedrec.simulations.benchmark import bench_local

    out = bench_local(200, 8, 20, 1)
    assert set(out) >= {"non-private", "dp-sgd (fedrec)", "opacus per-sample hooks"}
    assert all(v > 0 for v in out.values())


def test_accounting_benchmark_times_one_round_at_each_round_and_from_scratch(capsys, monkeypatch):
    from fedrec.simulations import benchmark
    from fedrec.simulations.benchmark import ACCOUNTING_CASES, bench_accounting, print_accounting

    monkeypatch.setattr(benchmark, "PRV_MAX_STEPS", 25)  # PRV's round 3 has 30 steps
    rows = bench_accounting((2, 3), 1)
    assert [(r["accountant"], r["round"]) for r in rows] == [
        (c[1], n) for c in ACCOUNTING_CASES for n in (2, 3)
    ]
    for row in rows:
        if row["accountant"] == "prv" and row["round"] == 3:
            assert row == {**row, "skipped": 30} and "round s" not in row
            continue
        assert row["round s"] > 0 and row["from scratch s"] > 0 and row["epsilon"] > 0
        pld = row["accountant"] == "pld"
        assert ("grid" in row) == ("mean round s" in row) == ("audit epsilon" in row) == pld
        assert not pld or row["epsilon"] >= row["audit epsilon"] * (1 - 1e-6)
    print_accounting(rows, 1)
    out = capsys.readouterr().out
    for name, kind, *_ in ACCOUNTING_CASES[:2]:  # each later round over the first
        assert f"{name} ({kind}): round 3 / round 2 = " in out
    assert "skipped: 30 steps" in out and "% vs audit" in out


def test_scale_benchmark_configuration_and_skips():
    from fedrec.simulations.bench_scale import _too_slow, scale_config

    assert scale_config(1000, 3)["fraction-train"] == 0.1  # 10 %
    assert scale_config(1_000_000, 3)["fraction-train"] == 0.01  # capped at 10,000 a round
    assert scale_config(100_000, 3, "ml")["dataset"] == "ml-100k"
    done = {("flower", 1000): {"s/round": 2.0, "cohort": 100.0}}
    assert _too_slow("loop", 100_000, done, 60.0) == ""  # only Flower points are skipped
    assert _too_slow("flower", 10_000, done, 60.0) == ""  # est. 20 s/round: within the budget
    assert _too_slow("flower", 100_000, done, 60.0) == (
        "too slow: est. 200 s/round from 2.0 s at 1,000 devices"
    )


def test_tree_memory_counts_this_process():
    import os
    import resource

    from fedrec.simulations.bench_scale import tree_memory_mb, tree_rss_mb

    here = tree_rss_mb(os.getpid())
    assert 0 < here <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 * 1.01 + 50
    rss, pss = tree_memory_mb(os.getpid())
    assert 0 < pss <= rss  # a shared page counts a share of itself in PSS


@pytest.mark.slow
def test_scale_benchmark_measures_a_point_in_a_fresh_process(capsys):
    from fedrec.simulations.bench_scale import main

    with pytest.raises(SystemExit) as done:
        main(["--devices", "200", "--rounds", "1", "--repeats", "1", "--engines", "loop"])
    assert done.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line.split() for line in lines if line.strip().startswith("loop"))
    assert row[1] == "200" and float(row[3]) > 0 and float(row[4]) > 100  # s/round, MB
    assert float(row[6]) > 100 and 0 < float(row[8]) < 1  # PSS MB, the real users' NDCG@10
