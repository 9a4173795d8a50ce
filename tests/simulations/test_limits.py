from fedrec.common.config import RunConfig
from fedrec.simulations.limits import noisy_popularity


def test_more_noise_never_helps_popularity_much():
    cfg = RunConfig(synthetic_users=200, synthetic_items=80)
    rows = noisy_popularity([0.1, 50.0], cfg=cfg, delta=1e-5, seeds=2)
    exact, small, huge = rows
    assert exact["sigma"] == 0 and small["epsilon"] > huge["epsilon"]
    assert small["ndcg@10"] > huge["ndcg@10"]
    assert abs(small["ndcg@10"] - exact["ndcg@10"]) < 0.02
