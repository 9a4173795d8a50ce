"""The round loop over devices called in one process: the engine of sweeps and benchmarks.

:func:`run_plain` runs fedrec's one round loop (:func:`~fedrec.server.round_loop.run_rounds`)
over the in-process transport (:class:`~fedrec.simulations.in_process.InProcessTransport`):
every device-side and server-side computation is the code the Flower engine runs, without
the engine's messages. The product's simulation is :mod:`fedrec.simulations.runner`, on
Flower's engine; both give the same model for the same seed in a reproducible run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedrec.client.device import Device
from fedrec.common.config import RunConfig
from fedrec.server.coordinator import make_coordinator
from fedrec.server.resume import Checkpointer, receipts_sealed
from fedrec.server.round_loop import run_rounds
from fedrec.server.run_directory import RunDirectory
from fedrec.simulations.federation import (
    device_algorithm,
    device_id,
    federated_dataset,
    federated_features,
    make_device,
)
from fedrec.simulations.in_process import InProcessTransport

__all__ = ["PlainResult", "run_plain", "central_evaluation", "one_thread"]

_KEEP_DEVICES = 5000


@dataclass
class PlainResult:
    """Per-round reports and evaluations of a plain-loop run, and the final item table."""

    rounds: list[dict[str, object]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    state: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0
    train_seconds: float = 0.0


def central_evaluation(
    devices: dict[int, Device], state: dict[str, np.ndarray], ks: tuple[int, ...]
) -> dict[str, float]:
    """Evaluate with the server's metrics code on all devices' rankings (simulation only).

    Gathers every device's scores, as the device ranks (its algorithm's fold-in included,
    :meth:`~fedrec.client.device.Device.scores`), and calls
    :func:`fedrec.common.evaluation.metrics.evaluate`, an independent path to the federated
    evaluation's metric code.
    """
    from fedrec.common.data.schema import IdMap, Interactions
    from fedrec.common.evaluation.metrics import evaluate

    users = sorted(devices)
    n_items = next(iter(devices.values())).n_items
    scores = np.stack([devices[u].scores(state) for u in users])

    def _inter(kind: str) -> Interactions:
        rows = [
            (i, it)
            for i, u in enumerate(users)
            for it in getattr(devices[u], kind)
            if getattr(devices[u], kind) is not None
        ]
        arr = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
        return Interactions(
            arr[:, 0],
            arr[:, 1],
            np.ones(len(arr)),
            np.zeros(len(arr)),
            IdMap(map(str, users)),
            IdMap(map(str, range(n_items))),
        )

    return evaluate(lambda rows: scores[rows], _inter("train_items"), _inter("test_items"), ks=ks)


def run_plain(
    cfg: RunConfig,
    *,
    on_round: Callable[[dict[str, object]], None] | None = None,
    ledger_dir=None,
    dropout: float = 0.0,
    run_dir: RunDirectory | None = None,
    resume: bool = False,
) -> PlainResult:
    """Run ``cfg`` with devices called in-process; returns reports per round.

    The run uses one torch and BLAS thread (:func:`one_thread`). ``dropout`` (secure sums)
    drops each device's contribution from the sum with that probability, as if it had gone
    offline mid-round. With ``run_dir`` the run is written there (ledgers, receipts, metrics,
    a checkpoint and the devices' states after every round) and ``resume`` continues it
    from its checkpoint (:mod:`fedrec.server.resume`).
    """
    with one_thread():
        return _run_plain(
            cfg,
            on_round=on_round,
            ledger_dir=ledger_dir,
            dropout=dropout,
            run_dir=run_dir,
            resume=resume,
        )


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with one torch thread and one BLAS thread, restoring them after it.

    A device's tensors and matrices are small (one user, one item table), so intra-op threads
    only add synchronisation; on a machine whose cores are busy they wait for each other: a
    copy of one item table took 0.7 ms with torch's second thread against 0.04 ms with one,
    and a device's fold-in solve (numpy's OpenBLAS) 106 ms against 0.73 ms, so rounds and the
    final evaluation varied tenfold with the load. Flower's workers (Ray) run one thread each.
    """
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)


def _run_plain(
    cfg: RunConfig,
    *,
    on_round: Callable[[dict[str, object]], None] | None,
    ledger_dir,  # noqa: ANN001
    dropout: float,
    run_dir: RunDirectory | None,
    resume: bool,
) -> PlainResult:
    t0 = time.perf_counter()
    fed = federated_dataset(cfg)
    cfg = cfg.with_catalog(fed.n_items, fed.n_train_interactions)
    if run_dir is not None:
        ledger_dir = run_dir.ledger_dir
    features = federated_features(cfg) if cfg.algorithm_class().needs_item_features else None
    coord = make_coordinator(cfg, fed.n_items, ledger_dir=ledger_dir, item_features=features)
    store = None
    if run_dir is not None:
        from fedrec.client.state_store import DeviceStateStore

        store = DeviceStateStore(run_dir.path / "devices" / "states.sqlite")
        if not resume:
            store.clear()
    devices = _Devices(fed, cfg, ledger_dir, store=store)
    transport: Any = InProcessTransport(
        fed.n_users,
        devices.get,
        devices.done,
        dropout=dropout,
        rng=np.random.default_rng([cfg.seed, 7]),
    )
    receipts = coord.mechanism.ledgers.receipts() if cfg.privacy != "off" else None
    if receipts is not None:
        transport = _Countersigning(transport, receipts, devices.take_heads)

    def measure(state: dict[str, np.ndarray]) -> dict[str, float]:
        sums = [devices.get(u).evaluate(state, cfg.k_values) for u in range(fed.n_real_users)]
        return coord.combine_evaluation([s for s in sums if s])

    result = PlainResult()
    result.rounds = run_rounds(
        coord,
        transport,
        num_rounds=cfg.num_rounds,
        on_round=on_round,
        measure=measure,
        checkpointer=None if run_dir is None else Checkpointer(run_dir, resume=resume),
        after_round=None if store is None else devices.flush,
    )
    if receipts is not None and (run_dir is None or not receipts_sealed(run_dir.path)):
        receipts.seal(cfg.num_rounds)
    result.train_seconds = sum(float(r["seconds"]) for r in result.rounds)  # type: ignore[arg-type]
    evaluated = {u: devices.get(u) for u in range(fed.n_real_users)}  # real users only
    result.final = central_evaluation(evaluated, coord.state, cfg.k_values)
    result.state = {k: v.copy() for k, v in coord.state.items()}
    result.seconds = time.perf_counter() - t0
    return result


class _Devices:
    """The simulated devices of a run, kept built or (large populations) rebuilt per use.

    Large populations keep only each device's own state (user embedding, accountant, RNG)
    and rebuild the device per use, as a ClientApp does: a Device holds a copy of the item
    table, and 20,000 of them would not fit in memory. With a ``store`` (a run directory's
    ``devices/states.sqlite``) the states of the devices a round used are saved after it
    (:meth:`flush`), and a device not yet used by this process starts from its stored state,
    its accountant from its ledger (:func:`~fedrec.client.state_store.reconcile_with_ledger`).
    """

    def __init__(self, fed, cfg: RunConfig, ledger_dir, store=None) -> None:  # noqa: ANN001
        self.fed, self.cfg, self.ledger_dir, self.store = fed, cfg, ledger_dir, store
        self.keep = fed.n_users <= _KEEP_DEVICES
        self.algorithm = device_algorithm(cfg, fed.n_items)  # looked up once, not per device
        self.devices: dict[int, Device] = {}
        self.states: dict[int, dict[str, object]] = {}
        self.heads: dict[int, dict[str, object]] = {}
        self.touched: set[int] = set()

    def get(self, u: int) -> Device:
        if u in self.devices:
            self.touched.add(u)
            return self.devices[u]
        dev = make_device(
            self.fed, u, self.cfg, ledger_dir=self.ledger_dir, algorithm=self.algorithm
        )
        if u in self.states:
            dev.load_state_dict(self.states[u])
        elif self.store is not None:
            from fedrec.client.state_store import reconcile_with_ledger

            stored = self.store.load(dev.device_id)
            if stored is not None:
                dev.load_state_dict(stored[1])
            reconcile_with_ledger(dev)
        if self.keep:
            self.devices[u] = dev
            self.touched.add(u)
        return dev

    def done(self, u: int, dev: Device) -> None:
        if dev.ledger_head is not None:  # what the device sends with its release
            self.heads[u] = dev.ledger_head
        if not self.keep:
            self.states[u] = dev.state_dict()
            self.touched.add(u)

    def flush(self, server_round: int) -> None:
        """Save the states of the devices used since the last call (one transaction)."""
        assert self.store is not None
        states = {}
        for u in sorted(self.touched):
            if self.keep:
                states[self.devices[u].device_id] = self.devices[u].state_dict()
            elif u in self.states:
                states[device_id(u)] = self.states[u]
        self.store.save_many(states)
        self.touched.clear()

    def take_heads(self) -> dict[int, dict[str, object]]:
        """The ledger heads devices sent since the last call."""
        heads, self.heads = self.heads, {}
        return heads


class _Countersigning:
    """The in-process transport, with the server countersigning what it receives.

    A device's ledger head travels with its reply (in-process: through ``take_heads``); the
    server writes a receipt for each reply it gets and each contribution in a secure sum
    (:mod:`fedrec.server.countersign` does the same for Flower's Grid).
    """

    def __init__(self, transport: InProcessTransport, receipts, take_heads) -> None:  # noqa: ANN001
        self.transport, self.receipts, self.take_heads = transport, receipts, take_heads

    def nodes(self) -> list[int]:
        return self.transport.nodes()

    def train(self, request, nodes):  # noqa: ANN001, ANN201 - the Transport protocol's
        replies = self.transport.train(request, nodes)
        heads = self.take_heads()
        got = [(r.node, heads[r.node]) for r in replies if r.arrays is not None and r.node in heads]
        self.receipts.countersign(request.server_round, got)
        return replies

    def secure_sum(self, request, nodes, plan):  # noqa: ANN001, ANN201
        result = self.transport.secure_sum(request, nodes, plan)
        heads = self.take_heads()
        got = [(n, heads[n]) for n in result.included if n in heads] if result.total else []
        self.receipts.countersign(request.server_round, got)
        return result

    def evaluate(self, request, nodes):  # noqa: ANN001, ANN201
        sums = self.transport.evaluate(request, nodes)
        self.receipts.countersign(request.server_round, sorted(self.take_heads().items()))
        return sums
