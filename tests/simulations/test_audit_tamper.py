"""The audit of a simulated run: honest is PASS; every tamper case is FAIL, naming device and fault.

One small honest run of the in-process loop (``fedrec simulate --engine loop``) is copied and
tampered with per case. Some cases forge with the run's own keystore, as an insider who holds
a device's key (or every key) would; the audit must still catch what the run's manifest and
the server's receipts contradict.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from fedrec.cli import main
from fedrec.common.audit.keystore import Keystore
from fedrec.common.audit.ledger import DeviceKey, Ledger
from fedrec.common.audit.receipts import RECEIPTS_FILE, ReceiptLog
from fedrec.common.audit.report import audit_run
from fedrec.common.config import RunConfig
from fedrec.common.privacy.accounting import PrivacyEvent, epsilon
from fedrec.simulations.runner import simulate_loop

VICTIM = "device-000003"
OTHER = "device-000005"
Records = list[dict]


@pytest.fixture(scope="module")
def honest(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("audit-run")
    cfg = RunConfig(
        synthetic_users=12,
        synthetic_items=40,
        num_rounds=4,
        local_epochs=2.0,
        eval_every=4,
        dim=4,
        run_dir=str(root / "run"),
    )
    _, path = simulate_loop(cfg, reference=False)
    return path


def copy(honest: Path, tmp_path: Path) -> Path:
    """The honest run and its keystore, copied (the keystore beside it, as a simulation has)."""
    run = tmp_path / "run"
    shutil.copytree(honest, run)
    shutil.copytree(honest.with_name("run.keystore"), tmp_path / "run.keystore")
    return run


def read(run: Path, device: str) -> Records:
    return Ledger.read(run / "ledgers" / f"{device}.jsonl")


def write_ledger(run: Path, device: str, records: Records, key: DeviceKey) -> Records:
    """Re-sign ``records`` (edited copies of real ones) as ``device``'s ledger with ``key``."""
    path = run / "ledgers" / f"{device}.jsonl"
    path.unlink()
    ledger = Ledger(path, key, device_id=device)
    out = []
    for r in records:
        event = PrivacyEvent(
            r["mechanism"]["noise_multiplier"],
            r["sampling"]["probability"],
            r["steps"],
            max_grad_norm=r["mechanism"]["max_grad_norm"],
            unit=r["unit"],
            purpose=r["purpose"],
            randomness=r["mechanism"]["randomness"],
        )
        out.append(
            ledger.append(
                event,
                round=r["round"],
                target_delta=r["target_delta"],
                budget_epsilon=r["budget_epsilon"],
                claimed_epsilon=r["claimed_epsilon"],
                accountant=r["accountant"],
            )
        )
    return out


def recountersign(run: Path, device: str, records: Records) -> None:
    """Rewrite the receipts as an honest server would have for ``device``'s ``records``."""
    old = [json.loads(line) for line in (run / RECEIPTS_FILE).read_text().splitlines()]
    (run / RECEIPTS_FILE).unlink()
    log = ReceiptLog(run / RECEIPTS_FILE, Keystore(run.with_name("run.keystore")).server_key())
    node = next(r["node"] for r in old if r["device_id"] == device)
    mine = {r["round"]: r for r in records}
    for r in old:
        if r["kind"] == "seal":
            for rnd in sorted(set(mine) - {x["round"] for x in old if x["device_id"] == device}):
                log.countersign(rnd, [(node, _head(mine[rnd]))])
            log.seal(r["round"])
        elif r["device_id"] == device:
            log.countersign(r["round"], [(node, _head(mine[r["round"]]))])
        else:
            head = {"device_id": r["device_id"], "seq": r["device_seq"], "hash": r["device_hash"]}
            log.countersign(r["round"], [(r["node"], head)])


def _head(record: dict) -> dict:
    return {"device_id": record["device_id"], "seq": record["seq"], "hash": record["hash"]}


def device_key(run: Path, device: str) -> DeviceKey:
    return Keystore(run.with_name("run.keystore")).device_key(device)


def true_epsilon(records: Records) -> float:
    releases = [
        PrivacyEvent(r["mechanism"]["noise_multiplier"], r["sampling"]["probability"], r["steps"])
        for r in records
    ]
    return epsilon(releases, target_delta=records[0]["target_delta"], accountant="prv")


# --------------------------------------------------------------------------- tamper cases


def replaced_with_its_key(run: Path) -> None:
    """A forged ledger (half the releases) signed with a new key, put beside it as its key."""
    key = DeviceKey.generate()
    write_ledger(run, VICTIM, read(run, VICTIM)[:1], key)
    key.save_public(run / "ledgers" / "keys" / f"{VICTIM}.pub.pem")


def records_cut_off_the_end(run: Path) -> None:
    path = run / "ledgers" / f"{VICTIM}.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]))


def deleted_device(run: Path) -> None:
    (run / "ledgers" / f"{VICTIM}.jsonl").unlink()
    (run / "ledgers" / "keys" / f"{VICTIM}.pub.pem").unlink()


def self_declared_budget_100(run: Path) -> None:
    """A device set up with budget 100 trains on past 8; its key and the server are honest."""
    records = read(run, VICTIM)
    extra = []
    for rnd in (5, 6, 7):
        extra.append({**records[-1], "round": rnd})
    records = [{**r, "budget_epsilon": 100.0} for r in records + extra]
    for i in range(len(records)):
        records[i]["claimed_epsilon"] = true_epsilon(records[: i + 1])
    recountersign(run, VICTIM, write_ledger(run, VICTIM, records, device_key(run, VICTIM)))


def _under_claim(run: Path, index: int, claim: float) -> None:
    """A device whose accountant under-reports in one record (honestly signed, countersigned)."""
    records = read(run, VICTIM)
    records[index] = {**records[index], "claimed_epsilon": claim}
    recountersign(run, VICTIM, write_ledger(run, VICTIM, records, device_key(run, VICTIM)))


def under_claim_in_the_last_record(run: Path) -> None:
    _under_claim(run, -1, 2.0)


def under_claim_in_an_earlier_record(run: Path) -> None:
    _under_claim(run, 0, 0.5)


def swapped_key(run: Path) -> None:
    """The ledger re-signed with another device's key, and that key put beside it."""
    other = device_key(run, OTHER)
    write_ledger(run, VICTIM, read(run, VICTIM), other)
    other.save_public(run / "ledgers" / "keys" / f"{VICTIM}.pub.pem")


def key_file_swapped_only(run: Path) -> None:
    shutil.copy(
        run / "ledgers" / "keys" / f"{OTHER}.pub.pem",
        run / "ledgers" / "keys" / f"{VICTIM}.pub.pem",
    )


def manifest_budget_edited(run: Path) -> None:
    data = json.loads((run / "manifest.json").read_text())
    data["policy"]["epsilon_budget"] = 100.0
    (run / "manifest.json").write_text(json.dumps(data))


def receipts_cut_with_the_ledgers(run: Path) -> None:
    """The last round cut from every ledger and from the receipts, seal included."""
    receipts = [json.loads(line) for line in (run / RECEIPTS_FILE).read_text().splitlines()]
    last = max(r["round"] for r in receipts if r["kind"] == "receipt")
    keep = [r for r in receipts if r["kind"] == "receipt" and r["round"] < last]
    (run / RECEIPTS_FILE).write_text("".join(_line(r) for r in keep))
    for path in (run / "ledgers").glob("device-*.jsonl"):
        lines = [x for x in path.read_text().splitlines() if json.loads(x)["round"] < last]
        path.write_text("".join(x + "\n" for x in lines))


def _line(record: dict) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"


# case → (tamper, failing check, words the message must contain besides the device)
CASES: dict[str, tuple[Callable[[Path], None], str, tuple[str, ...]]] = {
    "ledger replaced with its key": (
        replaced_with_its_key,
        "integrity",
        ("signature does not verify", "not with the key enrolled"),
    ),
    "records cut off the end": (records_cut_off_the_end, "truncated", ("cut off the end",)),
    "deleted device": (deleted_device, "missing", ("ledger is missing", "deleted")),
    "self-declared budget 100": (
        self_declared_budget_100,
        "budget",
        ("exceeds the run's budget (manifest), 8", "declares 100"),
    ),
    "under-claim in the last record": (
        under_claim_in_the_last_record,
        "claim",
        ("its last record", "claims ε 2.0000", "under-claim"),
    ),
    "under-claim in an earlier record": (
        under_claim_in_an_earlier_record,
        "claim",
        ("seq 0", "an earlier record", "claims ε 0.5000", "under-claim"),
    ),
    "swapped key": (swapped_key, "integrity", (f"signed with the key enrolled for {OTHER}",)),
    "key file swapped": (key_file_swapped_only, "key", ("key was swapped",)),
    "manifest edited": (manifest_budget_edited, "manifest", ("edited after signing",)),
    "receipts cut with the ledgers": (receipts_cut_with_the_ledgers, "receipts", ("seal",)),
}


def test_the_honest_run_passes(honest):
    report = audit_run(honest, write=False, workers=1)
    assert report.ok, report.findings
    assert report.context.keys_pinned and report.context.receipts.sealed
    assert {a.key_source for a in report.ledgers} == {"registry"}
    assert sum(a.receipts for a in report.devices) == len(report.context.receipts.receipts) > 0
    assert {a.budget_source for a in report.devices} == {"policy"}
    assert all(not a.under_claimed_seqs for a in report.devices)


@pytest.mark.parametrize("case", list(CASES))
def test_every_tamper_case_fails_naming_the_device(case, honest, tmp_path):
    tamper, check, words = CASES[case]
    run = copy(honest, tmp_path)
    tamper(run)
    report = audit_run(run, write=False, workers=1)
    assert not report.ok
    subject = "manifest" if check == "manifest" else "receipts" if check == "receipts" else VICTIM
    hits = [f for f in report.findings if f.check == check and f.subject == subject]
    assert hits, [f"{f.check}: {f.message}" for f in report.findings]
    message = hits[0].message
    assert message.startswith(f"{subject}:"), message
    for word in words:
        assert word in message, message
    print(f"\n{case}: FAIL: {message}")


def test_the_cli_exits_non_zero_on_an_under_claim(honest, tmp_path, capsys):
    run = copy(honest, tmp_path)
    under_claim_in_an_earlier_record(run)
    assert main(["audit", str(run), "--no-plots", "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and VICTIM in out and "under-claim" in out


def test_the_operator_key_is_pinned(honest, tmp_path):
    """A run re-enrolled under another operator key passes unless the auditor pins the real one."""
    from fedrec.common.audit.manifest import write_manifest

    run = copy(honest, tmp_path)
    data = json.loads((run / "manifest.json").read_text())
    mallory = DeviceKey.generate()
    keys = {d: device_key(run, d) for d in data["devices"]["keys"]}
    write_manifest(
        run,
        policy={**data["policy"], "epsilon_budget": 100.0},
        run=data["run"],
        trust=data["trust"],
        device_keys=keys,
        operator_key=mallory,
    )
    real = Keystore(run.with_name("run.keystore")).server_public_path()
    unpinned = audit_run(run, write=False, workers=1)
    assert any(f.subject == "receipts" for f in unpinned.findings)  # receipts: real key
    report = audit_run(run, write=False, workers=1, operator_key=real)
    (finding,) = [f for f in report.findings if f.check == "manifest"]
    assert "not the pinned operator key" in finding.message


def test_ledgers_without_a_manifest_say_what_was_not_checked(honest, tmp_path):
    """Ledgers an auditor collected from devices: keys from the folder, nothing cross-checked."""
    run = copy(honest, tmp_path)
    (run / "manifest.json").unlink()
    report = audit_run(run / "ledgers", workers=1, plots=False, out_dir=tmp_path / "out")
    assert report.ok and not report.context.keys_pinned
    status = {i["check"]: i["status"] for i in report.to_dict()["verified"]}
    assert status["run manifest"] == "not checked"
    assert status["device keys"] == "not pinned"
    assert status["server receipts"] == "not checked"
    text = (tmp_path / "out" / "report.md").read_text()
    assert "could not be cross-checked" in text and "would pass" in text
    # The case the issue names: a truncated ledger passes here, and the report says why.
    records_cut_off_the_end(run)
    assert audit_run(run / "ledgers", workers=1, write=False).ok


def test_private_keys_are_not_in_the_run_directory(honest):
    names = [p.name for p in honest.rglob("*") if p.is_file()]
    assert not [n for n in names if n.endswith(".pem") and not n.endswith(".pub.pem")]
    assert "devices.secret" not in names
    keystore = honest.with_name("run.keystore")
    assert (keystore / "server.key.pem").is_file() and (keystore / "devices.secret").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("privacy", ["distributed", "user"])
def test_honest_runs_of_the_other_modes_pass(privacy, tmp_path):
    cfg = RunConfig(
        synthetic_users=20,
        synthetic_items=30,
        num_rounds=2,
        fraction_train=1.0,
        local_epochs=1.0,
        sample_rate=0.5,
        eval_every=2,
        dim=4,
        privacy=privacy,
        delta=1e-3 if privacy == "user" else 1e-5,
        run_dir=str(tmp_path / "run"),
    )
    _, path = simulate_loop(cfg, reference=False)
    report = audit_run(path, write=False, workers=1)
    assert report.ok, report.findings
    assert report.mode == privacy and report.context.receipts.sealed
    if privacy == "user":  # the server's ledger, verified with the operator key
        assert report.server is not None and report.server.key_source == "registry"
        assert not report.devices and not report.context.receipts.receipts
    else:
        assert len(report.context.receipts.receipts) == 40
