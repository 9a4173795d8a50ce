"""End-to-end: a few rounds on Flower's simulation engine (Ray), tiny synthetic data."""

import json

import numpy as np
import pytest

from fedrec.common.config import RunConfig
from fedrec.server.run_directory import RunDirectory


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from fedrec.simulations.runner import simulate

    run_dir = tmp_path_factory.mktemp("sim") / "run"
    cfg = RunConfig(
        synthetic_users=24,
        synthetic_items=40,
        dim=8,
        num_rounds=3,
        fraction_train=0.5,
        eval_every=1,
        accountant="rdp",
        epsilon=8.0,
        run_dir=str(run_dir),
    )
    rounds = []
    result = simulate(cfg, on_round=rounds.append, num_cpus=2)
    return cfg, result, rounds


@pytest.mark.slow
def test_simulation_runs_every_round_and_writes_the_run_directory(run):
    cfg, result, rounds = run
    assert len(rounds) == cfg.num_rounds
    assert all(r["aggregated"] == r["sampled"] == 12 for r in rounds)
    path = result.run_dir
    records = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2, 3]
    for r in records:
        assert r["eval"]["users"] == 24
        assert 0 <= r["eval"]["ndcg@10"] <= 1
    round_no, state = RunDirectory.load_checkpoint(path / "checkpoints" / "latest.npz")
    assert round_no == 3 and state["item_embedding.weight"].shape == (40, 8)
    final = np.load(path / "item_embeddings.npz")
    np.testing.assert_array_equal(final["item_embedding.weight"], state["item_embedding.weight"])
    assert len(json.loads((path / "item_ids.json").read_text())) == 40
    config = json.loads((path / "config.json").read_text())
    assert config["run_config"]["num-rounds"] == 3 and config["noise_multiplier"] > 0
    assert (path / "plots" / "quality.png").stat().st_size > 0
    assert (path / "plots" / "epsilon.png").stat().st_size > 0


@pytest.mark.slow
def test_every_device_that_trained_has_a_ledger_within_budget(run):
    cfg, result, rounds = run
    ledgers = sorted((result.run_dir / "ledgers").glob("*.jsonl"))
    # 3 rounds x 12 devices over 24 devices: each trained at most twice (balanced sampling)
    lines = [json.loads(x) for p in ledgers for x in p.read_text().splitlines()]
    assert len(lines) == sum(r["aggregated"] for r in rounds)
    assert len(ledgers) == 24
    assert all(rec["claimed_epsilon"] <= cfg.epsilon + 1e-6 for rec in lines)
    keys = sorted((result.run_dir / "ledgers" / "keys").glob("*.pub.pem"))
    assert len(keys) == 24
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["privacy"]["epsilon_max"] <= cfg.epsilon
    assert summary["privacy"]["unit"].startswith("example")


@pytest.mark.slow
def test_audit_of_a_simulation_recomputes_what_devices_claimed(run):
    from fedrec.cli import main
    from fedrec.common.audit.report import audit_run

    cfg, result, _ = run
    report = audit_run(
        result.run_dir, accountants=("pld", "rdp"), plots=False, out_dir=result.run_dir / "audit"
    )
    assert report.ok and not report.tampered and not report.over_budget
    assert len(report.devices) == 24
    for dev in report.devices:
        assert dev.integrity == "ok"
        assert dev.claim_status in ("match", "within-error", "conservative")
        assert dev.epsilon["rdp"] == pytest.approx(dev.claimed_epsilon, rel=1e-6)
    assert (
        main(
            [
                "audit",
                str(result.run_dir),
                "--accountants",
                "rdp",
                "--no-plots",
                "--out",
                str(result.run_dir / "audit2"),
            ]
        )
        == 0
    )


@pytest.mark.slow
def test_audit_of_a_flower_run_is_pass_and_its_receipts_catch_truncation(run, tmp_path):
    """On Flower's engine too: keys pinned, every release countersigned, a cut ledger caught."""
    import shutil

    from fedrec.common.audit.report import audit_run

    cfg, result, rounds = run
    operator = result.run_dir.with_name("run.keystore") / "server.pub.pem"
    report = audit_run(result.run_dir, write=False, operator_key=operator)
    assert report.ok, report.findings
    assert report.context.manifest.operator_pinned and report.context.receipts.sealed
    assert len(report.context.receipts.receipts) == sum(r["aggregated"] for r in rounds)
    assert {a.key_source for a in report.devices} == {"registry"}
    assert not list(result.run_dir.rglob("*.key.pem")) and not list(
        result.run_dir.rglob("*.secret")
    )
    copy = tmp_path / "run"
    shutil.copytree(result.run_dir, copy)
    shutil.copytree(operator.parent, tmp_path / "run.keystore")
    victim = max(report.devices, key=lambda a: a.n_records).device_id
    ledger = copy / "ledgers" / f"{victim}.jsonl"
    ledger.write_text("".join(x + "\n" for x in ledger.read_text().splitlines()[:-1]))
    cut = audit_run(copy, write=False, operator_key=operator)
    assert [(f.subject, f.check) for f in cut.findings] == [(victim, "truncated")]
