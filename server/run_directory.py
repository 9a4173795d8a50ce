"""The run directory: everything a run leaves behind, in documented places.

::

    RUN/
      config.json            resolved configuration (+ noise multiplier, versions)
      metrics.jsonl          one JSON object per round (training report, evaluation)
      checkpoints/latest.npz item table + server optimizer state, rewritten every round
      item_embeddings.npz    final global parameters (item embeddings, biases)
      item_ids.json          external item id of each row (the item map)
      ledgers/               devices' signed privacy ledgers (see fedrec.common.audit.ledger)
      manifest.json          a simulation's enrollment: key registry and policy, signed
      receipts.jsonl         the server's countersignature of every release it received
      summary.json           final figures (quality, epsilon, wall time)
      plots/*.png            quality and epsilon over rounds
    RUN.keystore/            a simulation's private keys (outside RUN: never published)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["RunDirectory", "new_run_dir"]


def new_run_dir(root: str | Path = "runs") -> Path:
    """A fresh ``runs/<UTC timestamp>`` directory name (not created)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path = Path(root) / stamp
    i = 1
    while path.exists():
        path = Path(root) / f"{stamp}-{i}"
        i += 1
    return path


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class RunDirectory:
    """Writer of one run's outputs (created on construction)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
        (self.path / "ledgers").mkdir(exist_ok=True)
        (self.path / "plots").mkdir(exist_ok=True)

    @property
    def ledger_dir(self) -> Path:
        """Where device ledgers go."""
        return self.path / "ledgers"

    def write_json(self, name: str, obj: object) -> Path:
        """Write ``obj`` as pretty JSON to ``RUN/name`` (atomically)."""
        target = self.path / name
        _atomic_write(target, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())
        return target

    def append_metrics(self, record: Mapping[str, object]) -> None:
        """Append one round's record to ``metrics.jsonl``."""
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(dict(record), sort_keys=True, default=float) + "\n")

    def read_metrics(self) -> list[dict[str, object]]:
        """All records of ``metrics.jsonl``."""
        p = self.path / "metrics.jsonl"
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    def checkpoint(
        self,
        server_round: int,
        state: Mapping[str, np.ndarray],
        optimizer_state: Mapping[str, object] | None = None,
    ) -> Path:
        """Save the global state after ``server_round`` (atomic replace of latest.npz)."""
        arrays = {f"param/{k}": v for k, v in state.items()}
        for k, v in (optimizer_state or {}).items():
            if isinstance(v, Mapping):
                arrays.update({f"opt/{k}/{kk}": np.asarray(vv) for kk, vv in v.items()})
            else:
                arrays[f"opt/{k}"] = np.asarray(v)
        arrays["round"] = np.asarray(server_round)
        target = self.path / "checkpoints" / "latest.npz"
        tmp = target.with_name("latest.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, target)
        return target

    @staticmethod
    def load_checkpoint(path: str | Path) -> tuple[int, dict[str, np.ndarray]]:
        """``(round, global state)`` from a checkpoint file."""
        with np.load(path) as z:
            state = {k[len("param/") :]: z[k] for k in z.files if k.startswith("param/")}
            return int(z["round"]), state

    def save_final(self, state: Mapping[str, np.ndarray], item_ids: list[str] | None) -> Path:
        """Write the final global parameters and the item map."""
        target = self.path / "item_embeddings.npz"
        np.savez(target, **{k: np.asarray(v) for k, v in state.items()})
        if item_ids is not None:
            (self.path / "item_ids.json").write_text(json.dumps(item_ids))
        return target
