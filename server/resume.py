"""What the server needs to continue a run that was stopped: its checkpoint, and the restore.

After every round the round loop calls :meth:`Checkpointer.save`, which replaces
``checkpoints/latest.npz`` atomically (a temporary file, then ``os.replace``) with the item
table, the algorithm's server state (optimizer moments, a release kept between rounds), the
round, the records of every round so far, how often each device took part, and, in a seeded
(reproducible) run, the state of the server's generator. A run killed at any moment leaves
the checkpoint of its last finished round.

A resumed run (:class:`Checkpointer` with ``resume=True``) restores that state before its
first round and runs the rounds after it. What was *spent* is not taken from the
checkpoint but from the signed ledgers, which are written before a release leaves: the
server's own user-level ledger (``ledgers/server.jsonl``) and its secure-sum ledgers
(``ledgers/secure-sum/``), as each device's accountant comes from its own ledger
(:func:`fedrec.client.state_store.reconcile_with_ledger`). A round that was in flight when
the run stopped is run again; a release a device made in it stays in its ledger and counts.
A user-level release the server made in it is kept until the round's checkpoint, and the
round run again publishes that release instead of a new one
(:meth:`~fedrec.common.privacy.mechanisms.user.UserLevel.replay_from`).

A seeded run's server generator is checkpointed so that the resumed rounds sample as the
uninterrupted run would; a private run with OS entropy never writes its generator's state to
the run directory (that would let anyone who reads it replay the noise) and draws afresh.

Device indices, not transport node ids, key what is per device: Flower's simulation engine
gives its SuperNodes new random node ids every time it starts, so the simulation passes the
node id -> device index map it registered, and every map a run used is kept in
``checkpoints/nodes.json`` (the secure-sum ledgers are named after node ids).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedrec.server.run_directory import RunDirectory

if TYPE_CHECKING:
    from fedrec.server.coordinator import Coordinator

__all__ = ["Checkpointer", "NodeMap", "receipts_sealed"]

#: Returns the transport's node id -> device index map of the current start.
NodeMap = Callable[[], Mapping[int, int]]

_NODES = "nodes.json"


def receipts_sealed(run_dir: Path) -> bool:
    """Whether ``RUN/receipts.jsonl`` ends with the server's seal (the run's last record)."""
    path = Path(run_dir) / "receipts.jsonl"
    if not path.is_file() or path.stat().st_size == 0:
        return False
    last = path.read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    try:
        return json.loads(last).get("kind") == "seal"
    except ValueError:
        return False


class Checkpointer:
    """Saves the server's state after each round; restores it when a run resumes.

    Args:
        run_dir: the run's directory.
        nodes: the node id -> device index map of this start (``None``: node ids are device
            indices, as in-process).
        resume: continue from the run directory's checkpoint.

    A run resumed without a checkpoint (stopped in its first round) starts again at round 1,
    with what its devices and the server spent kept from the ledgers.
    """

    def __init__(
        self, run_dir: RunDirectory, *, nodes: NodeMap | None = None, resume: bool = False
    ):
        self.run_dir = run_dir
        self._nodes = nodes
        self.first_round = 1
        self.records: list[dict[str, object]] = []
        self.resumed: list[int] = []
        self._saved: tuple[dict[str, np.ndarray], dict[str, object], dict] | None = None
        self.resume = resume
        if resume and run_dir.checkpoint_path.is_file():  # else: stopped in its first round
            rnd, state, opt, meta = run_dir.read_checkpoint()
            self.first_round = rnd + 1
            self.records = list(meta.get("records", []))  # type: ignore[arg-type]
            self.resumed = [*meta.get("resumed", []), rnd]  # type: ignore[misc]
            self._saved = (state, opt, meta)

    # --- node ids and device indices -------------------------------------------------------
    def _map(self) -> dict[int, int]:
        return {int(k): int(v) for k, v in self._nodes().items()} if self._nodes else {}

    def device_of(self, node: int) -> int:
        """The device index of a node of this start."""
        return self._map().get(int(node), int(node)) if self._nodes else int(node)

    def node_of(self, device: int) -> int | None:
        """The node of this start that serves device ``device`` (None: none does)."""
        if not self._nodes:
            return int(device)
        return {v: k for k, v in self._map().items()}.get(int(device))

    def _all_nodes(self) -> dict[int, int]:
        """Every node id -> device index map this run used (``checkpoints/nodes.json``)."""
        path = self.run_dir.path / "checkpoints" / _NODES
        known = json.loads(path.read_text()) if path.is_file() else {}
        return {int(k): int(v) for k, v in known.items()}

    def _record_nodes(self) -> None:
        if not self._nodes:
            return
        known = {**self._all_nodes(), **self._map()}
        path = self.run_dir.path / "checkpoints" / _NODES
        tmp = path.with_name(_NODES + ".tmp")
        tmp.write_text(json.dumps({str(k): v for k, v in sorted(known.items())}))
        os.replace(tmp, path)

    # --- the round loop's hooks ------------------------------------------------------------
    def start(self, coordinator: Coordinator) -> None:
        """Before the first round (nodes connected): record the node map; restore on resume."""
        self._record_nodes()
        if not self.resume:
            return
        self._restore_mechanism(coordinator)
        self.run_dir.rewrite_metrics(self.records)
        if self._saved is None:
            return
        state, opt, meta = self._saved
        if sorted(state) != sorted(coordinator.state) or any(
            state[k].shape != coordinator.state[k].shape for k in state
        ):
            raise ValueError(
                f"{self.run_dir.checkpoint_path}: the checkpoint's item table does not fit this "
                "run's catalog and configuration"
            )
        coordinator.state = {k: np.asarray(v, dtype=np.float32).copy() for k, v in state.items()}
        coordinator.algorithm.load_server_state(opt)
        rng = meta.get("rng")
        if rng is not None and coordinator.noise.is_seeded:
            coordinator.noise.rng.bit_generator.state = rng
        participations = {}
        for device, count in dict(meta.get("participations", {})).items():
            node = self.node_of(int(device))
            if node is not None:
                participations[node] = int(count)
        coordinator._participations = participations

    def save(self, coordinator: Coordinator, server_round: int, records: Sequence[dict]) -> None:
        """Checkpoint the server after ``server_round`` (``records``: every round's so far)."""
        noise = coordinator.noise
        meta = {
            "records": list(records),
            "resumed": self.resumed,
            "rng": noise.rng.bit_generator.state if noise.is_seeded else None,
            "participations": {
                str(self.device_of(n)): c for n, c in sorted(coordinator._participations.items())
            },
        }
        self.run_dir.checkpoint(
            server_round, coordinator.state, coordinator.algorithm.server_state(), meta
        )
        forget = getattr(coordinator.mechanism, "forget_releases", None)
        if forget is not None:  # the checkpoint holds their effect now
            forget(server_round)

    # --- what was spent, from the server's ledgers -----------------------------------------
    def _restore_mechanism(self, coordinator: Coordinator) -> None:
        mechanism = coordinator.mechanism
        ledgers = mechanism.ledgers
        if ledgers.ledger_dir is None:
            return
        if hasattr(mechanism, "replay_from"):  # user-level: the server's own releases
            records = _verified(ledgers.ledger_dir / "server.jsonl", ledgers)
            mechanism.replay_from(records, self.first_round)
        if hasattr(mechanism, "histories"):  # distributed: the noise present, per device
            mechanism.histories = self._secure_sum_histories(ledgers)

    def _secure_sum_histories(self, ledgers: Any) -> dict[str, list[tuple[float, float, int]]]:
        from fedrec.common.audit.ledger import releases_from_ledger

        known = self._all_nodes()
        per_device: dict[int, list[tuple[int, int, tuple[float, float, int]]]] = {}
        for path in sorted((ledgers.ledger_dir / "secure-sum").glob("node-*.jsonl")):
            node = int(path.stem[len("node-") :])
            device = known.get(node, node) if self._nodes else node
            records = _verified(path, ledgers)
            for i, (r, e) in enumerate(zip(records, releases_from_ledger(records), strict=True)):
                per_device.setdefault(device, []).append((int(r["round"]), i, e.history_entry))
        out: dict[str, list[tuple[float, float, int]]] = {}
        for device, entries in per_device.items():
            node = self.node_of(device)
            if node is not None:
                out[str(node)] = [entry for _, _, entry in sorted(entries)]
        return out


def _verified(path: Path, ledgers: Any) -> list[dict[str, Any]]:
    """The records of one of the server's ledgers, verified with the operator key."""
    from fedrec.common.audit.ledger import LedgerError, verify_ledger

    if not path.is_file() or path.stat().st_size == 0:
        return []
    result = verify_ledger(path, ledgers.key().public_key)
    if not result.ok:
        raise LedgerError(f"{path}: the server's ledger is broken: {result.reason}")
    return result.records
