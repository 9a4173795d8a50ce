import subprocess
import sys
import warnings

import numpy as np
import pytest

from fedrec.client.sdk import (
    DEFAULT_DP,
    Catalog,
    Event,
    FedRecClient,
    Freshness,
    PolicySignals,
    Retention,
    TrainingPolicy,
)

N, DIM = 60, 6
IDS = [f"m{i}" for i in range(N)]
OK = PolicySignals(charging=True, on_wifi=True)
DP = {"accountant": "rdp", "noise_multiplier": 1.0, "budget_epsilon": 50.0}
LOCAL = {"epochs": 1.0, "sample_rate": 0.5, "lr": 0.1}


def _table(seed=0, bias=False):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, DIM)) * 2
    emb = np.repeat(centres, N // 6, axis=0) + rng.normal(scale=0.1, size=(N, DIM))
    b = rng.normal(size=(N, 1)) if bias else np.zeros((N, 1))
    return {
        "item_embedding.weight": emb.astype(np.float32),
        "item_bias.weight": b.astype(np.float32),
    }


def _open(tmp_path, name="d.db", **kw):
    kw.setdefault("dp", DP)
    kw.setdefault("local", LOCAL)
    kw.setdefault("seed", 0)
    kw.setdefault("catalog", IDS)
    return FedRecClient.open(tmp_path / name, **kw)


def _buy(client, items, t0=1000.0):
    client.record_many([Event("purchase", f"m{i}", t0 + k) for k, i in enumerate(items)])


# --------------------------------------------------------------------------- cold start


def test_nothing_received_gives_an_empty_list_with_a_status(tmp_path):
    with _open(tmp_path, catalog=None) as c:
        recs = c.recommend(10, explain=True, diversity=0.5)
        assert len(recs) == 0 and recs.status == "no-item-table"
        assert "no item table" in recs.message


def test_cold_start_sources_in_order(tmp_path):
    pub = {i: 1000.0 + k for k, i in enumerate(IDS)}  # the last ids are the newest
    with _open(tmp_path, catalog=Catalog(tuple(IDS), published_at=pub)) as c:
        pop = np.zeros(N)
        pop[[7, 3, 11]] = [30, 20, 10]
        c.set_popularity(pop)  # a prior without an item table is enough
        recs = c.recommend(3, explain=True)
        assert recs.status == "cold-start-popularity" and recs.item_ids == ["m7", "m3", "m11"]
        assert all(r.explanation_kind == "popular" for r in recs)
        c.receive_model(_table())
        assert c.recommend(3).status == "cold-start-popularity"
    with _open(tmp_path, "b.db", catalog=Catalog(tuple(IDS), published_at=pub)) as c:
        c.receive_model(_table(bias=True))
        recs = c.recommend(3, explain=True)
        assert recs.status == "cold-start-recent" and recs.item_ids == ["m59", "m58", "m57"]
        assert recs[0].explanation == "new in the catalog"
    with _open(tmp_path, "c.db") as c:
        table = _table(bias=True)
        c.receive_model(table)
        recs = c.recommend(3)
        assert recs.status == "cold-start-item-bias"
        best = np.argsort(-table["item_bias.weight"].ravel(), kind="stable")[:3]
        assert recs.item_ids == [IDS[i] for i in best]
    with _open(tmp_path, "z.db") as c:
        c.receive_model(_table())
        recs = c.recommend(3)
        assert recs.status == "cold-start-catalog" and recs.item_ids == ["m0", "m1", "m2"]


def test_history_without_training_is_personalized_by_fold_in(tmp_path):
    with _open(tmp_path) as c:
        c.receive_model(_table())
        _buy(c, [0, 1, 2])  # cluster 0 (items 0-9)
        recs = c.recommend(5)
        assert recs.status == "personalized-fold-in"
        assert all(int(i[1:]) < 10 for i in recs.item_ids)
        assert not {"m0", "m1", "m2"} & set(recs.item_ids)


# --------------------------------------------------------------------------- re-ranking


def test_exclude_seen_covers_actions_not_impressions(tmp_path):
    with _open(tmp_path) as c:
        c.receive_model(_table())
        _buy(c, [0])
        c.record_many(
            [
                Event("skip", "m1", 5.0),
                Event("impression", "m2", 5.0),
                Event("view", "m3", 5.0, value=1.0),
            ]
        )
        got = set(c.recommend(9).item_ids)
        assert not got & {"m0", "m1", "m3"}
        assert "m2" in got  # shown but not acted on: still eligible
        assert "m0" in c.recommend(10, exclude_seen=False).item_ids


def test_availability_by_ids_predicate_and_mask(tmp_path):
    with _open(tmp_path) as c:
        c.receive_model(_table())
        _buy(c, [0, 1])
        allowed = {f"m{i}" for i in range(30, 60, 3)}
        by_ids = c.recommend(5, available=allowed).item_ids
        assert set(by_ids) <= allowed and len(by_ids) == 5
        assert c.recommend(5, available=lambda item: item in allowed).item_ids == by_ids
        mask = np.array([i in allowed for i in IDS])
        assert c.recommend(5, available=mask).item_ids == by_ids
        assert c.recommend(5, available=["m42", "unknown"]).item_ids == ["m42"]


def test_diversity_freshness_and_explanations_through_the_sdk(tmp_path):
    from fedrec.common.model.ranking import intra_list_similarity

    pub = {i: 0.0 for i in IDS}
    pub["m55"] = 10_000.0
    titles = {i: f"Title {i}" for i in IDS}
    genres = {i: (f"genre{int(i[1:]) // 10}",) for i in IDS}
    cat = Catalog(tuple(IDS), titles=titles, genres=genres, published_at=pub)
    with _open(tmp_path, catalog=cat) as c:
        table = _table()
        c.receive_model(table)
        _buy(c, [0, 1, 2, 25])
        emb = table["item_embedding.weight"]
        plain = c.recommend(8)
        diverse = c.recommend(8, diversity=0.8)
        idx = lambda recs: [IDS.index(i) for i in recs.item_ids]  # noqa: E731
        assert intra_list_similarity(emb, idx(diverse)) < intra_list_similarity(emb, idx(plain))
        assert "m55" not in plain.item_ids
        fresh = c.recommend(8, freshness=Freshness(weight=3.0, half_life=100.0, now=10_000.0))
        assert fresh.item_ids[0] == "m55"
        by_id = Freshness({"m55": 10_000.0}, half_life=100.0, weight=3.0, now=10_000.0)
        assert c.recommend(8, freshness=by_id).item_ids[0] == "m55"  # timestamps by item id
        explained = c.recommend(8, explain=True)
        assert explained.item_ids == plain.item_ids
        interacted = {"m0", "m1", "m2", "m25"}
        for r in explained:
            assert r.because_item_id in interacted
            assert r.explanation.startswith('because you interacted with "Title m')
            assert r.explanation_kind == "neighbour"
    with _open(tmp_path, "plain.db") as c:
        c.receive_model(_table())
        with pytest.raises(ValueError, match="timestamps"):
            c.recommend(5, freshness=0.5)
        with pytest.raises(ValueError, match="diversity"):
            c.recommend(5, diversity=2.0)


# --------------------------------------------------------------------------- persistence


def test_state_survives_reopen_and_retention_and_forget_keep_the_spend(tmp_path):
    c = _open(tmp_path)
    c.receive_model(_table())
    _buy(c, range(10))
    reply = c.train_round(_table(), 1, policy_signals=OK)
    assert type(reply).__name__ == "Contribution"
    before = c.recommend(5)
    spent = c.privacy_report().epsilon_spent
    c.close()
    c = FedRecClient.open(tmp_path / "d.db", seed=0)  # settings and catalog come from the store
    assert c.recommend(5) == before and before.status == "personalized"
    assert c.privacy_report().epsilon_spent == pytest.approx(spent)
    c.close()
    c = FedRecClient.open(tmp_path / "d.db", retention=Retention(keep_events=3))
    assert len(c.events()) == 3
    assert c.privacy_report().epsilon_spent == pytest.approx(spent)
    assert c.forget() == 3
    assert c.events() == [] and c.status()["has_user_embedding"] is False
    assert c.recommend(5).status == "cold-start-catalog"
    assert c.privacy_report().epsilon_spent == pytest.approx(spent)
    assert c.privacy_report().rounds_released == 1
    c.close()


def test_open_refuses_contradictions_and_warns_without_dp(tmp_path):
    _open(tmp_path).close()
    with pytest.raises(ValueError, match="belongs to device"):
        FedRecClient.open(tmp_path / "d.db", device_id="someone-else")
    c = _open(tmp_path, "e.db")
    c.receive_model(_table())
    _buy(c, range(5))
    c.train_round(_table(), 1, policy_signals=OK)
    c.close()
    with pytest.raises(ValueError, match="accounted with the 'rdp'"):
        FedRecClient.open(tmp_path / "e.db", dp=dict(DP, accountant="prv"))
    with pytest.warns(UserWarning, match="WITHOUT differential privacy"):
        FedRecClient.open(tmp_path / "f.db", dp=None).close()
    with pytest.raises(ValueError, match="catalog has 3 items"):
        c = _open(tmp_path, "g.db")
        c.receive_model(_table())
        c.set_catalog(["a", "b", "c"])


def test_sdk_dp_defaults_are_dpconfigs():
    from fedrec.common.privacy.dpsgd import DPConfig

    assert DEFAULT_DP == DPConfig().to_dict()


# --------------------------------------------------------------------------- training


def test_train_round_respects_the_policy(tmp_path):
    with _open(tmp_path, policy=TrainingPolicy(max_rounds_per_day=1, min_battery_level=0.5)) as c:
        _buy(c, range(6))
        for signals, why in [
            (PolicySignals(charging=False, on_wifi=True, battery_level=0.9), "not charging"),
            ({"charging": True, "on-wifi": False}, "not on Wi-Fi"),
        ]:
            r = c.train_round(_table(), 1, policy_signals=signals)
            assert type(r).__name__ == "Refusal" and why in r.detail
            assert r.code == "device-state"
        assert c.recommend(3).status == "personalized-fold-in"  # the table was kept anyway
        assert type(c.train_round(_table(), 1, policy_signals=OK)).__name__ == "Contribution"
        again = c.train_round(_table(), 2, policy_signals=OK)
        assert again.code == "device-state" and "limit of 1 per day" in again.detail
        later = PolicySignals(charging=True, on_wifi=True, now=__import__("time").time() + 9e4)
        assert type(c.train_round(_table(), 3, policy_signals=later)).__name__ == "Contribution"
        with pytest.raises(ValueError, match="unknown policy signals"):
            c.train_round(_table(), 4, policy_signals={"plugged": True})
    steps = 2  # LOCAL: ceil(epochs / sample_rate)
    with _open(
        tmp_path,
        "steps.db",
        policy=TrainingPolicy(
            require_charging=False, max_rounds_per_day=None, max_steps_per_day=steps
        ),
    ) as c:
        _buy(c, range(6))
        assert type(c.train_round(_table(), 1, policy_signals=OK)).__name__ == "Contribution"
        again = c.train_round(_table(), 2, policy_signals=OK)
        assert again.code == "device-state" and "steps" in again.detail


def test_train_round_trains_without_data_under_dp_and_refuses_past_the_budget(tmp_path):
    with _open(tmp_path, dp=dict(DP, budget_epsilon=9.0)) as c:
        # no data: a refusal would tell the server so; under DP the update is noise alone
        r = c.train_round(_table(), 1, policy_signals=OK)
        assert type(r).__name__ == "Contribution"
        assert c.privacy_report().rounds_released == 1
        c.record(Event("impression", "m1", 1.0))  # exposure only: still nothing to train on
        _buy(c, range(8))
        outcomes = [c.train_round(_table(), k, policy_signals=OK) for k in range(1, 6)]
        kinds = [type(o).__name__ for o in outcomes]
        assert "Contribution" in kinds and kinds[-1] == "Refusal"
        refusal = outcomes[-1]
        assert refusal.code == "budget" and refusal.epsilon_needed > 9.0
        report = c.privacy_report()
        assert report.epsilon_spent <= 9.0
        assert report.rounds_released == kinds.count("Contribution") + 1


def test_privacy_report_and_the_signed_ledger(tmp_path):
    from fedrec.common.audit.ledger import verify_ledger

    with _open(tmp_path) as c:
        fresh = c.privacy_report()
        assert fresh.epsilon_spent == 0 and fresh.epsilon_left == 50.0 and fresh.steps == 0
        _buy(c, range(8))
        reply = c.train_round(_table(), 7, policy_signals=OK)
        assert reply.num_examples == 1 and reply.metrics == {}
        assert set(reply.arrays) == {"item_embedding.weight", "item_bias.weight"}
        report = c.privacy_report()
        d = report.to_dict()
        assert d["delta"] == 1e-5 and d["budget_epsilon"] == 50.0
        assert report.epsilon_spent > 0
        assert report.epsilon_left == pytest.approx(50.0 - report.epsilon_spent)
        assert report.unit.startswith("example") and report.relation == "add/remove"
        assert "RDPAccountant" in report.accountant and report.dp_enabled
        assert report.rounds_released == 1 and report.rounds_pending == 0
        assert report.history == ((1.0, 0.5, 2),) and report.steps == 2
        assert any("Poisson" in a for a in report.assumptions)
        assert any("crash" in a for a in report.assumptions)
        result = verify_ledger(
            c.ledger_path, c.ledger_public_key_pem(), expected_device_id=c.device_id
        )
        assert result.ok and len(result.records) == 1
        rec = result.records[0]
        assert rec["round"] == 7 and rec["claimed_epsilon"] == pytest.approx(report.epsilon_spent)
        assert c.store.releases()[0].record == rec  # the store holds the same signed record
        assert rec["mechanism"]["randomness"] == "seeded"  # _open passes seed=0: said so
    with _open(tmp_path, "secure.db", seed=None) as c:
        _buy(c, range(8))
        c.train_round(_table(), 1, policy_signals=OK)
        assert c.store.releases()[0].record["mechanism"]["randomness"] == "os-entropy"


def test_spend_is_written_ahead_of_training_and_kept_if_training_dies(tmp_path, monkeypatch):
    from fedrec.client import device as device_module
    from fedrec.client.storage import DeviceStore

    seen = {}

    def dying_train(self, global_state, server_round):
        # the intended spend is already committed: another connection sees it
        with DeviceStore(tmp_path / "d.db") as other:
            seen["steps"] = other.privacy_state().total_steps
            seen["status"] = [r.status for r in other.releases()]
        raise KeyboardInterrupt("power cut")

    c = _open(tmp_path)
    _buy(c, range(8))
    monkeypatch.setattr(device_module.Device, "train", dying_train)
    with pytest.raises(KeyboardInterrupt):
        c.train_round(_table(), 1, policy_signals=OK)
    assert seen == {"steps": 2, "status": ["intent"]}
    c.close()
    monkeypatch.undo()
    c = FedRecClient.open(tmp_path / "d.db")
    report = c.privacy_report()
    assert report.steps == 2 and report.epsilon_spent > 0 and report.rounds_pending == 1
    # a release whose ledger write fails sends nothing
    c._sign_ledger = True
    c._ledger_writer = lambda: (_ for _ in ()).throw(OSError("disk full"))
    with pytest.raises(OSError, match="disk full"):
        c.train_round(_table(), 2, policy_signals=OK)
    assert c.privacy_report().steps == 4  # still counted
    c.close()


def test_without_dp_the_report_says_infinite(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = _open(tmp_path, dp=None)
    _buy(c, range(5))
    reply = c.train_round(_table(), 1, policy_signals=OK)
    assert reply.num_examples == 5
    report = c.privacy_report()
    assert not report.dp_enabled and report.epsilon_spent == float("inf")
    assert "DP IS OFF" in report.assumptions[0]
    c.close()


def test_importing_the_sdk_pulls_no_server_simulation_ray_or_torch():
    code = (
        "import sys, fedrec.client.sdk;"
        "bad=[m for m in sys.modules if m.split('.')[0] in ('ray', 'torch', 'opacus')"
        " or m.startswith(('fedrec.server', 'fedrec.simulations', 'flwr.server',"
        " 'flwr.simulation', 'flwr.serverapp'))];"
        "print(bad); assert not bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
