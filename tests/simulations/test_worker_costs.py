"""Cohort workers' per-round costs: one algorithm lookup a shard, no trim for small shards,
no dp_accounting in a process that only builds user-level devices, no SciPy in a worker."""

import pickle
import subprocess
import sys
import textwrap

import pytest

from fedrec.common.config import RunConfig
from fedrec.simulations import federation, workers
from fedrec.simulations.workers import Shard, release_memory


def _cfg(tmp_path, privacy="user"):
    return RunConfig(
        synthetic_users=24,
        synthetic_items=30,
        dim=8,
        num_rounds=2,
        privacy=privacy,
        epsilon=8.0,
        reproducible=True,
        seed=5,
        algorithm="sgd",
        user_noise_multiplier=1.0,
        run_dir=str(tmp_path / "run"),
    )


def test_a_shard_looks_its_devices_algorithm_up_once(tmp_path, monkeypatch):
    calls = []
    lookup = federation.device_algorithm

    def counting(cfg, n_items):
        calls.append(n_items)
        return lookup(cfg, n_items)

    monkeypatch.setattr(federation, "device_algorithm", counting)
    monkeypatch.setattr(workers, "device_algorithm", counting)
    shard = Shard(_cfg(tmp_path), 0, 2)
    devices = [shard.device(u) for u in shard.devices[:5]]
    assert len(calls) == 1
    assert all(dev.algorithm is shard.algorithm for dev in devices)


@pytest.mark.parametrize("keep, trims", [(1024, 0), (4, 1)])
def test_only_a_shard_too_large_to_keep_its_devices_trims_the_heap(
    tmp_path, monkeypatch, keep, trims
):
    monkeypatch.setattr(workers, "_KEEP_DEVICES", keep)
    called = []
    monkeypatch.setattr(workers, "_libc_trim", lambda: called.append)
    shard = Shard(_cfg(tmp_path), 0, 2)  # 12 devices
    assert shard.keeps_devices == (trims == 0)
    release_memory(shard)
    assert len(called) == trims
    release_memory()  # the driver's: always
    assert len(called) == trims + 1


@pytest.mark.slow
def test_a_process_building_user_level_devices_never_imports_dp_accounting(tmp_path):
    cfg = _cfg(tmp_path)
    workers.share_population(cfg)  # as the driver does before the workers start
    code = textwrap.dedent(
        f"""
        import sys
        from fedrec.common.config import RunConfig
        from fedrec.simulations.workers import Shard
        cfg = RunConfig.from_flat({cfg.to_flat()!r})
        shard = Shard(cfg, 0, 2)
        [shard.device(u) for u in shard.devices]
        assert "dp_accounting" not in sys.modules, "dp_accounting imported"
        from fedrec.common.privacy.accountant import HistoryAccountant
        assert "dp_accounting" in sys.modules
        import dp_accounting
        assert issubclass(HistoryAccountant, dp_accounting.PrivacyAccountant)
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.fixture
def task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0


def _train_message(cfg, devices):
    """The driver's secure-sum train message for ``devices`` (round 1), as the engine sends it."""
    from fedrec.server.coordinator import make_coordinator
    from fedrec.server.flower_transport import cohort_message
    from fedrec.server.round_loop import Request

    coord = make_coordinator(cfg, federation.federated_dataset(cfg).n_items)
    task = coord.task(1)
    plan = coord.plan_round(len(devices), 1)
    request = Request(1, task, coord.state, {}, coord.algorithm.contribution(task).shapes)
    session = {"secure": True, "clipping-range": plan.clipping_range, "group-size": len(devices)}
    return cohort_message(request, devices, "train", session, node=7)


@pytest.mark.slow
def test_a_cohort_worker_never_imports_scipy(tmp_path, task_identity):
    cfg = _cfg(tmp_path)
    workers.share_population(cfg)  # as the driver does before the workers start
    devices = Shard(cfg, 0, 2).devices[:8]
    message = tmp_path / "train.pkl"
    message.write_bytes(pickle.dumps(_train_message(cfg, devices)))  # as Ray carries it
    code = textwrap.dedent(
        f"""
        import pickle, sys
        import fedrec.simulations.apps
        from fedrec.common.config import RunConfig
        from fedrec.simulations.workers import Shard, worker_reply
        cfg = RunConfig.from_flat({cfg.to_flat()!r})
        shard = Shard(cfg, 0, 2)
        reply = worker_reply(shard, pickle.loads(open({str(message)!r}, "rb").read()))
        assert "sum" in reply, list(reply)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "scipy")
        assert not loaded, loaded[:5]
        from fedrec.common.privacy import accounting  # the driver's and the audit's: SciPy
        assert "scipy.optimize" in sys.modules
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("keep, calls", [(1024, 1), (4, 3)])
def test_a_small_shard_trains_its_secure_sum_in_one_pass(
    tmp_path, monkeypatch, task_identity, keep, calls
):
    from fedrec.simulations.in_process import InProcessTransport

    monkeypatch.setattr(workers, "_KEEP_DEVICES", keep)
    monkeypatch.setattr(workers, "_SUM_GROUP", 3)
    groups = []
    partial_sum = InProcessTransport.partial_sum

    def counting(self, request, devices, session):
        groups.append(list(devices))
        return partial_sum(self, request, devices, session)

    monkeypatch.setattr(InProcessTransport, "partial_sum", counting)
    cfg = _cfg(tmp_path)
    shard = Shard(cfg, 0, 3)
    devices = shard.devices[:8]
    workers.worker_reply(shard, _train_message(cfg, devices))
    assert len(groups) == calls and sum(groups, []) == devices
