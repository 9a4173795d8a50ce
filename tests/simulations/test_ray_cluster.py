"""fedrec on an existing Ray cluster (``--ray-address``): two Ray nodes on loopback.

The cluster is private to the test: its address is never written where another process's
``ray.init()`` would find it, and it is shut down even when the test fails.
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from fedrec.common.config import RunConfig


def _cfg(run_dir: Path) -> RunConfig:
    return RunConfig(
        synthetic_users=24,
        synthetic_items=30,
        dim=8,
        num_rounds=2,
        fraction_train=0.5,
        accountant="rdp",
        epsilon=8.0,
        privacy="distributed",
        reproducible=True,
        seed=5,
        algorithm="sgd",
        run_dir=str(run_dir),
    )


class _WhereItRan:
    """A ClientApp that notes the Ray node each message ran on, then answers as ``app``."""

    def __init__(self, app, folder: Path):
        self.app, self.folder = app, folder

    def __call__(self, message, context):
        import os

        import ray

        node = ray.get_runtime_context().get_node_id()
        with open(self.folder / f"{node}.{os.getpid()}", "a") as f:
            f.write(f"{context.node_config['partition-id']}\n")
        return self.app(message=message, context=context)


@pytest.fixture
def two_nodes(monkeypatch):
    """A head and a worker node, one CPU each; yields (address, {node id: name})."""
    import ray
    import ray._common.utils
    import ray._private.utils
    from ray.cluster_utils import Cluster

    # Cluster() writes its address to /tmp/ray/ray_current_cluster (where any ray.init()
    # on this machine would then join it) and removes that file on shutdown: neither here.
    monkeypatch.setattr(ray._private.utils, "write_ray_address", lambda *a, **k: None)
    monkeypatch.setattr(ray._common.utils, "reset_ray_address", lambda *a, **k: None)
    temp = tempfile.mkdtemp(prefix="fedrec-ray-")  # short: Ray's socket paths must fit
    cluster = Cluster(shutdown_at_exit=True)
    try:
        head = cluster.add_node(num_cpus=1, resources={"head": 1}, temp_dir=temp)
        other = cluster.add_node(num_cpus=1, resources={"other": 1}, temp_dir=temp)
        yield cluster.address, {head.node_id: "head", other.node_id: "other"}
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_a_run_on_a_two_node_cluster_is_the_loops_run_with_work_on_both_nodes(
    tmp_path, two_nodes, monkeypatch
):
    import ray.cloudpickle

    from fedrec.common.audit.report import audit_run
    from fedrec.simulations import apps
    from fedrec.simulations.runner import simulate, simulate_loop

    address, names = two_nodes
    where = tmp_path / "where"
    where.mkdir()
    make_apps = apps.make_apps

    def noting_apps(*args, **kwargs):
        server, client = make_apps(*args, **kwargs)
        return server, _WhereItRan(client, where)

    monkeypatch.setattr(apps, "make_apps", noting_apps)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        cluster = simulate(
            _cfg(tmp_path / "cluster"), workers=2, reference=False, ray_address=address
        )
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    simulate_loop(_cfg(tmp_path / "loop"), reference=False)

    ran_on = {names[p.name.split(".")[0]] for p in where.iterdir()}
    assert ran_on == {"head", "other"}  # the workers' messages ran on both nodes
    assert cluster.summary["workers"] == 2 and len(cluster.rounds) == 2
    a = np.load(tmp_path / "cluster" / "item_embeddings.npz")
    b = np.load(tmp_path / "loop" / "item_embeddings.npz")
    assert set(a.files) == set(b.files)
    for k in a.files:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7)

    def rounds(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        keys = ("sampled", "aggregated", "refused", "dropped", "train_epsilon_max", "eval")
        return [[json.loads(x).get(k) for k in keys] for x in lines]

    assert rounds("cluster") == rounds("loop")
    assert sum(r[1] for r in rounds("cluster")) > 0
    report = audit_run(tmp_path / "cluster", write=False, workers=1)
    assert report.ok, report


def test_an_unreachable_cluster_is_one_line_before_anything_is_written(tmp_path):
    import socket

    from fedrec.simulations.runner import simulate

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ValueError, match=r"--ray-address 127\.0\.0\.1:\d+: no Ray cluster"):
        simulate(_cfg(tmp_path / "run"), ray_address=f"127.0.0.1:{port}")
    with pytest.raises(ValueError, match="drop --cpus"):
        simulate(_cfg(tmp_path / "run"), ray_address=f"127.0.0.1:{port}", num_cpus=2)
    for bad in ("auto", "ray://head:10001", "head"):
        with pytest.raises(ValueError, match="--ray-address"):
            simulate(_cfg(tmp_path / "run"), ray_address=bad)
    assert not (tmp_path / "run").exists()
