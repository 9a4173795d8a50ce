"""Every registered algorithm in every privacy mode, on both transports.

Each combination either runs a tiny federation, on the in-process transport and on Flower's
(the real ClientApp and SecAgg+, delivered in-process), or is refused at configuration time
with the reason from the one table (:func:`fedrec.common.privacy.mechanisms.refusal`). A run
must end with a finite item table; its ledgers must audit PASS; where the mechanism promises
the server only sums, no individual contribution may reach it; and in a reproducible run
both transports must produce the same table (exactly, or within SecAgg+'s quantization where
the round is a secure sum).
"""

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fedrec.common.algorithms.registry import REGISTRY, algorithm_class
from fedrec.common.config import PRIVACY_MODES, RunConfig
from fedrec.common.privacy.mechanisms import make_mechanism, refusal
from tests.local_grid import LocalGrid

USERS, ITEMS = 10, 24


def _config(algorithm, privacy, run_dir):
    flat = {
        "algorithm": algorithm,
        "privacy": privacy,
        "synthetic-users": USERS,
        "synthetic-items": ITEMS,
        "fraction-train": 1.0,
        "epsilon": 8.0,
        "delta": 1e-4 if privacy == "user" else 1e-5,
        "reproducible": True,
        "local-epochs": 1,
        "run-dir": str(run_dir),
        "eval-every": 100,
    }
    if algorithm == "sgd":
        flat.update({"num-rounds": 2, "dim": 4})
    if algorithm == "spectral":
        flat.update({"dim": 2, "spectral-top-items": 8, "spectral-max-items": 4})
    if algorithm == "warm-sgd":  # below the 10 users' rank: no null eigenvectors, whose
        flat["dim"] = 8  # basis SecAgg+'s quantization may rotate (privacy off defaults to 16)
    return flat


def _run(cfg, transport_kind):
    from fedrec.client.client_app import make_client_app
    from fedrec.server.coordinator import make_coordinator
    from fedrec.server.flower_transport import FlowerTransport
    from fedrec.server.round_loop import run_rounds
    from fedrec.simulations.apps import simulated_devices
    from fedrec.simulations.federation import federated_dataset, federated_features, make_device
    from fedrec.simulations.in_process import InProcessTransport

    fed = federated_dataset(cfg)
    features = federated_features(cfg) if cfg.algorithm_class().needs_item_features else None
    ledgers = Path(cfg.run_dir) / "ledgers"
    coord = make_coordinator(cfg, fed.n_items, ledger_dir=ledgers, item_features=features)
    if transport_kind == "in-process":
        devices = {u: make_device(fed, u, cfg, ledger_dir=ledgers) for u in range(fed.n_users)}
        transport = InProcessTransport(fed.n_users, devices.__getitem__)
        calls = []
        real_train = transport.train
        transport.train = lambda *a: calls.append(1) or real_train(*a)
        run_rounds(coord, transport, num_rounds=cfg.num_rounds)
        individual = len(calls)
    else:
        grid = LocalGrid(make_client_app(simulated_devices(cfg)), fed.n_users)
        run_rounds(coord, FlowerTransport(grid, timeout=None), num_rounds=cfg.num_rounds)
        individual = len(grid.individual_contributions())
    return coord, individual


@pytest.fixture(autouse=True)
def task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0


@pytest.mark.slow
@pytest.mark.parametrize("privacy", PRIVACY_MODES)
@pytest.mark.parametrize("algorithm", list(REGISTRY))
def test_every_algorithm_runs_in_every_mode_or_is_refused(tmp_path, algorithm, privacy):
    flat = _config(algorithm, privacy, tmp_path / "in-process")
    reason = refusal(algorithm_class(algorithm), SimpleNamespace(privacy=privacy))
    if reason is not None:  # refused at configuration time, with the table's reason
        with pytest.raises(ValueError, match=re.escape(reason)):
            RunConfig.from_flat(flat)
        return
    cfg = RunConfig.from_flat(flat)
    from fedrec.common.audit.report import audit_run

    results = {}
    for kind in ("in-process", "flower"):
        run_cfg = cfg.replace(run_dir=str(tmp_path / kind))
        coord, individual = _run(run_cfg, kind)
        assert all(np.isfinite(v).all() for v in coord.state.values())
        secure = make_mechanism(cfg, coord.algorithm).secure()
        assert individual == 0 if secure else individual > 0, (kind, individual)
        if privacy != "off":
            report = audit_run(
                Path(run_cfg.run_dir) / "ledgers",
                accountants=("pld",),
                write=False,
                plots=False,
                workers=1,
            )
            assert report.ok and report.ledgers, report.tampered
        results[kind] = coord.state
    for key in results["in-process"]:
        a, b = results["in-process"][key], results["flower"][key]
        if make_mechanism(cfg, coord.algorithm).secure():  # SecAgg+ quantizes the sums
            np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-3)
        else:  # the in-process transport trains batchable devices batched: float rounding
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


class OnlyLocal(algorithm_class("sgd")):
    """A test algorithm that declares it cannot run under user-level DP."""

    name = "only-local"
    modes = {"off": None, "local": None, "distributed": None, "user": "it needs device noise"}


def test_a_mode_an_algorithm_declines_is_refused_with_its_reason(monkeypatch):
    monkeypatch.setitem(REGISTRY, "only-local", f"{__name__}:OnlyLocal")
    with pytest.raises(ValueError, match="cannot run with privacy user: it needs device noise"):
        RunConfig(algorithm="only-local", privacy="user", delta=1e-4)
    assert RunConfig(algorithm="only-local", privacy="local").algorithm == "only-local"
