"""End-to-end distributed DP on Flower: noise shares, SecAgg+, a third of devices dropping out.

One secure round on the simulation engine with fedrec's own apps. Every device that reaches
the sum writes its plain update to a side folder (test instrumentation, not the product); the
table's change must equal the secure sum of exactly those updates within SecAgg+'s
quantization error, and the ε the run reports must be computed from the noise present.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fedrec.common.config import RunConfig


def _expected_dropouts(cfg):
    """The devices the simulated-dropout coin takes offline in round 1 (same hash as the mod)."""
    import hashlib

    return [
        p
        for p in range(cfg.synthetic_users)
        if int.from_bytes(hashlib.sha256(f"{cfg.seed}/{p}/1".encode()).digest()[:8], "little")
        / 2**64
        < cfg.simulated_dropout
    ]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from flwr.simulation import run_simulation

    from fedrec.client.client_app import make_client_app
    from fedrec.client.state_store import StoredDevices
    from fedrec.server.coordinator import initial_global_state
    from fedrec.simulations import runner
    from fedrec.simulations.apps import (
        make_apps,
        simulated_device_factory,
        simulated_dropout_mod,
        simulated_states,
    )
    from fedrec.simulations.federation import federated_dataset

    base = tmp_path_factory.mktemp("dist")
    side = base / "plain-updates"
    side.mkdir()
    # every device is sampled, so which ones drop out (a hash of seed, device and round) is
    # fixed: 7 of the 20 (35%)
    cfg = RunConfig(
        synthetic_users=20,
        synthetic_items=30,
        dim=4,
        num_rounds=1,
        fraction_train=1.0,
        eval_every=1,
        privacy="distributed",
        epsilon=6.0,
        accountant="rdp",
        local_epochs=1,
        sample_rate=0.5,
        dropout_tolerance=0.1,
        simulated_dropout=0.3,
        dropout_policy="account",
        server_optimizer="fedavg",
        server_lr=2.0,
        run_dir=str(base / "run"),
    )
    factory = simulated_device_factory(cfg)

    def recording_factory(context):
        device = factory(context)
        contribute = device.contribute

        def contribute_and_record(*args, **kw):
            out = contribute(*args, **kw)
            if hasattr(out, "arrays"):
                np.savez(side / f"{device.device_id}.npz", **out.arrays)
            return out

        device.contribute = contribute_and_record
        return device

    rounds = []
    server_app, _ = make_apps(cfg, on_round=rounds.append)
    client_app = make_client_app(
        StoredDevices(recording_factory, simulated_states(cfg)), mods=[simulated_dropout_mod(cfg)]
    )
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=20,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {
                "num_cpus": 2,
                "num_gpus": 0,
                "include_dashboard": False,
                "logging_level": "error",
                "log_to_driver": False,
            },
        },
    )
    fed = federated_dataset(cfg)
    summary = runner.privacy_summary(base / "run" / "ledgers", cfg, cfg.device_noise())
    return cfg, rounds, side, initial_global_state(cfg, fed.n_items), summary


@pytest.mark.slow
def test_round_completes_with_dropouts_and_the_sum_is_the_survivors_sum(run):
    cfg, rounds, side, initial, _ = run
    assert len(rounds) == 1
    r = rounds[0]
    assert r["sampled"] == 20
    assert r["dropped"] == len(_expected_dropouts(cfg)) == 7
    assert r["aggregated"] == 13
    assert all("simulated dropout" in why for why in r["drop_reasons"])
    updates = [dict(np.load(p)) for p in sorted(side.glob("*.npz"))]
    assert len(updates) == r["aggregated"]  # the dropped devices never produced an update
    plain = {k: np.sum([u[k] for u in updates], axis=0) for k in initial}
    final = dict(np.load(cfg.run_dir + "/item_embeddings.npz"))
    n = r["aggregated"]
    for k in initial:
        secure = (final[k].astype(np.float64) - initial[k]) * n / cfg.server_lr
        # SecAgg+ quantization: at most one step per device and entry, plus float32 rounding
        tol = r["train_secagg_error_bound"] + 1e-5 * n * (1 + np.abs(plain[k]))
        assert np.all(np.abs(secure - plain[k]) <= tol), k
        assert np.abs(plain[k]).max() > 100 * r["train_secagg_error_bound"]  # not trivial


@pytest.mark.slow
def test_reported_epsilon_reflects_the_noise_present(run):
    cfg, rounds, _, _, summary = run
    r = rounds[0]
    k = math.ceil(20 * (1 - cfg.dropout_tolerance))
    sigma = cfg.device_noise()
    ledgers = sorted((Path(cfg.run_dir) / "ledgers" / "secure-sum").glob("*.jsonl"))
    assert len(ledgers) == r["aggregated"]
    rec = json.loads(ledgers[0].read_text().splitlines()[-1])
    present = sigma * min(1.0, math.sqrt(r["aggregated"] / k))
    assert rec["mechanism"]["noise_multiplier"] == pytest.approx(present)
    # 35% dropped against 10% provisioned: less noise than planned, so more epsilon
    assert r["aggregated"] < k
    assert present < sigma
    assert summary["epsilon_max"] > summary["epsilon_max_provisioned"] > 0
