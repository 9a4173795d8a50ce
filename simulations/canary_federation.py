"""Canary audits of whole federated runs: every algorithm in every privacy mode.

Each audit runs fedrec's own round loop (the coordinator with the run's algorithm and privacy
mechanism, devices called in-process: :func:`fedrec.server.round_loop.run_round` over
:class:`~fedrec.simulations.in_process.InProcessTransport`) on a small federation of real
devices, plus canaries each included with probability ½ (the one-run audit of Steinke, Nasr
and Jagielski, 2023, :mod:`fedrec.common.audit.canary`):

* **example-level** modes (``off``, ``local``, ``distributed``): canary *interactions*. The
  catalog gets ``m`` canary items nobody else holds; device 0 holds, besides its own items,
  an interaction with each included canary item. Each canary is scored from what the server
  receives alone: its item's DP popularity count where the algorithm releases one
  (``spectral``, ``features``, ``popularity``, ``warm-sgd``), else the change of its item's
  bias in the published table (``sgd``: a DP-SGD step pushes a trained item's bias up).
* **user-level** (``user``): canary *devices*, in the manner of Andrew et al., "One-shot
  empirical privacy estimation for federated learning" (ICLR 2024). Canary ``j`` is a device
  whose contribution ignores any data and is a random direction ``u_j`` of the largest norm
  a device may send, on a canary item's row of the contribution (so canaries do not
  interfere with each other); an included canary joins the population, a held-out one never
  does. The statistic is the cosine between the published table's change and ``u_j``.
  Besides the one-run bound, the report gives Andrew et al.'s ε *estimate* from Gaussians
  fitted to the cosines of inserted and held-out canaries.

The claim is what the run records: device 0's accountant (example-level) or the server's
(user-level), at the run's δ. "Noise off" runs the same code with a noise source that draws
zeros while every release still records (and claims) the calibrated noise: the broken
implementation the audit must catch. The number of canaries is sized so that the claim is
detectable (:func:`~fedrec.common.audit.canary.size_canaries`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedrec.common.privacy.randomness import NoiseSource

__all__ = ["MODES", "CanaryRow", "audit_federation", "canary_table", "format_table"]

#: The privacy modes, in table order.
MODES = ("off", "local", "distributed", "user")
#: The federation around the canaries: real devices and the items they hold.
REAL_DEVICES, REAL_ITEMS, ITEMS_PER_DEVICE = 8, 40, 12
#: Steps of local DP-SGD (``sgd``): enough for a trained canary's bias to stand out from the
#: negatives its item was drawn as, with the noise off.
SGD_EPOCHS = 40


@dataclass
class CanaryRow:
    """One audit: an algorithm in a privacy mode, honest or with the noise switched off.

    Attributes:
        algorithm: registry name.
        mode: privacy mode.
        variant: ``"honest"`` or ``"noise off"``.
        claimed_epsilon: the ε the run records (``None``: no claim, or refused).
        delta: δ of the claim and of the bound.
        canaries: ``"interactions"`` or ``"devices"``.
        m: canaries; r: guesses; v: correct guesses.
        lower_bound: the one-run ε lower bound at 95 % confidence.
        detectable: the largest bound these ``m`` and ``r`` could give.
        estimate: Andrew et al.'s Gaussian-fit ε estimate (user-level canaries).
        verdict: ``consistent``, ``VIOLATION``, ``caught``, ``NOT CAUGHT``, ``no claim``,
            ``refused``.
        note: why, where the verdict needs a reason.
        seconds: wall time.
    """

    algorithm: str
    mode: str
    variant: str
    claimed_epsilon: float | None = None
    delta: float = 1e-5
    canaries: str = ""
    m: int = 0
    r: int = 0
    v: int = 0
    lower_bound: float = math.nan
    detectable: float = math.nan
    estimate: float | None = None
    verdict: str = ""
    note: str = ""
    seconds: float = 0.0


class _NoNoise(NoiseSource):
    """The broken implementation under audit: sampling as usual, every noise draw zero."""

    def __init__(self, seed: int):
        super().__init__(seed)
        self._seed = None  # so that devices take their noise from normal(), which is zero

    @property
    def label(self) -> str:
        """What ledgers record (the run still claims its calibrated noise)."""
        return "noise-off-audit"

    def normal(self, std: float, shape: int | tuple[int, ...]) -> np.ndarray:
        """Zeros: the noise is switched off."""
        return np.zeros(shape, dtype=np.float64)


def _config(algorithm: str, mode: str, *, epsilon: float, delta: float, seed: int):  # noqa: ANN202
    """The audited run's configuration: the fewest rounds the algorithm accepts."""
    from fedrec.common.config import RunConfig

    settings = dict(
        algorithm=algorithm,
        privacy=mode,
        fraction_train=1.0,
        fraction_evaluate=0.0,
        dim=4,
        spectral_top_items=8,
        spectral_max_items=8,
        local_epochs=float(SGD_EPOCHS),
        sample_rate=1.0,
        loss="bpr",
        local_lr=0.5,
        server_lr=1.0,
        epsilon=epsilon,
        delta=delta,
        reproducible=True,
        seed=seed,
        user_clip=1.0,
    )
    for rounds in range(1, 6):
        try:
            return RunConfig(num_rounds=rounds, **settings)
        except ValueError as exc:
            if "num-rounds" not in str(exc) or rounds == 5:
                raise
    raise AssertionError("unreachable")


def _real_items(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng([seed, 11])
    weights = 1.0 / np.arange(1, REAL_ITEMS + 1)  # a long tail
    return [
        np.sort(rng.choice(REAL_ITEMS, ITEMS_PER_DEVICE, replace=False, p=weights / weights.sum()))
        for _ in range(REAL_DEVICES)
    ]


def _features(n_items: int, dim: int) -> np.ndarray:
    """Public one-hot "genres" of the catalog (the features algorithm needs some)."""
    out = np.zeros((n_items, dim), dtype=np.float32)
    out[np.arange(n_items), np.arange(n_items) % dim] = 1.0
    return out


class _Federation:
    """The coordinator and devices of one audited run (devices built on first use)."""

    def __init__(self, cfg, items: Sequence[np.ndarray], n_items: int, *, noise_off: bool):  # noqa: ANN001
        from fedrec.server.coordinator import make_coordinator

        self.cfg, self.items, self.n_items, self.noise_off = cfg, list(items), n_items, noise_off
        needs = cfg.algorithm_class().needs_item_features
        self.coord = make_coordinator(
            cfg, n_items, item_features=_features(n_items, cfg.dim) if needs else None
        )
        if noise_off:
            self.coord.mechanism.noise = _NoNoise(cfg.seed)
        self.devices: dict[int, Any] = {}
        self.extra: dict[int, Any] = {}  # canary devices, by node id
        self.initial = {k: np.array(v, dtype=np.float64) for k, v in self.coord.state.items()}

    def device(self, u: int):  # noqa: ANN201 - a Device (or a canary device)
        if u in self.extra:
            return self.extra[u]
        if u not in self.devices:
            self.devices[u] = self._build(u)
        return self.devices[u]

    def _build(self, u: int):  # noqa: ANN202
        from fedrec.client.device import Device
        from fedrec.common.config import DEVICE_DP_MODES
        from fedrec.simulations.federation import device_algorithm

        cfg = self.cfg
        dp = cfg.dp_config(cfg.device_noise()) if cfg.privacy in DEVICE_DP_MODES else None
        dev = Device(
            f"device-{u:06d}",
            self.items[u],
            n_items=self.n_items,
            dim=cfg.dim,
            local=cfg.local_config(),
            dp=dp,
            algorithm=device_algorithm(cfg, self.n_items),
            item_bias=cfg.item_bias,
            init_std=cfg.init_std,
            seed=cfg.device_seed,
            report_metrics=cfg.privacy == "off",
        )
        if self.noise_off:
            dev.noise = _NoNoise(cfg.seed + 1 + u)
        return dev

    def run(self) -> dict[str, np.ndarray]:
        """Every round; returns the published table's change."""
        from fedrec.server.round_loop import run_round
        from fedrec.simulations.in_process import InProcessTransport

        n = len(self.items) + len(self.extra)
        transport = InProcessTransport(n, self.device, rng=np.random.default_rng(self.cfg.seed))
        for rnd in range(1, self.cfg.num_rounds + 1):
            report = run_round(self.coord, transport, rnd)
            if report.aggregated < report.sampled:  # a lost contribution would bias the audit
                raise RuntimeError(
                    f"canary audit round {rnd}: {report.aggregated} of {report.sampled} "
                    f"contributions aggregated ({'; '.join(report.drop_reasons)})"
                )
        return {k: np.asarray(v, np.float64) - self.initial[k] for k, v in self.coord.state.items()}


class _CanaryDevice:
    """A canary device (Andrew et al.): its contribution is a fixed direction, whatever the task.

    ``direction`` has the shape of one item row of the contribution (``dim + 1`` values for a
    table update, 1 for a count); it is placed on item ``row`` of every array, at the largest
    norm a device may send, and zero elsewhere (zero in rounds about other items).
    """

    dp = None
    ledger_head = None

    def __init__(self, algorithm, row: int, direction: np.ndarray):  # noqa: ANN001
        self.algorithm, self.row, self.direction = algorithm, row, direction

    def check_secure(self, session, *, noise_share, task) -> None:  # noqa: ANN001
        """A canary takes part in any secure sum."""
        return None

    def contribute(self, task, state, server_round, *, noise_share):  # noqa: ANN001, ANN201
        """The canary direction, scaled to the contribution's bound."""
        from fedrec.common.algorithms.base import Contribution

        spec = self.algorithm.contribution(task)
        norm = min(spec.sensitivity, spec.coordinate_bound)
        arrays = {k: np.zeros(s, dtype=np.float32) for k, s in spec.shapes.items()}
        if "item_embedding.weight" in arrays:  # a table update: the row's embedding and bias
            if len(self.direction) > 1:
                arrays["item_embedding.weight"][self.row] = norm * self.direction[:-1]
            arrays["item_bias.weight"][self.row, 0] = norm * self.direction[-1]
        elif task.name in ("count", "popularity"):  # an item count
            arrays[task.name][self.row] = norm * self.direction[0]
        return Contribution(arrays)


def _claim(fed: _Federation) -> float | None:
    """The ε the run records: the server's (user-level) or device 0's (example-level)."""
    if fed.cfg.privacy == "user":
        return float(fed.coord.mechanism.epsilon())
    if fed.cfg.privacy == "off":
        return None
    return float(fed.device(0).epsilon_spent())


def _interaction_scores(cfg, included: np.ndarray, *, noise_off: bool, out: dict) -> np.ndarray:  # noqa: ANN001
    """Device 0 holds the included canary items; each canary is scored from the server's view.

    The score is the item's DP count (algorithms with a popularity release) or the change of
    its bias (table updates).
    """
    items = _real_items(cfg.seed)
    items[0] = np.concatenate([items[0], REAL_ITEMS + np.flatnonzero(included)])
    fed = _Federation(cfg, items, REAL_ITEMS + len(included), noise_off=noise_off)
    change = fed.run()
    out["claim"] = _claim(fed)
    if not _counts(fed.coord.algorithm):
        return change["item_bias.weight"][REAL_ITEMS:, 0]
    return _released_count(fed)[REAL_ITEMS:]


def _count_of(algorithm) -> np.ndarray | None:  # noqa: ANN001
    """The DP popularity count an algorithm received, if it makes one (else None)."""
    if algorithm.name == "popularity":  # the count is the bias: see _released_count
        return None
    for owner in (algorithm, getattr(algorithm, "spectral", None)):  # spectral, features, warm
        count = getattr(owner, "popularity", None)
        if count is not None:
            return np.asarray(count, dtype=np.float64)
    return None


def _counts(algorithm) -> bool:  # noqa: ANN001
    """Whether canaries are scored by a DP popularity count (else by the table's change)."""
    return (
        algorithm.name == "popularity"
        or hasattr(algorithm, "popularity")
        or hasattr(algorithm, "spectral")
    )


def _released_count(fed: _Federation) -> np.ndarray:
    """The DP popularity count the server received (the table is a function of it)."""
    count = _count_of(fed.coord.algorithm)
    if count is None:  # popularity: the count is the bias
        count = np.asarray(fed.coord.state["item_bias.weight"], dtype=np.float64)[:, 0]
    return count


def _device_scores(cfg, included: np.ndarray, *, noise_off: bool, out: dict) -> np.ndarray:  # noqa: ANN001
    """Included canary devices join; each canary's score is the cosine with its direction."""
    m = len(included)
    fed = _Federation(cfg, _real_items(cfg.seed), REAL_ITEMS + m, noise_off=noise_off)
    table = not _counts(fed.coord.algorithm)
    rng = np.random.default_rng([cfg.seed, 13])
    directions = rng.normal(size=(m, cfg.dim + 1 if table else 1))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    if not table:
        directions = np.abs(directions)  # a count: the canary adds its item once
    for node, j in enumerate(np.flatnonzero(included), start=REAL_DEVICES):
        fed.extra[node] = _CanaryDevice(fed.coord.algorithm, REAL_ITEMS + int(j), directions[j])
    change = fed.run()
    out["claim"] = _claim(fed)
    if table:  # the change of the table, row by row
        rows = np.concatenate([change["item_embedding.weight"], change["item_bias.weight"]], 1)
    else:  # the released DP count, as for canary interactions
        rows = _released_count(fed)[:, None]
    norm = float(np.linalg.norm(rows))
    return (rows[REAL_ITEMS:] * directions).sum(axis=1) / (norm if norm > 0 else 1.0)


def _sizing(claim: float, delta: float, beta: float) -> tuple[Any, str]:
    """The fewest canaries for ``claim``; past what any number can detect, the most useful."""
    from fedrec.common.audit.canary import (
        CanarySizing,
        CanarySizingError,
        detectable_epsilon,
        size_canaries,
    )

    try:
        return size_canaries(claim, delta=delta, beta=beta), ""
    except CanarySizingError as exc:
        why = str(exc)
    r = 20_000  # about where the detectable maximum saturates; the row says it falls short
    m = r + int(math.ceil(6 * math.sqrt(r))) + 2
    best = detectable_epsilon(m, r, beta=beta, delta=delta)
    return CanarySizing(m, r // 2, r // 2, best, claim, delta, beta), why


def audit_federation(
    algorithm: str,
    mode: str,
    *,
    noise_off: bool = False,
    epsilon: float = 8.0,
    delta: float = 1e-5,
    seed: int = 0,
    beta: float = 0.05,
    m: int | None = None,
) -> CanaryRow:
    """Audit one small federated run of ``algorithm`` in privacy ``mode`` with canaries.

    Args:
        algorithm: a registered algorithm.
        mode: ``off``, ``local``, ``distributed`` or ``user``.
        noise_off: switch every noise draw off (devices' and server's) while the run still
            records and claims its calibrated noise: the broken run the audit must catch.
        epsilon: the run's budget (the noise is calibrated to it); canaries are sized for it.
        delta: the run's δ (and the bound's).
        seed: seeds the federation, the noise and the canaries' inclusion.
        beta: 1 - confidence of the bound.
        m: canaries (default: sized so that ``epsilon`` is detectable); guesses are ``m/2 -
            3√m`` on each side.

    Returns:
        The row: claim, canaries, guesses, bound, detectable maximum and verdict (``refused``
        with the reason for a mode the algorithm cannot run in).
    """
    from fedrec.common.audit.canary import detectable_epsilon, run_canary_audit

    t0 = time.perf_counter()
    row = CanaryRow(
        algorithm,
        mode,
        "noise off" if noise_off else ("no DP" if mode == "off" else "honest"),
        delta=delta,
        canaries="devices" if mode == "user" else "interactions",
    )
    try:  # the configuration refuses a mode the algorithm cannot run in, with the reason
        cfg = _config(algorithm, mode, epsilon=epsilon, delta=delta, seed=seed)
    except ValueError as exc:
        row.verdict, row.note = "refused", str(exc)
        return row
    why = ""
    if m is None:
        sizing, why = _sizing(epsilon, delta, beta)
        m, guesses = sizing.m, (sizing.k_plus, sizing.k_minus)
    else:
        side = max(1, m // 2 - int(math.ceil(3 * math.sqrt(m))))
        guesses = (side, side)
    out: dict[str, Any] = {}
    score: Callable[..., np.ndarray] = _device_scores if mode == "user" else _interaction_scores
    result = run_canary_audit(
        lambda included: score(cfg, included, noise_off=noise_off, out=out),
        m=m,
        seed=np.random.default_rng([seed, 5]),
        beta=beta,
        delta=delta,
        k_guesses=guesses,
    )
    row.claimed_epsilon = out.get("claim")
    row.m, row.r, row.v = result.m, result.r, result.v
    row.lower_bound = result.epsilon_lower_bound
    row.detectable = detectable_epsilon(result.m, result.r, beta=beta, delta=delta)
    if mode == "user":
        from fedrec.common.audit.canary import gaussian_epsilon_estimate

        inc = result.included
        row.estimate = gaussian_epsilon_estimate(
            result.scores[inc], result.scores[~inc], delta=delta
        )
    _judge(row, why)
    row.seconds = time.perf_counter() - t0
    return row


def _judge(row: CanaryRow, why: str) -> None:
    """The row's verdict, and why where it needs a reason."""
    claim = row.claimed_epsilon
    if claim is None:
        row.verdict = "no claim"
        row.note = "privacy off: nothing is claimed; the bound is what the canaries reveal"
        return
    refuted = row.lower_bound > claim
    if row.variant == "honest":
        row.verdict = "VIOLATION" if refuted else "consistent"
        if refuted:
            row.note = "the lower bound exceeds the claim: the accounting or the code is wrong"
        return
    row.verdict = "caught" if refuted else "NOT CAUGHT"
    if refuted:
        return
    if row.detectable <= claim:
        row.note = (
            f"the claim is above the detectable maximum {row.detectable:.2f} of {row.m} "
            f"canaries at delta {row.delta:g}" + (f" ({why})" if why else "")
        )
    else:
        row.note = (
            f"{row.r - row.v} of {row.r} guesses wrong: the scores did not separate included "
            "from held-out canaries well enough"
        )


def canary_table(
    *,
    algorithms: Sequence[str] | None = None,
    modes: Sequence[str] = MODES,
    epsilon: float = 8.0,
    delta: float = 1e-5,
    seed: int = 0,
    m: int | None = None,
    progress: Callable[[CanaryRow], None] | None = None,
) -> list[CanaryRow]:
    """Every algorithm × privacy mode, honest and with the noise off (privacy off: once).

    Arguments as :func:`audit_federation`'s; ``progress`` is called with each row.
    """
    from fedrec.common.algorithms.registry import REGISTRY

    rows = []
    for algorithm in algorithms or tuple(REGISTRY):
        for mode in modes:
            for noise_off in (False,) if mode == "off" else (False, True):
                row = audit_federation(
                    algorithm,
                    mode,
                    noise_off=noise_off,
                    epsilon=epsilon,
                    delta=delta,
                    seed=seed,
                    m=m,
                )
                rows.append(row)
                if progress is not None:
                    progress(row)
    return rows


def _num(x: float | None, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return "∞" if math.isinf(x) else f"{x:.{digits}f}"


def format_table(rows: Sequence[CanaryRow]) -> str:
    """The rows as a Markdown table, then one line per row that needs a reason."""
    head = (
        "| algorithm | mode | run | canaries | m | guesses | correct | detectable max "
        "| lower bound | claim ε | Andrew ε̂ | verdict |"
    )
    lines = [head, "|" + " --- |" * 12]
    notes = []
    for i, row in enumerate(rows, 1):
        mark = f" [{i}]" if row.note else ""
        if row.note:
            notes.append(f"[{i}] {row.algorithm}/{row.mode}/{row.variant}: {row.note}")
        if row.verdict == "refused":
            lines.append(
                f"| {row.algorithm} | {row.mode} | {row.variant} | — | — | — | — | — | — | — "
                f"| — | refused{mark} |"
            )
            continue
        lines.append(
            f"| {row.algorithm} | {row.mode} | {row.variant} | {row.canaries} | {row.m} "
            f"| {row.r} | {row.v} | {_num(row.detectable)} | {_num(row.lower_bound)} "
            f"| {_num(row.claimed_epsilon)} | {_num(row.estimate)} | {row.verdict}{mark} |"
        )
    return "\n".join(lines + ([""] + notes if notes else []))
