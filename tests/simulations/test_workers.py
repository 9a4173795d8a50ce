"""Cohort workers: a SuperNode hosting a shard of the devices answers as its devices would."""

import json

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict

from fedrec.client.client_app import parse_train
from fedrec.common.config import RunConfig
from fedrec.common.privacy.secagg import SecureSession
from fedrec.server.coordinator import make_coordinator
from fedrec.server.flower_transport import (
    COHORT_RECORD,
    HEADS_RECORD,
    cohort_message,
    request_content,
    split_cohort_keys,
    to_numpy,
    unpack_replies,
)
from fedrec.server.round_loop import Request
from fedrec.simulations.apps import make_apps, simulated_devices
from fedrec.simulations.federation import federated_dataset
from fedrec.simulations.workers import Shard, _dropout_coin, assign_shards, worker_reply


@pytest.fixture(autouse=True)
def task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0


def test_shards_go_largest_first_onto_the_least_loaded_worker():
    # 0 (5) -> w0; 2 (4) -> w1; 4 (3) -> w1 (4 < 5); 3 (2) -> w0 (5 < 7); 1 (1) -> w0 (tie 7/7)
    assert assign_shards([5, 1, 4, 2, 3], 2) == [[0, 1, 3], [2, 4]]
    sizes = np.random.default_rng(0).integers(0, 400, size=943)
    shards = assign_shards(sizes, 4)
    assert sorted(u for s in shards for u in s) == list(range(943))
    loads = [sum(max(1, int(sizes[u])) for u in s) for s in shards]
    assert max(loads) - min(loads) <= max(sizes)  # balanced within one device
    assert assign_shards(sizes, 4) == shards  # every worker computes the same assignment
    assert assign_shards([3, 2], 4) == [[0], [1], [], []]
    with pytest.raises(ValueError, match="at least 1"):
        assign_shards([1], 0)


def _cfg(tmp_path, name, privacy, **extra):
    return RunConfig(
        synthetic_users=24,
        synthetic_items=30,
        dim=8,
        num_rounds=2,
        fraction_train=0.5,
        accountant="rdp",
        epsilon=8.0,
        privacy=privacy,
        reproducible=True,
        seed=5,
        algorithm="sgd",
        user_noise_multiplier=1.0,  # given, not calibrated (quick)
        run_dir=str(tmp_path / name),
        **extra,
    )


def _context(cfg, u):
    n = federated_dataset(cfg).n_users
    return Context(
        run_id=1,
        node_id=100 + u,
        node_config={"partition-id": u, "num-partitions": n},
        state=RecordDict(),
        run_config=cfg.to_flat(),
    )


def _request(cfg, devices):
    coord = make_coordinator(cfg, federated_dataset(cfg).n_items)
    task = coord.task(1)
    shapes = coord.algorithm.contribution(task).shapes
    if not coord.secure:
        return Request(1, task, coord.state, {}, shapes), {}
    plan = coord.plan_round(len(devices), 1)
    config = {"noise-share": plan.noise_share} if coord.mechanism.device_noise else {}
    session = {"secure": True, "clipping-range": plan.clipping_range, "group-size": len(devices)}
    return Request(1, task, coord.state, config, shapes), session


def _ledger_heads(cfg, devices):
    heads = {}
    for u in devices:
        path = f"{cfg.run_dir}/ledgers/device-{u:06d}.jsonl"
        last = json.loads(open(path).read().splitlines()[-1])
        heads[u] = {"device_id": f"device-{u:06d}", "seq": last["seq"], "hash": last["hash"]}
    return heads


@pytest.mark.parametrize(
    ("privacy", "dropout"), [("distributed", 0.0), ("user", 0.0), ("distributed", 0.5)]
)
def test_a_workers_partial_sum_equals_the_sum_of_its_devices_replies(tmp_path, privacy, dropout):
    worker_cfg = _cfg(tmp_path, "worker", privacy, simulated_dropout=dropout)
    shard = Shard(worker_cfg, 1, 3)
    devices = shard.devices[:6]
    request, session = _request(worker_cfg, devices)
    msg = cohort_message(request, devices, "train", session, node=7)
    content = worker_reply(shard, msg)
    info = dict(content[COHORT_RECORD])
    # a simulated dropout leaves the sum after its device trained (the seeded coin of the
    # one-device engine's dropout mod: seed, device, round)
    kept = [u for u in devices if not _dropout_coin(worker_cfg, u, 1)]
    assert 0 < len(kept) < len(devices) if dropout else kept == devices
    assert info["included"] == kept and info["declined"] == info["out-of-range"] == 0
    total = to_numpy(content["sum"])

    # the same devices, each on its own through the device provider of a one-device SuperNode,
    # answering what it would put into SecAgg+
    device_cfg = _cfg(tmp_path, "devices", privacy)
    provider = simulated_devices(device_cfg)
    device_msg = Message(request_content(request), dst_node_id=1, message_type="train")
    secure = SecureSession(clipping_range=session["clipping-range"], group_size=len(devices))
    expected = {k: np.zeros(s, np.float64) for k, s in request.reply_shapes.items()}
    for u in devices:
        device = provider(_context(device_cfg, u))
        outcome, _ = device.contribute(parse_train(device_msg), secure)
        device.close(True)
        for k in expected:
            expected[k] += outcome.arrays[k] if u in kept else 0.0
    assert set(total) == set(expected)
    for k in expected:
        assert total[k].dtype == np.float64
        if privacy == "user":  # the worker trains its devices batched: equal to float rounding
            # (a device alone rounds (table - lr*grad) - table: within ulp(table) ~ 3e-8)
            np.testing.assert_allclose(total[k], expected[k], rtol=1e-6, atol=1e-7)
        else:
            np.testing.assert_array_equal(total[k], expected[k])
    if privacy == "distributed":  # each device's ledger head, as its own ledger ends
        heads = split_cohort_keys(dict(content[HEADS_RECORD]))
        assert heads == _ledger_heads(worker_cfg, devices)  # the server signs the included
    else:  # user-level devices keep no ledger (the server's is the record)
        assert HEADS_RECORD not in content


def test_a_workers_individual_replies_are_its_devices_clientapp_replies(tmp_path):
    worker_cfg = _cfg(tmp_path, "worker", "local")
    shard = Shard(worker_cfg, 0, 2)
    devices = shard.devices[:4]
    request, _ = _request(worker_cfg, devices)
    msg = cohort_message(request, devices, "train", {}, node=3)
    reply = Message(worker_reply(shard, msg), reply_to=msg)
    replies = unpack_replies(reply, devices)
    assert [r.node for r in replies] == devices

    device_cfg = _cfg(tmp_path, "devices", "local")
    _, app = make_apps(device_cfg)  # one device per SuperNode: the deployment's ClientApp
    for u, got in zip(devices, replies, strict=True):
        msg = Message(request_content(request), dst_node_id=100 + u, message_type="train")
        real = app(msg, _context(device_cfg, u))
        arrays = to_numpy(real.content["arrays"])
        assert set(got.arrays) == set(arrays)
        for k in arrays:
            np.testing.assert_array_equal(got.arrays[k], arrays[k])
        metrics = dict(real.content["metrics"])
        assert got.num_examples == metrics.pop("num-examples")
        assert got.metrics == pytest.approx(metrics)
    heads = split_cohort_keys(dict(reply.content[HEADS_RECORD]))
    assert heads == _ledger_heads(worker_cfg, devices)


def test_a_worker_refuses_devices_it_does_not_host(tmp_path):
    cfg = _cfg(tmp_path, "worker", "local")
    shard, other = Shard(cfg, 0, 2), Shard(cfg, 1, 2)
    request, _ = _request(cfg, other.devices[:2])
    _, app = make_apps(cfg, workers=2)
    context = Context(
        run_id=1,
        node_id=9,
        node_config={"partition-id": 0, "num-partitions": 2},
        state=RecordDict(),
        run_config=cfg.to_flat(),
    )
    msg = cohort_message(request, [shard.devices[0], other.devices[0]], "train", {}, node=9)
    replies = unpack_replies(app(msg, context), [shard.devices[0], other.devices[0]])
    assert [r.refusal for r in replies] == ["bad-request", None]
    assert replies[1].error is not None  # not hosted here: nothing trained for it


@pytest.mark.slow
@pytest.mark.parametrize("privacy", ["distributed", "user"])
def test_a_worker_run_on_flower_is_the_loops_run_and_its_audit_passes(tmp_path, privacy):
    from fedrec.common.audit.report import audit_run
    from fedrec.simulations.runner import simulate, simulate_loop

    flower = simulate(_cfg(tmp_path, "flower", privacy), num_cpus=2, workers=2, reference=False)
    simulate_loop(_cfg(tmp_path, "loop", privacy), reference=False)
    a = np.load(tmp_path / "flower" / "item_embeddings.npz")
    b = np.load(tmp_path / "loop" / "item_embeddings.npz")
    assert set(a.files) == set(b.files)
    for k in a.files:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7)

    def rounds(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        keys = ("sampled", "aggregated", "refused", "dropped", "train_epsilon_max")
        return [[json.loads(x).get(k) for k in keys] for x in lines]

    assert rounds("flower") == rounds("loop")
    assert sum(r[1] for r in rounds("flower")) > 0
    assert flower.summary["workers"] == 2
    report = audit_run(tmp_path / "flower", write=False, workers=1)
    assert report.ok, report
    receipts = (tmp_path / "flower" / "receipts.jsonl").read_text().splitlines()
    if privacy == "distributed":  # one receipt per contribution in a sum, and the seal
        assert len(receipts) == sum(r[1] for r in rounds("flower")) + 1


def test_a_workers_evaluation_releases_are_its_devices_clientapp_releases(tmp_path):
    from fedrec.common.algorithms.base import Task

    worker_cfg = _cfg(tmp_path, "worker", "local")
    _, worker_app = make_apps(worker_cfg, workers=2)
    devices = Shard(worker_cfg, 1, 2).devices[:3]
    state = make_coordinator(worker_cfg, federated_dataset(worker_cfg).n_items).state
    config = {"ks": "10,20", "eval-noise-multiplier": 1.0}
    request = Request(1, Task("evaluate"), state, config)
    msg = cohort_message(request, devices, "evaluate", {}, node=9)
    context = Context(
        run_id=1,
        node_id=9,
        node_config={"partition-id": 1, "num-partitions": 2},
        state=RecordDict(),
        run_config=worker_cfg.to_flat(),
    )
    reply = worker_app(msg, context)
    releases = split_cohort_keys(dict(reply.content["metrics"]))
    assert sorted(releases) == devices

    device_cfg = _cfg(tmp_path, "devices", "local")
    _, app = make_apps(device_cfg)
    for u in devices:
        one = Message(request_content(request), dst_node_id=100 + u, message_type="evaluate")
        real = dict(app(one, _context(device_cfg, u)).content["metrics"])
        assert releases[u] == pytest.approx(real, rel=1e-12, abs=1e-12)
    assert split_cohort_keys(dict(reply.content[HEADS_RECORD])) == _ledger_heads(
        worker_cfg, devices
    )


def _two_rounds(tmp_path, name, monkeypatch, keep):
    from fedrec.simulations import workers

    monkeypatch.setattr(workers, "_KEEP_DEVICES", keep)
    cfg = _cfg(tmp_path, name, "distributed").replace(fraction_train=1.0)  # budget: 2 rounds
    shard = Shard(cfg, 0, 2)
    devices = shard.devices[:5]
    request, session = _request(cfg, devices)
    sums = []
    for rnd in (1, 2):
        req = Request(rnd, request.task, request.state, request.config, request.reply_shapes)
        content = worker_reply(shard, cohort_message(req, devices, "train", session, node=7))
        assert dict(content[COHORT_RECORD])["included"] == devices
        sums.append(to_numpy(content["sum"]))
        assert not shard._changed  # flushed: nothing of the round is held
    return shard, sums


def test_a_large_shard_keeps_no_device_built_and_answers_as_a_small_one(tmp_path, monkeypatch):
    kept, kept_sums = _two_rounds(tmp_path, "kept", monkeypatch, keep=1024)
    rebuilt, rebuilt_sums = _two_rounds(tmp_path, "rebuilt", monkeypatch, keep=2)
    assert len(kept._built) == 5 and not rebuilt._built  # 12 hosted > 2: rebuilt per use
    for a, b in zip(kept_sums, rebuilt_sums, strict=True):  # states carried by the store
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert any(not np.array_equal(kept_sums[0][k], kept_sums[1][k]) for k in kept_sums[0])


def _both_shards(tmp_path, name, monkeypatch, keep):
    """One process serving both shards of a run, as Flower's Ray actor pool lets happen."""
    from collections import OrderedDict

    from fedrec.simulations import workers

    monkeypatch.setattr(workers, "_KEEP_DEVICES", keep)
    monkeypatch.setattr(workers, "_KEPT", OrderedDict(), raising=False)
    cfg = _cfg(tmp_path, name, "distributed").replace(fraction_train=1.0)  # budget: 2 rounds
    shards = [Shard(cfg, 0, 2), Shard(cfg, 1, 2)]
    requests = [_request(cfg, shard.devices) for shard in shards]
    sums = []
    for rnd in (1, 2):
        for shard, (request, session) in zip(shards, requests, strict=True):
            req = Request(rnd, request.task, request.state, request.config, request.reply_shapes)
            msg = cohort_message(req, shard.devices, "train", session, node=7)
            sums.append(to_numpy(worker_reply(shard, msg)["sum"]))
    return shards, sums


@pytest.mark.slow
def test_a_process_serving_many_shards_keeps_at_most_its_budget_of_devices(tmp_path, monkeypatch):
    kept, kept_sums = _both_shards(tmp_path, "kept", monkeypatch, keep=1024)
    bounded, bounded_sums = _both_shards(tmp_path, "bounded", monkeypatch, keep=12)
    assert [len(s._built) for s in kept] == [12, 12]
    # 12 hosted per shard: each keeps its devices, but the process 12 over both shards
    assert [len(s._built) for s in bounded] == [0, 12]
    for a, b in zip(kept_sums, bounded_sums, strict=True):  # an evicted device: from the store
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.slow
@pytest.mark.parametrize("population", [0, 60])
def test_a_shard_maps_the_devices_data_the_driver_wrote(tmp_path, population):
    from fedrec.simulations.workers import share_population, shared_population

    # spectral under user-level DP weighs its popularity release by recency
    cfg = _cfg(tmp_path, "run", "user", population=population).replace(algorithm="spectral")
    assert cfg.reads_recency()
    fed = federated_dataset(cfg)
    folder = share_population(cfg, fed)
    mapped = shared_population(cfg)
    assert (mapped.n_users, mapped.n_items) == (fed.n_users, fed.n_items)
    assert mapped.n_users == max(24, population)
    for u in range(fed.n_users):
        np.testing.assert_array_equal(mapped.train_items[u], fed.train_items[u])
        np.testing.assert_array_equal(mapped.test_items[u], fed.test_items[u])
        # the devices' recency travels too (user-level: synthetic devices' as well)
        np.testing.assert_array_equal(mapped.recency(u), fed.recency(u))
        assert mapped.recency(u).shape == fed.train_items[u].shape
        built = Shard(cfg, 0, 1).device(u) if u in (0, fed.n_users - 1) else None
        if built is not None:
            expected = fed.recency(u)
            assert (built.recency is None) == (expected is None)
            if expected is not None:
                np.testing.assert_array_equal(built.recency, expected)
    assert isinstance(mapped.train_items.items, np.memmap)  # mapped, not loaded
    assert Shard(cfg, 0, 2).fed.n_users == fed.n_users
    # runs that never read recency: only the real users' is written, in another folder, and
    # a synthetic device is built without a history
    for other in (cfg.replace(privacy="distributed"), cfg.replace(algorithm="sgd")):
        assert not other.reads_recency()
        assert share_population(other, fed) != folder
        mapped_other = shared_population(other)
        for u in range(fed.n_users):
            if u < fed.n_real_users:
                np.testing.assert_array_equal(mapped_other.recency(u), fed.recency(u))
            else:
                assert mapped_other.recency(u) is None
        last = Shard(other, 0, 1).device(fed.n_users - 1)
        assert (last.recency is None) == (population > 0)
    # another dataset (here: another seed) is never read from this one's files
    other = cfg.replace(seed=6)
    assert share_population(other) != folder
    assert not np.array_equal(shared_population(other).train_items.items, mapped.train_items.items)


@pytest.mark.parametrize("privacy", ["distributed", "user"])
def test_a_workers_sum_trained_in_groups_is_its_sum_in_one_pass(tmp_path, monkeypatch, privacy):
    from fedrec.simulations import workers

    answers = []
    monkeypatch.setattr(workers, "_KEEP_DEVICES", 4)  # a large shard: small ones train in one pass
    for name, group in (("one-pass", 1000), ("groups", 3)):
        monkeypatch.setattr(workers, "_SUM_GROUP", group)
        cfg = _cfg(tmp_path, name, privacy, simulated_dropout=0.3)
        shard = Shard(cfg, 1, 3)
        devices = shard.devices[:8]
        request, session = _request(cfg, devices)
        content = worker_reply(shard, cohort_message(request, devices, "train", session, node=7))
        answers.append((dict(content[COHORT_RECORD]), to_numpy(content["sum"])))
    (info, total), (grouped_info, grouped) = answers
    assert info == grouped_info and 0 < len(info["included"]) < 8  # the same devices left
    assert set(total) == set(grouped)
    for k in total:
        np.testing.assert_allclose(grouped[k], total[k], rtol=1e-12, atol=1e-12)


def _children_cmdlines() -> list[str]:
    import os

    from fedrec.simulations.bench_scale import _tree

    out = []
    for pid in _tree(os.getpid())[1:]:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                out.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return out


@pytest.mark.slow
def test_the_engines_ray_head_runs_without_monitors_and_stops_with_the_run():
    import ray

    from fedrec.simulations.runner import _backend_config, _lean_ray_head

    backend = _backend_config(1)
    assert backend["init_args"]["address"] == "local"
    # a worker's message (the item table) and its secure reply (a float64 sum) pass inline
    # with the call, not through the object store: 1,682 x 32 float64 at ML-100K
    inline = backend["init_args"]["_system_config"]["max_direct_call_object_size"]
    assert inline >= 1682 * 32 * 8 * 4
    with _lean_ray_head(backend):
        joined = backend["init_args"]
        assert joined["address"] != "local" and "num_cpus" not in joined  # joins the head
        ray.init(**joined)

        @ray.remote
        def niceness() -> int:
            import os

            return os.nice(0)

        assert ray.get(niceness.remote()) == 0  # the workers at the driver's priority
        running = " ".join(_children_cmdlines())
        assert "gcs_server" in running and "raylet" in running
        assert "log_monitor.py" not in running and "autoscaler/_private/monitor.py" not in running
    assert backend["init_args"]["address"] == "local"  # restored
    assert not ray.is_initialized()
    assert not [c for c in _children_cmdlines() if "ray" in c]  # every Ray process stopped


def test_a_worker_app_travels_as_its_configuration_and_is_built_once_a_process(tmp_path):
    """Flower's Ray backend pickles the ClientApp with every message: it must stay small."""
    import pickle

    from flwr.clientapp import ClientApp
    from ray import cloudpickle

    from fedrec.simulations.workers import make_worker_app

    cfg = _cfg(tmp_path, "run", "user")
    app = make_worker_app(cfg)
    blob = cloudpickle.dumps(lambda: app)  # how Flower's engine ships it (a closure)
    assert len(blob) < len(pickle.dumps(cfg)) + 1_000
    first, second = cloudpickle.loads(blob)(), cloudpickle.loads(blob)()
    assert first is second and isinstance(first, ClientApp)  # built once in this process
    assert first._blob == app._blob and pickle.loads(first._blob) == cfg
    other = make_worker_app(_cfg(tmp_path, "other", "user"))
    assert cloudpickle.loads(cloudpickle.dumps(other)) is not first
