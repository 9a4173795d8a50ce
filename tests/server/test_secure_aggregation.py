"""Secure aggregation with Flower's SecAgg+ behind fedrec's Message-API glue.

One Flower simulation (10 SuperNodes, Ray) runs every scenario in sequence from a toy
ServerApp; the tests below check what it recorded. Each node's update is a deterministic
function of its node id and the round, so the test knows every plain update and the plain
sums, while the server side (a recording proxy around the Grid) may only ever see masked
vectors and the unmasked sum.
"""

import copy
import sys
import time
import traceback

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.quantization import quantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.serverapp import Grid, ServerApp

import fedrec.client.secure_aggregation as client_sa
import fedrec.server.secure_aggregation as server_sa
from fedrec.client.secure_aggregation import (
    decline_reply,
    secure_aggregation_mod,
    secure_train_reply,
)
from fedrec.server.secure_aggregation import SecAggConfig, SecureAggregationError, secure_sum

N_NODES = 10
SHAPES = {"w": (50, 4), "b": (50, 1)}
STD = 0.5
CONFIG = SecAggConfig()  # num_shares=1.0, threshold 0.6 -> 6 of 10 must survive
CLIP_CONFIG = SecAggConfig(clipping_range=1.0)  # ~4.6% of N(0, 0.5) values exceed it

RESULTS: dict = {}


def update_for(node_id: int, rnd: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([int(node_id), rnd])
    return {k: rng.normal(0.0, STD, size=s).astype(np.float32) for k, s in SHAPES.items()}


def plain_sum(nodes, rnd, clip=None):
    out = {k: np.zeros(s, dtype=np.float64) for k, s in SHAPES.items()}
    for n in nodes:
        for k, v in update_for(n, rnd).items():
            v = v.astype(np.float64)
            out[k] += v if clip is None else np.clip(v, -clip, clip)
    return out


# --- the toy apps ----------------------------------------------------------------------------
# Drop plans travel in the group id ("name|share_keys=1,2|collect=3|decline=4"), which every
# stage's message carries, so a node knows at which stage it is told to fail.


def _plan(msg: Message) -> dict[str, set[int]]:
    plan: dict[str, set[int]] = {}
    for part in msg.metadata.group_id.split("|")[1:]:
        name, _, ids = part.partition("=")
        plan[name] = {int(i) for i in ids.split(",") if i}
    return plan


def dropout_mod(msg: Message, context: Context, call_next):
    """Fails (an exception, as a crashing device would) at the stage the plan names."""
    if msg.has_content() and RECORD_KEY_CONFIGS in msg.content.config_records:
        stage = msg.content.config_records[RECORD_KEY_CONFIGS].get(Key.STAGE)
        if msg.metadata.dst_node_id in _plan(msg).get(str(stage), set()):
            raise RuntimeError(f"simulated dropout at {stage}")
    return call_next(msg, context)


client_app = ClientApp(mods=[dropout_mod, secure_aggregation_mod])


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    if msg.metadata.dst_node_id in _plan(msg).get("decline", set()):
        return decline_reply(msg, "budget")
    rnd = int(msg.content["config"]["round"])
    arrays = ArrayRecord(
        {k: Array(v) for k, v in update_for(msg.metadata.dst_node_id, rnd).items()}
    )
    # metrics are per-device values in the clear: the secure path must not send them
    return Message(
        RecordDict({"arrays": arrays, "metrics": MetricRecord({"loss": 0.25})}), reply_to=msg
    )


def _content(rnd: int) -> RecordDict:
    return RecordDict({"config": ConfigRecord({"round": rnd})})


def _group(name: str, **plan: list[int]) -> str:
    return "|".join([name] + [f"{k}={','.join(map(str, v))}" for k, v in plan.items()])


def arrays_in(msg: Message) -> list[np.ndarray]:
    """Every array a reply carries: ArrayRecords, and npy bytes inside ConfigRecords."""
    if msg.has_error():
        return []
    found = []
    for record in msg.content.array_records.values():
        found += [a.numpy() for a in record.values()]
    for record in msg.content.config_records.values():
        for value in record.values():
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, bytes):
                    try:
                        found.append(bytes_to_ndarray(item))
                    except Exception:  # noqa: BLE001 - keys, shares, ciphertexts
                        pass
    return found


class RecordingGrid:
    """The server's view: every reply content that comes back through the Grid."""

    def __init__(self, grid: Grid):
        self._grid = grid
        self.seen: list[np.ndarray] = []
        self.records: list[set[str]] = []
        self.stages: list[str] = []  # the SecAgg+ stage of every message sent

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def _record(self, replies):
        replies = list(replies)
        for r in replies:
            self.seen += arrays_in(r)
            if not r.has_error():
                self.records.append(set(r.content.keys()))
        return replies

    def _note_stages(self, messages):
        messages = list(messages)
        for m in messages:
            cfg = m.content.config_records.get(RECORD_KEY_CONFIGS) if m.has_content() else None
            if cfg is not None:
                self.stages.append(str(cfg.get(Key.STAGE)))
        return messages

    def send_and_receive(self, messages, *, timeout=None):
        return self._record(
            self._grid.send_and_receive(self._note_stages(messages), timeout=timeout)
        )

    def pull_messages(self, message_ids):
        return self._record(self._grid.pull_messages(message_ids))

    def take(self):
        seen, records = self.seen, self.records
        self.seen, self.records = [], []
        return seen, records


server_app = ServerApp()


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    try:
        _scenarios(grid)
    except Exception:  # noqa: BLE001 - reported by the tests
        RESULTS["error"] = traceback.format_exc()


def _timed(name, fn):
    t0 = time.perf_counter()
    RESULTS[name] = fn()
    RESULTS[f"{name}:seconds"] = time.perf_counter() - t0


def _scenarios(grid: Grid) -> None:
    deadline = time.monotonic() + 60
    while len(list(grid.get_node_ids())) < N_NODES and time.monotonic() < deadline:
        time.sleep(0.2)  # the simulated SuperNodes register after the ServerApp starts
    nodes = sorted(int(n) for n in grid.get_node_ids())
    RESULTS["nodes"] = nodes
    rec = RecordingGrid(grid)

    # 1. everyone answers
    _timed(
        "all",
        lambda: secure_sum(rec, nodes, _content(1), config=CONFIG, group_id="all", shapes=SHAPES),
    )
    RESULTS["all:seen"] = rec.take()

    # 2. one node drops while sharing keys; 3 of 10 (30%) after key sharing: two crash at
    #    the collect stage, one declines to train (privacy budget)
    plan = {
        "share_keys": [nodes[0]],
        "collect_masked_vectors": [nodes[3], nodes[6]],
        "decline": [nodes[8]],
    }
    RESULTS["drop:plan"] = plan
    _timed(
        "drop",
        lambda: secure_sum(rec, nodes, _content(2), config=CONFIG, group_id=_group("drop", **plan)),
    )
    RESULTS["drop:seen"] = rec.take()

    # 3. a clipping range below some values: those devices decline (a clipped share would
    #    change the sum's noise) and the round aborts before the unmask stage
    sent_before = len(rec.stages)
    try:
        secure_sum(rec, nodes, _content(3), config=CLIP_CONFIG, group_id="clip")
        RESULTS["clip"] = None
    except SecureAggregationError as exc:
        RESULTS["clip"] = exc
    RESULTS["clip:stages"] = rec.stages[sent_before:]
    RESULTS["clip:seen"] = rec.take()

    # 4. too many dropouts: 5 of 10 after key sharing, fewer than the threshold (6) remain
    try:
        secure_sum(
            rec,
            nodes,
            _content(4),
            config=CONFIG,
            group_id=_group("toomany", collect_masked_vectors=nodes[:5]),
        )
        RESULTS["toomany"] = None
    except SecureAggregationError as exc:
        RESULTS["toomany"] = exc
    RESULTS["toomany:seen"] = rec.take()

    # 4b. enough survivors for SecAgg+ (8 of 10) but fewer than the caller requires (9):
    #     aborted before the unmask stage, so the server never learns the sum
    sent_before = len(rec.stages)
    try:
        secure_sum(
            rec,
            nodes,
            _content(6),
            config=CONFIG,
            min_included=9,
            group_id=_group("short", collect_masked_vectors=nodes[:2]),
        )
        RESULTS["short"] = None
    except SecureAggregationError as exc:
        RESULTS["short"] = exc
    RESULTS["short:stages"] = rec.stages[sent_before:]
    RESULTS["short:seen"] = rec.take()

    # 5. sanity check of the recorder: the same nodes answer a plain (non-SecAgg) train
    #    message, which the mod passes through, so updates travel in the clear
    msgs = [
        Message(_content(5), dst_node_id=n, message_type=MessageType.TRAIN, group_id="plain")
        for n in nodes
    ]
    replies = rec.send_and_receive(msgs)
    RESULTS["plain:replied"] = sorted(r.metadata.src_node_id for r in replies if not r.has_error())
    RESULTS["plain:seen"] = rec.take()


@pytest.fixture(scope="module")
def sim():
    pytest.importorskip("ray")
    import ray.cloudpickle
    from flwr.simulation import run_simulation

    # Ray workers cannot import this test module: ship its functions by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    RESULTS.clear()
    backend_config = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": 2,
            "num_gpus": 0,
            "include_dashboard": False,
            "logging_level": "error",
            "log_to_driver": False,
        },
    }
    t0 = time.perf_counter()
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=N_NODES,
        backend_config=backend_config,
    )
    RESULTS["seconds"] = time.perf_counter() - t0
    assert "error" not in RESULTS, RESULTS["error"]
    return RESULTS


# --- checks ----------------------------------------------------------------------------------


def looks_like(candidate: np.ndarray, plain: np.ndarray) -> bool:
    """Whether ``candidate`` is (an affine image of) ``plain``: equal, scaled, quantized.

    Such images correlate at |r| ~ 1. A masked vector is uniform and independent of ``plain``;
    for 50 values |r| > 0.9 then has a probability ~1e-18 (|r| > 0.5, ~5e-4 per pair, would
    give false alarms over the ~1600 pairs a run compares).
    """
    if candidate.shape != plain.shape:
        return False
    a = np.asarray(candidate, dtype=np.float64).ravel()
    b = np.asarray(plain, dtype=np.float64).ravel()
    if np.allclose(a, b, atol=1e-2):
        return True
    if a.std() == 0 or b.std() == 0:
        return False
    return abs(float(np.corrcoef(a, b)[0, 1])) > 0.9


def leaked(seen: list[np.ndarray], nodes, rounds) -> list[tuple[int, int, str]]:
    hits = []
    for n in nodes:
        for rnd in rounds:
            for key, plain in update_for(n, rnd).items():
                if any(looks_like(arr, plain) for arr in seen):
                    hits.append((n, rnd, key))
    return hits


def assert_close_to(total, expected, result):
    """Within the quantization bound n·Δ (plus the float32 rounding of the result)."""
    for k, shape in SHAPES.items():
        assert total[k].shape == shape and total[k].dtype == np.float32
        err = np.abs(total[k].astype(np.float64) - expected[k])
        bound = result.error_bound + np.abs(expected[k]) * np.finfo(np.float32).eps
        assert np.all(err <= bound), (k, float(err.max()), result.error_bound)


def test_wire_constants_agree():
    assert client_sa.LAYOUT_KEY == server_sa.LAYOUT_KEY
    assert client_sa.DECLINED_PREFIX == server_sa.DECLINED_PREFIX


def test_config_validation():
    assert CONFIG.quantization_step == 16 / 2**22
    assert CONFIG.max_nodes == 1023
    assert CONFIG.protocol_sizes(10) == (10, 6)
    assert SecAggConfig(num_shares=5, reconstruction_threshold=3).protocol_sizes(10) == (5, 3)
    for bad in (
        dict(num_shares=4),
        dict(num_shares=2),
        dict(num_shares=1.5),
        dict(num_shares=5, reconstruction_threshold=5),
        dict(reconstruction_threshold=1),
        dict(reconstruction_threshold=0.0),
        dict(clipping_range=0.0),
        dict(clipping_range=float("inf")),
        dict(quantization_range=2**32),
        dict(modulus_range=3 * 2**22),
        dict(modulus_range=2**33),
        dict(timeout=0),
        dict(min_nodes=1),
        dict(num_shares=True),
    ):
        with pytest.raises((ValueError, TypeError)):
            SecAggConfig(**bad)


def test_secure_sum_rejects_too_few_nodes_before_sending_anything():
    class NoGrid:
        def send_and_receive(self, *a, **k):
            raise AssertionError("nothing may be sent")

    with pytest.raises(ValueError, match="at least 3"):
        secure_sum(NoGrid(), [1, 2, 2], _content(0), group_id=0)
    with pytest.raises(ValueError, match="reserved"):
        secure_sum(
            NoGrid(), [1, 2, 3], RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({})}), group_id=0
        )


def test_the_leak_detector_catches_plain_and_quantized_but_not_masked_vectors():
    x = update_for(7, 1)["w"]
    q = quantize([x.astype(np.float64)], 8.0, 2**22)[0].astype(np.int64)
    mask = np.random.default_rng(0).integers(0, 2**32 - 1, size=x.shape)
    assert looks_like(x, x) and looks_like(q, x) and looks_like(x * 3.0 + 1.0, x)
    assert not looks_like((q + mask) % 2**32, x)


@pytest.mark.slow
def test_secure_sum_equals_the_plain_sum_within_quantization_error(sim):
    result, nodes = sim["all"], sim["nodes"]
    assert len(nodes) == N_NODES
    assert result.included == nodes and result.dropped == [] and result.drop_reasons == {}
    assert (result.num_shares, result.threshold) == (10, 6)
    assert result.quantization_step == CONFIG.quantization_step
    assert result.error_bound == pytest.approx(N_NODES * 16 / 2**22)  # 3.8e-5
    assert_close_to(result.total, plain_sum(nodes, 1), result)
    # the error is real quantization noise, well inside the bound
    err = max(float(np.abs(result.total[k] - plain_sum(nodes, 1)[k]).max()) for k in SHAPES)
    assert 0 < err < result.error_bound


@pytest.mark.slow
def test_dropouts_after_key_sharing_are_reported_and_excluded(sim):
    result, nodes, plan = sim["drop"], sim["nodes"], sim["drop:plan"]
    gone = plan["share_keys"] + plan["collect_masked_vectors"] + plan["decline"]
    assert result.dropped == sorted(gone)
    assert result.included == sorted(set(nodes) - set(gone))
    assert result.declined == plan["decline"]
    assert all(result.drop_reasons[n].startswith("share_keys:") for n in plan["share_keys"])
    for n in plan["collect_masked_vectors"] + plan["decline"]:
        assert result.drop_reasons[n].startswith("collect_masked_vectors:")
    assert result.drop_reasons[plan["decline"][0]].endswith("fedrec.secagg.declined: budget")
    assert "simulated dropout" in result.drop_reasons[plan["collect_masked_vectors"][0]]
    assert all(len(r) < 400 and "\n" not in r for r in result.drop_reasons.values())
    assert_close_to(result.total, plain_sum(result.included, 2), result)


@pytest.mark.slow
def test_a_share_beyond_the_range_is_never_clipped_the_round_aborts(sim):
    exc = sim["clip"]
    updates = [update_for(n, 3) for n in sim["nodes"]]
    assert any(float(np.abs(v).max()) > 1.0 for u in updates for v in u.values())
    assert isinstance(exc, SecureAggregationError)
    assert exc.stage == Stage.COLLECT_MASKED_VECTORS and "clipping range" in str(exc)
    assert all(r.endswith("secure-range") for r in exc.drop_reasons.values())
    stages = sim["clip:stages"]
    assert Stage.COLLECT_MASKED_VECTORS in stages and Stage.UNMASK not in stages


@pytest.mark.slow
def test_too_many_dropouts_raise_with_the_reasons(sim):
    exc, nodes = sim["toomany"], sim["nodes"]
    assert isinstance(exc, SecureAggregationError)
    assert exc.stage == Stage.COLLECT_MASKED_VECTORS
    assert sorted(exc.drop_reasons) == nodes[:5]


@pytest.mark.slow
def test_too_few_for_the_caller_aborts_before_unmasking(sim):
    exc = sim["short"]
    assert isinstance(exc, SecureAggregationError)
    assert exc.stage == Stage.COLLECT_MASKED_VECTORS and "not unmasking" in str(exc)
    assert sorted(exc.drop_reasons) == sim["nodes"][:2]
    stages = sim["short:stages"]
    assert Stage.COLLECT_MASKED_VECTORS in stages and Stage.UNMASK not in stages


@pytest.mark.slow
def test_the_server_never_sees_an_individual_update(sim):
    nodes = sim["nodes"]
    for name, senders in (("all", N_NODES), ("drop", 6), ("clip", 0), ("toomany", 5), ("short", 8)):
        seen, records = sim[f"{name}:seen"]
        # not vacuous: the recorder decoded one masked vector per node that sent one
        assert sum(a.shape == SHAPES["w"] for a in seen) == senders, name
        assert leaked(seen, nodes, [1, 2, 3, 4]) == [], name
        assert not any("metrics" in r or "arrays" in r for r in records)
    # the same recorder catches updates that travel in the clear
    assert sim["plain:replied"] == nodes
    seen, _ = sim["plain:seen"]
    assert len(leaked(seen, nodes, [5])) == 2 * N_NODES


# --- in-process checks (no Ray): the same protocol, the apps called directly -----------------


@pytest.fixture
def task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    saved = TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


class LocalGrid:
    """Delivers each message to the ClientApp in-process (a copy, as a transport would)."""

    def __init__(self, app: ClientApp, nodes, silent=None):
        self.app = app
        self.silent = silent or {}  # stage -> node ids that never answer it
        self.contexts = {
            n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(), run_config={})
            for n in nodes
        }

    def send_and_receive(self, messages, *, timeout=None):
        out = []
        for msg in messages:
            stage = msg.content.config_records[RECORD_KEY_CONFIGS].get(Key.STAGE)
            if msg.metadata.dst_node_id in self.silent.get(stage, ()):
                continue
            msg = copy.deepcopy(msg)
            try:
                out.append(self.app(msg, self.contexts[msg.metadata.dst_node_id]))
            except Exception as exc:  # noqa: BLE001 - what Flower does with a raising app
                out.append(Message(Error(code=2, reason=repr(exc)), reply_to=msg))
        return out


def _local_app():
    app = ClientApp(mods=[secure_aggregation_mod])

    @app.train()
    def local_train(msg: Message, context: Context) -> Message:
        node = msg.metadata.dst_node_id
        context.state["device"] = ConfigRecord({"trained": node})  # must survive a refusal
        if node == 4:  # fedrec's usual refusal record
            return Message(RecordDict({"refusal": ConfigRecord({"code": "budget"})}), reply_to=msg)
        if node == 5:  # a buggy device: wrong shape
            return secure_train_reply(msg, {"w": np.ones((2, 2))}, context)
        return secure_train_reply(msg, {"w": np.full((3, 2), float(node))}, context)

    return app


def test_in_process_refusal_malformed_and_silent_nodes_are_dropped(task_identity):
    grid = LocalGrid(_local_app(), range(1, 9), silent={Stage.COLLECT_MASKED_VECTORS: {6}})
    result = secure_sum(
        grid,
        list(range(1, 9)),
        _content(0),
        group_id=0,
        config=SecAggConfig(timeout=1.0),
        shapes={"w": (3, 2)},
    )
    assert result.included == [1, 2, 3, 7, 8]
    assert result.dropped == [4, 5, 6] and result.declined == [4]
    assert result.drop_reasons[4] == "collect_masked_vectors: fedrec.secagg.declined: budget"
    assert "malformed reply" in result.drop_reasons[5]
    assert result.drop_reasons[6] == "collect_masked_vectors: no reply within 1.0 s"
    np.testing.assert_allclose(result.total["w"], np.full((3, 2), 21.0), atol=result.error_bound)
    # the refusing device kept its own state; its SecAgg+ session was discarded
    state = grid.contexts[4].state
    assert state["device"]["trained"] == 4 and "secaggplus_state" not in state


def test_the_mod_passes_plain_messages_through_and_refuses_non_finite_updates(task_identity):
    app = _local_app()
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    plain = Message(_content(0), dst_node_id=1, message_type=MessageType.TRAIN)
    with pytest.raises(ValueError, match="not a SecAgg"):
        app(plain, context)  # the handler insists on a secure request
    seen = []
    passthrough = secure_aggregation_mod(
        plain, context, lambda m, c: seen.append(m) or Message(RecordDict(), reply_to=m)
    )
    assert seen == [plain] and passthrough.content.keys() == set()
    secure = Message(
        RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({})}),
        dst_node_id=1,
        message_type=MessageType.TRAIN,
    )
    context.state.config_records["secaggplus_state"] = ConfigRecord({"clipping_range": 8.0})
    with pytest.raises(ValueError, match="non-finite"):
        secure_train_reply(secure, {"w": np.array([np.nan])}, context)


def test_the_neighbourhood_is_complete_for_small_rounds_and_logarithmic_beyond():
    from fedrec.server.secure_aggregation import COMPLETE_GRAPH_NODES, neighbourhood_size

    assert [neighbourhood_size(n) for n in (3, 10, COMPLETE_GRAPH_NODES)] == [3, 10, 25]
    assert neighbourhood_size(26) == 11 and neighbourhood_size(500) == 19
    assert neighbourhood_size(10**6) == 41  # grows with log2 n
    assert all(neighbourhood_size(n) % 2 == 1 for n in range(26, 5000, 37))  # a ring's k
    assert SecAggConfig().protocol_sizes(10) == (10, 6)  # complete: as before
    assert SecAggConfig().protocol_sizes(500) == (19, 11)
    assert SecAggConfig().for_nodes(10).num_shares == 1.0
    assert SecAggConfig().for_nodes(500).num_shares == 19
    with pytest.raises(ValueError, match="resolve num_shares"):
        SecAggConfig().workflow()


@pytest.mark.slow
def test_a_sparse_round_sums_exactly_and_devices_see_the_announced_size(task_identity):
    from fedrec.client.secure_aggregation import secure_session

    n, sessions = 40, {}
    app = ClientApp(mods=[secure_aggregation_mod])

    @app.train()
    def sparse_train(msg: Message, context: Context) -> Message:
        node = msg.metadata.dst_node_id
        sessions[node] = secure_session(msg, context)
        return secure_train_reply(msg, {"w": np.full((3, 2), node / 10)}, context)

    nodes = list(range(1, n + 1))
    silent = {Stage.COLLECT_MASKED_VECTORS: {7, 19}}  # two devices vanish mid-round
    grid = LocalGrid(app, nodes, silent=silent)
    result = secure_sum(grid, nodes, _content(0), group_id=0, config=SecAggConfig(timeout=1.0))
    assert (result.num_shares, result.threshold) == (13, 8)
    assert result.dropped == [7, 19] and len(result.included) == n - 2
    expected = (sum(nodes) - 7 - 19) / 10
    np.testing.assert_allclose(result.total["w"], np.full((3, 2), expected), atol=1e-3)
    # a device sees its neighbours only; the round's size is the server's announcement
    assert {s.group_size for s in sessions.values()} == {n}
    assert not any(s.group_verified for s in sessions.values())
