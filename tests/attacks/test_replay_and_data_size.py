"""Attacks on the noise itself: replaying seeded generators, and reading n from its scale.

Replay: on the landed main of 2026-11-29 the server drew its user-level noise and Poisson
sampling from ``default_rng(cfg.seed)`` and devices from ``sha256(seed/device_id)``; anyone
holding the published table and the config replayed them and recovered the clipped sum within
1e-7 (noise std 0.5). Data size: with ``batch_size_norm = 0`` (the SDK's default) an update's
noise std was 0.200 with 3 events and 0.020 with 40.
"""

import numpy as np
import pytest

from fedrec.common.config import RunConfig


def _user_level_round(tmp_path, monkeypatch, **extra):
    """One user-level DP round on the loop engine; returns (cfg, before, after, true sum)."""
    import fedrec.server.coordinator as coordinator
    from fedrec.common.privacy.mechanisms.user import UserLevel
    from fedrec.simulations.loop import run_plain

    seen = {}
    real = UserLevel.aggregate_sum

    def recording(self, server_round, plan, total, included, spec):
        seen["sum"] = {k: np.asarray(v, dtype=np.float64) for k, v in total.items()}
        seen["count"] = self.cfg.fraction_train * self.pool_size
        return real(self, server_round, plan, total, included, spec)

    monkeypatch.setattr(UserLevel, "aggregate_sum", recording)
    cfg = RunConfig(
        synthetic_users=60,
        synthetic_items=40,
        dim=4,
        num_rounds=1,
        fraction_train=0.1,
        privacy="user",
        delta=1e-4,
        epsilon=4.0,
        server_optimizer="fedavg",
        server_lr=1.0,
        eval_every=1,
        run_dir=str(tmp_path / "run"),
        **extra,
    )
    before = coordinator.initial_global_state(cfg, 40)  # public: seeded, no data involved
    after = run_plain(cfg, ledger_dir=tmp_path / "run" / "ledgers").state
    return cfg, before, after, seen


def _replay(cfg, before, after, count):
    """The attacker: replay default_rng(seed) as the server used it, subtract the noise."""
    rng = np.random.default_rng(cfg.seed)
    rng.random(cfg.synthetic_users)  # Poisson sampling consumes the stream first
    std = cfg.user_noise() * cfg.user_clip
    noisy_sum = {
        k: (after[k].astype(np.float64) - before[k]) / cfg.server_lr * count for k in before
    }
    return {k: noisy_sum[k] - rng.normal(0.0, std, size=before[k].shape) for k in before}


@pytest.mark.slow
def test_replaying_the_seeded_generators_recovers_nothing(tmp_path, monkeypatch):
    cfg, before, after, seen = _user_level_round(tmp_path / "a", monkeypatch)
    recovered = _replay(cfg, before, after, seen["count"])
    err = np.concatenate([(recovered[k] - seen["sum"][k]).ravel() for k in before])
    std = cfg.user_noise() * cfg.user_clip
    # the replayed noise is unrelated to the noise drawn: the error is the whole noise
    assert np.std(err) > 0.5 * std
    # control: in a reproducible run the same attack subtracts the noise exactly (which is
    # why such runs are labelled "not private against anyone who knows the seed")
    cfg, before, after, seen = _user_level_round(tmp_path / "b", monkeypatch, reproducible=True)
    recovered = _replay(cfg, before, after, seen["count"])
    err = np.concatenate([(recovered[k] - seen["sum"][k]).ravel() for k in before])
    assert np.abs(err).max() < 1e-3 * std
    from fedrec.common.audit.ledger import Ledger

    records = Ledger.read(tmp_path / "b" / "run" / "ledgers" / "server.jsonl")
    assert {r["mechanism"]["randomness"] for r in records} == {"seeded"}
    # the audit says so, and says nothing of the kind for the private run
    from fedrec.common.audit.report import audit_run, render_markdown

    for run, seeded in (("a", False), ("b", True)):
        report = audit_run(
            tmp_path / run / "run" / "ledgers",
            write=False,
            plots=False,
            accountants=("pld",),
            workers=1,
        )
        assert ("SEEDED" in render_markdown(report)) is seeded
        assert report.server.randomness == (["seeded"] if seeded else ["os-entropy"])


def test_a_device_s_noise_cannot_be_regenerated_from_the_seed_and_its_id(tmp_path):
    """A device with no data sends pure noise; replaying sha256(seed/id) must not match it."""
    from fedrec.client.device import Device
    from fedrec.common.privacy.dpsgd import DPConfig, LocalConfig
    from fedrec.server.coordinator import initial_global_state

    cfg = RunConfig(synthetic_items=2000, dim=8)
    table = initial_global_state(cfg, 2000)
    local = LocalConfig(epochs=1, sample_rate=0.5, lr=1.0)
    dp = DPConfig(noise_multiplier=1.0, budget_epsilon=50.0)

    def update(seed):
        dev = Device(
            "device-000007",
            np.zeros(0, dtype=np.int64),
            n_items=2000,
            dim=8,
            local=local,
            dp=dp,
            seed=seed,
        )
        return dev.train(table, 1).arrays["item_embedding.weight"].ravel()

    private = update(None)  # what a simulation of a private run does (cfg.device_seed None)
    replayed = update(0)  # the attacker's replay with the config's seed
    # 18,000 noise values: an unrelated draw correlates at |r| < 0.05 (6.7 standard errors)
    assert abs(np.corrcoef(private, replayed)[0, 1]) < 0.05
    assert np.abs(private - replayed).max() > 0.1 * np.std(private)
    assert np.array_equal(update(0), replayed)  # control: seeded devices repeat exactly
    assert RunConfig(privacy="local").device_seed is None
    assert RunConfig(privacy="local", reproducible=True).device_seed == 0


def _noise_scale(delta: np.ndarray) -> float:
    """A robust std (median absolute deviation): the few rows a user's data touched do not
    move it, the noise on every other row does."""
    return float(1.4826 * np.median(np.abs(delta - np.median(delta))))


@pytest.mark.slow
def test_an_update_s_noise_scale_does_not_depend_on_the_data_size(tmp_path):
    """Through the SDK's public API with its defaults, as an app would call it."""
    from fedrec.client.sdk import Event, FedRecClient, PolicySignals

    n_items, dim = 1682, 32
    rng = np.random.default_rng(0)
    table = {
        "item_embedding.weight": rng.normal(scale=0.1, size=(n_items, dim)).astype(np.float32),
        "item_bias.weight": np.zeros((n_items, 1), dtype=np.float32),
    }
    ids = [str(i) for i in range(n_items)]
    ok = PolicySignals(charging=True, on_wifi=True)
    scales = {}
    for n in (0, 3, 4, 20, 21, 40):
        with FedRecClient.open(tmp_path / f"n{n}.db", catalog=ids) as client:
            client.record_many([Event("purchase", str(i), float(i)) for i in range(n)])
            reply = client.train_round(table, 1, policy_signals=ok)
            assert type(reply).__name__ == "Contribution", (n, reply)  # n = 0 too: no refusal
            scales[n] = _noise_scale(reply.arrays["item_embedding.weight"])
    values = np.array(list(scales.values()))
    # 53,824 noise values per update: the MAD's relative standard error is about 0.7%
    assert values.max() / values.min() < 1.04, scales
    for a, b in ((3, 4), (20, 21), (3, 40), (0, 40)):
        assert abs(scales[a] / scales[b] - 1) < 0.04, (a, b, scales)
