"""Poisoning attacks on a federated run, and what the defences leave of them (simulation only).

Fake devices join a run to promote one *target* item (by default the least popular item among
the training interactions) into genuine users' top-10. Each fake first trains honestly on a
fabricated history (the target and popular items), so it knows what an honest update looks
like this round; then it sends, in place of that update:

* ``data``: the honest update itself (data poisoning: nothing distinguishes it);
* ``within-norm``: the ascent direction of the target's mean score over the fakes' own user
  embeddings (its row of the item table, embedding and bias), scaled to the *median norm of
  the fakes' honest updates this round*: its norm lies in the honest distribution;
* ``fedrecattack``: in the manner of FedRecAttack (Rong et al., ICDE 2022): approximate
  genuine users' embeddings from a small fraction of *public* interactions (a least-squares
  fit against the current item table), and send the descent direction of
  ``Σ_u Σ_{k in top-K(u)} log(1 + exp(s_uk - s_ut))`` (push the target above each user's
  top-K, push those items down) on at most ``max_items`` rows, with the same norm as above.

In secure-sum modes a fake keeps every coordinate inside the round's SecAgg+ range (a share
beyond it would abort the round: a denial of service, not a promotion).

:func:`run_attack` runs one configuration in-process (the devices and server code the
product runs, :class:`~fedrec.simulations.in_process.InProcessTransport`) and measures the
target's exposure rate ER@10 among genuine users (the share of genuine users who do not
hold the target in train and find it in their top 10) and NDCG@10. ``fedrec attack``
(:mod:`fedrec.cli.attack`) prints the table of attacks × defences × privacy modes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedrec.client.device import Device
from fedrec.common.config import RunConfig
from fedrec.common.privacy.secagg import SecureSession
from fedrec.server.coordinator import Reply
from fedrec.simulations.in_process import InProcessTransport

__all__ = [
    "ATTACKS",
    "Attack",
    "fake_count",
    "least_popular_item",
    "fake_histories",
    "exposure_rate",
    "approximate_users",
    "PoisonedTransport",
    "run_attack",
]

#: The attack kinds (``none``: the clean run).
ATTACKS = ("none", "data", "within-norm", "fedrecattack")

_ITEM_KEYS = ("item_embedding.weight", "item_bias.weight")


@dataclass(frozen=True)
class Attack:
    """What the fake devices do.

    Attributes:
        kind: one of :data:`ATTACKS`.
        share: fakes as a fraction of all devices (genuine and fake).
        target: the item promoted (None: the least popular item among train interactions).
        public_fraction: ``fedrecattack``: the fraction of genuine train interactions the
            attacker knows (public ratings).
        max_items: ``fedrecattack``: rows a fake's update touches at most.
        top_k: ``fedrecattack``: the list length whose items the target must beat.
    """

    kind: str = "none"
    share: float = 0.0
    target: int | None = None
    public_fraction: float = 0.01
    max_items: int = 60
    top_k: int = 10

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS:
            raise ValueError(f"attack {self.kind!r}: expected one of {', '.join(ATTACKS)}")
        if not 0 <= self.share < 0.5:
            raise ValueError(f"fake share {self.share!r}: expected a fraction in [0, 0.5)")
        if not 0 < self.public_fraction <= 1:
            raise ValueError(f"public fraction {self.public_fraction!r}: expected (0, 1]")


def fake_count(genuine: int, share: float) -> int:
    """Fakes that make ``share`` of all devices beside ``genuine`` genuine ones."""
    return 0 if share <= 0 else math.ceil(share * genuine / (1.0 - share) - 1e-9)


def least_popular_item(train_items: Sequence[np.ndarray], n_items: int) -> int:
    """The item with the fewest (at least one) train interactions; ties to the lower index."""
    counts = np.bincount(
        np.concatenate([np.asarray(t, np.int64) for t in train_items]), minlength=n_items
    )
    present = np.flatnonzero(counts > 0)
    return int(present[np.argmin(counts[present])])


def fake_histories(
    train_items: Sequence[np.ndarray],
    n_items: int,
    target: int,
    n_fakes: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Fabricated histories: the target and popular items, of the median genuine length.

    Filler items are drawn without replacement from the ``3·L`` most popular items
    (``L`` the median history length), weighted by popularity, so fakes look like ordinary
    users of popular items.
    """
    counts = np.bincount(
        np.concatenate([np.asarray(t, np.int64) for t in train_items]), minlength=n_items
    )
    length = max(2, int(np.median([len(t) for t in train_items])))
    ranked = [int(i) for i in np.argsort(-counts, kind="stable") if int(i) != target]
    pool = np.asarray(ranked[: min(len(ranked), 3 * length)])
    weights = counts[pool].astype(np.float64) + 1.0
    out = []
    for _ in range(n_fakes):
        size = min(length - 1, len(pool))
        filler = rng.choice(pool, size=size, replace=False, p=weights / weights.sum())
        out.append(np.sort(np.concatenate([[target], filler]).astype(np.int64)))
    return out


def exposure_rate(
    devices: Sequence[Device], state: Mapping[str, np.ndarray], target: int, k: int = 10
) -> float:
    """ER@k: the share of devices without ``target`` in train whose top ``k`` holds it.

    Each device ranks as it would for its user (:meth:`~fedrec.client.device.Device.recommend`:
    its own embedding or fold-in, items it holds in train left out).
    """
    hits = eligible = 0
    for dev in devices:
        if np.any(np.asarray(dev.train_items) == target):
            continue
        eligible += 1
        hits += bool(np.any(dev.recommend(k, state) == target))
    return hits / eligible if eligible else 0.0


def approximate_users(
    state: Mapping[str, np.ndarray],
    public: Sequence[np.ndarray],
    rng: np.random.Generator,
    *,
    negatives: int = 4,
    ridge: float = 0.1,
) -> np.ndarray:
    """Users' embeddings fitted to their public interactions against the current item table.

    Per user, ridge least squares of score 1 on its public items and 0 on ``negatives``
    random items per positive, with the item table fixed (FedRecAttack's approximation, in
    closed form). Users without public interactions are left out.
    """
    items = np.asarray(state["item_embedding.weight"], np.float64)
    bias = np.asarray(state["item_bias.weight"], np.float64).reshape(-1)
    n_items, dim = items.shape
    out = []
    for pos in public:
        if len(pos) == 0:
            continue
        neg = rng.integers(0, n_items, size=negatives * len(pos))
        rows = np.concatenate([pos, neg])
        y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))]) - bias[rows]
        v = items[rows]
        out.append(np.linalg.solve(v.T @ v + ridge * np.eye(dim), v.T @ y))
    return np.asarray(out).reshape(-1, dim)


def _unit(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    norm = math.sqrt(sum(float(np.square(v, dtype=np.float64).sum()) for v in arrays.values()))
    return {k: v / norm if norm > 0 else v for k, v in arrays.items()}


def _target_ascent(
    state: Mapping[str, np.ndarray], users: np.ndarray, target: int
) -> dict[str, np.ndarray]:
    """The gradient of the target's mean score over ``users`` (its row only)."""
    out = {k: np.zeros(np.shape(state[k]), np.float64) for k in _ITEM_KEYS}
    out["item_embedding.weight"][target] = users.mean(axis=0) if len(users) else 0.0
    out["item_bias.weight"][target] = 1.0
    return out


def _fedrecattack_descent(
    state: Mapping[str, np.ndarray], users: np.ndarray, target: int, top_k: int, max_items: int
) -> dict[str, np.ndarray]:
    """Minus the gradient of ``Σ_u Σ_{k∈top-K(u)} log(1 + exp(s_uk - s_ut))``, on few rows."""
    emb = np.asarray(state["item_embedding.weight"], np.float64)
    bias = np.asarray(state["item_bias.weight"], np.float64).reshape(-1)
    out = {k: np.zeros(np.shape(state[k]), np.float64) for k in _ITEM_KEYS}
    if len(users) == 0:
        return _target_ascent(state, users, target)
    scores = users @ emb.T + bias
    scores[:, target] = -np.inf
    top = np.argpartition(-scores, top_k, axis=1)[:, :top_k]
    s_t = users @ emb[target] + bias[target]
    w = 1.0 / (1.0 + np.exp(-(np.take_along_axis(scores, top, axis=1) - s_t[:, None])))
    grad_emb = np.zeros_like(emb)
    grad_bias = np.zeros_like(bias)
    np.add.at(
        grad_emb, top.reshape(-1), (w[:, :, None] * users[:, None, :]).reshape(-1, users.shape[1])
    )
    np.add.at(grad_bias, top.reshape(-1), w.reshape(-1))
    grad_emb[target] = -(w.sum(axis=1)[:, None] * users).sum(axis=0)
    grad_bias[target] = -w.sum()
    size = np.sqrt(np.square(grad_emb).sum(axis=1) + np.square(grad_bias))
    size[target] = np.inf  # always kept
    keep = np.argsort(-size, kind="stable")[:max_items]
    out["item_embedding.weight"][keep] = -grad_emb[keep]
    out["item_bias.weight"][keep, 0] = -grad_bias[keep]
    return out


class PoisonedTransport(InProcessTransport):
    """The in-process transport, with devices ``genuine ..`` answering as the attack says.

    Args:
        n_devices: all devices, genuine first.
        device: gives device ``u``.
        genuine: the number of genuine devices.
        attack: what the fakes do.
        target: the promoted item.
        public: ``fedrecattack``: the public interactions of each genuine user.
        rng: the attacker's coin (negatives of its approximation).
    """

    def __init__(
        self,
        n_devices: int,
        device: Callable[[int], Device],
        *,
        genuine: int,
        attack: Attack,
        target: int,
        public: Sequence[np.ndarray] = (),
        rng: np.random.Generator | None = None,
    ):
        super().__init__(n_devices, device, rng=rng)
        self.genuine, self.attack, self.target, self.public = genuine, attack, target, public
        self._crafted: dict[int, Reply] = {}

    def train(self, request, nodes):  # noqa: ANN001, ANN201 - the Transport protocol's
        """Replies; the fakes' crafted."""
        self._prepare(request, nodes, None)
        return super().train(request, nodes)

    def secure_sum(self, request, nodes, plan):  # noqa: ANN001, ANN201
        """The secure sum; the fakes' crafted shares inside the range."""
        session = SecureSession(clipping_range=plan.clipping_range, group_size=len(nodes))
        self._prepare(request, nodes, session)
        return super().secure_sum(request, nodes, plan)

    def _answer(self, u: int, request, session, dev=None):  # noqa: ANN001, ANN202
        if u in self._crafted:
            return self._crafted.pop(u)
        return super()._answer(u, request, session, dev)

    def _batched(self, request, chunk, session):  # noqa: ANN001, ANN202
        """A fake's crafted reply replaces its training: fakes never train batched."""
        honest = {u: d for u, d in chunk.items() if u not in self._crafted}
        return super()._batched(request, honest, session)

    def _prepare(self, request, nodes: Sequence[int], session: SecureSession | None) -> None:  # noqa: ANN001
        fakes = [u for u in nodes if u >= self.genuine]
        self._crafted = {}
        if self.attack.kind == "none" or not fakes:
            return
        honest = {u: super(PoisonedTransport, self)._answer(u, request, session) for u in fakes}
        self._crafted = dict(honest)
        norms = [_norm(r.arrays) for r in honest.values() if r.arrays is not None]
        if self.attack.kind == "data" or not norms:
            return
        direction = _unit(self._direction(request.state, fakes))
        scale = float(np.median(norms))
        limit = session.clipping_range * (1 - 1e-6) if session is not None else math.inf
        for u, r in honest.items():
            if r.arrays is None:
                continue
            arrays = {
                k: np.clip(direction[k] * scale, -limit, limit).astype(np.float32) for k in r.arrays
            }
            self._crafted[u] = Reply(u, arrays, r.num_examples, dict(r.metrics))

    def _direction(
        self, state: Mapping[str, np.ndarray], fakes: Sequence[int]
    ) -> dict[str, np.ndarray]:
        if self.attack.kind == "within-norm":
            users = np.concatenate(
                [self.device(u).model.local_state()["user_embedding.weight"] for u in fakes]
            )
            return _target_ascent(state, users, self.target)
        users = approximate_users(state, self.public, self.rng)
        return _fedrecattack_descent(
            state, users, self.target, self.attack.top_k, self.attack.max_items
        )


def _norm(arrays: Mapping[str, np.ndarray] | None) -> float:
    if arrays is None:
        return 0.0
    return math.sqrt(sum(float(np.square(v, dtype=np.float64).sum()) for v in arrays.values()))


def _public_interactions(
    train_items: Sequence[np.ndarray], fraction: float, rng: np.random.Generator
) -> list[np.ndarray]:
    return [np.asarray(t, np.int64)[rng.random(len(t)) < fraction] for t in train_items]


def run_attack(cfg: RunConfig, attack: Attack) -> dict[str, float]:
    """Train ``cfg`` with ``attack``'s fakes among the devices; measure the target and the model.

    Returns ``target``, ``fakes``, ``er@10`` (among genuine users), ``ndcg@10`` (genuine
    users; each device ranks on its own, as for its user, and the simulator reads its exact
    metric sums: nothing is released) and ``seconds``.
    """
    from fedrec.server.coordinator import make_coordinator
    from fedrec.server.round_loop import run_round
    from fedrec.simulations.federation import FederatedDataset, federated_dataset, make_device

    t0 = time.perf_counter()
    fed = federated_dataset(cfg)
    genuine, n_items = fed.n_users, fed.n_items
    rng = np.random.default_rng([cfg.seed, 16])
    target = (
        attack.target if attack.target is not None else least_popular_item(fed.train_items, n_items)
    )
    n_fakes = fake_count(genuine, attack.share) if attack.kind != "none" else 0
    fakes = fake_histories(fed.train_items, n_items, target, n_fakes, rng)
    empty = np.zeros(0, np.int64)
    poisoned = FederatedDataset(
        fed.data, fed.split, fed.train_items + fakes, fed.test_items + [empty] * n_fakes
    )
    devices: dict[int, Device] = {}

    def get(u: int) -> Device:
        if u not in devices:
            devices[u] = make_device(poisoned, u, cfg, ledger_dir=None)
        return devices[u]

    public = _public_interactions(fed.train_items, attack.public_fraction, rng)
    coord = make_coordinator(cfg, n_items)
    transport = PoisonedTransport(
        poisoned.n_users, get, genuine=genuine, attack=attack, target=target, public=public, rng=rng
    )
    for rnd in range(1, cfg.num_rounds + 1):
        run_round(coord, transport, rnd)
    real = [get(u) for u in range(genuine)]
    sums = [dev.evaluate(coord.state, cfg.k_values) for dev in real]
    quality = coord.combine_evaluation([s for s in sums if s])
    return {
        "target": float(target),
        "fakes": float(n_fakes),
        "er@10": exposure_rate(real, coord.state, target),
        "ndcg@10": float(quality.get("ndcg@10", float("nan"))),
        "seconds": time.perf_counter() - t0,
    }


# --------------------------------------------------------------------------------------------
# The attack table: attacks x defences x privacy modes

#: The defences measured per privacy mode. ``row-clip`` is
#: :func:`~fedrec.common.robust.public_row_clip` (public quantities only), ``tight-row-clip``
#: the same with one hit per step (the row's positive alone); ``trimmed-mean`` trims
#: ``robust-trim`` (10%) at each end.
DEFENCES: dict[str, tuple[str, ...]] = {
    "off": ("none", "row-clip", "trimmed-mean+row-clip", "median"),
    "local": ("none", "row-clip", "trimmed-mean+row-clip", "median"),
    "distributed": ("none", "row-clip", "tight-row-clip"),
    "user": ("none", "row-clip", "tight-row-clip"),
}

#: Why a mode offers only what :data:`DEFENCES` lists.
LIMITATIONS: dict[str, str] = {
    "distributed": (
        "the server sees only the SecAgg+ sum of noise shares: no robust aggregation; honest "
        "devices clamp their DP-SGD steps (row-clip), a fake only as far as the secure sum's "
        "range (row-clip plus the noise share's tail, per coordinate), and only if the "
        "protocol proves inputs lie in the range (Flower's SecAgg+ does not)"
    ),
    "user": (
        "the server sees only the SecAgg+ sum: no robust aggregation; honest devices clip "
        "their rows, a fake only as far as the secure sum's range (row-clip per coordinate, "
        "so sqrt(dim+1) times row-clip per row), and only if the protocol proves inputs lie in "
        "the range (Flower's SecAgg+ does not)"
    ),
}

#: The attack table's default settings on ML-100K (fit ~15 minutes on 2 cores, 2 jobs).
TABLE_SETTINGS: dict[str, object] = {
    "algorithm": "sgd",
    "num-rounds": 20,
    "fraction-train": 0.1,
    "local-epochs": 2.0,
    "reproducible": True,
    "eval-every": 1000,
}

#: ``--quick``: a small synthetic federation (seconds).
QUICK_SETTINGS: dict[str, object] = {
    "algorithm": "sgd",
    "dataset": "synthetic",
    "synthetic-users": 200,
    "synthetic-items": 80,
    "num-rounds": 8,
    "fraction-train": 0.3,
    "local-epochs": 2.0,
    "reproducible": True,
    "eval-every": 1000,
}


def defence_overrides(cfg: RunConfig, defence: str) -> dict[str, object]:
    """The run-config keys of a named defence (``trimmed-mean+row-clip``: both) for ``cfg``."""
    from fedrec.common.robust import public_row_clip

    out: dict[str, object] = {}
    for part in defence.split("+"):
        if part == "row-clip":
            out["row-clip"] = public_row_clip(cfg)
        elif part == "tight-row-clip":
            out["row-clip"] = public_row_clip(cfg, hits_per_step=1.0)
        elif part in ("trimmed-mean", "median"):
            out["robust-aggregation"] = part
        elif part != "none":
            raise ValueError(f"unknown defence {part!r}")
    return out


def table_jobs(
    modes: Sequence[str], attacks: Sequence[str], shares: Sequence[float]
) -> list[tuple[str, str, str, float]]:
    """``(mode, defence, attack, share)`` of every row: the clean run first per defence."""
    jobs = []
    for mode in modes:
        if mode not in DEFENCES:
            raise ValueError(f"privacy mode {mode!r}: expected one of {', '.join(DEFENCES)}")
        for defence in DEFENCES[mode]:
            jobs.append((mode, defence, "none", 0.0))
            jobs += [(mode, defence, a, s) for a in attacks for s in shares]
    return jobs


def _table_job(base: dict[str, object], job: tuple[str, str, str, float]) -> dict[str, object]:
    import torch

    torch.set_num_threads(1)  # one job per core: torch's own threads would fight over them
    mode, defence, kind, share = job
    flat = {**base, "privacy": mode}
    if mode == "user" and "delta" not in base:
        flat["delta"] = 1e-4  # below 1/943 users
    cfg = RunConfig.from_flat(flat)
    cfg = RunConfig.from_flat({**flat, **defence_overrides(cfg, defence)})
    result = run_attack(cfg, Attack(kind, share))
    return {"mode": mode, "defence": defence, "attack": kind, "share": share, **result}


def run_table(
    base: Mapping[str, object],
    *,
    modes: Sequence[str],
    attacks: Sequence[str],
    shares: Sequence[float],
    jobs: int = 1,
    log: Callable[[str], None] = lambda s: None,
) -> list[dict[str, object]]:
    """Every row of the attack table, in :func:`table_jobs` order (``jobs`` processes)."""
    from concurrent.futures import ProcessPoolExecutor

    todo = table_jobs(modes, attacks, shares)
    base = dict(base)
    RunConfig.from_flat(base)  # a bad key fails here, not in a worker
    if jobs <= 1:
        rows = []
        for job in todo:
            rows.append(_table_job(base, job))
            log(_progress(rows[-1], len(rows), len(todo)))
        return rows
    with ProcessPoolExecutor(jobs) as pool:
        futures = [pool.submit(_table_job, base, job) for job in todo]
        rows = []
        for f in futures:
            rows.append(f.result())
            log(_progress(rows[-1], len(rows), len(todo)))
    return rows


def _progress(row: Mapping[str, object], done: int, total: int) -> str:
    return (
        f"[{done}/{total}] {row['mode']} / {row['defence']} / {row['attack']} "
        f"{float(row['share']):.0%}: ER@10 {float(row['er@10']):.3f}, "  # type: ignore[arg-type]
        f"NDCG@10 {float(row['ndcg@10']):.4f} ({float(row['seconds']):.0f} s)"  # type: ignore[arg-type]
    )


#: The bar of issue 16: ER@10 at most this, for an NDCG@10 cost at most :data:`MAX_COST`.
MAX_ER = 0.05
MAX_COST = 0.01


def verdicts(
    rows: Sequence[Mapping[str, object]], *, attack: str = "within-norm", share: float = 0.05
) -> list[dict[str, object]]:
    """Per mode, the best defence against ``attack`` at ``share`` fakes, and whether it holds.

    A defence's cost is the clean NDCG@10 without defence less the clean NDCG@10 with it
    (what honest users pay). The best is the lowest ER@10 among defences costing at most
    :data:`MAX_COST`, else the lowest ER@10 overall; it *holds* when its ER@10 is at most
    :data:`MAX_ER` at a cost at most :data:`MAX_COST`.
    """
    out = []
    for mode in dict.fromkeys(str(r["mode"]) for r in rows):
        mine = [r for r in rows if r["mode"] == mode]
        clean = {r["defence"]: float(r["ndcg@10"]) for r in mine if r["attack"] == "none"}  # type: ignore[arg-type]
        hit = [r for r in mine if r["attack"] == attack and abs(float(r["share"]) - share) < 1e-9]  # type: ignore[arg-type]
        if "none" not in clean or not hit:
            continue
        scored = [
            (
                float(r["er@10"]),
                clean["none"] - clean.get(r["defence"], math.nan),
                str(r["defence"]),
            )  # type: ignore[arg-type]
            for r in hit
        ]
        cheap = [s for s in scored if s[1] <= MAX_COST]
        er, cost, defence = min(cheap or scored, key=lambda s: (s[0], s[1]))
        holds = er <= MAX_ER and cost <= MAX_COST
        why = "" if holds else LIMITATIONS.get(mode, f"measured ER@10 {er:.3f}, cost {cost:.4f}")
        out.append(
            {
                "mode": mode,
                "defence": defence,
                "er@10": er,
                "cost": cost,
                "holds": holds,
                "why": why,
            }
        )
    return out


def render_table(
    rows: Sequence[Mapping[str, object]], header: Sequence[str], *, share: float = 0.05
) -> str:
    """The attack table and the verdicts as Markdown (``header``: lines above the table)."""
    lines = [*header, ""]
    lines += [
        "| mode | defence | attack | fakes | ER@10 | NDCG@10 | clean NDCG cost of the defence |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    clean = {
        (r["mode"], r["defence"]): float(r["ndcg@10"])  # type: ignore[arg-type]
        for r in rows
        if r["attack"] == "none"
    }
    for r in rows:
        base = clean.get((r["mode"], "none"), math.nan)
        cost = base - clean.get((r["mode"], r["defence"]), math.nan)
        attack = "clean" if r["attack"] == "none" else f"{r['attack']} {float(r['share']):.0%}"  # type: ignore[arg-type]
        lines.append(
            f"| {r['mode']} | {r['defence']} | {attack} | {int(float(r['fakes']))} | "  # type: ignore[arg-type]
            f"{float(r['er@10']):.3f} | {float(r['ndcg@10']):.4f} | {cost:+.4f} |"  # type: ignore[arg-type]
        )
    lines += [
        "",
        f"Best defence per mode at {share:.0%} within-norm fakes (bar: ER@10 <= {MAX_ER}, "
        f"clean NDCG@10 cost <= {MAX_COST}):",
        "",
        "| mode | best defence | ER@10 | cost | holds | why not |",
        "| --- | --- | ---: | ---: | --- | --- |",
    ]
    for v in verdicts(rows, share=share):
        lines.append(
            f"| {v['mode']} | {v['defence']} | {float(v['er@10']):.3f} | "  # type: ignore[arg-type]
            f"{float(v['cost']):+.4f} | {'yes' if v['holds'] else 'no'} | {v['why']} |"  # type: ignore[arg-type]
        )
    return "\n".join(lines) + "\n"
