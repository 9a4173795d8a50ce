from fedrec.common.config import RunConfig
from fedrec.simulations.limits import noisy_popularity


def test_more_noise_never_helps_popularity_much():
    cfg = RunConfig(synthetic_users=200, synthetic_items=80)
    rows = noisy_popularity([0.1, 50.0], cfg=cfg, delta=1e-5, seeds=2)
    exact, small, huge = rows
    assert exact["sigma"] == 0 and small["epsilon"] > huge["epsilon"]
    assert small["ndcg@10"] > huge["ndcg@10"]
    assert abs(small["ndcg@10"] - exact["ndcg@10"]) < 0.02


def test_data_benchmark_times_each_job(capsys):
    from fedrec.simulations.bench_data import main, median_seconds

    calls = []
    assert median_seconds(lambda: calls.append(1), 3) >= 0 and len(calls) == 4  # warm-up + 3
    main(["--repeats", "1"])
    out = capsys.readouterr().out
    assert "synthetic 1,000 x 500" in out and "synthetic 20,000 x 500" in out
    assert "load ml-100k" not in out  # only with --data-dir
