"""Cohort workers: a simulation's SuperNode hosts a shard of the virtual devices.

Mapping one simulated device to one SuperNode costs the simulation engine a node, a message
and a stored reply per device per round, and Flower's SecAgg+ per device in a secure round.
In simulation, fedrec instead runs ``W`` SuperNodes (``fedrec simulate --workers W``), each
a *cohort worker* hosting a fixed shard of the devices (:func:`assign_shards`: largest
device first onto the least-loaded worker). Each round the server sends each worker one
message with the ids of its devices sampled this round
(:class:`~fedrec.server.flower_transport.CohortTransport`); the worker trains them in turn
with the devices' own code (:class:`~fedrec.simulations.in_process.InProcessTransport`, the
engine of ``--engine loop``) and replies:

* per device, where the privacy mode lets the server see individual updates (``off``,
  ``local``);
* with its shard's partial sum where the mode promises sums (``distributed``, ``user``, and
  raw statistics): the simulated secure sum, with its rules (a device checks the round's
  range and size and declines otherwise; a share beyond the range aborts the whole sum; a
  simulated dropout, a coin of the run's seed, the device and the round, leaves the sum
  after its device trained and wrote its ledger).

Accounting stays per device: each device keeps its accountant and signed ledger, refuses
past its budget, and the worker forwards each device's ledger head, which the server
countersigns. A device's state lives in the run's store
(:class:`~fedrec.client.state_store.DeviceStateStore`, one transaction per worker and
round); a worker process keeps the devices it built and reuses one while the store's token
says no other process moved it on. Deployments keep one device per SuperNode and Flower's
real SecAgg+ (``--workers 0`` simulates that too).
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import json
import os
import pickle
import tempfile
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedrec.client.client_app import parse_evaluate, parse_train
from fedrec.client.device import Device
from fedrec.common.algorithms.base import Task
from fedrec.common.config import RunConfig
from fedrec.common.privacy.policy import PolicyViolation, RefusalCode
from fedrec.common.privacy.secagg import SecureSession
from fedrec.server.coordinator import Reply
from fedrec.server.flower_transport import (
    COHORT_RECORD,
    HEADS_RECORD,
    cohort_key,
    pack_heads,
    pack_replies,
    pack_sum,
)
from fedrec.server.round_loop import Request
from fedrec.simulations.federation import (
    FederatedDataset,
    device_algorithm,
    federated_dataset,
    make_device,
)
from fedrec.simulations.in_process import InProcessTransport, PartialSum
from fedrec.simulations.population import Ragged

__all__ = [
    "assign_shards",
    "default_workers",
    "Shard",
    "make_worker_app",
    "worker_reply",
    "SharedPopulation",
    "share_population",
    "shared_population",
    "release_memory",
]

#: A worker process keeps its devices built when its shard hosts at most this many (each
#: holds a copy of the item table, about 0.3 MB at 1,682 items and d = 32); a larger shard
#: rebuilds a device per use, where a kept one would rarely be sampled again anyway. It is
#: also the most a process keeps over all the shards it serves: Flower's Ray backend hands
#: any shard's message to any idle worker process, so one process comes to serve many.
_KEEP_DEVICES = 1024

#: The devices this process keeps built, over its shards, least recently used first.
_KEPT: OrderedDict[tuple[int, int], Shard] = OrderedDict()


def default_workers() -> int:
    """The default number of cohort workers: the machine's CPU count."""
    return max(1, os.cpu_count() or 1)


def assign_shards(sizes: Sequence[int], workers: int) -> list[list[int]]:
    """Devices onto ``workers`` shards: the largest first, each onto the least-loaded shard.

    ``sizes[u]`` is device ``u``'s number of training examples (a device costs at least 1);
    ties go to the lower device index and the lower shard. Each shard is sorted. Every
    worker computes the same assignment from the same data.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    heap = [(0, w) for w in range(workers)]
    shards: list[list[int]] = [[] for _ in range(workers)]
    for u in sorted(range(len(sizes)), key=lambda u: (-int(sizes[u]), u)):
        load, w = heapq.heappop(heap)
        shards[w].append(u)
        heapq.heappush(heap, (load + max(1, int(sizes[u])), w))
    return [sorted(s) for s in shards]


#: The dataset settings that decide a run's devices' data (:func:`federated_dataset`'s key).
_POPULATION_KEYS = (
    "dataset",
    "data-dir",
    "synthetic-users",
    "synthetic-items",
    "seed",
    "split",
    "population",
)


def _population_key(cfg: RunConfig) -> str:
    flat = cfg.to_flat()
    settings = {k: v for k, v in flat.items() if k in _POPULATION_KEYS or k.startswith("events-")}
    if settings.get("data-dir"):
        settings["data-dir"] = str(Path(str(settings["data-dir"])).expanduser().absolute())
    settings["layout"] = 3  # 2: with the recency of the training items; 3: synthetic too
    settings["synthetic-recency"] = cfg.reads_recency()
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class SharedPopulation:
    """The devices' data as a cohort worker maps it: what :func:`make_device` reads.

    ``train_items`` and ``test_items`` are :class:`~fedrec.simulations.population.Ragged`
    over memory-mapped files in the run directory (:func:`share_population`): the workers'
    processes share their pages, and none loads the dataset (no CSV reader, no split, no
    synthetic population built again per process).
    """

    train_items: Ragged
    test_items: Ragged
    n_items: int
    #: the devices' recency of their training items (FederatedDataset.train_recency; the
    #: synthetic devices' only where the run reads it, RunConfig.reads_recency)
    train_recency: Ragged | tuple = ()

    @property
    def n_users(self) -> int:
        """Number of devices (synthetic ones included)."""
        return len(self.train_items)

    def recency(self, user: int) -> np.ndarray | None:
        """Where each of device ``user``'s training items lies in its history, if known."""
        return self.train_recency[user] if user < len(self.train_recency) else None


def _population_dir(cfg: RunConfig) -> Path:
    return Path(cfg.run_dir) / "devices" / f"population-{_population_key(cfg)}"


def _flat(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``arrays`` as one array and offsets (a Ragged's own, unchanged dtype otherwise)."""
    if isinstance(arrays, Ragged):
        return arrays.items, arrays.offsets
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    items = np.concatenate([np.asarray(a) for a in arrays]) if len(arrays) else np.zeros(0)
    return items, offsets


def share_population(cfg: RunConfig, fed: FederatedDataset | None = None) -> Path:
    """Write the run's devices' data where its cohort workers map it (once per run).

    The simulation's driver calls it before the engine starts (``fed``: its loaded dataset);
    a worker that finds nothing written (a test, ``flwr run``) writes it itself. The folder
    is named by the dataset settings, so a run never maps another dataset's devices.
    """
    folder = _population_dir(cfg)
    if (folder / "meta.json").is_file():
        return folder
    fed = fed if fed is not None else federated_dataset(cfg)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".population-", dir=folder.parent))
    parts = (("train", fed.train_items), ("test", fed.test_items))
    # only runs whose devices weigh by recency read it: others keep the real users' (a
    # million synthetic devices' would be computed and written for nothing)
    recency = fed.train_recency
    if not cfg.reads_recency():
        recency = list(recency[: min(fed.n_real_users, len(recency))])
    for name, arrays in (*parts, ("recency", recency)):
        items, offsets = _flat(arrays)
        np.save(tmp / f"{name}-items.npy", items)
        np.save(tmp / f"{name}-offsets.npy", offsets)
    meta = {"n_items": fed.n_items, "n_users": fed.n_users, "key": _population_key(cfg)}
    (tmp / "meta.json").write_text(json.dumps(meta))
    try:
        tmp.rename(folder)
    except OSError:  # another process wrote it first: the same data
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    return folder


def shared_population(cfg: RunConfig) -> SharedPopulation:
    """The run's devices' data, mapped from what :func:`share_population` wrote."""
    folder = share_population(cfg)
    meta = json.loads((folder / "meta.json").read_text())

    def ragged(name: str) -> Ragged:
        # copy-on-write: pages shared between processes, arrays writable as torch expects
        items = np.load(folder / f"{name}-items.npy", mmap_mode="c")
        return Ragged(items, np.load(folder / f"{name}-offsets.npy"))

    recency = ragged("recency") if (folder / "recency-items.npy").is_file() else ()
    return SharedPopulation(ragged("train"), ragged("test"), int(meta["n_items"]), recency)


def _dropout_coin(cfg: RunConfig, u: int, server_round: int) -> bool:
    """The simulation's dropout coin (the one :func:`~.apps.simulated_dropout_mod` tosses)."""
    p = cfg.simulated_dropout
    if p <= 0:
        return False
    coin = hashlib.sha256(f"{cfg.seed}/{u}/{server_round}".encode()).digest()
    return int.from_bytes(coin[:8], "little") / 2**64 < p


class Shard:
    """The devices one cohort worker hosts, in one process.

    Args:
        cfg: the run configuration.
        partition: this worker's index.
        workers: how many workers the run has.
    """

    def __init__(self, cfg: RunConfig, partition: int, workers: int):
        from fedrec.simulations.apps import state_store

        if not 0 <= partition < workers:
            raise ValueError(f"worker {partition} does not exist: the run has {workers}")
        self.cfg = cfg
        self.fed = shared_population(cfg)
        sizes = self.fed.train_items.lengths().tolist()
        self.devices = assign_shards(sizes, workers)[partition]
        self.hosted = frozenset(self.devices)
        self.store = state_store(cfg)
        self.ledger_dir = Path(cfg.run_dir) / "ledgers"
        self._built: OrderedDict[int, tuple[str | None, Device]] = OrderedDict()
        self._capacity = len(self.devices) if len(self.devices) <= _KEEP_DEVICES else 0
        self._changed: dict[int, tuple[str, dict[str, Any]]] = {}
        self._heads: dict[int, dict[str, Any]] = {}
        # the devices' algorithm, looked up once (the lookup cost as much as building the
        # rest of a device, as in the loop's engine)
        self.algorithm = device_algorithm(cfg, self.fed.n_items)

    @property
    def keeps_devices(self) -> bool:
        """Whether this shard keeps its devices built (it hosts at most :data:`_KEEP_DEVICES`)."""
        return bool(self._capacity)

    def device(self, u: int) -> Device:
        """Device ``u``, reused if this process holds its latest state, else rebuilt."""
        hit = self._built.get(u)
        if hit is not None and hit[0] is not None and self.store.token(hit[1].device_id) == hit[0]:
            self._built.move_to_end(u)
            _KEPT.move_to_end((id(self), u))
            return hit[1]
        from fedrec.client.state_store import reconcile_with_ledger

        dev = make_device(
            self.fed,  # type: ignore[arg-type]
            u,
            self.cfg,
            ledger_dir=self.ledger_dir,
            algorithm=self.algorithm,
        )
        stored = self.store.load(dev.device_id)
        if stored is not None:
            dev.load_state_dict(stored[1])
        reconcile_with_ledger(dev)  # what the device spent is what its ledger says
        self._keep(u, None if stored is None else stored[0], dev)
        return dev

    def done(self, u: int, dev: Device) -> None:
        """Device ``u`` handled a request (its state changed; its ledger head goes along).

        Only the state is held until :meth:`flush` (a round's devices would not fit in memory).
        """
        self._changed[u] = (dev.device_id, dev.state_dict())
        if dev.ledger_head is not None:
            self._heads[u] = dict(dev.ledger_head)

    def flush(self) -> dict[int, dict[str, Any]]:
        """Save the changed devices' states (one transaction); the ledger heads to forward."""
        changed, self._changed = self._changed, {}
        heads, self._heads = self._heads, {}
        self.store.save_many(dict(changed.values()))
        for u, (name, _) in changed.items():
            kept = self._built.get(u)
            if kept is not None:  # the device saved is the one kept: now at the stored token
                self._built[u] = (self.store.token(name), kept[1])
        return heads

    def _keep(self, u: int, token: str | None, dev: Device) -> None:
        """Keep device ``u`` built; the process's least recently used beyond its budget go."""
        if not self._capacity:
            return
        self._built[u] = (token, dev)
        self._built.move_to_end(u)
        _KEPT[(id(self), u)] = self
        _KEPT.move_to_end((id(self), u))
        while len(_KEPT) > _KEEP_DEVICES:
            (_, v), shard = _KEPT.popitem(last=False)
            shard._built.pop(v, None)

    def forget(self) -> None:
        """Drop the devices this shard keeps built (it leaves the process)."""
        for u in self._built:
            _KEPT.pop((id(self), u), None)
        self._built.clear()

    def transport(self) -> InProcessTransport:
        """The shard's devices called in this process, with the simulation's dropout coin."""
        cfg = self.cfg
        return InProcessTransport(
            self.fed.n_users,
            self.device,
            self.done,
            drops=lambda u, rnd: _dropout_coin(cfg, u, rnd),
        )


_SHARDS: dict[tuple[str, int, int], Shard] = {}


def _shard(cfg: RunConfig, context: Context) -> Shard:
    partition = int(context.node_config["partition-id"])
    workers = int(context.node_config["num-partitions"])
    run = str(Path(cfg.run_dir).absolute())
    key = (run, partition, workers)
    if key not in _SHARDS:
        for other in [k for k in _SHARDS if k[0] != run]:  # one run per process at a time
            _SHARDS.pop(other).forget()
        _SHARDS[key] = Shard(cfg, partition, workers)
    return _SHARDS[key]


def _cohort(msg: Message, shard: Shard) -> tuple[list[int], dict[str, Any]]:
    """The devices a request names (refused: one not hosted here) and its cohort record."""
    try:
        record = dict(msg.content[COHORT_RECORD])  # type: ignore[arg-type]
        devices = [int(u) for u in record["devices"]]  # type: ignore[union-attr]
    except (KeyError, TypeError, ValueError) as exc:
        raise PolicyViolation(RefusalCode.BAD_REQUEST, f"malformed cohort: {exc!r}") from None
    foreign = sorted(set(devices) - shard.hosted)
    if foreign or len(set(devices)) != len(devices):
        raise PolicyViolation(
            RefusalCode.BAD_REQUEST, f"devices not hosted here, or named twice: {foreign[:5]}"
        )
    return devices, record


#: A worker's secure sum trains its devices this many at a time: a device in training holds
#: about 0.85 MB (its model, its dense delta of the item tables, the step's temporaries; 1,682
#: items, d = 32), so this bounds what a round adds to a worker's memory. At 100,000 devices
#: (5,000 a worker a round) a worker peaked 91 MB lower than with whole batched chunks (151
#: devices), and its round took no longer (2.8-3.1 s against 3.4-3.9 s, one process). A shard
#: that keeps its devices built (small) trains its message in one pass: groups cost it about
#: 1.7 ms of a 50-device message's 23 ms (issue-15 workload), for memory it does not need.
_SUM_GROUP = 32


def _partial_sum(
    transport: InProcessTransport,
    request: Request,
    devices: Sequence[int],
    session: SecureSession,
    size: int = _SUM_GROUP,
) -> PartialSum:
    """The shard's partial sum, its devices trained ``size`` at a time.

    The groups' float64 sums are added in order: the total differs from one pass over the
    devices by float64 rounding at most (each group's own sum is that of one pass).
    """
    part = PartialSum()
    for start in range(0, len(devices), max(1, size)):
        group = transport.partial_sum(request, devices[start : start + max(1, size)], session)
        if group.total is not None:
            if part.total is None:
                part.total = group.total
            else:
                for k in part.total:
                    part.total[k] += group.total[k]
        part.included += group.included
        part.declined += group.declined
        part.drop_reasons += group.drop_reasons
        part.out_of_range += group.out_of_range
    return part


def worker_reply(shard: Shard, msg: Message) -> RecordDict:
    """A cohort worker's answer to a train request: individual replies, or a partial sum.

    Raises:
        PolicyViolation: the request is malformed or names devices not hosted here.
    """
    devices, record = _cohort(msg, shard)
    parsed = parse_train(msg)
    shapes = {
        k.removeprefix("shape:"): tuple(int(d) for d in v)  # type: ignore[union-attr]
        for k, v in record.items()
        if k.startswith("shape:")
    }
    config = {} if parsed.noise_share is None else {"noise-share": parsed.noise_share}
    request = Request(parsed.server_round, parsed.task, parsed.table, config, shapes)
    transport = shard.transport()
    if record.get("secure"):
        session = SecureSession(
            clipping_range=float(record["clipping-range"]),  # type: ignore[arg-type]
            group_size=int(record["group-size"]),  # type: ignore[call-overload]
        )
        size = len(devices) if shard.keeps_devices else _SUM_GROUP
        part = _partial_sum(transport, request, devices, session, size)
        content = pack_sum(
            part.total,
            part.included,
            declined=part.declined,
            out_of_range=part.out_of_range,
            reasons=part.drop_reasons,
        )
    else:
        content = pack_replies(transport.train(request, devices))
    heads = shard.flush()
    if heads:
        content[HEADS_RECORD] = pack_heads(heads)
    return content


def _evaluation_reply(shard: Shard, msg: Message) -> RecordDict:
    devices, _ = _cohort(msg, shard)
    parsed = parse_evaluate(msg)
    if parsed.noise_share is not None:  # an evaluation never leaves inside a secure sum here
        raise PolicyViolation(RefusalCode.NOT_SECURE, "a noise share outside a secure sum")
    config: dict[str, Any] = {"ks": ",".join(map(str, parsed.ks))}
    if parsed.noise_multiplier is not None:
        config["eval-noise-multiplier"] = parsed.noise_multiplier
    request = Request(parsed.server_round, Task("evaluate"), parsed.table, config)
    transport = shard.transport()
    metrics: dict[str, float] = {}
    for u in devices:  # one by one, to know whose release each one is
        for sums in transport.evaluate(request, [u]):
            metrics.update({cohort_key(u, k): float(v) for k, v in sums.items()})  # type: ignore[attr-defined]
    content = RecordDict({"metrics": MetricRecord(metrics)})
    heads = shard.flush()
    if heads:
        content[HEADS_RECORD] = pack_heads(heads)
    return content


def _refused(msg: Message, shard: Shard, code: RefusalCode | str) -> RecordDict:
    """Every hosted device the request names declines with ``code`` (a sum, if secure)."""
    try:
        record = msg.content[COHORT_RECORD]
        devices = [int(u) for u in record["devices"]]  # type: ignore[union-attr,index]
        secure = bool(record.get("secure"))  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001 - a request too malformed to name its devices
        devices, secure = [], False
    devices = [u for u in devices if u in shard.hosted]
    if secure:
        return pack_sum(None, [], declined=len(devices), out_of_range=0, reasons=[])
    return pack_replies([Reply(node=u, refusal=str(RefusalCode(code))) for u in devices])


@functools.cache
def _libc_trim() -> Any:
    """The C library's ``malloc_trim`` (glibc; ``None`` elsewhere: musl, macOS)."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_memory(shard: Shard | None = None) -> None:
    """Hand the heap a round freed back to the system, where the C library can.

    A round's training frees what it allocated, but glibc keeps the freed heap for reuse, so
    between rounds a worker still held its last round's high-water mark (about 100 MB at
    100,000 devices) while the driver evaluated; trimmed, it holds its imports and data.
    A ``shard`` small enough to keep its devices built (at most :data:`_KEEP_DEVICES`) is
    not trimmed: its rounds free little, and a trim cost about 1 ms a message at 943 devices.
    """
    if shard is not None and shard.keeps_devices:
        return
    trim = _libc_trim()
    if trim is not None:
        trim(0)


class _WorkerApp(ClientApp):
    """A worker ``ClientApp`` that travels as its pickled configuration, built once a process.

    Flower's Ray backend sends the ``ClientApp`` with every message; pickled whole, the
    handlers' closures cost about 1 ms a message to pickle in the driver and 0.3 ms to load
    in the worker. This one pickles as the configuration's bytes (pickled once), and a
    process builds the app once per configuration (:func:`_worker_app`).
    """

    def __init__(self, blob: bytes) -> None:
        super().__init__()
        self._blob = blob

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return _worker_app, (self._blob,)


@functools.lru_cache(maxsize=4)
def _worker_app(blob: bytes) -> ClientApp:
    return make_worker_app(pickle.loads(blob))  # noqa: S301 - the driver's own configuration


def make_worker_app(config: RunConfig | None = None) -> ClientApp:
    """The ``ClientApp`` of a simulation's cohort workers (one per SuperNode).

    ``config``: the run configuration (``None``: from the run config, as ``flwr run`` gives).
    """
    from fedrec.simulations.apps import _config

    app = ClientApp() if config is None else _WorkerApp(pickle.dumps(config))

    @app.query()
    def roster(msg: Message, context: Context) -> Message:
        shard = _shard(_config(config, context), context)
        record = ConfigRecord({"devices": list(shard.devices)})
        return Message(RecordDict({COHORT_RECORD: record}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        shard = _shard(_config(config, context), context)
        try:
            content = worker_reply(shard, msg)
        except PolicyViolation as violation:
            shard.flush()
            content = _refused(msg, shard, violation.code)
        release_memory(shard)
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        shard = _shard(_config(config, context), context)
        try:
            content = _evaluation_reply(shard, msg)
        except PolicyViolation:
            shard.flush()
            content = RecordDict({"metrics": MetricRecord({})})
        release_memory(shard)
        return Message(content, reply_to=msg)

    return app
