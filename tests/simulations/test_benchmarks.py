"""The benchmark scripts run and report every figure they promise (their speed is not tested)."""


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
