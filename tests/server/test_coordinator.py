import numpy as np
import pytest

from fedrec.common.config import RunConfig
from fedrec.common.model.optimizers import FedAdamStep, FedAvgStep, weighted_mean
from fedrec.server.coordinator import Reply, make_coordinator
from fedrec.server.validation import validate_delta

STATE = {
    "item_embedding.weight": np.zeros((4, 2), np.float32),
    "item_bias.weight": np.zeros((4, 1), np.float32),
}


def _delta(value=1.0):
    return {k: np.full_like(v, value) for k, v in STATE.items()}


def _coord(**kw):
    # server-lr 1: the new state is the old one plus the mean delta
    kw.setdefault("privacy", "off")
    c = make_coordinator(RunConfig(max_update_norm=100.0, server_lr=1.0, dim=2, **kw), 4)
    c.state = {k: v.copy() for k, v in STATE.items()}
    return c


@pytest.mark.parametrize(
    "bad, reason",
    [
        ({"item_embedding.weight": np.zeros((4, 2), np.float32)}, "keys"),
        ({**_delta(), "item_bias.weight": np.zeros((5, 1), np.float32)}, "shape"),
        ({**_delta(), "item_bias.weight": np.zeros((4, 1), np.float64)}, "dtype"),
        ({**_delta(), "item_bias.weight": np.full((4, 1), np.nan, np.float32)}, "NaN"),
        (_delta(1000.0), "norm"),
        ({**_delta(), "item_bias.weight": [[0.0]] * 4}, "not an array"),
    ],
)
def test_malformed_reply_is_dropped_and_the_round_goes_on(bad, reason, caplog):
    c = _coord()
    report = c.aggregate(
        1,
        [
            Reply(node=1, arrays=bad),
            Reply(node=2, arrays=_delta(0.5)),
            Reply(node=3, error="timeout"),
            Reply(node=4, refusal="budget"),
        ],
    )
    assert report.aggregated == 1 and report.dropped == 2 and report.refused == 1
    assert reason in " ".join(report.drop_reasons)
    np.testing.assert_allclose(c.state["item_embedding.weight"], 0.5)
    assert "dropped reply" in caplog.text


def test_all_replies_bad_leaves_state_unchanged():
    c = _coord()
    report = c.aggregate(1, [Reply(node=1, arrays=_delta(float("inf")))])
    assert report.aggregated == 0
    np.testing.assert_array_equal(c.state["item_bias.weight"], 0)


def test_weighting_by_examples_and_uniform():
    a, b = _delta(1.0), _delta(3.0)
    c = _coord()
    c.aggregate(
        1, [Reply(node=1, arrays=a, num_examples=3), Reply(node=2, arrays=b, num_examples=1)]
    )
    np.testing.assert_allclose(c.state["item_bias.weight"], 1.5)
    u = _coord(privacy="local")  # under DP devices do not send their counts: uniform weights
    u.aggregate(
        1, [Reply(node=1, arrays=a, num_examples=3), Reply(node=2, arrays=b, num_examples=1)]
    )
    np.testing.assert_allclose(u.state["item_bias.weight"], 2.0)


def test_sampling_is_balanced_and_handles_huge_node_ids():
    c = _coord(fraction_train=0.3)
    nodes = [2**63 + i for i in range(10)]  # Flower node ids can exceed int64
    counts = {n: 0 for n in nodes}
    for _ in range(10):
        picked = c.sample(nodes)
        assert len(picked) == 3 and len(set(picked)) == 3 and set(picked) <= set(nodes)
        for n in picked:
            counts[n] += 1
    assert set(counts.values()) == {3}  # 30 slots over 10 devices: exactly 3 each


def test_server_optimizers():
    p = {"w": np.zeros(3, np.float32)}
    d = {"w": np.array([1.0, -2.0, 0.0], np.float32)}
    np.testing.assert_allclose(FedAvgStep(lr=2.0).step(p, d)["w"], [2, -4, 0])
    adam = FedAdamStep(lr=0.1, tau=1e-9)
    out = adam.step(p, d)["w"]  # first bias-corrected Adam step moves by ±lr
    np.testing.assert_allclose(out, [0.1, -0.1, 0.0], atol=1e-6)


def test_validate_and_mean_helpers():
    assert validate_delta(_delta(), STATE, max_norm=10) is None
    with pytest.raises(ValueError):
        weighted_mean([], [])
    with pytest.raises(ValueError):
        weighted_mean([_delta()], [0.0])
