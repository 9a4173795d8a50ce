"""Attacks by a server that tries to loosen a device's privacy through what it sends.

Each case is what an adversarial server can put in a run config or a round's request. The
device must refuse before any work, with a fixed code and nothing else, spend nothing, and
leave its ledger untouched. On the landed main of 2026-11-29 every one of these trained:
δ = 0.5 took a device to a true ε of 24 while it reported 7.7; ε = 1e6 became the device's
budget; local-epochs = 1e6 allocated 55 GiB; a NaN table was trained on and answered.
"""

import json
import time

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedrec.client.sdk import FedRecClient, PolicySignals
from fedrec.common.privacy.policy import RefusalCode

N_ITEMS, DIM = 30, 8
CODES = {str(c) for c in RefusalCode}


def _run_config(tmp_path, **overrides):
    from fedrec.common.config import RunConfig

    ids = [f"item-{i}" for i in range(N_ITEMS)]
    (tmp_path / "catalog.json").write_text(json.dumps(ids))
    flat = {
        k: v
        for k, v in RunConfig().to_flat().items()
        if k not in ("dataset", "data-dir", "synthetic-users", "synthetic-items", "split")
    }
    flat.update(
        {
            "dim": DIM,
            "num-rounds": 2,
            "epsilon": 8.0,
            "delta": 1e-5,
            "catalog": str(tmp_path / "catalog.json"),
            "local-epochs": 1.0,
            "sample-rate": 0.5,
            "loss": "bpr",
            "n-negatives": 1,
        }
    )
    flat.update(overrides)
    return flat, ids


def _table(n_items=N_ITEMS, dim=DIM, fill=None):
    rng = np.random.default_rng(0)
    emb = rng.normal(scale=0.1, size=(n_items, dim)).astype(np.float32)
    if fill is not None:
        emb[0, 0] = fill
    return {
        "item_embedding.weight": emb,
        "item_bias.weight": np.zeros((n_items, 1), dtype=np.float32),
    }


def _message(table, rnd=1):
    from fedrec.client.client_app import numpy_to_arrays

    return Message(
        RecordDict(
            {"arrays": numpy_to_arrays(table), "config": ConfigRecord({"server-round": rnd})}
        ),
        dst_node_id=5,
        message_type="train",
    )


@pytest.fixture
def device(tmp_path):
    """A deployed device's node config: budget 8 at δ 1e-5 (its own), 10 purchases."""
    (tmp_path / "ev.json").write_text(
        json.dumps(
            [{"kind": "purchase", "item_id": f"item-{i}", "timestamp": i} for i in range(10)]
        )
    )
    return {
        "store": str(tmp_path / "d.db"),
        "events": str(tmp_path / "ev.json"),
        "catalog": str(tmp_path / "catalog.json"),
        "epsilon-budget": 8.0,
    }


def _spend(node):
    with FedRecClient.open(node["store"]) as client:
        report = client.privacy_report()
        ledger = client.ledger_path
        return (
            report.epsilon_spent,
            report.rounds_released,
            report.rounds_pending,
            ledger.read_bytes() if ledger.exists() else b"",
        )


ATTACKS = [
    ("delta 0.5", {"delta": 0.5}, None, RefusalCode.PRIVACY_POLICY),
    ("epsilon 1e6", {"epsilon": 1e6}, None, RefusalCode.PRIVACY_POLICY),
    ("noise 0.01", {"noise-multiplier": 0.01}, None, RefusalCode.PRIVACY_POLICY),
    ("noise 0.5", {"noise-multiplier": 0.5}, None, RefusalCode.BUDGET),
    ("local-epochs 1e6", {"local-epochs": 1e6}, None, RefusalCode.RESOURCES),
    ("no device noise", {"privacy": "off"}, None, RefusalCode.PRIVACY_POLICY),
    ("NaN table", {}, _table(fill=np.nan), RefusalCode.BAD_REQUEST),
    ("wrong shape", {}, _table(n_items=N_ITEMS + 1), RefusalCode.BAD_REQUEST),
]


@pytest.mark.parametrize("name,overrides,table,code", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_a_deployed_device_refuses_and_spends_nothing(
    tmp_path, device, name, overrides, table, code
):
    from fedrec.client.deployment import make_deployment_client_app

    flat, _ = _run_config(tmp_path)
    app = make_deployment_client_app()
    honest = app(
        _message(_table()),
        Context(run_id=1, node_id=5, node_config=device, state=RecordDict(), run_config=flat),
    )
    assert "arrays" in honest.content  # the device trains an honest round
    before = _spend(device)
    attack, _ = _run_config(tmp_path, **overrides)
    t0 = time.perf_counter()
    reply = app(
        _message(table if table is not None else _table(), rnd=2),
        Context(run_id=1, node_id=5, node_config=device, state=RecordDict(), run_config=attack),
    )
    assert time.perf_counter() - t0 < 30  # no 150 s calibration, no 55 GiB allocation
    assert set(reply.content.keys()) == {"refusal"}
    assert dict(reply.content["refusal"]) == {"code": str(code)}  # a fixed word, no number
    assert _spend(device) == before  # nothing spent, the ledger byte for byte unchanged


def test_the_sdk_refuses_a_looser_recipe_before_any_work(tmp_path):
    ids = [f"item-{i}" for i in range(N_ITEMS)]
    with FedRecClient.open(tmp_path / "d.db", catalog=ids) as client:
        from fedrec.client.sdk import Event

        client.record_many([Event("purchase", f"item-{i}", float(i)) for i in range(10)])
        ok = PolicySignals(charging=True, on_wifi=True)
        for recipe, code in [
            ({"delta": 0.5}, "privacy-policy"),
            ({"epsilon": 1e6, "noise_multiplier": 0.0}, "privacy-policy"),
            ({"local": {"epochs": 1e6}}, "resources"),
            ({"noise_multiplier": 0.01}, "privacy-policy"),
            ({"noise_multiplier": 0.4}, "budget"),
            ({"surprise": 1}, "bad-request"),
        ]:
            out = client.train_round(_table(), 1, policy_signals=ok, recipe=recipe)
            assert type(out).__name__ == "Refusal" and out.code == code, recipe
        for table in (_table(fill=np.nan), _table(n_items=N_ITEMS + 1)):
            out = client.train_round(table, 1, policy_signals=ok)
            assert out.code == "bad-request"
        report = client.privacy_report()
        assert report.epsilon_spent == 0 and report.rounds_released == 0
        assert not client.ledger_path.exists()


def test_the_sdk_without_a_catalog_refuses_a_giant_table(tmp_path):
    from fedrec.client.sdk import TrainingPolicy

    with FedRecClient.open(
        tmp_path / "d.db", policy=TrainingPolicy(max_table_entries=10_000)
    ) as client:
        with pytest.raises(ValueError, match="ceiling"):
            client.receive_model(_table(n_items=5_000))
        out = client.train_round(
            _table(n_items=5_000), 1, policy_signals=PolicySignals(charging=True, on_wifi=True)
        )
        assert out.code == "resources"
        assert client.status()["has_item_table"] is False


def _sim_app(tmp_path, **cfg):
    from fedrec.common.config import RunConfig
    from fedrec.simulations.apps import make_apps

    config = RunConfig(
        synthetic_users=20,
        synthetic_items=N_ITEMS,
        dim=DIM,
        num_rounds=4,
        run_dir=str(tmp_path / "run"),
        **cfg,
    )
    _, app = make_apps(config)
    context = Context(
        run_id=1,
        node_id=11,
        node_config={"partition-id": 3, "num-partitions": 20},
        state=RecordDict(),
        run_config=config.to_flat(),
    )
    return config, app, context


@pytest.mark.parametrize(
    "config,table,code",
    [
        ({"noise-share": 0.0}, _table(), "not-secure"),
        ({"noise-share": 0.5}, _table(), "not-secure"),  # a share outside a secure sum
        ({}, _table(fill=np.inf), "bad-request"),
        ({}, _table(n_items=N_ITEMS - 1), "bad-request"),
        ({"task": "popularity"}, _table(), "unsupported"),
    ],
    ids=["share 0", "share outside SecAgg+", "inf table", "wrong shape", "other algorithm"],
)
def test_a_simulated_device_refuses_and_its_ledger_is_unchanged(tmp_path, config, table, code):
    from fedrec.client.client_app import numpy_to_arrays

    cfg, app, context = _sim_app(tmp_path)
    msg = Message(
        RecordDict(
            {
                "arrays": numpy_to_arrays(table),
                "config": ConfigRecord({"server-round": 1, **config}),
            }
        ),
        dst_node_id=11,
        message_type="train",
    )
    reply = app(msg, context)
    assert dict(reply.content["refusal"]) == {"code": code}
    assert not (tmp_path / "run" / "ledgers" / "device-000003.jsonl").exists()
    from fedrec.simulations.apps import state_store

    assert state_store(cfg).load("device-000003") is None  # nothing trained, nothing saved


def test_refusals_never_carry_data_dependent_text(tmp_path):
    """The codes are a closed set of words; the SDK's details stay in the device's log."""
    assert CODES == {
        "budget",
        "privacy-policy",
        "resources",
        "device-state",
        "bad-request",
        "not-secure",
        "unsupported",
        "secure-range",
    }
    with FedRecClient.open(tmp_path / "d.db") as client:
        out = client.train_round(
            _table(),
            1,
            policy_signals=PolicySignals(charging=False, on_wifi=True, battery_level=0.13),
        )
        assert out.code == "device-state" and "0.13" not in str(out.code)
