"""Distributed DP through Flower's real SecAgg+ (in-process): few devices, large shares.

The mechanism that runs must be the one accounted. On the landed main of 2026-11-29 SecAgg+
clipped every device's *noised* share to ±8 (6% of coordinates with 10 devices; the sum's σ
was 0.636 against 0.672 accounted, and no longer Gaussian), and a server could send any noise
share (0 included) to a group of any size. Here three devices with no data send pure noise,
so the secure sum is the noise itself and its σ can be measured against the ledger.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from fedrec.common.config import RunConfig
from tests.local_grid import LocalGrid

N_DEVICES, N_ITEMS, DIM = 3, 1000, 8


def _setup(tmp_path):
    from fedrec.client.client_app import make_client_app
    from fedrec.client.state_store import StoredDevices
    from fedrec.server.coordinator import make_coordinator
    from fedrec.simulations.apps import simulated_device_factory, simulated_states

    cfg = RunConfig(
        synthetic_users=N_DEVICES,
        synthetic_items=N_ITEMS,
        dim=DIM,
        num_rounds=1,
        fraction_train=1.0,
        privacy="distributed",
        dropout_tolerance=0.0,
        epsilon=8.0,
        accountant="rdp",
        local_epochs=2,
        sample_rate=1.0,
        local_lr=1.0,
        batch_size_norm=1.0,
        server_optimizer="fedavg",
        server_lr=1.0,
        run_dir=str(tmp_path / "run"),
    )
    factory = simulated_device_factory(cfg)
    shares = {}

    def no_data(context):  # devices without data: their update is their noise share alone
        device = factory(context)
        device.train_items = np.zeros(0, dtype=np.int64)
        contribute = device.contribute

        def recording(*args, **kw):
            out = contribute(*args, **kw)
            if hasattr(out, "arrays"):
                shares[device.device_id] = out.arrays
            return out

        device.contribute = recording
        return device

    app = make_client_app(StoredDevices(no_data, simulated_states(cfg)))
    coordinator = make_coordinator(cfg, N_ITEMS, ledger_dir=Path(cfg.run_dir) / "ledgers")
    return cfg, coordinator, LocalGrid(app, N_DEVICES), shares


def _round(coordinator, grid):
    """One round of fedrec's round loop over Flower's Grid (real SecAgg+, in-process)."""
    from fedrec.server.flower_transport import FlowerTransport
    from fedrec.server.round_loop import run_round

    before = {k: v.copy() for k, v in coordinator.state.items()}
    report = run_round(coordinator, FlowerTransport(grid, timeout=None), 1)
    return before, coordinator.state, report


def test_few_devices_large_share_nothing_clipped_and_the_sigma_is_the_ledgered_one(tmp_path):
    cfg, coordinator, grid, shares = _setup(tmp_path)
    before, after, report = _round(coordinator, grid)
    assert report.aggregated == N_DEVICES
    # each masked vector is the protocol's weight and the update, nothing else (no statistic
    # of the device's values rides along)
    assert grid.masked_shapes == [[(1,), (N_ITEMS, DIM), (N_ITEMS, 1)]] * N_DEVICES
    plan = coordinator.plan_round(N_DEVICES, 1)
    assert plan.noise_share == pytest.approx(1 / np.sqrt(N_DEVICES))  # a large share: 0.58
    # no share came near the range: nothing was clipped
    assert len(shares) == N_DEVICES
    assert (
        max(float(np.abs(v).max()) for s in shares.values() for v in s.values())
        < plan.clipping_range / 2
    )
    # the released sum is the noise: measure its sigma, compare with the server's ledger
    local = cfg.local_config()
    total = np.concatenate(
        [
            ((after[k].astype(np.float64) - before[k]) * N_DEVICES / cfg.server_lr).ravel()
            for k in before
        ]
    )
    unit = local.lr * np.sqrt(local.steps) * cfg.max_grad_norm / local.batch_size_norm
    measured = float(np.std(total)) / unit
    ledgers = sorted((Path(cfg.run_dir) / "ledgers" / "secure-sum").glob("*.jsonl"))
    assert len(ledgers) == N_DEVICES
    ledgered = [
        json.loads(p.read_text().splitlines()[-1])["mechanism"]["noise_multiplier"] for p in ledgers
    ]
    assert ledgered == [pytest.approx(cfg.device_noise())] * N_DEVICES
    # 9,000 values: the std's relative standard error is 0.75%
    assert measured == pytest.approx(cfg.device_noise(), rel=0.04)


def test_a_range_that_would_clip_is_refused_and_nothing_is_summed(tmp_path):
    cfg, coordinator, grid, shares = _setup(tmp_path)
    import dataclasses

    real = coordinator.mechanism.plan
    coordinator.mechanism.plan = lambda *a: dataclasses.replace(  # a server shrinking it
        real(*a), clipping_range=1e-4
    )
    before, after, report = _round(coordinator, grid)
    assert report.aggregated == 0 and shares == {}  # every device refused before any work
    assert report.refused == N_DEVICES
    assert sum(r.endswith("declined: not-secure") for r in report.drop_reasons) == N_DEVICES
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert not (Path(cfg.run_dir) / "ledgers" / "device-000000.jsonl").exists()
    assert not (Path(cfg.run_dir) / "ledgers" / "secure-sum").exists()


@pytest.mark.parametrize("share", [0.0, 0.2])
def test_a_share_the_group_cannot_carry_is_refused(tmp_path, share):
    import dataclasses

    cfg, coordinator, grid, shares = _setup(tmp_path)
    real = coordinator.mechanism.plan

    def forged(*args):  # 0: no noise at all; 0.2: needs 25 devices, the group has 3
        return dataclasses.replace(real(*args), noise_share=share)

    coordinator.mechanism.plan = forged
    before, after, report = _round(coordinator, grid)
    assert report.aggregated == 0 and shares == {} and report.refused == N_DEVICES
    assert sum(r.endswith("declined: not-secure") for r in report.drop_reasons) == N_DEVICES
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert not (Path(cfg.run_dir) / "ledgers" / "device-000000.jsonl").exists()


def test_a_share_beyond_the_range_makes_its_device_decline_and_the_round_abort(tmp_path):
    """If the Gaussian tail event happens anyway, the share is never clipped into a sum."""
    import fedrec.client.secure_aggregation as client_sa

    cfg, coordinator, grid, shares = _setup(tmp_path)
    real = client_sa.secure_train_reply
    calls = []

    def unlucky(msg, arrays, context):  # the first device's noise lands beyond the range
        calls.append(1)
        if len(calls) == 1:
            c = client_sa._clipping_range(context)
            arrays = {k: np.full_like(v, 2 * c) for k, v in arrays.items()}
        return real(msg, arrays, context)

    client_sa.secure_train_reply = unlucky
    try:
        before, after, report = _round(coordinator, grid)
    finally:
        client_sa.secure_train_reply = real
    assert report.aggregated == 0 and len(calls) == N_DEVICES  # all trained, one declined
    assert any("clipping range" in r for r in report.drop_reasons), report.drop_reasons
    assert sum(r.endswith("declined: secure-range") for r in report.drop_reasons) == 1
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert not (Path(cfg.run_dir) / "ledgers" / "secure-sum").exists()  # nothing released
