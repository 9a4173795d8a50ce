"""The run directory: everything a run leaves behind, in documented places.

::

    RUN/
      config.json            resolved configuration (+ noise multiplier, versions)
      metrics.jsonl          one JSON object per round (training report, evaluation)
      checkpoints/latest.npz the server after its last round (item table, optimizer state,
                             round, sampling state, round records), atomically replaced
      devices/states.sqlite  simulated devices' own state (user embedding, accountant, RNG)
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

__all__ = [
    "RunDirectory",
    "RunExistsError",
    "new_run_dir",
    "holds_run",
    "refuse_existing",
    "checkpointed_round",
]

_CHECKPOINT = "latest.npz"


def new_run_dir(root: str | Path = "runs") -> Path:
    """A fresh ``runs/<UTC timestamp>`` directory name (not created)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path = Path(root) / stamp
    i = 1
    while path.exists():
        path = Path(root) / f"{stamp}-{i}"
        i += 1
    return path


class RunExistsError(ValueError):
    """A new run was pointed at a directory that already holds one."""


def holds_run(path: str | Path) -> bool:
    """Whether ``path`` is a directory with anything in it (an earlier run's files)."""
    p = Path(path)
    return p.is_dir() and any(p.iterdir())


def checkpointed_round(path: str | Path) -> int:
    """The round of the run's checkpoint in directory ``path`` (0: none)."""
    target = Path(path) / "checkpoints" / _CHECKPOINT
    if not target.is_file():
        return 0
    with np.load(target, allow_pickle=False) as z:
        return int(z["round"])


def refuse_existing(path: str | Path) -> None:
    """Raise :class:`RunExistsError` unless ``path`` is new or an empty directory.

    A new run written into an earlier run's directory would append to its ledgers with
    fresh accountants and mix two runs' receipts and metrics.
    """
    if holds_run(path):
        raise RunExistsError(
            f"run directory {path} already holds a run: continue it with "
            f"`fedrec simulate --resume {path}`, or choose a new --run-dir"
        )


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

    @property
    def checkpoint_path(self) -> Path:
        """``checkpoints/latest.npz``."""
        return self.path / "checkpoints" / _CHECKPOINT

    def checkpoint(
        self,
        server_round: int,
        state: Mapping[str, np.ndarray],
        optimizer_state: Mapping[str, object] | None = None,
        meta: Mapping[str, object] | None = None,
    ) -> Path:
        """Save the global state after ``server_round``: write a temporary file, then replace.

        ``meta`` (JSON) holds what else the server needs to continue (round records, sampling
        state); a kill at any moment leaves either the previous checkpoint or this one.
        """
        arrays = {f"param/{k}": np.asarray(v) for k, v in state.items()}
        layout: dict[str, object] = {}
        for k, v in (optimizer_state or {}).items():
            if isinstance(v, Mapping):
                layout[k] = "mapping"
                arrays.update({f"opt/{k}/{kk}": np.asarray(vv) for kk, vv in v.items()})
            else:
                layout[k] = "value"
                arrays[f"opt/{k}"] = np.asarray(v)
        arrays["round"] = np.asarray(server_round)
        body = {**dict(meta or {}), "optimizer_layout": layout}
        arrays["meta"] = np.frombuffer(json.dumps(body, default=float).encode(), dtype=np.uint8)
        target = self.checkpoint_path
        tmp = target.with_name("latest.tmp.npz")
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        return target

    @staticmethod
    def load_checkpoint(path: str | Path) -> tuple[int, dict[str, np.ndarray]]:
        """``(round, global state)`` from a checkpoint file."""
        with np.load(path) as z:
            state = {k[len("param/") :]: z[k] for k in z.files if k.startswith("param/")}
            return int(z["round"]), state

    def read_checkpoint(self) -> tuple[int, dict[str, np.ndarray], dict[str, object], dict]:
        """``(round, global state, optimizer state, meta)`` of the latest checkpoint.

        Raises:
            FileNotFoundError: there is no checkpoint (no round finished).
            ValueError: the checkpoint cannot be read (naming the file).
        """
        path = self.checkpoint_path
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no checkpoint (the run finished no round)")
        try:
            with np.load(path, allow_pickle=False) as z:
                files = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError) as exc:
            raise ValueError(f"{path}: not a readable checkpoint ({exc})") from None
        meta = json.loads(files.pop("meta").tobytes()) if "meta" in files else {}
        layout = meta.pop("optimizer_layout", {})
        state = {k[len("param/") :]: v for k, v in files.items() if k.startswith("param/")}
        opt: dict[str, object] = {k: {} for k, kind in layout.items() if kind == "mapping"}
        for k, v in files.items():
            if not k.startswith("opt/"):
                continue
            name, _, sub = k[len("opt/") :].partition("/")
            if sub:
                opt.setdefault(name, {})[sub] = v  # type: ignore[index]
            else:
                opt[name] = v.item() if v.ndim == 0 and v.dtype.kind in "iub" else v
        return int(files["round"]), state, opt, meta

    def rewrite_metrics(self, records: list[dict[str, object]]) -> None:
        """Replace ``metrics.jsonl`` with ``records`` (atomically): a resumed run's history."""
        text = "".join(json.dumps(r, sort_keys=True, default=float) + "\n" for r in records)
        _atomic_write(self.path / "metrics.jsonl", text.encode())

    def save_final(self, state: Mapping[str, np.ndarray], item_ids: list[str] | None) -> Path:
        """Write the final global parameters and the item map."""
        target = self.path / "item_embeddings.npz"
        np.savez(target, **{k: np.asarray(v) for k, v in state.items()})
        if item_ids is not None:
            (self.path / "item_ids.json").write_text(json.dumps(item_ids))
        return target
