"""Distributed DP: noise shares on devices, full noise in the sum, accounting of what was there."""

import json
import math

import dp_accounting
import numpy as np
import pytest
import torch

from fedrec.common.config import RunConfig
from fedrec.common.model.mf import MatrixFactorization
from fedrec.common.privacy.accountant import make_accountant
from fedrec.common.privacy.dpsgd import DPConfig, LocalConfig, train_local
from fedrec.server.coordinator import make_coordinator


def _pld_epsilon(q, sigma, steps, delta):
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    acc.compose(event, steps)
    return acc.get_epsilon(delta)


def _train_noise_only(noise_share, seed):
    """Deltas of a round whose signal is negligible (C tiny, σ·C = 1): pure noise."""
    model = MatrixFactorization(1, 400, 8)
    g0, u0 = model.global_state(), model.local_state()["user_embedding.weight"].copy()
    local = LocalConfig(epochs=4, sample_rate=1.0, lr=1.0, batch_size_norm=1.0)
    train_local(
        model,
        np.arange(5),
        local=local,
        dp=DPConfig(noise_multiplier=1e6, max_grad_norm=1e-6),
        accountant=make_accountant("rdp"),
        generator=torch.Generator().manual_seed(seed),
        noise_share=noise_share,
    )
    g1, u1 = model.global_state(), model.local_state()["user_embedding.weight"]
    return g1["item_embedding.weight"] - g0["item_embedding.weight"], u1 - u0


def test_items_carry_the_share_and_the_user_embedding_the_full_noise():
    items, user = _train_noise_only(0.25, seed=0)
    # 4 steps of std σC = 1 each, summed: std 2 in full, 0.5 with a share of 1/4
    assert np.std(items) == pytest.approx(0.25 * 2.0, rel=0.05)
    users = np.concatenate([_train_noise_only(0.25, seed=s)[1].ravel() for s in range(60)])
    assert np.std(users) == pytest.approx(2.0, rel=0.15)


def test_item_gradients_are_taken_at_the_servers_table(monkeypatch):
    """Every local step sees the server's item table; the user embedding moves between steps."""
    import fedrec.common.privacy.dpsgd as dp_module

    seen = []
    real_gather = dp_module.gather

    def spy(model, users, items):
        seen.append(
            (
                model.item_embedding.weight.detach().clone(),
                model.user_embedding.weight.detach().clone(),
            )
        )
        return real_gather(model, users, items)

    monkeypatch.setattr(dp_module, "gather", spy)
    model = MatrixFactorization(1, 6, 3, init_std=0.5)
    v0 = model.item_embedding.weight.detach().clone()
    local = LocalConfig(epochs=3, sample_rate=1.0, lr=0.3, batch_size_norm=1.0, loss="bpr")
    train_local(
        model,
        np.array([1, 4]),
        local=local,
        dp=DPConfig(noise_multiplier=0.5, max_grad_norm=1.0),
        accountant=make_accountant("rdp"),
        generator=torch.Generator().manual_seed(3),
        noise_share=0.5,
    )
    assert len(seen) == 3
    assert all(torch.equal(v, v0) for v, _ in seen)
    assert not torch.equal(seen[0][1], seen[2][1])
    assert not torch.equal(model.item_embedding.weight.detach(), v0)  # the summed update

    # the local (non-distributed) path does move the items between steps
    seen.clear()
    model = MatrixFactorization(1, 6, 3, init_std=0.5)
    train_local(
        model,
        np.array([1, 4]),
        local=local,
        dp=DPConfig(noise_multiplier=0.5, max_grad_norm=1.0),
        accountant=make_accountant("rdp"),
        generator=torch.Generator().manual_seed(3),
    )
    assert not torch.equal(seen[0][0], seen[2][0])


def test_distributed_needs_sgd_and_dp():
    model = MatrixFactorization(1, 5, 2)
    with pytest.raises(ValueError, match="sgd"):
        train_local(
            model,
            np.array([1]),
            local=LocalConfig(optimizer="adam"),
            dp=DPConfig(),
            accountant=make_accountant("rdp"),
            noise_share=0.5,
        )
    with pytest.raises(ValueError, match="needs DP"):
        train_local(model, np.array([1]), local=LocalConfig(), dp=None, noise_share=0.5)
    with pytest.raises(ValueError, match="local-optimizer sgd"):
        RunConfig(privacy="distributed", local_optimizer="adam")


def _ddp(ledger_dir=None):
    """The distributed mechanism of a run with σ 1.2, q 0.1, 10 steps, 30% dropout tolerance."""
    cfg = RunConfig(
        privacy="distributed",
        noise_multiplier=1.2,
        max_grad_norm=1.0,
        local_epochs=1,
        sample_rate=0.1,
        dropout_tolerance=0.3,
        dim=2,
    )
    coord = make_coordinator(cfg, 5, ledger_dir=ledger_dir)
    return coord.mechanism, coord.algorithm.contribution(coord.task(1))


def test_provisioning_for_dropouts():
    ddp, spec = _ddp()
    assert (spec.noise_multiplier, spec.sampling_probability, spec.steps) == (1.2, 0.1, 10)
    plan = ddp.plan(10, spec)
    assert plan.min_included == 7 and plan.noise_share == pytest.approx(1 / math.sqrt(7))
    # as provisioned or better: the full σ (capped: the user step carries exactly σ)
    assert ddp.effective_noise_multiplier(plan, 7, 1.2) == pytest.approx(1.2)
    assert ddp.effective_noise_multiplier(plan, 10, 1.2) == pytest.approx(1.2)
    # more dropouts than provisioned: the noise that is there
    assert ddp.effective_noise_multiplier(plan, 5, 1.2) == pytest.approx(1.2 * math.sqrt(5 / 7))
    assert ddp.effective_noise_multiplier(plan, 0, 1.2) == 0.0


@pytest.mark.slow
def test_accounting_matches_dp_accounting_with_the_noise_present(tmp_path):
    ddp, spec = _ddp(ledger_dir=tmp_path / "ledgers")
    plan = ddp.plan(10, spec)
    ddp.record(1, plan, [str(i) for i in range(10)], spec)  # all there: σ
    ddp.record(2, plan, [str(i) for i in range(5)], spec)  # 5 of 10: σ·√(5/7)
    low = 1.2 * math.sqrt(5 / 7)
    eps_both = ddp.epsilon("0")
    eps_first = ddp.epsilon("9")
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.2)), 10)
    acc.compose(dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(low)), 10)
    assert eps_both == pytest.approx(acc.get_epsilon(1e-5), rel=0.02)
    assert eps_first == pytest.approx(_pld_epsilon(0.1, 1.2, 10, 1e-5), rel=0.02)
    assert eps_both > eps_first
    # the server's signed ledgers say the same, and the audit replays them
    recs = [
        json.loads(x)
        for x in (tmp_path / "ledgers" / "secure-sum" / "node-0.jsonl").read_text().splitlines()
    ]
    assert [r["mechanism"]["noise_multiplier"] for r in recs] == pytest.approx([1.2, low])
    from fedrec.common.audit.report import audit_run

    report = audit_run(
        tmp_path / "ledgers" / "secure-sum",
        accountants=("pld",),
        write=False,
        plots=False,
        workers=1,
    )
    by_id = {a.device_id: a for a in report.ledgers}
    assert by_id["node-0"].epsilon["pld"] == pytest.approx(eps_both, rel=0.02)
    assert not report.tampered


def test_coordinator_steps_with_the_mean_of_the_secure_sum(tmp_path):
    cfg = RunConfig(
        privacy="distributed",
        dim=2,
        num_rounds=2,
        fraction_train=0.5,
        server_lr=1.0,
        noise_multiplier=1.0,
        dropout_tolerance=0.2,
        dropout_policy="account",
    )
    coord = make_coordinator(cfg, 4, ledger_dir=tmp_path)
    before = {k: v.copy() for k, v in coord.state.items()}
    plan = coord.plan_round(5, 1)
    assert plan.min_included == 4
    total = {k: np.full_like(v, 3.0) for k, v in coord.state.items()}
    rep = coord.aggregate_sum(1, plan, total, [1, 2, 3])
    assert rep.aggregated == 3 and rep.dropped == 2
    for k in before:
        np.testing.assert_allclose(coord.state[k], before[k] + 1.0, rtol=1e-6)  # lr 1 · 3/3
    assert rep.train_metrics["epsilon_max"] > 0
    # a malformed sum is rejected, the table stays, nothing is accounted
    bad = {k: np.full_like(v, np.nan) for k, v in coord.state.items()}
    snap = {k: v.copy() for k, v in coord.state.items()}
    rep = coord.aggregate_sum(2, plan, bad, [1, 2, 3, 4])
    assert rep.aggregated == 0 and "secure sum rejected" in rep.drop_reasons[0]
    for k in snap:
        np.testing.assert_array_equal(coord.state[k], snap[k])
    assert len(coord.mechanism.histories["1"]) == 1


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["account", "abort"])
def test_loop_run_with_more_dropouts_than_provisioned(tmp_path, policy):
    from fedrec.simulations.loop import run_plain
    from fedrec.simulations.runner import privacy_summary

    cfg = RunConfig(
        dataset="synthetic",
        synthetic_users=30,
        synthetic_items=40,
        dim=4,
        num_rounds=2,
        fraction_train=0.5,
        privacy="distributed",
        epsilon=5.0,
        local_epochs=1,
        sample_rate=0.5,
        dropout_tolerance=0.1,
        eval_every=2,
        dropout_policy=policy,
    )
    res = run_plain(cfg, ledger_dir=tmp_path / "ledgers", dropout=0.5)  # receipts beside it
    assert "ndcg@10" in res.rounds[-1]["eval"]
    summary = privacy_summary(tmp_path / "ledgers", cfg, cfg.device_noise())
    if policy == "account":
        # the noise present was smaller than planned, and the reported ε (from the server's
        # secure-sum ledgers) is above the devices' claims
        assert all(0 < r["aggregated"] < r["sampled"] for r in res.rounds)
        assert summary["epsilon_max"] > summary["epsilon_max_provisioned"] > 0
    else:
        # never use a sum with less than the full noise: nothing aggregated, nothing spent
        # beyond what the devices provisioned for
        assert all(r["aggregated"] == 0 for r in res.rounds)
        assert all("fewer than the" in r["drop_reasons"][-1] for r in res.rounds)
        assert summary["epsilon_max"] == 0.0
        assert not (tmp_path / "secure-sum").exists()
    assert "SecAgg+" in summary["trust"]


def test_sampling_never_asks_a_device_past_its_planned_participations():
    cfg = RunConfig(
        privacy="distributed", num_rounds=5, fraction_train=0.3, dim=2, noise_multiplier=1.0
    )
    coord = make_coordinator(cfg, 4)
    counts = {}
    for _ in range(cfg.num_rounds):
        for n in coord.sample(list(range(10))):
            counts[n] = counts.get(n, 0) + 1
    assert max(counts.values()) <= cfg.planned_participations == 2
