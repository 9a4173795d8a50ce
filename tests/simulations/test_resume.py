"""A run killed at any point continues with ``fedrec simulate --resume RUN`` on both engines.

Kills are real: the run is a child process that gets SIGKILL, either from its own round hook
right after a round's checkpoint (a kill at a round boundary, where an exact continuation is
possible) or from this test at a random moment (usually in the middle of a round). The
resumed run must audit PASS with no device over its budget. A kill at a round boundary of a
seeded in-process run must continue to exactly the uninterrupted run's model and ledgers.
The Flower engine cannot promise that: it gives its SuperNodes new random node ids each time
it starts and the server samples devices in node-id order, so even two uninterrupted seeded
runs sample different devices (and sum replies in the order they arrive).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fedrec.cli import main
from fedrec.common.config import RunConfig

SMALL = {
    "algorithm": "sgd",
    "synthetic-users": 30,
    "synthetic-items": 40,
    "dim": 8,
    "num-rounds": 4,
    "fraction-train": 0.5,
    "accountant": "rdp",
    "reproducible": True,
}

_CRASH = """
import json, os, signal, sys
from fedrec.common.config import RunConfig
from fedrec.simulations.runner import simulate, simulate_loop
engine, flat, k, n, kw = sys.argv[1], *map(json.loads, sys.argv[2:])
cfg = RunConfig.from_flat(flat)
def hook(record):
    if record["round"] == k:  # right after round k's checkpoint
        os.kill(os.getpid(), signal.SIGKILL)
if n:  # or in round k, right after the n-th device wrote its release
    from fedrec.client.ledger_writer import LedgerWriter
    written, append = [], LedgerWriter.__call__
    def call(self, event, **context):
        record = append(self, event, **context)
        written.extend([1] if context["round"] == k else [])
        if len(written) == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return record
    LedgerWriter.__call__ = call
if engine == "loop":
    simulate_loop(cfg, on_round=hook, reference=False)
else:
    simulate(cfg, on_round=hook, num_cpus=2, reference=False, **kw)
"""


def _flat(run_dir: Path, **keys: object) -> dict[str, object]:
    return {**SMALL, **{k.replace("_", "-"): v for k, v in keys.items()}, "run-dir": str(run_dir)}


def _wait_killed(proc: subprocess.Popen, timeout: float = 300) -> int:
    """Wait for the child, then kill what is left of its process group (Ray's helpers)."""
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return rc


def _crash_after(
    engine: str, flat: dict[str, object], k: int, releases: int = 0, **kwargs: object
) -> None:
    """Run ``flat`` in a child killed after round ``k`` (or after ``releases`` of round k).

    ``kwargs`` go to :func:`~fedrec.simulations.runner.simulate` (Flower's engine).
    """
    args = [engine, json.dumps(flat), str(k), str(releases), json.dumps(kwargs)]
    proc = subprocess.Popen(
        [sys.executable, "-c", _CRASH, *args],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    rc = _wait_killed(proc)
    assert rc == -signal.SIGKILL, proc.stderr.read().decode()[-2000:] if proc.stderr else rc


def _kill_at_random(argv: list[str], run_dir: Path, rounds: int, seed: int) -> tuple[int, int]:
    """Start ``fedrec ARGV``; SIGKILL it at a random moment after a random round; its rc.

    The pause into the next round is a random fraction of the last round's duration as
    measured here, and the kill comes at the latest once all but the last round are written,
    so a fast machine cannot finish the run before the kill.
    """
    rng = np.random.default_rng(seed)
    after = int(rng.integers(1, rounds - 1))  # full rounds to wait for
    fraction = float(rng.uniform(0.0, 1.0))  # of a round, into the next one
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedrec.cli", *argv],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    metrics = run_dir / "metrics.jsonl"
    seen, changed, kill_at = 0, time.monotonic(), None
    while time.monotonic() < deadline and proc.poll() is None:
        done = len(metrics.read_text().splitlines()) if metrics.exists() else 0
        now = time.monotonic()
        if done != seen:
            if done >= after and kill_at is None:
                kill_at = now + fraction * (now - changed)
            seen, changed = done, now
        if done >= rounds - 1 or (kill_at is not None and now >= kill_at):
            break
        time.sleep(0.02)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    return _wait_killed(proc), after


def _stripped(path: Path) -> list[dict[str, object]]:
    """A ledger's records without what differs between two honest runs (times, signatures)."""
    drop = {"time", "hash", "prev_hash", "signature", "versions"}
    return [
        {k: v for k, v in json.loads(line).items() if k not in drop}
        for line in path.read_text().splitlines()
    ]


def _check_resumed(run_dir: Path, cfg: RunConfig) -> None:
    """Every round ran once in the records; the audit is PASS; no device over its budget."""
    from fedrec.common.audit.report import audit_run

    rounds = [json.loads(x)["round"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rounds == list(range(1, cfg.num_rounds + 1))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == cfg.num_rounds
    operator = run_dir.with_name(run_dir.name + ".keystore") / "server.pub.pem"
    report = audit_run(run_dir, write=False, operator_key=operator)
    assert report.ok, report.findings
    assert not report.over_budget and not report.tampered
    assert report.context.receipts.sealed
    for ledger in (run_dir / "ledgers").glob("device-*.jsonl"):
        for record in _stripped(ledger):
            assert record["claimed_epsilon"] <= cfg.epsilon + 1e-6, (ledger.name, record)


def _same_run(a: Path, b: Path) -> None:
    """Two runs have the same final model and the same ledger records."""
    ma, mb = np.load(a / "item_embeddings.npz"), np.load(b / "item_embeddings.npz")
    for key in ma.files:
        np.testing.assert_array_equal(ma[key], mb[key], err_msg=key)
    la = sorted(p.relative_to(a) for p in (a / "ledgers").rglob("*.jsonl"))
    assert la == sorted(p.relative_to(b) for p in (b / "ledgers").rglob("*.jsonl"))
    for rel in la:
        assert _stripped(a / rel) == _stripped(b / rel), rel


# --- refusals ------------------------------------------------------------------------------
def test_a_new_run_into_a_directory_holding_a_run_refuses(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("{}\n")
    rc = main(["simulate", "--engine", "loop", "--run-dir", str(run_dir)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "already holds a run" in err[0] and f"--resume {run_dir}" in err[0]
    assert "new --run-dir" in err[0]
    assert sorted(p.name for p in run_dir.iterdir()) == ["metrics.jsonl"]  # nothing written


def test_flwr_run_into_a_directory_holding_a_run_refuses(tmp_path):
    from flwr.app import Context, RecordDict

    from fedrec.server.run_directory import RunExistsError
    from fedrec.server.server_app import make_server_app

    run_dir = tmp_path / "flwr-run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("{}\n")
    app = make_server_app(lambda cfg: (40, None))
    context = Context(1, 0, {}, RecordDict(), {"run-dir": str(run_dir)})
    with pytest.raises(RunExistsError, match="already holds a run: give this one a new folder"):
        app(None, context)
    assert [p.name for p in run_dir.iterdir()] == ["metrics.jsonl"]


def test_resuming_a_finished_run_says_it_is_finished(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text("{}")
    assert main(["simulate", "--resume", str(run_dir)]) == 0
    assert "is finished" in capsys.readouterr().out


def test_a_resume_with_another_configuration_refuses(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    flat = RunConfig.from_flat(_flat(run_dir)).to_flat()
    (run_dir / "config.json").write_text(json.dumps({"run_config": flat, "engine": "loop"}))
    for extra, needle in (
        (["--epsilon", "3"], "epsilon is 8.0 there, 3.0 given"),
        (["--set", "dim=16"], "dim is 8 there, 16 given"),
        (["--engine", "flower"], "ran on 'loop', --engine flower given"),
        (["--run-dir", str(tmp_path / "elsewhere")], "drop --run-dir"),
    ):
        assert main(["simulate", "--resume", str(run_dir), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], (extra, err)
    assert main(["simulate", "--resume", str(tmp_path / "nothing")]) == 2
    assert "holds no config.json" in capsys.readouterr().err


def test_an_empty_device_store_is_an_error_not_a_fresh_device(tmp_path):
    from fedrec.client.sdk import FedRecClient
    from fedrec.client.state_store import DeviceStateStore
    from fedrec.client.storage import CorruptStoreError, DeviceStore

    for opener in (
        DeviceStore,
        lambda p: FedRecClient.open(p, catalog=["a", "b"]),
        lambda p: DeviceStateStore(p).device_ids(),
    ):
        path = tmp_path / "empty.db"
        path.write_bytes(b"")
        with pytest.raises(CorruptStoreError, match="empty \\(0 bytes\\)"):
            opener(path)
        assert path.read_bytes() == b""  # left as it was
        path.unlink()
        opener(path)  # a missing file is a new store


def test_a_device_takes_its_spend_from_its_ledger(tmp_path):
    """A store behind the ledger takes the ledger's; ahead keeps its own; different: error."""
    from fedrec.client.state_store import reconcile_with_ledger
    from fedrec.client.storage import StoreError
    from fedrec.simulations.federation import federated_dataset, make_device

    cfg = RunConfig.from_flat({**_flat(tmp_path / "run"), "eval-noise-multiplier": 3.0})
    fed = federated_dataset(cfg)
    ledgers = tmp_path / "run" / "ledgers"

    def device():
        return make_device(fed, 0, cfg, ledger_dir=ledgers)

    first = device()
    table = first.model.global_state()
    assert isinstance(first.evaluation_release(table, (10,), 1, noise_multiplier=3.0), dict)
    spent = first.epsilon_spent()
    assert spent > 0
    fresh = device()  # its store lost the release (killed before it was saved)
    assert fresh.epsilon_spent() == 0
    reconcile_with_ledger(fresh)
    assert fresh.epsilon_spent() == spent
    ahead = device()
    ahead.accountant.history = [(3.0, 1.0, 2)]  # two releases: more than the ledger's one
    reconcile_with_ledger(ahead)
    assert ahead.epsilon_spent() > spent
    other = device()
    other.accountant.history = [(5.0, 1.0, 1)]
    with pytest.raises(StoreError, match="record different releases"):
        reconcile_with_ledger(other)


# --- the in-process engine -----------------------------------------------------------------
_EXACT = [
    ({"privacy": "local", "seed": 0}, 2),
    ({"privacy": "local", "seed": 1}, 1),
    ({"privacy": "local", "seed": 2}, 3),
    ({"privacy": "local", "seed": 3, "server-optimizer": "fedadam", "server-lr": 0.05}, 2),
    ({"privacy": "distributed", "seed": 4}, 2),
    ({"privacy": "distributed", "seed": 5, "algorithm": "spectral", "num-rounds": 2}, 1),
    ({"privacy": "distributed", "seed": 8, "algorithm": "warm-sgd"}, 2),  # the main job's
    (
        {
            "privacy": "user",
            "seed": 6,
            "synthetic-users": 200,
            "fraction-train": 0.2,
            "epsilon": 4.0,
        },
        2,
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("keys", "k"),
    _EXACT,
    ids=lambda x: "-".join(map(str, x.values())) if isinstance(x, dict) else str(x),
)
def test_a_loop_run_killed_after_a_round_resumes_to_the_uninterrupted_run(tmp_path, keys, k):
    from fedrec.simulations.runner import simulate_loop

    whole = RunConfig.from_flat(_flat(tmp_path / "whole", **keys))
    simulate_loop(whole, reference=False)
    cut = tmp_path / "cut"
    _crash_after("loop", _flat(cut, **keys), k)
    assert not (cut / "checkpoints" / "nodes.json").exists()  # in-process: nodes are devices
    assert len((cut / "metrics.jsonl").read_text().splitlines()) == k
    assert main(["simulate", "--resume", str(cut), "--no-reference"]) == 0
    _check_resumed(cut, whole)
    _same_run(tmp_path / "whole", cut)
    assert (
        json.loads((cut / "summary.json").read_text())["quality"]
        == json.loads((tmp_path / "whole" / "summary.json").read_text())["quality"]
    )


@pytest.mark.slow
def test_a_release_in_flight_when_the_run_was_killed_stays_spent(tmp_path):
    """Killed in round 2 after 3 devices wrote their release: the round runs again, and the
    three releases the server never used stay in their ledgers and count."""
    from fedrec.simulations.runner import simulate_loop

    keys = {"seed": 7, "num-rounds": 3}
    whole = RunConfig.from_flat(_flat(tmp_path / "whole", **keys))
    simulate_loop(whole, reference=False)
    cut = tmp_path / "cut"
    _crash_after("loop", _flat(cut, **keys), 2, releases=3)
    assert len((cut / "metrics.jsonl").read_text().splitlines()) == 1
    assert main(["simulate", "--resume", str(cut), "--no-reference"]) == 0
    _check_resumed(cut, whole)
    whole_dir = tmp_path / "whole" / "ledgers"
    twice = []
    for ledger in sorted((cut / "ledgers").glob("device-*.jsonl")):
        ours = _stripped(ledger)
        if [r["round"] for r in ours].count(2) < 2:
            continue
        twice.append(ledger.name)
        theirs = {r["round"]: r["claimed_epsilon"] for r in _stripped(whole_dir / ledger.name)}
        again = [r["claimed_epsilon"] for r in ours if r["round"] == 2][1]
        assert again > theirs[2], ledger.name  # the in-flight release counted
        assert ours[-1]["claimed_epsilon"] >= max(theirs.values()), ledger.name
    assert len(twice) == 3, twice


_CRASH_SERVER = """
import json, os, signal, sys
from fedrec.common.config import RunConfig
from fedrec.common.privacy.mechanisms.user import UserLevel
from fedrec.simulations.runner import simulate_loop
flat, k = json.loads(sys.argv[1]), int(sys.argv[2])
record = UserLevel.record
def killing(self, server_round, *args):
    record(self, server_round, *args)
    if server_round == k:  # ledgered; neither applied nor checkpointed
        os.kill(os.getpid(), signal.SIGKILL)
UserLevel.record = killing
simulate_loop(RunConfig.from_flat(flat), reference=False)
"""


def _killed_after_server_release(flat: dict[str, object], k: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _CRASH_SERVER, json.dumps(flat), str(k)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    rc = _wait_killed(proc)
    assert rc == -signal.SIGKILL, proc.stderr.read().decode()[-2000:] if proc.stderr else rc


@pytest.mark.slow
def test_a_user_level_release_made_before_the_kill_is_published_again_not_redrawn(tmp_path):
    """Killed after the server ledgered round 2's user-level release, before its checkpoint:
    the resumed round 2 publishes the kept release, so the ledger holds one release a round
    and the server's ε stays within budget (a fresh draw would have spent a sixth release)."""
    run_dir = tmp_path / "run"
    flat = _flat(run_dir, privacy="user", seed=5, num_rounds=4)
    _killed_after_server_release(flat, 2)
    kept = sorted(p.name for p in (run_dir / "checkpoints" / "releases").glob("*.npz"))
    assert kept == ["000001-round-000002.npz"]  # round 1's went with its checkpoint
    assert [r["round"] for r in _stripped(run_dir / "ledgers" / "server.jsonl")] == [1, 2]
    assert main(["simulate", "--resume", str(run_dir), "--no-reference"]) == 0
    rounds = [r["round"] for r in _stripped(run_dir / "ledgers" / "server.jsonl")]
    assert rounds == [1, 2, 3, 4]
    _check_resumed(run_dir, RunConfig.from_flat(flat))
    assert not list((run_dir / "checkpoints" / "releases").glob("*.npz"))


@pytest.mark.slow
def test_a_ledgered_release_that_was_not_kept_stops_the_resume(tmp_path, capsys):
    run_dir = tmp_path / "run"
    flat = _flat(run_dir, privacy="user", seed=5, num_rounds=4)
    _killed_after_server_release(flat, 2)
    for kept in (run_dir / "checkpoints" / "releases").glob("*.npz"):
        kept.unlink()
    assert main(["simulate", "--resume", str(run_dir), "--no-reference"]) != 0
    assert "resuming would release again" in capsys.readouterr().err


def test_the_server_refuses_a_user_level_release_over_the_budget():
    from fedrec.common.algorithms.base import ContributionSpec
    from fedrec.common.privacy.mechanisms import make_mechanism

    cfg = RunConfig.from_flat({**SMALL, "privacy": "user", "epsilon": 2.0, "delta": 1e-5})
    mech = make_mechanism(cfg, cfg.algorithm_class()(cfg, 40))
    spec = ContributionSpec(
        shapes={"t": (2,)},
        aggregate="mean",
        max_norm=1.0,
        coordinate_bound=1.0,
        sensitivity=1.0,
        noise_multiplier=3.0,
    )
    spent = 0
    with pytest.raises(RuntimeError, match="over the run's budget 2"):
        while True:
            mech.check_budget(spec)
            mech.history.append(spec.noise_multiplier)
            spent += 1
    assert spent >= 2 and mech.epsilon() <= 2.0


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 12, 13])
def test_a_loop_run_killed_at_a_random_moment_resumes_within_budget(tmp_path, seed):
    run_dir = tmp_path / "run"
    flat = _flat(run_dir, seed=seed, num_rounds=6)
    argv = ["simulate", "--engine", "loop", "--no-reference"]
    argv += [x for k, v in flat.items() for x in ("--set", f"{k}={v}")]
    rc, _ = _kill_at_random(argv, run_dir, 6, seed)
    assert rc == -signal.SIGKILL, "the run finished before it was killed"
    assert main(["simulate", "--resume", str(run_dir), "--no-reference"]) == 0
    _check_resumed(run_dir, RunConfig.from_flat(flat))
    assert main(["simulate", "--resume", str(run_dir)]) == 0  # finished now


# --- Flower's simulation engine ------------------------------------------------------------
@pytest.mark.slow
def test_a_flower_run_killed_after_a_round_resumes_to_the_uninterrupted_run(tmp_path):
    """Cohort workers (the default): devices keep their indices, the run continues exactly."""
    from fedrec.simulations.runner import simulate

    whole = RunConfig.from_flat(_flat(tmp_path / "whole", seed=5))
    simulate(whole, num_cpus=2, reference=False, workers=2)
    cut = tmp_path / "cut"
    _crash_after("flower", _flat(cut, seed=5), 2, workers=2)
    argv = ["simulate", "--resume", str(cut), "--no-reference", "--cpus", "2"]
    assert main(argv) == 0
    _check_resumed(cut, whole)
    _same_run(tmp_path / "whole", cut)


@pytest.mark.slow
def test_a_flower_run_with_a_supernode_per_device_resumes_within_budget(tmp_path):
    """One SuperNode per device: new random node ids at every start, mapped back to devices."""
    from fedrec.simulations.runner import simulate

    run_dir = tmp_path / "run"
    flat = _flat(run_dir, seed=5, privacy="distributed")
    _crash_after("flower", flat, 2, workers=0)
    nodes = json.loads((run_dir / "checkpoints" / "nodes.json").read_text())
    assert sorted(nodes.values()) == list(range(30))
    cfg = RunConfig.from_flat(flat)
    with pytest.raises(ValueError, match="ran with --workers 0"):
        simulate(cfg, num_cpus=2, reference=False, resume=True, workers=2)
    result = simulate(cfg, num_cpus=2, reference=False, resume=True)
    assert [r["round"] for r in result.rounds] == [1, 2, 3, 4]
    assert len(json.loads((run_dir / "checkpoints" / "nodes.json").read_text())) == 60
    _check_resumed(run_dir, cfg)
    # the noise present in the secure sums is counted per device across both starts
    nodes = json.loads((run_dir / "checkpoints" / "nodes.json").read_text())
    by_device: dict[int, list[tuple[int, float]]] = {}
    for path in (run_dir / "ledgers" / "secure-sum").glob("node-*.jsonl"):
        records = [(r["round"], r["claimed_epsilon"]) for r in _stripped(path)]
        by_device.setdefault(nodes[path.stem[len("node-") :]], []).extend(records)
    assert sum(map(len, by_device.values())) == sum(int(r["aggregated"]) for r in result.rounds)
    for history in by_device.values():
        claims = [eps for _, eps in sorted(history)]
        assert claims == sorted(claims) and claims[-1] <= cfg.epsilon + 1e-6
        assert len(set(claims)) == len(claims)  # each release adds to the one before


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "privacy"), [(21, "distributed"), (22, "user"), (23, "local")])
def test_a_flower_run_killed_at_a_random_moment_resumes_within_budget(tmp_path, seed, privacy):
    run_dir = tmp_path / "run"
    flat = _flat(run_dir, seed=seed, num_rounds=5, privacy=privacy)
    argv = ["simulate", "--no-reference", "--cpus", "2", "--workers", "2"]
    argv += [x for k, v in flat.items() for x in ("--set", f"{k}={v}")]
    rc, _ = _kill_at_random(argv, run_dir, 5, seed)
    assert rc == -signal.SIGKILL, "the run finished before it was killed"
    assert main(["simulate", "--resume", str(run_dir), "--no-reference", "--cpus", "2"]) == 0
    _check_resumed(run_dir, RunConfig.from_flat(flat))
