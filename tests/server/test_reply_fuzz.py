"""Fuzzing the server with malformed replies: none crashes it, none is used.

Each trial takes five honest replies of a round and adds one seeded mutation of a sixth
(a field of the wrong type, shape, dtype, value or sign; a duplicate or unsampled node; a
NaN, infinite, negative or absurd ``epsilon`` metric; ...). It goes through the one
validation path of both transports: as a :class:`Reply` built in-process, and as a Flower
message parsed by :func:`reply_from_message`. The round must not raise, must aggregate the
five honest replies only, and its model and reported ε must equal those of the honest
replies alone (computed once from the same seeded coordinator).
"""

import copy

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from fedrec.common.config import RunConfig
from fedrec.server.coordinator import Reply, make_coordinator
from fedrec.server.flower_transport import reply_from_message
from fedrec.server.validation import MAX_METRICS

N_ITEMS, DIM, BUDGET = 12, 4, 8.0
HONEST = [10, 11, 12, 13, 14]
SPARE = 15  # asked this round; its reply is the mutated one
SAMPLED = [*HONEST, SPARE]
#: The modes whose server receives individual replies (distributed and user-level DP see only
#: secure sums: test_a_secure_sum_naming_a_node_twice_or_unasked_is_rejected).
MODES = ["off", "local"]
TRIALS = 250  # per mode and transport: 2 x 2 x 250 = 1,000 malformed replies a run


pytestmark = pytest.mark.usefixtures("task_identity")  # tests/conftest.py


def _coordinator(mode):
    cfg = RunConfig(
        privacy=mode,
        dim=DIM,
        epsilon=BUDGET,
        reproducible=True,
        seed=3,
        server_lr=1.0,
        max_update_norm=50.0,
    )
    return make_coordinator(cfg, N_ITEMS)


def _honest(coord, mode, rng):
    reference, _ = coord.reply_reference(1)
    specs = []
    for i, node in enumerate([*HONEST, SPARE]):
        arrays = {
            k: rng.normal(scale=0.05, size=v.shape).astype(np.float32) for k, v in reference.items()
        }
        metrics = {"epsilon": 1.0 + 0.5 * i} if mode == "local" else {}
        if mode == "off":
            metrics = {"loss": 0.25 + 0.1 * i}
        spec = {
            "node": node,
            "arrays": arrays,
            "num_examples": 3 + i if mode == "off" else 1,
            "metrics": metrics,
            "refusal": None,
            "error": None,
        }
        specs.append(spec)
    return specs[:-1], specs[-1]


# --------------------------------------------------------------------------------------------
# mutations of the spare node's (otherwise honest) reply: each returns a reply spec


def _set(field, values):
    def mutate(rng, spec, ctx):
        value = values[rng.integers(len(values))]
        return {**spec, field: value(ctx) if callable(value) else copy.deepcopy(value)}

    mutate.__name__ = f"{field}"
    return mutate


def _array(change):
    def mutate(rng, spec, ctx):
        arrays = dict(spec["arrays"])
        key = sorted(arrays)[rng.integers(len(arrays))]
        arrays[key] = change(rng, arrays[key].copy())
        return {**spec, "arrays": arrays}

    return mutate


def _poke(value):
    def change(rng, a):
        a.flat[rng.integers(a.size)] = value
        return a

    return change


def _duplicate(rng, spec, ctx):
    node = HONEST[rng.integers(len(HONEST))]
    arrays = {k: v * np.float32(0.5) for k, v in spec["arrays"].items()}  # valid, different
    return {**spec, "node": node, "arrays": arrays}


def _metric(value_or_name):
    def mutate(rng, spec, ctx):
        metrics = dict(spec["metrics"])
        if isinstance(value_or_name, tuple):
            metrics[value_or_name[0]] = value_or_name[1]
        else:
            metrics["loss" if ctx["mode"] == "off" else "steps"] = value_or_name
        return {**spec, "metrics": metrics}

    return mutate


def _epsilon(value):
    def mutate(rng, spec, ctx):
        return {**spec, "metrics": {**spec["metrics"], "epsilon": value}}

    return mutate


def _reshape(rng, a):
    choices = [a.T.copy(), np.vstack([a, a[:1]]), a[:-1].copy(), a.ravel().copy()]
    choices += [np.float32(1.0) * np.ones(()), np.zeros((0, a.shape[1]), np.float32)]
    return choices[rng.integers(len(choices))].astype(np.float32)


def _dtype(rng, a):
    kinds = [np.float64, np.float16, np.int32, np.int64, np.bool_, np.complex64, np.uint8]
    return a.astype(kinds[rng.integers(len(kinds))])


MUTATIONS = [
    _duplicate,
    _set("node", [10**6, -1, 2**64 + 3, 0, 16]),  # not asked this round
    _set("node", ["15", 15.0, None, True, [15], np.float64(15)]),
    _set("arrays", [None, [], "arrays", 5, np.zeros(3, np.float32)]),
    _set("arrays", [lambda ctx: list(ctx["spec"]["arrays"].values())]),
    _set("arrays", [lambda ctx: {k: v for k, v in list(ctx["spec"]["arrays"].items())[:1]}]),
    _set("arrays", [lambda ctx: {**ctx["spec"]["arrays"], "extra": np.zeros(2, np.float32)}]),
    _set("arrays", [lambda ctx: {k + "x": v for k, v in ctx["spec"]["arrays"].items()}]),
    _array(lambda rng, a: a.tolist()),
    _array(lambda rng, a: float(a.sum())),
    _array(_reshape),
    _array(_dtype),
    _array(_poke(np.nan)),
    _array(_poke(np.inf)),
    _array(_poke(-np.inf)),
    _array(_poke(np.finfo(np.float32).max)),
    _array(lambda rng, a: a * np.float32(1e4)),  # norm far above the bound
    _set("num_examples", [np.nan, np.inf, -np.inf, -1, 0, 0.5, 1e300, 2e9, -0.0]),
    _set("num_examples", ["5", None, True, [1], complex(1, 0), 10**400]),
    _set("metrics", [None, [("loss", 1.0)], "loss", 3.0]),
    _metric(np.nan),
    _metric(np.inf),
    _metric(-np.inf),
    _metric(1e13),
    _metric("1.0"),
    _metric(None),
    _metric([1.0, 2.0]),
    _metric(True),
    _metric(complex(1, 1)),
    _metric(("", 1.0)),
    _metric(("Loss", 1.0)),
    _metric(("loss!", 1.0)),
    _metric(("x" * 100, 1.0)),
    _metric((5, 1.0)),
    _set("metrics", [lambda ctx: {f"m{i}": 1.0 for i in range(MAX_METRICS + 1)}]),
    _epsilon(np.nan),
    _epsilon(np.inf),
    _epsilon(-np.inf),
    _epsilon(-1.0),
    _epsilon(-1e-9),
    _epsilon(1e300),
    _epsilon(BUDGET * 1.01 + 1),
    _epsilon("2.0"),
    _set("refusal", ["no-such-code", "", 5, "budget "]),
    _set("refusal", ["budget"]),  # a refusal that also carries a contribution
    _set("error", ["timeout", "x" * 10_000]),
    _set("__reply__", [None, {"node": 15}, "reply", 42]),  # not a Reply at all
]


def _mutate(rng, mode, spec):
    k = int(rng.integers(len(MUTATIONS)))
    return k, MUTATIONS[k](rng, spec, {"mode": mode, "spec": spec})


def _changed(spec, honest):
    """What a mutation changed (for the failure message)."""
    if "__reply__" in spec:
        return repr(spec["__reply__"])
    out = {k: v for k, v in spec.items() if k != "arrays" and not _same(v, honest[k])}
    if not _same(spec["arrays"], honest["arrays"]):
        out["arrays"] = _summary(spec["arrays"])
    return repr(out)[:300]


def _same(a, b):
    try:
        return (
            bool(a == b)
            if not isinstance(a, dict)
            else a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
        )
    except Exception:  # noqa: BLE001 - arrays compare element-wise
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)


def _summary(arrays):
    if not isinstance(arrays, dict):
        return repr(arrays)[:80]
    return {
        k: (getattr(v, "shape", None), getattr(v, "dtype", type(v).__name__))
        for k, v in arrays.items()
    }


def _reply(spec):
    if "__reply__" in spec:
        return spec["__reply__"]
    return Reply(**spec)


def _message(spec):
    """The spec as a Flower reply message (``None``: not representable in one)."""
    if "__reply__" in spec or not isinstance(spec["node"], int) or isinstance(spec["node"], bool):
        return None
    if not 0 <= spec["node"] < 2**64 or not isinstance(spec["metrics"], dict):
        return None
    if spec["arrays"] is not None and not isinstance(spec["arrays"], dict):
        return None
    request = Message(RecordDict({}), dst_node_id=spec["node"], message_type="train")
    if spec["error"] is not None:
        return Message(Error(code=0, reason=spec["error"]), reply_to=request)
    try:
        content = {}
        if spec["arrays"] is not None:
            content["arrays"] = ArrayRecord({k: Array(v) for k, v in spec["arrays"].items()})
        metrics = dict(spec["metrics"])
        metrics["num-examples"] = spec["num_examples"]
        content["metrics"] = MetricRecord(metrics)
        if spec["refusal"] is not None:
            content["refusal"] = ConfigRecord({"code": spec["refusal"]})
        return Message(RecordDict(content), reply_to=request)
    except Exception:  # noqa: BLE001 - Flower itself refuses to build it: not representable
        return None


def _round(coord, replies):
    report = coord.aggregate(1, replies, SAMPLED)
    return report, {k: v.copy() for k, v in coord.state.items()}


@pytest.mark.parametrize("mode", MODES)
def test_malformed_replies_never_crash_and_are_never_used(mode):
    rng = np.random.default_rng(2024)
    template = _coordinator(mode)
    honest, spare = _honest(template, mode, rng)
    ref_report, ref_state = _round(copy.deepcopy(template), [Reply(**s) for s in honest])
    assert ref_report.aggregated == 5 and ref_report.dropped == 0
    honest_messages = [_message(s) for s in honest]
    tried = {"in-process": 0, "flower": 0}
    for transport in tried:
        while tried[transport] < TRIALS:
            k, bad = _mutate(rng, mode, spare)
            if transport == "in-process":
                replies = [Reply(**s) for s in honest]
                replies.insert(_position(rng, bad), _reply(bad))
            else:
                message = _message(bad)
                if message is None:
                    continue
                messages = list(honest_messages)
                messages.insert(_position(rng, bad), message)
                replies = [reply_from_message(m) for m in messages]
            coord = copy.deepcopy(template)
            report, state = _round(coord, replies)  # raises nothing
            where = f"{transport}, mutation {k}: {_changed(bad, spare)}"
            assert report.aggregated == 5 and report.dropped == 1, where
            assert report.refused == 0, where
            for k in ref_state:
                assert np.array_equal(state[k], ref_state[k]), where
            assert report.train_metrics == ref_report.train_metrics, where
            tried[transport] += 1
    assert sum(tried.values()) == 2 * TRIALS


def _position(rng, spec):
    """Anywhere, except that a duplicate comes after the node's honest reply."""
    if isinstance(spec, dict) and spec.get("node") in HONEST:
        return len(HONEST)
    return int(rng.integers(len(HONEST) + 1))


def test_every_mutation_is_exercised_on_both_transports():
    """No mutation is silently skipped: each is representable in-process, most over Flower."""
    rng = np.random.default_rng(0)
    coord = _coordinator("local")
    _, spare = _honest(coord, "local", rng)
    flower = sum(
        _message(m(rng, spare, {"mode": "local", "spec": spare})) is not None for m in MUTATIONS
    )
    assert flower >= len(MUTATIONS) // 2


def test_the_run_fuzzes_at_least_a_thousand_replies():
    assert len(MODES) * 2 * TRIALS >= 1000


def test_a_secure_sum_naming_a_node_twice_or_unasked_is_rejected(tmp_path):
    cfg = RunConfig(
        privacy="distributed",
        dim=2,
        num_rounds=2,
        server_lr=1.0,
        noise_multiplier=1.0,
        dropout_tolerance=0.2,
        dropout_policy="account",
    )
    coord = make_coordinator(cfg, 4, ledger_dir=tmp_path)
    before = {k: v.copy() for k, v in coord.state.items()}
    plan = coord.plan_round(5, 1)
    total = {k: np.full_like(v, 3.0) for k, v in coord.state.items()}
    asked = [1, 2, 3, 4, 5]
    for included, why in [
        ([1, 2, 2, 3], "twice"),
        ([1, 2, 9, 3], "not asked"),
        ([1, "2", 3, 4], "not an integer"),
    ]:
        report = coord.aggregate_sum(1, plan, total, included, sampled=asked)
        assert report.aggregated == 0 and why in " ".join(report.drop_reasons)
        for k in before:
            np.testing.assert_array_equal(coord.state[k], before[k])
    assert coord.aggregate_sum(1, plan, total, [1, 2, 3, 4], sampled=asked).aggregated == 4


def test_evaluation_replies_are_checked_key_by_key():
    from fedrec.common.evaluation.metrics import evaluation_keys

    coord = _coordinator("off")
    keys = evaluation_keys(coord.cfg.k_values)
    good = {k: 0.5 for k in keys}
    bad = [
        None,
        [],
        {**good, "users": np.nan},
        {**good, "users": 1e300},
        {**good, "extra": 0.0},
        {k: v for k, v in good.items() if k != "users"},
        {**good, "users": "1"},
        {**good, "users": True},
    ]
    assert coord.usable_evaluations(1, [good, *bad, good]) == [good, good]


def test_flower_replies_from_unasked_or_repeated_nodes_are_dropped():
    """The Flower transport's evaluation and the strategy's training path, with a fake grid."""
    from fedrec.common.algorithms.base import Task
    from fedrec.common.evaluation.metrics import evaluation_keys
    from fedrec.server.flower_transport import FlowerTransport
    from fedrec.server.round_loop import Request

    keys = evaluation_keys((10,))

    class Grid:
        def send_and_receive(self, messages, timeout=None):
            out = []
            for m in messages:
                content = RecordDict({"metrics": MetricRecord({k: 1.0 for k in keys})})
                out.append(Message(content, reply_to=m))
            forged = Message(RecordDict({}), dst_node_id=99, message_type="evaluate")
            content = RecordDict({"metrics": MetricRecord({k: 1.0 for k in keys})})
            return [*out, out[0], Message(content, reply_to=forged)]

    request = Request(1, Task("evaluate"), {}, {"ks": "10"})
    sums = FlowerTransport(Grid()).evaluate(request, [1, 2])
    assert len(sums) == 2
