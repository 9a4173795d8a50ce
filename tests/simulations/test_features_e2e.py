"""The features algorithm end to end: local DP on Flower (ledgers, audit, the table is the
public features), its quality on ML-100K against most-popular (why it exists), and its errors."""

import json
from pathlib import Path

import numpy as np
import pytest

from fedrec.common.config import RunConfig


@pytest.mark.slow
def test_flower_local_features_run_is_one_audited_release(tmp_path):
    from fedrec.common.audit.report import audit_run
    from fedrec.common.data.item_features import item_features
    from fedrec.simulations.federation import federated_dataset
    from fedrec.simulations.runner import simulate

    cfg = RunConfig(
        synthetic_users=24,
        synthetic_items=40,
        dim=12,
        num_rounds=1,
        algorithm="features",
        fraction_train=1.0,
        eval_every=1,
        privacy="local",
        epsilon=4.0,
        accountant="rdp",
        run_dir=str(tmp_path / "run"),
    )
    res = simulate(cfg)
    run = Path(cfg.run_dir)
    rounds = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rounds) == 1 and rounds[0]["aggregated"] == 24
    table = np.load(run / "item_embeddings.npz")
    data = federated_dataset(cfg).data
    feats, _ = item_features(data.items, data.n_items, year_bins=cfg.feature_year_bins)
    emb = table["item_embedding.weight"]
    k = feats.shape[1]
    # the item embeddings are the public features, untouched by any device's data
    expected = feats / np.maximum(feats.sum(axis=1, keepdims=True), 1)
    assert np.allclose(emb[:, :k], expected) and not emb[:, k:].any()
    ledgers = sorted((run / "ledgers").glob("device-*.jsonl"))
    assert len(ledgers) == 24
    events = [json.loads(p.read_text().splitlines()[-1]) for p in ledgers]
    assert {e["purpose"] for e in events} == {"spectral-popularity"}
    priv = res.summary["privacy"]
    assert priv["algorithm"] == "features" and len(priv["noise_multiplier"]) == 1
    assert 3.9 < priv["epsilon_max"] <= 4.0 + 1e-6
    report = audit_run(run / "ledgers", accountants=("rdp",), workers=1, plots=False, write=False)
    assert report.ok and max(led.epsilon["rdp"] for led in report.ledgers) <= 4.0 * 1.01


@pytest.mark.slow
def test_local_features_beat_most_popular_on_ml100k(ml100k_dir):
    from fedrec.simulations.baselines import most_popular
    from fedrec.simulations.federation import federated_dataset
    from fedrec.simulations.loop import run_plain

    cfg = RunConfig(
        dataset="ml-100k",
        data_dir=str(ml100k_dir),
        algorithm="features",
        num_rounds=1,
        fraction_train=1.0,
        eval_every=1,
        privacy="local",
        epsilon=8.0,
        delta=1e-5,
        dim=32,
    )
    res = run_plain(cfg)
    pop = most_popular(federated_dataset(cfg).split)["ndcg@10"]
    ndcg = res.rounds[-1]["eval"]["ndcg@10"]
    # measured 0.154 against 0.111; without the device's profile it is noisy popularity (0.11)
    assert ndcg > pop + 0.03
    assert res.final["ndcg@10"] == pytest.approx(ndcg, abs=1e-9)  # central == federated
    flat = run_plain(cfg.replace(feature_scale=0.0))  # popularity alone, same release
    assert flat.rounds[-1]["eval"]["ndcg@10"] < pop + 0.01


def test_features_errors_are_clear(tmp_path):
    from fedrec.server.coordinator import make_coordinator

    cfg = RunConfig(algorithm="features", num_rounds=1, dim=4)
    with pytest.raises(ValueError, match="public item features"):
        make_coordinator(cfg, 10)
    with pytest.raises(ValueError, match="set dim to at least 6"):
        make_coordinator(cfg, 10, item_features=np.ones((10, 6), np.float32))
