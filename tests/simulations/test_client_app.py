"""The ClientApp as Flower calls it: what leaves the device, and what stays."""

import json

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedrec.client.client_app import arrays_to_numpy, numpy_to_arrays
from fedrec.common.audit.receipts import HEAD_RECORD
from fedrec.common.config import RunConfig
from fedrec.common.model.mf import GLOBAL_KEYS
from fedrec.server.coordinator import initial_global_state
from fedrec.simulations.apps import make_apps, state_store
from fedrec.simulations.federation import federated_dataset

DEVICE = "device-000003"  # partition 3


def _stored(cfg, key):
    return state_store(cfg).load(DEVICE)[1][key]


@pytest.fixture(autouse=True)
def task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0


@pytest.fixture
def setup(tmp_path):
    cfg = RunConfig(
        synthetic_users=40,
        synthetic_items=50,
        dim=8,
        num_rounds=4,
        fraction_train=0.5,
        accountant="rdp",
        run_dir=str(tmp_path / "run"),
    )
    _, client_app = make_apps(cfg)
    context = Context(
        run_id=1,
        node_id=11,
        node_config={"partition-id": 3, "num-partitions": 40},
        state=RecordDict(),
        run_config=cfg.to_flat(),
    )
    return cfg, client_app, context


def _train_msg(cfg, rnd):
    state = initial_global_state(cfg, federated_dataset(cfg).n_items)
    return Message(
        content=RecordDict(
            {"arrays": numpy_to_arrays(state), "config": ConfigRecord({"server-round": rnd})}
        ),
        dst_node_id=11,
        message_type="train",
    )


def test_outgoing_message_carries_only_the_item_delta(setup):
    cfg, app, context = setup
    reply = app(_train_msg(cfg, 1), context)
    assert set(reply.content.keys()) == {"arrays", "metrics", HEAD_RECORD}
    # the ledger head, for the server to countersign: the record's position and hash only
    head = dict(reply.content[HEAD_RECORD])
    assert set(head) == {"device_id", "seq", "hash"} and head["device_id"] == "device-000003"
    record = json.loads(open(cfg.run_dir + "/ledgers/device-000003.jsonl").readline())
    assert (head["seq"], head["hash"]) == (0, record["hash"])
    delta = arrays_to_numpy(reply.content["arrays"])
    assert set(delta) == set(GLOBAL_KEYS)
    assert set(reply.content["metrics"].keys()) <= {"num-examples", "epsilon"}
    assert reply.content["metrics"]["num-examples"] == 1  # DP: the count is not revealed
    user = np.asarray(_stored(cfg, "user_embedding")).ravel()
    assert len(context.state.keys()) == 0  # the state lives in the device store
    fed = federated_dataset(cfg)
    items = set(fed.train_items[3].tolist()) | set(fed.test_items[3].tolist())
    for arr in delta.values():
        assert np.count_nonzero(arr) == arr.size  # dense: every row noised
        for row in np.atleast_2d(arr):
            if row.size == user.size:
                assert not np.allclose(row, user, atol=1e-3)
    # nothing in the message is a list of the user's items
    for value in reply.content["metrics"].values():
        assert not (isinstance(value, list) and set(value) & items)


def test_accountant_state_persists_in_the_device_store(setup):
    cfg, app, context = setup
    app(_train_msg(cfg, 1), context)
    first = json.loads(_stored(cfg, "accountant"))["history"]
    app(_train_msg(cfg, 2), context)
    second = json.loads(_stored(cfg, "accountant"))["history"]
    steps = cfg.local_config().steps
    assert sum(h[2] for h in first) == steps
    assert sum(h[2] for h in second) == 2 * steps
    ledger = context.run_config["run-dir"] + "/ledgers/device-000003.jsonl"
    lines = open(ledger).read().splitlines()
    assert [json.loads(x)["round"] for x in lines] == [1, 2]


def test_device_over_budget_replies_with_a_refusal(setup):
    cfg, app, context = setup
    rounds = cfg.planned_participations
    for r in range(1, rounds + 1):
        assert "arrays" in app(_train_msg(cfg, r), context).content
    reply = app(_train_msg(cfg, rounds + 1), context)
    assert set(reply.content.keys()) == {"refusal"}
    assert dict(reply.content["refusal"]) == {"code": "budget"}


def _counting_app(cfg):
    from fedrec.client.client_app import make_client_app
    from fedrec.client.state_store import StoredDevices
    from fedrec.simulations.apps import simulated_device_factory, simulated_states

    built = []
    factory = simulated_device_factory(cfg)

    def counting(context):
        built.append(context.node_id)
        return factory(context)

    return make_client_app(StoredDevices(counting, simulated_states(cfg))), built


def test_a_node_s_device_is_reused_only_while_its_stored_state_is_unchanged(setup):
    cfg, _, context = setup
    cfg = cfg.replace(num_rounds=8)  # 4 planned participations: no refusal below
    context.run_config = cfg.to_flat()
    app, built = _counting_app(cfg)
    app(_train_msg(cfg, 1), context)
    app(_train_msg(cfg, 2), context)
    assert built == [11]  # same process, same state: the device is reused
    # the device's state moves on elsewhere (another process served it): its stored token
    # differs, so the first app must rebuild and restore, continuing from that state
    moved = Context(
        run_id=1,
        node_id=11,
        node_config=dict(context.node_config),
        state=RecordDict(),
        run_config=dict(context.run_config),
    )
    other_app, _ = _counting_app(cfg)
    other_app(_train_msg(cfg, 3), moved)  # advances the stored state and its token
    app(_train_msg(cfg, 4), context)
    assert built == [11, 11]  # rebuilt from the store once
    history = json.loads(_stored(cfg, "accountant"))["history"]
    assert sum(h[2] for h in history) == 4 * cfg.local_config().steps  # nothing lost
    ledger = cfg.run_dir + "/ledgers/device-000003.jsonl"
    from fedrec.common.audit.ledger import verify_ledger

    assert [json.loads(x)["round"] for x in open(ledger).read().splitlines()] == [1, 2, 3, 4]
    key = cfg.run_dir + "/ledgers/keys/device-000003.pub.pem"
    assert verify_ledger(ledger, key).ok


@pytest.mark.slow
def test_a_noiseless_spectral_contribution_never_leaves_outside_secure_aggregation(tmp_path):
    cfg = RunConfig(
        synthetic_users=40,
        synthetic_items=50,
        dim=2,
        num_rounds=2,
        algorithm="spectral",
        privacy="user",
        delta=1e-4,
        spectral_top_items=10,
        run_dir=str(tmp_path / "run"),
    )
    _, app = make_apps(cfg)
    context = Context(
        run_id=1,
        node_id=11,
        node_config={"partition-id": 3, "num-partitions": 40},
        state=RecordDict(),
        run_config=cfg.to_flat(),
    )
    msg = _train_msg(cfg, 1)
    msg.content["config"]["spectral-phase"] = "popularity"
    reply = app(msg, context)
    assert set(reply.content.keys()) == {"refusal"}
    assert dict(reply.content["refusal"]) == {"code": "not-secure"}
