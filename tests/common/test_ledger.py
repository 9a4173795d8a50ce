"""The signed, hash-chained privacy ledger: format, tamper detection, keys."""

from __future__ import annotations

import base64
import hashlib
import json
import os

import numpy as np
import pytest

from fedrec.common.audit.ledger import (
    FORMAT,
    GENESIS_HASH,
    DeviceKey,
    Ledger,
    LedgerError,
    canonical_bytes,
    load_public_key,
    public_key_path,
    releases_from_ledger,
    verify_ledger,
)
from fedrec.common.privacy.accounting import PrivacyEvent
from tests.ledger_records import append_record

N = 6


def _append(ledger: Ledger, rnd: int, **overrides):
    fields = dict(
        round=rnd,
        noise_multiplier=1.1,
        max_grad_norm=1.0,
        sampling_probability=0.05,
        steps=20,
        target_delta=1e-5,
        budget_epsilon=8.0,
        claimed_epsilon=0.5 + rnd,
        accountant="prv",
        purpose="dp-sgd",
    )
    fields.update(overrides)
    return append_record(ledger, **fields)


@pytest.fixture(scope="module")
def key() -> DeviceKey:
    return DeviceKey.generate()


@pytest.fixture
def ledger_file(tmp_path, key):
    path = tmp_path / "dev7.jsonl"
    ledger = Ledger(path, key)
    for rnd in range(N):
        _append(ledger, rnd, sampling_probability=None if rnd == 3 else 0.05)
    return path


def _lines(path):
    return path.read_bytes().split(b"\n")[:-1]


def _write_lines(path, lines):
    path.write_bytes(b"".join(line + b"\n" for line in lines))


@pytest.mark.parametrize("all_signatures", [True, False])
def test_intact_ledger_verifies(ledger_file, key, all_signatures):
    result = verify_ledger(
        ledger_file, key.public_key, expected_device_id="dev7", all_signatures=all_signatures
    )
    assert result.ok, result.reason
    assert result.first_bad_seq is None and result.reason == ""
    assert [r["seq"] for r in result.records] == list(range(N))


def test_record_format(ledger_file, key):
    records = Ledger.read(ledger_file)
    first = records[0]
    assert first["format"] == FORMAT == "fedrec-ledger/1.1"
    assert first["mechanism"]["randomness"] == "os-entropy"
    assert first["prev_hash"] == GENESIS_HASH == "0" * 64
    assert first["device_id"] == "dev7"
    assert first["mechanism"] == {
        "type": "gaussian",
        "noise_multiplier": 1.1,
        "max_grad_norm": 1.0,
        "randomness": "os-entropy",
    }
    assert first["sampling"] == {"type": "poisson", "probability": 0.05}
    assert records[3]["sampling"] == {"type": "none", "probability": None}
    assert first["unit"] == "example" and first["relation"] == "add/remove"
    assert set(first["versions"]) == {"fedrec", "opacus", "torch", "dp_accounting"}
    assert first["time"].endswith("Z")
    for prev, rec in zip(records, records[1:], strict=False):
        assert rec["prev_hash"] == prev["hash"]
    # The documented hash and signature, recomputed by hand.
    body = {k: v for k, v in first.items() if k not in ("hash", "signature")}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert canonical == canonical_bytes(first)
    assert hashlib.sha256(canonical).hexdigest() == first["hash"]
    key.public_key.verify(base64.b64decode(first["signature"]), bytes.fromhex(first["hash"]))
    # Each line is the canonical serialization of the whole record.
    assert (
        _lines(ledger_file)[0] == json.dumps(first, sort_keys=True, separators=(",", ":")).encode()
    )


def test_releases_from_ledger(ledger_file):
    releases = releases_from_ledger(Ledger.read(ledger_file))
    assert releases[0] == PrivacyEvent(1.1, 0.05, 20)
    assert releases[3] == PrivacyEvent(1.1, None, 20)
    assert len(releases) == N


@pytest.mark.parametrize("bad_seq", [0, 2, N - 1])
@pytest.mark.parametrize("all_signatures", [True, False])
def test_flipped_byte_is_detected_at_its_record(ledger_file, key, bad_seq, all_signatures):
    lines = _lines(ledger_file)
    rng = np.random.default_rng(bad_seq)
    original = ledger_file.read_bytes()
    start = sum(len(line) + 1 for line in lines[:bad_seq])
    length = len(lines[bad_seq]) + 1  # the newline too
    positions = {0, length - 1, length - 2, *rng.integers(0, length, 40).tolist()}
    if not all_signatures and bad_seq != N - 1:
        # The fast check authenticates what was signed through the chain; a middle record's
        # own signature field is not covered by any hash (documented), so skip its bytes.
        sig = json.loads(lines[bad_seq])["signature"].encode()
        at = lines[bad_seq].index(sig)
        positions -= set(range(at, at + len(sig)))
    for pos in sorted(positions):
        for bit in (0x01, 0x20):
            data = bytearray(original)
            data[start + pos] ^= bit
            ledger_file.write_bytes(bytes(data))
            result = verify_ledger(ledger_file, key.public_key, all_signatures=all_signatures)
            assert not result.ok, (pos, bit)
            assert result.first_bad_seq == bad_seq, (pos, bit, result.reason)


def test_edited_value_names_the_record(ledger_file, key):
    lines = _lines(ledger_file)
    record = json.loads(lines[2])
    record["steps"] = 1  # spend less on paper; re-serialize canonically so it still parses
    lines[2] = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    _write_lines(ledger_file, lines)
    result = verify_ledger(ledger_file, key.public_key)
    assert (result.ok, result.first_bad_seq) == (False, 2)
    assert "hash does not match" in result.reason


def test_deleted_record_is_detected(ledger_file, key):
    lines = _lines(ledger_file)
    _write_lines(ledger_file, lines[:2] + lines[3:])
    result = verify_ledger(ledger_file, key.public_key)
    assert (result.ok, result.first_bad_seq) == (False, 2)
    assert "seq 2 is missing" in result.reason
    assert len(result.records) == N - 1  # still all readable, for the auditor
    assert [r["seq"] for r in result.intact_records] == [0, 1]


def test_deleted_first_record_is_detected(ledger_file, key):
    _write_lines(ledger_file, _lines(ledger_file)[1:])
    assert verify_ledger(ledger_file, key.public_key).first_bad_seq == 0


@pytest.mark.parametrize(("i", "j"), [(2, 3), (0, N - 1), (1, 4)])
def test_reordered_records_are_detected(ledger_file, key, i, j):
    lines = _lines(ledger_file)
    lines[i], lines[j] = lines[j], lines[i]
    _write_lines(ledger_file, lines)
    result = verify_ledger(ledger_file, key.public_key)
    assert (result.ok, result.first_bad_seq) == (False, i)


def test_record_with_renumbered_seq_is_detected(ledger_file, key):
    # Deleting record 2 and renumbering the rest breaks hashes (seq is signed).
    lines = _lines(ledger_file)
    del lines[2]
    for k in range(2, len(lines)):
        record = json.loads(lines[k])
        record["seq"] = k
        lines[k] = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    _write_lines(ledger_file, lines)
    assert verify_ledger(ledger_file, key.public_key).first_bad_seq == 2


def test_truncated_tail_needs_the_expected_head(ledger_file, key):
    lines = _lines(ledger_file)
    head = json.loads(lines[-1])["hash"]
    _write_lines(ledger_file, lines[:-2])
    # A shorter chain is a valid chain ...
    assert verify_ledger(ledger_file, key.public_key).ok
    # ... unless the auditor knows the head.
    result = verify_ledger(ledger_file, key.public_key, expected_head=head)
    assert (result.ok, result.first_bad_seq) == (False, N - 2)


def test_torn_last_line_is_detected(ledger_file, key):
    data = ledger_file.read_bytes()
    ledger_file.write_bytes(data[:-40])
    result = verify_ledger(ledger_file, key.public_key)
    assert (result.ok, result.first_bad_seq) == (False, N - 1)


@pytest.mark.parametrize("all_signatures", [True, False])
def test_wrong_key_is_detected(ledger_file, all_signatures):
    other = DeviceKey.generate()
    result = verify_ledger(ledger_file, other.public_key, all_signatures=all_signatures)
    assert (result.ok, result.first_bad_seq) == (False, 0)
    assert "signature does not verify" in result.reason


def test_forged_record_signed_by_another_key(ledger_file, key, tmp_path):
    # Someone else extends the chain correctly but cannot sign as the device.
    forger = DeviceKey.generate()
    records = Ledger.read(ledger_file)
    record = dict(records[-1])
    record.update(seq=N, prev_hash=records[-1]["hash"], claimed_epsilon=0.0)
    record.pop("hash"), record.pop("signature")
    digest = hashlib.sha256(canonical_bytes(record)).hexdigest()
    record["hash"] = digest
    record["signature"] = base64.b64encode(forger.sign(bytes.fromhex(digest))).decode()
    with open(ledger_file, "ab") as fh:
        fh.write(json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    result = verify_ledger(ledger_file, key.public_key, all_signatures=False)
    assert (result.ok, result.first_bad_seq) == (False, N)


def test_wrong_device_id_is_detected(ledger_file, key):
    result = verify_ledger(ledger_file, key.public_key, expected_device_id="dev8")
    assert (result.ok, result.first_bad_seq) == (False, 0)


def test_reopen_continues_the_chain(ledger_file, key):
    ledger = Ledger(ledger_file, key)
    assert len(ledger) == N
    record = _append(ledger, N)
    assert record["seq"] == N
    assert verify_ledger(ledger_file, key.public_key).ok


def test_reopen_refuses_a_broken_chain(ledger_file, key):
    lines = _lines(ledger_file)
    _write_lines(ledger_file, lines[:2] + lines[3:])
    with pytest.raises(LedgerError, match="refusing to extend"):
        Ledger(ledger_file, key)


def test_append_is_on_disk_when_it_returns(tmp_path, key, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    path = tmp_path / "d.jsonl"
    record = _append(Ledger(path, key), 0)
    assert synced  # fsync-ed before returning
    assert Ledger.read(path) == [record]


@pytest.mark.parametrize(
    "overrides",
    [
        {"unit": "household"},
        {"relation": "replace-one"},
        {"noise_multiplier": -1.0},
        {"max_grad_norm": 0.0},
        {"target_delta": 0.0},
        {"claimed_epsilon": float("nan")},
        {"steps": 2.5},
    ],
)
def test_append_validates(tmp_path, key, overrides):
    with pytest.raises(ValueError):
        _append(Ledger(tmp_path / "d.jsonl", key), 0, **overrides)
    assert not (tmp_path / "d.jsonl").exists()


def test_device_id_must_be_a_safe_file_name(tmp_path, key):
    with pytest.raises(LedgerError, match="device_id"):
        Ledger(tmp_path / "x.jsonl", key, device_id="../evil")


def test_key_save_and_load(tmp_path, key):
    pub = key.save(tmp_path / "keys" / "dev7.key.pem")
    assert (
        pub
        == public_key_path(tmp_path / "keys" / "dev7.key.pem")
        == tmp_path / "keys" / ("dev7.pub.pem")
    )
    assert (tmp_path / "keys" / "dev7.key.pem").stat().st_mode & 0o077 == 0
    loaded = DeviceKey.load(tmp_path / "keys" / "dev7.key.pem")
    assert loaded.public_pem() == key.public_pem()
    assert load_public_key(pub).public_bytes_raw() == key.public_key.public_bytes_raw()
    signature = loaded.sign(b"x")
    load_public_key(pub.read_bytes()).verify(signature, b"x")


def test_user_level_server_records(tmp_path, key):
    path = tmp_path / "server.jsonl"
    record = _append(
        Ledger(path, key), 0, unit="user", sampling_probability=None, steps=1, purpose="dp-fedavg"
    )
    assert record["device_id"] == "server" and record["unit"] == "user"
    assert verify_ledger(path, key.public_key, expected_device_id="server").ok


def test_a_key_from_its_seed_is_the_same_key_and_holds_only_the_seed_until_used(tmp_path):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from fedrec.common.audit.keystore import Keystore, _device_secret, raw_public_key

    seed = hashlib.sha256(b"device 3").digest()
    full = DeviceKey(Ed25519PrivateKey.from_private_bytes(seed))
    lazy = DeviceKey.from_seed(seed)
    raw = full.public_key.public_bytes_raw()
    assert lazy.public_bytes_raw() == raw == full.public_bytes_raw()
    assert raw_public_key(lazy) == raw and lazy._key is None  # what an enrolment reads: not kept
    assert lazy.sign(b"x") == full.sign(b"x")  # Ed25519 signatures are deterministic
    assert lazy._key is not None and lazy.private_pem() == full.private_pem()
    verifier = DeviceKey.from_seed(seed)  # a device verifying its ledger, then signing
    assert verifier.public_pem() == full.public_pem() and verifier._key is not None
    with pytest.raises(ValueError, match="32 bytes"):
        DeviceKey.from_seed(seed[:31])
    # a keystore's device keys are still HKDF-SHA256 of its secret, so earlier runs verify
    store = Keystore(tmp_path / "ks")
    derived = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"fedrec-device-ledger-key/1:dev-5"
    ).derive(_device_secret(str(store.path.absolute())))
    expected = Ed25519PrivateKey.from_private_bytes(derived).public_key().public_bytes_raw()
    assert store.device_key("dev-5").public_key.public_bytes_raw() == expected
