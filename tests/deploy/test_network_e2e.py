"""A real deployment on loopback: SuperLink + SuperNodes as processes, TLS, node auth.

What it shows (issue 6, "Must show"):

* a ``flower-superlink`` with TLS (certificates from ``fedrec certs``) and SuperNode
  authentication, three SuperNodes whose keys (``fedrec node-keys``) were registered with
  ``flwr supernode register``, each one device backed by its own SQLite store;
* ``flwr run`` of the deployment app (``fedrec deploy-app``) runs 2 DP rounds: the item
  embeddings change, and every device's store and signed ledger record its spend;
* one SuperNode is killed (SIGKILL of its process group, ClientApp included) in the middle of
  its round-1 training and restarted: the spend read back from its store is not lower (the
  SDK wrote it ahead of training), the restarted SuperNode closes the session the crash left
  open and rejoins as the same node, trains round 2 from its SQLite state, and ends the run
  with the same accountant history as its peers (not Flower's in-memory node state);
* a SuperNode with an unregistered key is refused.

Every process runs under ``timeout -s KILL``, in its own process group, and is killed in
teardown; everything listens on and connects to 127.0.0.1 only; the update check and
telemetry of Flower are off (no traffic beyond loopback).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"
N_ITEMS = 40
PROCESS_LIMIT_S = 240  # no process outlives this, whatever happens to the test


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((LOOPBACK, 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _children(pid: int) -> list[int]:
    """All descendants of ``pid`` (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            parents.setdefault(int(fields[1]), []).append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _pids_mentioning(marker: str) -> list[int]:
    """Processes whose command line mentions ``marker`` (this test's unique tmp folder)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                if marker.encode() in fh.read():
                    out.append(int(entry))
        except OSError:
            continue
    return out


class Processes:
    """Starts processes with a hard time limit, each in its own group; kills them all."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env = root, env
        self.logs = root / "logs"
        self.logs.mkdir()
        self.procs: dict[str, subprocess.Popen] = {}

    def start(
        self, name: str, cmd: list[str], *, limit: float = PROCESS_LIMIT_S
    ) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            ["timeout", "-s", "KILL", str(int(limit)), *cmd],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.root,
            start_new_session=True,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def run(self, name: str, cmd: list[str], *, limit: float = 60) -> str:
        """Run to completion (with a time limit); returns its output, raises on failure."""
        proc = self.start(name, cmd, limit=limit)
        rc = proc.wait(timeout=limit + 5)
        out = self.log(name)
        assert rc == 0, f"{name} failed (rc {rc}):\n{out[-3000:]}"
        return out

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        victims = [proc.pid, *_children(proc.pid)]
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass

    def close(self) -> None:
        for name in list(self.procs):
            self.kill(name)
        for pid in _pids_mentioning(str(self.root)):  # e.g. the SuperLink's detached SuperExec
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def dump(self) -> str:
        return "\n".join(
            f"===== {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.logs.glob("*.log"))
        )


def _wait_for(what: str, predicate, timeout: float, procs: Processes, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{procs.dump()}")


def _spend(store: Path) -> tuple[int, tuple, list[str]]:
    """(total DP-SGD steps, accountant history, release statuses) from a device store."""
    from fedrec.client.storage import DeviceStore

    with DeviceStore(store) as s:
        state = s.privacy_state()
        return state.total_steps, state.history, [r.status for r in s.releases()]


def _statuses(store: Path) -> list[str]:
    """Release statuses, read-only and cheap (polled while the device trains)."""
    if not store.exists():
        return []
    try:
        db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1.0)
        try:
            return [row[0] for row in db.execute("SELECT status FROM releases ORDER BY id")]
        finally:
            db.close()
    except sqlite3.Error:
        return []


def _node_id(log: str) -> str:
    match = re.search(r"SuperNode ID: (\d+)", log)
    assert match, log
    return match.group(1)


def _epsilon(history, delta: float) -> float:
    from fedrec.common.privacy.accountant import epsilon_of

    return epsilon_of("rdp", tuple(history), delta) if history else 0.0


@pytest.fixture
def deployment(tmp_path):
    if shutil.which("timeout") is None:
        pytest.skip("needs coreutils timeout")
    for tool in ("flower-superlink", "flower-supernode", "flwr"):
        if not (BIN / tool).exists():
            pytest.skip(f"{tool} is not installed next to {sys.executable}")
    env = dict(os.environ)
    env.update(
        {
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "FLWR_HOME": str(tmp_path / "flwr-home"),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
    )
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(var, None)
    procs = Processes(tmp_path, env)
    try:
        yield tmp_path, procs
    finally:
        procs.close()


def test_tls_node_auth_two_dp_rounds_restart_and_refusal(deployment):
    from fedrec.cli.deploy import (
        generate_certificates,
        generate_node_keys,
        write_connection,
        write_deploy_app,
    )
    from fedrec.client.sdk import FedRecClient
    from fedrec.common.audit.ledger import verify_ledger
    from fedrec.common.config import split_run_config
    from fedrec.server.coordinator import initial_global_state

    root, procs = deployment
    t0 = time.monotonic()
    # `fedrec COMMAND` without loading the other subcommands (a faster start)
    fedrec = [sys.executable, "-m", "fedrec.cli.deploy"]

    # --- material: CA + server certificate, 4 node keys (the 4th is never registered) -----
    certs = generate_certificates(root / "certs")
    generate_certificates(root / "device-3-certs")  # device 3's own, for its local runtime API
    keys = generate_node_keys(root / "keys", 4)
    link_port, *node_ports = _free_ports(5)
    address = f"{LOOPBACK}:{link_port}"

    # --- the catalog, and each device's own interactions ----------------------------------
    item_ids = [f"movie-{i:03d}" for i in range(N_ITEMS)]
    catalog = root / "catalog.json"
    catalog.write_text(json.dumps(item_ids))
    rng = np.random.default_rng(0)
    for d in range(1, 5):
        picked = rng.choice(N_ITEMS, size=12, replace=False)
        events = [
            {
                "kind": "purchase" if j % 2 else "view",
                "item_id": item_ids[i],
                "timestamp": 1_700_000_000 + 60 * j,
                "value": None if j % 2 else 90.0,
            }
            for j, i in enumerate(picked)
        ]
        (root / f"events-{d}.json").write_text(json.dumps(events))

    # --- SuperLink: TLS + SuperNode authentication -----------------------------------------
    procs.start(
        "superlink",
        [
            *fedrec,
            "superlink",
            "--certs",
            str(root / "certs"),
            "--host",
            LOOPBACK,
            "--port",
            str(link_port),
            "--database",
            str(root / "superlink.db"),
        ],
    )
    _wait_for(
        "the SuperLink", lambda: "Uvicorn running on https://" in procs.log("superlink"), 60, procs
    )
    assert "--enable-supernode-auth" in procs.log("superlink")  # the wrapper's command line

    # --- flwr connection (TLS with our CA) and registration of 3 of the 4 keys -------------
    write_connection(
        "fedrec-e2e",
        address,
        root_certificates=certs["ca_cert"],
        flwr_home=root / "flwr-home",
        default=True,
    )
    regs = [
        procs.start(
            f"register-{i}",
            [
                str(BIN / "flwr"),
                "supernode",
                "register",
                str(keys[i - 1][1]),
                "fedrec-e2e",
                "--format",
                "json",
            ],
            limit=60,
        )
        for i in (1, 2, 3)
    ]
    for i, proc in enumerate(regs, start=1):
        assert proc.wait(timeout=65) == 0, procs.dump()
        assert '"success": true' in procs.log(f"register-{i}"), procs.log(f"register-{i}")

    # --- SuperNodes: TLS (our CA), their auth keys, a SQLite store each --------------------
    def supernode_cmd(d: int) -> list[str]:
        cmd = [
            *fedrec,
            "supernode",
            "--superlink",
            address,
            "--root-certificates",
            str(certs["ca_cert"]),
            "--auth-key",
            str(keys[d - 1][0]),
            "--store",
            str(root / f"device-{d}.db"),
            "--events",
            str(root / f"events-{d}.json"),
            "--catalog",
            str(catalog),
            "--node-config",
            f"seed={d}",
            "--node-config",
            f"device-id=device-{d}",
            "--node-config",
            "epsilon-budget=40",
            "--node-config",
            "accountant=rdp",
            "--host",
            LOOPBACK,
            "--port",
            str(node_ports[d - 1]),
        ]
        if d == 3:  # TLS on the SuperNode's local runtime API too
            cmd += ["--runtime-certs", str(root / "device-3-certs")]
        return cmd

    for d in (1, 2, 3):
        procs.start(f"supernode-{d}", supernode_cmd(d))
    # ... and one whose key was never registered (checked below, once it has given up)
    intruder = procs.start(
        "supernode-unregistered", [*supernode_cmd(4), "--rejoin-timeout", "0"], limit=90
    )
    for d in (1, 2, 3):
        _wait_for(
            f"SuperNode {d} to connect",
            lambda d=d: "SuperNode ID:" in procs.log(f"supernode-{d}"),
            60,
            procs,
        )
    assert f"Uvicorn running on https://{LOOPBACK}:{node_ports[2]}" in procs.log("supernode-3")

    # --- the run: 2 DP rounds --------------------------------------------------------------
    run_dir = root / "run"
    app = write_deploy_app(
        root / "app",
        catalog=catalog,
        min_nodes=3,
        settings={
            # fraction-evaluate 0: no evaluation round (a deployed device has no held-out split;
            # the evaluate handler is covered by tests/deploy/test_deploy_units.py)
            "num-rounds": 2,
            "fraction-train": 1.0,
            "fraction-evaluate": 0.0,
            "dim": 8,
            "seed": 0,
            "privacy": "local",
            "noise-multiplier": 1.0,
            "max-grad-norm": 1.0,
            "epsilon": 40.0,
            "delta": 1e-5,
            "accountant": "rdp",
            "local-epochs": 1.0,
            "sample-rate": 0.5,
            "local-lr": 0.5,
            "loss": "bpr",
            "n-negatives": 1,
            "batch-size-norm": 4.0,
            "server-optimizer": "fedavg",
            "server-lr": 1.0,
            "item-bias": True,
            "init-std": 0.1,
            "run-dir": str(run_dir),
            "round-timeout": 120.0,
            "wait-timeout": 60.0,
        },
    )
    out = procs.run(
        "flwr-run",
        [str(BIN / "flwr"), "run", str(app.parent), "fedrec-e2e", "--format", "json"],
        limit=60,
    )
    assert '"success": true' in out, out

    # --- crash SuperNode 2 in the middle of its round-1 training, restart it ---------------
    # (SIGKILL of its whole process group, the ClientApp included: a power cut). The SDK
    # commits the intended spend before training, so the crash cannot lose it.
    store2 = root / "device-2.db"
    metrics = run_dir / "metrics.jsonl"
    _wait_for(
        "device 2 to start training round 1",
        lambda: _statuses(store2) or (metrics.exists() and metrics.read_text().strip()),
        150,
        procs,
        interval=0.02,
    )
    procs.kill("supernode-2")
    steps_before, history_before, statuses_before = _spend(store2)
    assert steps_before > 0 and statuses_before, statuses_before  # spend is on disk
    node_id = _node_id(procs.log("supernode-2"))
    procs.start("supernode-2-restarted", supernode_cmd(2))
    _wait_for(
        "SuperNode 2 to rejoin",
        lambda: "SuperNode ID:" in procs.log("supernode-2-restarted"),
        90,
        procs,
    )
    assert _node_id(procs.log("supernode-2-restarted")) == node_id  # same key, same node
    steps_after, history_after, _ = _spend(store2)
    assert steps_after >= steps_before  # read back from SQLite after the restart: not lower

    # --- the run finishes ------------------------------------------------------------------
    final = run_dir / "item_embeddings.npz"
    _wait_for("the end of the run", final.exists, 150, procs, interval=0.5)
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2], records
    assert records[0]["aggregated"] >= 2 and records[1]["aggregated"] >= 2, records

    # --- the unregistered key was refused ---------------------------------------------------
    rc = intruder.wait(timeout=95)
    intruder_log = procs.log("supernode-unregistered")
    assert rc != 0 and "SuperNode ID:" not in intruder_log, intruder_log
    assert "Failed to activate SuperNode" in intruder_log, intruder_log
    assert not (root / "device-4.db").exists()  # it never got a message

    # item embeddings changed from the (seeded, data-free) initial table
    app_config = tomllib.loads(app.read_text())["tool"]["flwr"]["app"]["config"]
    initial = initial_global_state(split_run_config(app_config)[0], N_ITEMS)
    with np.load(final) as z:
        for key, value in initial.items():
            assert z[key].shape == value.shape and np.isfinite(z[key]).all()
            assert np.abs(z[key] - value).max() > 1e-4, key
    assert json.loads((run_dir / "item_ids.json").read_text()) == item_ids

    # every device recorded its spend: store, privacy report, signed ledger
    spend = {}
    for d in (1, 2, 3):
        steps, history, statuses = _spend(root / f"device-{d}.db")
        with FedRecClient.open(root / f"device-{d}.db") as client:
            report = client.privacy_report()
            ledger = verify_ledger(
                client.ledger_path, client.ledger_public_key_pem(), expected_device_id=f"device-{d}"
            )
            status = client.status()
        assert ledger.ok, (d, ledger)
        released = statuses.count("released")
        assert len(ledger.records) == report.rounds_released == released >= 1, (d, statuses)
        assert 0 < report.epsilon_spent <= 40.0
        assert report.epsilon_spent == pytest.approx(_epsilon(history, 1e-5))
        assert ledger.records[-1]["claimed_epsilon"] == pytest.approx(report.epsilon_spent)
        assert status["has_item_table"] and status["events"] == 12
        spend[d] = (steps, history, statuses, report.epsilon_spent)
    for d in (1, 3):  # untouched devices trained both rounds
        assert spend[d][2] == ["released", "released"], spend
        assert spend[d][1] == spend[1][1]
    # the crashed device kept its budget: its spend never went below what it had before the
    # crash, and it went on from there (the restarted SuperNode read it from SQLite)
    steps2, history2, statuses2, eps2 = spend[2]
    assert steps2 >= steps_before and eps2 >= _epsilon(history_before, 1e-5)
    if records[1]["aggregated"] == 3:  # it trained round 2 after the restart
        assert len(statuses2) == 2 and statuses2[-1] == "released", statuses2
        # two rounds counted, the crashed one included: the same spend as its peers
        assert history2 == spend[1][1] and eps2 == pytest.approx(spend[1][3])
    assert records[1]["aggregated"] == 3 or statuses_before[-1] == "released", (
        records,
        statuses_before,
    )

    print(
        f"\nreal deployment e2e: {time.monotonic() - t0:.1f} s; device-2 releases "
        f"{spend[2][2]}; epsilons {[round(v[3], 3) for v in spend.values()]}"
    )
