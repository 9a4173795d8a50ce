"""The same devices and server logic driven by a plain Python loop in one process.

Not the product's simulation (that is :mod:`fedrec.simulations.runner`, on Flower's engine):
this is the reference the benchmark compares Flower's overhead against, and a quick way to
explore training recipes. Every device-side and server-side computation is the same code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fedrec.client.device import Device, Refusal, TrainReply
from fedrec.common.config import RunConfig
from fedrec.common.evaluation.metrics import combine_noisy_sums
from fedrec.common.privacy.policy import PolicyViolation
from fedrec.common.privacy.secagg import SecureSession, exceeds_range
from fedrec.server.coordinator import Coordinator, Reply, RoundReport, make_coordinator
from fedrec.server.distributed_dp import RoundPlan
from fedrec.simulations.federation import federated_dataset, federated_features, make_device

__all__ = ["PlainResult", "run_plain", "central_evaluation"]

_KEEP_DEVICES = 5000


@dataclass
class PlainResult:
    """Per-round reports and evaluations of a plain-loop run, and the final item table."""

    rounds: list[dict[str, object]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    state: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0
    train_seconds: float = 0.0


def central_evaluation(devices: dict[int, Device], state: dict[str, np.ndarray],
                       ks: tuple[int, ...]) -> dict[str, float]:
    """Evaluate with the server's metrics code on all devices' embeddings (simulation only).

    Gathers every device's user embedding into one model and calls
    :func:`fedrec.common.evaluation.metrics.evaluate`, an independent path to the federated
    evaluation.
    """
    from fedrec.common.data.schema import IdMap, Interactions
    from fedrec.common.evaluation.metrics import evaluate

    users = sorted(devices)
    n_items = next(iter(devices.values())).model.n_items
    emb = np.concatenate([devices[u].model.local_state()["user_embedding.weight"] for u in users])
    scores = emb @ state["item_embedding.weight"].T + state["item_bias.weight"].T

    def _inter(kind: str) -> Interactions:
        rows = [(i, it) for i, u in enumerate(users)
                for it in getattr(devices[u], kind) if getattr(devices[u], kind) is not None]
        arr = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
        return Interactions(arr[:, 0], arr[:, 1], np.ones(len(arr)), np.zeros(len(arr)),
                            IdMap(map(str, users)), IdMap(map(str, range(n_items))))

    return evaluate(lambda rows: scores[rows], _inter("train_items"), _inter("test_items"), ks=ks)


class _ClearSecureSum:
    """What SecAgg+ computes, as a plain running sum (the loop is a reference, not a deployment).

    Replies are added as they come and not kept: a round of 20,000 co-occurrence replies would
    otherwise hold gigabytes. ``dropout`` drops each update with that probability, as if its
    device had gone offline mid-round. As in SecAgg+, a reply with a value beyond the plan's
    clipping range is never added: its device declines (``secure-range``) and the round
    aborts before the sum is used.
    """

    def __init__(self, rng: np.random.Generator, dropout: float, plan: RoundPlan):
        self.rng, self.dropout, self.plan = rng, dropout, plan
        self.session = SecureSession(clipping_range=plan.clipping_range, group_size=plan.sampled)
        self.total: dict[str, np.ndarray] | None = None
        self.included: list[int] = []
        self.refused = 0
        self.out_of_range = 0

    def add(self, reply: Reply) -> None:
        if reply.refusal is not None:
            self.refused += 1
            return
        if reply.delta is not None and exceeds_range(reply.delta, self.plan.clipping_range):
            self.out_of_range += 1
            return
        if reply.delta is None or (self.dropout > 0 and self.rng.random() < self.dropout):
            return
        if self.total is None:
            self.total = {k: np.zeros(v.shape, dtype=np.float64) for k, v in reply.delta.items()}
        for k in self.total:
            self.total[k] += reply.delta[k]
        self.included.append(reply.node)

    def report(self, coord: Coordinator, rnd: int) -> RoundReport:
        total = (None if self.total is None or self.out_of_range
                 else {k: v.astype(np.float32) for k, v in self.total.items()})
        reasons = ([f"secure sum aborted: {self.out_of_range} noised share(s) beyond the range"]
                   if self.out_of_range else [])
        return coord.aggregate_sum(rnd, self.plan, total, [] if total is None else self.included,
                                   refused=self.refused, drop_reasons=reasons)


def _device_round(dev: Device, rnd: int, state: dict[str, np.ndarray], phase: str | None,
                  share: float | None, extra: dict[str, np.ndarray],
                  session: SecureSession | None) -> TrainReply | Refusal:
    """One device's answer to a round, with the checks its ClientApp would make."""
    try:
        dev.check_secure(session, noise_share=share, phase=phase)
    except PolicyViolation as violation:
        return Refusal(violation.code, violation.detail)
    if phase is not None:
        return dev.spectral_round(phase, rnd, noise_share=share,
                                  selected=extra.get("selected-items"))
    return dev.train(state, rnd, noise_share=share)


def _federated_evaluation(cfg: RunConfig, rnd: int, state: dict[str, np.ndarray],
                          devices: list[tuple[int, Device]], done: Callable) -> dict[str, float]:
    """The noised means of the devices' evaluation releases (what a server would learn)."""
    releases = []
    for u, dev in devices:
        out = dev.evaluation_release(state, cfg.k_values, rnd,
                                     noise_multiplier=cfg.eval_noise_multiplier)
        done(u, dev)
        if not isinstance(out, Refusal):
            releases.append(out)
    return combine_noisy_sums(releases)


def run_plain(cfg: RunConfig, *, on_round: Callable[[dict[str, object]], None] | None = None,
              ledger_dir=None, dropout: float = 0.0) -> PlainResult:
    """Run ``cfg`` with devices called in a loop; returns reports per round.

    ``dropout`` (distributed DP only) drops each device's update from the sum with that
    probability, as if it had gone offline mid-round.
    """
    t0 = time.perf_counter()
    fed = federated_dataset(cfg)
    features = federated_features(cfg) if cfg.algorithm == "features" else None
    coord = make_coordinator(cfg, fed.n_items, ledger_dir=ledger_dir, item_features=features)
    devices: dict[int, Device] = {}
    # Large populations keep only each device's own state (user embedding, accountant, RNG)
    # and rebuild the device per use, as a Flower ClientApp does: a Device holds a copy of
    # the item table, and 20,000 of them would not fit in memory.
    keep_devices = fed.n_users <= _KEEP_DEVICES
    states: dict[int, dict[str, object]] = {}

    def device(u: int) -> Device:
        if u in devices:
            return devices[u]
        dev = make_device(fed, u, cfg, ledger_dir=ledger_dir)
        if keep_devices:
            devices[u] = dev
        elif u in states:
            dev.load_state_dict(states[u])
        return dev

    def done(u: int, dev: Device) -> None:
        if not keep_devices:
            states[u] = dev.state_dict()

    result = PlainResult()
    nodes = list(range(fed.n_users))
    drop_rng = np.random.default_rng([cfg.seed, 7])
    for rnd in range(1, cfg.num_rounds + 1):
        t_round = time.perf_counter()
        replies = []
        sampled = coord.sample(nodes)
        plan = coord.plan_round(len(sampled), rnd) if coord.secure and sampled else None
        share = plan.noise_share if plan is not None and coord.distributed is not None else None
        extra = coord.round_arrays(rnd)
        clear_sum = _ClearSecureSum(drop_rng, dropout, plan) if plan is not None else None
        phase = coord.spectral.phase(rnd) if coord.spectral is not None else None
        for u in sampled:
            dev = device(u)
            out = _device_round(dev, rnd, coord.state, phase, share, extra,
                                clear_sum.session if clear_sum is not None else None)
            done(u, dev)
            if isinstance(out, Refusal):
                reply = Reply(node=u, refusal=str(out.code))
            else:
                metrics = dict(out.metrics)
                if cfg.privacy in ("local", "distributed"):
                    metrics["epsilon"] = dev.epsilon_spent()
                reply = Reply(node=u, delta=out.delta, num_examples=out.num_examples,
                              metrics=metrics)
            if clear_sum is not None:  # the secure sum, computed in the clear
                clear_sum.add(reply)
            else:
                replies.append(reply)
        if clear_sum is not None:
            report = clear_sum.report(coord, rnd).to_dict()
        else:
            report = coord.aggregate(rnd, replies).to_dict()
        result.train_seconds += time.perf_counter() - t_round
        if rnd in cfg.eval_rounds:
            users = coord.sample_evaluation(range(fed.n_real_users))
            sums = [device(u).evaluate(coord.state, cfg.k_values) for u in users]
            report["eval"] = coord.combine_evaluation([s for s in sums if s])  # measured
            if cfg.federated_evaluation and cfg.privacy != "off":  # a release, accounted
                report["federated_eval"] = _federated_evaluation(
                    cfg, rnd, coord.state, [(u, device(u)) for u in users], done)
        report["seconds"] = time.perf_counter() - t_round
        result.rounds.append(report)
        if on_round is not None:
            on_round(report)
    evaluated = {u: device(u) for u in range(fed.n_real_users)}  # real users only
    result.final = central_evaluation(evaluated, coord.state, cfg.k_values)
    result.state = {k: v.copy() for k, v in coord.state.items()}
    result.seconds = time.perf_counter() - t0
    return result
