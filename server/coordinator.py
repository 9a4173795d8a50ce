"""The server's side of a round, independent of the transport.

:class:`Coordinator` owns the global item table and the server optimizer. It picks devices
(without looking at any device's data), validates replies, aggregates, steps, and combines
evaluation sums. The Flower strategy (:mod:`fedrec.server.strategy`) drives it over a Flower
``Grid``; the plain-loop benchmark drives it by calling devices directly. Replies are plain
:class:`Reply` objects either way.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedrec.common.config import RELEASE_ALGORITHMS, RunConfig
from fedrec.common.evaluation.metrics import combine_metric_sums
from fedrec.common.privacy.randomness import NoiseSource
from fedrec.common.privacy.secagg import secure_range, sgd_update_bounds
from fedrec.server.aggregation import (
    ServerOptimizer,
    make_server_optimizer,
    validate_delta,
    weighted_mean,
)
from fedrec.server.distributed_dp import DistributedDP, RoundPlan
from fedrec.server.spectral import SpectralServer
from fedrec.server.user_dp import UserLevelDP, noisy_mean

__all__ = ["Reply", "RoundReport", "Coordinator", "initial_global_state", "make_coordinator"]

log = logging.getLogger("fedrec.server")


@dataclass
class Reply:
    """A device's answer to a training request, as the server sees it.

    Exactly one of ``delta`` (an update), ``refusal`` (the device declined, with its reason)
    or ``error`` (the transport or the device failed) is set.
    """

    node: int
    delta: dict[str, np.ndarray] | None = None
    num_examples: float = 1.0
    metrics: dict[str, float] = field(default_factory=dict)
    refusal: str | None = None
    error: str | None = None


@dataclass
class RoundReport:
    """What happened in one training round (no per-device data)."""

    server_round: int
    sampled: int
    aggregated: int
    refused: int
    dropped: int
    drop_reasons: list[str]
    update_norm: float
    train_metrics: dict[str, float]

    def to_dict(self) -> dict[str, object]:
        """A JSON-able dict."""
        return {
            "round": self.server_round, "sampled": self.sampled, "aggregated": self.aggregated,
            "refused": self.refused, "dropped": self.dropped,
            "drop_reasons": self.drop_reasons, "update_norm": self.update_norm,
            **{f"train_{k}": v for k, v in self.train_metrics.items()},
        }


def initial_global_state(cfg: RunConfig, n_items: int) -> dict[str, np.ndarray]:
    """The server's initial item table, seeded by the run's seed (no data involved)."""
    import torch

    from fedrec.common.model.mf import MatrixFactorization

    model = MatrixFactorization(1, n_items, cfg.dim, item_bias=cfg.item_bias,
                                init_std=cfg.init_std,
                                generator=torch.Generator().manual_seed(cfg.seed))
    return model.global_state()


def make_coordinator(cfg: RunConfig, n_items: int, *, ledger_dir=None,
                     item_features: np.ndarray | None = None) -> Coordinator:
    """The coordinator a run's privacy mode calls for (weighting, user-level DP).

    ``item_features`` is the catalog's public feature matrix
    (:func:`fedrec.common.data.item_features.item_features`), needed by ``algorithm = "features"``.
    """
    user_dp = distributed = spectral = None
    if cfg.algorithm == "features":
        if item_features is None:
            raise ValueError("algorithm features needs the catalog's public item features")
        if item_features.ndim != 2 or item_features.shape[0] != n_items or \
                item_features.shape[1] > cfg.dim:
            raise ValueError(f"algorithm features: the catalog has {item_features.shape[1]} "
                             f"public item features for {item_features.shape[0]} items; they "
                             f"need {n_items} rows and dim >= {item_features.shape[1]} "
                             f"(dim is {cfg.dim}: set dim to at least "
                             f"{item_features.shape[1]})")
    if cfg.algorithm in RELEASE_ALGORITHMS:
        spectral = SpectralServer(cfg.spectral_spec(n_items), cfg.spectral_noise(),
                                  device_noise=cfg.privacy == "local",
                                  features=item_features if cfg.algorithm == "features"
                                  else None)
    noise = cfg.noise_source()
    if cfg.privacy == "distributed":
        local = cfg.local_config()
        distributed = DistributedDP(
            noise_multiplier=cfg.device_noise(), max_grad_norm=cfg.max_grad_norm,
            sample_rate=local.sample_rate, steps=local.steps,
            dropout_tolerance=cfg.dropout_tolerance, target_delta=cfg.delta,
            budget_epsilon=cfg.epsilon, accountant=cfg.accountant, ledger_dir=ledger_dir,
            randomness="seeded" if cfg.device_seed is not None else "os-entropy")
    if cfg.privacy == "user":
        clip = 1.0 if spectral is not None else cfg.user_clip  # spectral: sensitivity 1
        user_dp = UserLevelDP(sampling_probability=cfg.fraction_train, clip=clip,
                              noise_multiplier=cfg.user_noise(), target_delta=cfg.delta,
                              budget_epsilon=cfg.epsilon, ledger_dir=ledger_dir,
                              randomness=noise.label)
    return Coordinator(cfg, initial_global_state(cfg, n_items),
                       weighting="examples" if cfg.privacy == "off" else "uniform",
                       noise=noise, user_dp=user_dp, distributed=distributed,
                       spectral=spectral)


class Coordinator:
    """Global state and round logic of the server.

    Args:
        cfg: the run configuration (sampling fraction, server optimizer, limits).
        initial_state: the initial global parameters (item embeddings and biases).
        weighting: ``"examples"`` (weights from the replies' example counts: non-private
            runs) or ``"uniform"`` (each device counts once: DP runs, where devices do not
            reveal their example counts).
        noise: randomness of device sampling and of server-side noise
            (:meth:`RunConfig.noise_source`: OS entropy unless the run is reproducible).
        user_dp: server-side user-level DP (DP-FedAvg); ``None`` for none. With it, devices
            are Poisson-sampled, each update is clipped, and the mean carries Gaussian noise.
        distributed: distributed DP (devices add noise shares, the server sees only secure
            sums: :meth:`aggregate_sum`); ``None`` for none.
        spectral: the spectral algorithm's server state (replies are contributions to a
            popularity count or a co-occurrence matrix, not item-table deltas; the table is
            set after the second round); ``None`` for rounds of SGD.
    """

    def __init__(self, cfg: RunConfig, initial_state: Mapping[str, np.ndarray], *,
                 weighting: str = "examples", noise: NoiseSource | None = None,
                 user_dp: UserLevelDP | None = None, distributed: DistributedDP | None = None,
                 spectral: SpectralServer | None = None):
        if weighting not in ("examples", "uniform"):
            raise ValueError(f"weighting must be 'examples' or 'uniform', got {weighting!r}")
        self.cfg = cfg
        self.state = {k: np.asarray(v, dtype=np.float32).copy() for k, v in initial_state.items()}
        self.weighting = weighting
        self.optimizer: ServerOptimizer = make_server_optimizer(
            cfg.server_optimizer, lr=cfg.server_lr, beta1=cfg.server_beta1,
            beta2=cfg.server_beta2, tau=cfg.server_tau,
        )
        self.noise = noise if noise is not None else cfg.noise_source()
        self.rng = self.noise.rng
        self.user_dp = user_dp
        self.distributed = distributed
        self.spectral = spectral
        self._pool_size = 0
        self._participations: dict[int, int] = {}

    # --- sampling ----------------------------------------------------------------------------
    def sample(self, nodes: Sequence[int]) -> list[int]:
        """Devices for the next training round: ``ceil(fraction · N)`` of ``nodes``.

        The devices asked least often so far go first, ties broken at random: in effect
        shuffled passes over all nodes (each device trains once per pass before any trains
        twice), robust to nodes joining late. Every device's number of participations is thus
        known in advance, so calibration can plan its budget. No device data is used.
        """
        pool = sorted(int(n) for n in nodes)
        self._pool_size = len(pool)
        if not pool:
            return []
        if self.user_dp is not None:  # Poisson: the sampling the accountant assumes
            return self.user_dp.sample(pool, self.rng)
        if self.distributed is not None:
            # a device past its planned participations would decline (budget) and take its
            # noise share out of the sum: do not ask it (the plan is data-independent)
            cap = self.cfg.planned_participations
            pool = [n for n in pool if self._participations.get(n, 0) < cap]
            if not pool:
                return []
        want = max(1, math.ceil(self.cfg.fraction_train * len(pool) - 1e-9))
        # least-used first, random among equals (positions, not ids: ids may exceed int64)
        ties = self.rng.permutation(len(pool))
        order = sorted(range(len(pool)),
                       key=lambda i: (self._participations.get(pool[i], 0), ties[i]))
        chosen = [pool[i] for i in order[:want]]
        for n in chosen:
            self._participations[n] = self._participations.get(n, 0) + 1
        return chosen

    def sample_evaluation(self, nodes: Sequence[int]) -> list[int]:
        """Devices asked to evaluate (a fixed fraction, all by default)."""
        pool = sorted(int(n) for n in nodes)
        want = math.ceil(self.cfg.fraction_evaluate * len(pool) - 1e-9)
        if want >= len(pool):
            return pool
        picked = self.rng.choice(len(pool), size=want, replace=False)
        return sorted(pool[int(i)] for i in picked)

    # --- aggregation -------------------------------------------------------------------------
    def round_arrays(self, server_round: int) -> dict[str, np.ndarray]:
        """Arrays sent with a training request besides the item table (spectral: selection)."""
        if self.spectral is None:
            return {}
        return self.spectral.round_arrays(self.spectral.phase(server_round))

    def reply_reference(self, server_round: int, noise_share: float = 1.0
                        ) -> tuple[Mapping[str, np.ndarray], float]:
        """The arrays every reply of a round must match, and one reply's largest norm.

        SGD rounds: the item table and ``max-update-norm``. Spectral rounds: the phase's
        contribution, with a bound that allows for the noise devices add (times
        ``noise_share`` inside a secure sum).
        """
        if self.spectral is None:
            return self.state, self.cfg.max_update_norm
        phase = self.spectral.phase(server_round)
        return (self.spectral.reference(phase),
                self.spectral.reply_norm_bound(phase, noise_share))

    def _spectral_step(self, server_round: int, total: Mapping[str, np.ndarray]) -> float:
        """Use a spectral round's (noisy) sum; returns its norm."""
        assert self.spectral is not None
        phase = self.spectral.phase(server_round)
        new_state = self.spectral.finish(phase, total[phase])
        if new_state is not None:
            self.state = {k: np.asarray(v, dtype=np.float32) for k, v in new_state.items()}
        return float(np.linalg.norm(np.asarray(total[phase], dtype=np.float64)))

    def aggregate(self, server_round: int, replies: Sequence[Reply]) -> RoundReport:
        """Validate replies, aggregate the good ones and step the global state."""
        reference, max_norm = self.reply_reference(server_round)
        good: list[Reply] = []
        reasons: list[str] = []
        refused = 0
        for r in replies:
            if r.error is not None:
                reasons.append(f"node {r.node}: error: {r.error}")
            elif r.refusal is not None:
                refused += 1
            elif r.delta is None:
                reasons.append(f"node {r.node}: reply carries no update")
            else:
                why = validate_delta(r.delta, reference, max_norm=max_norm)
                if why is None and not (np.isfinite(r.num_examples) and r.num_examples > 0):
                    why = f"invalid example count {r.num_examples!r}"
                if why is None:
                    good.append(r)
                else:
                    reasons.append(f"node {r.node}: {why}")
        for reason in reasons:
            log.warning("round %d: dropped reply: %s", server_round, reason)
        norm = 0.0
        if self.spectral is not None:
            if self.secure:
                raise RuntimeError("spectral rounds without device noise go through the secure "
                                   "sum (aggregate_sum): their contributions are item indicators")
            phase = self.spectral.phase(server_round)
            if good:  # local DP: each contribution already carries its full noise
                total = {phase: np.sum([r.delta[phase] for r in good],  # type: ignore[index]
                                       axis=0, dtype=np.float64)}
                norm = self._spectral_step(server_round, total)
            else:
                log.warning("round %d: no contribution to sum; the round changed nothing",
                            server_round)
        elif self.user_dp is not None:
            # Noise is added even when no device replied: the release happens every round.
            mean = noisy_mean(
                [r.delta for r in good], self.state, clip=self.user_dp.clip,  # type: ignore[misc]
                noise_multiplier=self.user_dp.noise_multiplier,
                expected_count=max(1e-9, self.user_dp.sampling_probability * self._pool_size),
                noise=self.noise)
            self.user_dp.record(server_round)  # ledger first, then the table changes
            norm = float(np.sqrt(sum(float(np.square(v).sum()) for v in mean.values())))
            self.state = self.optimizer.step(self.state, mean)
        elif good:
            weights = [r.num_examples if self.weighting == "examples" else 1.0 for r in good]
            mean = weighted_mean([r.delta for r in good], weights)  # type: ignore[misc]
            norm = float(np.sqrt(sum(float(np.square(v).sum()) for v in mean.values())))
            self.state = self.optimizer.step(self.state, mean)
        train_metrics: dict[str, float] = {}
        keys = set().union(*(r.metrics for r in good)) if good else set()
        for k in sorted(keys):
            vals = [float(r.metrics[k]) for r in good if k in r.metrics]
            if k == "epsilon":
                train_metrics["epsilon_max"] = max(vals)
                train_metrics["epsilon_median"] = float(np.median(vals))
            else:
                train_metrics[k] = float(np.mean(vals))
        return RoundReport(
            server_round=server_round, sampled=len(replies), aggregated=len(good),
            refused=refused, dropped=len(reasons), drop_reasons=reasons, update_norm=norm,
            train_metrics=train_metrics,
        )

    @property
    def secure(self) -> bool:
        """Whether training rounds go through a secure sum (SecAgg+) instead of replies.

        Distributed DP, and the spectral algorithm whenever devices add no noise of their own
        (user-level DP, privacy off): its contributions are then the devices' item indicators,
        which must never reach the server one by one.
        """
        return self.distributed is not None or (self.spectral is not None
                                                and not self.spectral.device_noise)

    def plan_round(self, sampled: int, server_round: int) -> RoundPlan:
        """A secure round's provisioning: noise share (distributed DP) of ``sampled`` devices.

        Spectral rounds without device noise carry no noise share (user-level: the server
        adds the noise to the sum) and need no minimum beyond SecAgg+'s own.
        """
        if self.distributed is not None:
            plan = self.distributed.plan(sampled)
        elif self.secure:
            plan = RoundPlan(sampled=sampled, min_included=1, noise_share=0.0)
        else:
            raise RuntimeError("plan_round is for rounds with a secure sum")
        return dataclasses.replace(plan, clipping_range=self.secure_range(server_round, plan))

    def secure_range(self, server_round: int, plan: RoundPlan) -> float:
        """The SecAgg+ range of a secure round, from public quantities only.

        Every coordinate of a device's vector is its bounded signal plus its noise share;
        :func:`fedrec.common.privacy.secagg.secure_range` sizes the range so that clipping one needs
        an event of probability at most 1e-12 (the device then declines and the round aborts).
        """
        if self.spectral is not None:
            phase = self.spectral.phase(server_round)
            std = (self.spectral.noise_multiplier(phase) * self.spectral.spec.sensitivity(phase)
                   * plan.noise_share if self.distributed is not None else 0.0)
            return secure_range(1.0, std, math.prod(self.spectral.spec.shape(phase)))
        assert self.distributed is not None
        local = self.cfg.local_config()
        signal, std = sgd_update_bounds(
            lr=local.lr, steps=local.steps, max_grad_norm=self.cfg.max_grad_norm,
            batch_size_norm=local.batch_size_norm,
            noise_multiplier=self.distributed.noise_multiplier, noise_share=plan.noise_share)
        return secure_range(signal, std, sum(v.size for v in self.state.values()))

    def aggregate_sum(self, server_round: int, plan: RoundPlan,
                      total: Mapping[str, np.ndarray] | None, included: Sequence[int], *,
                      refused: int = 0, drop_reasons: Sequence[str] = ()) -> RoundReport:
        """Step with a secure sum of ``len(included)`` devices' updates.

        The server never holds an individual update here, only ``total``. It checks the sum
        (keys, shape, finite, norm at most ``len(included) · max-update-norm``), accounts the
        round for every included device at the noise actually present (before the table
        changes), then steps with the mean ``total / len(included)``. User-level spectral
        rounds instead add the user-level noise to the sum and record it in the server's
        ledger first.
        """
        if not self.secure:
            raise RuntimeError("aggregate_sum is for rounds with a secure sum")
        if self.distributed is None:
            return self._spectral_sum(server_round, plan, total, included, refused=refused,
                                      drop_reasons=drop_reasons)
        reasons = list(drop_reasons)
        n = len(included)
        norm = 0.0
        reference, max_norm = self.reply_reference(server_round, plan.noise_share)
        if total is not None and n > 0:
            why = validate_delta(dict(total), reference, max_norm=max_norm * n)
            if why is not None:
                reasons.append(f"secure sum rejected: {why}")
                n = 0
        if (total is not None and 0 < n < plan.min_included
                and self.cfg.dropout_policy == "abort"):
            reasons.append(f"secure sum not used: {n} devices summed, fewer than the "
                           f"{plan.min_included} provisioned for the full noise")
            n = 0
        if total is not None and n > 0:
            release: dict[str, object] = {}
            if self.spectral is not None:
                phase = self.spectral.phase(server_round)
                release = {"noise_multiplier": self.spectral.noise_multiplier(phase),
                           "sensitivity": self.spectral.spec.sensitivity(phase),
                           "sample_rate": 1.0, "steps": 1,
                           "purpose": f"secure-sum-spectral-{phase}"}
            provisioned = release.get("noise_multiplier", self.distributed.noise_multiplier)
            sigma = self.distributed.record(server_round, plan, [str(i) for i in included],
                                            **release)  # type: ignore[arg-type]
            if sigma < provisioned:  # type: ignore[operator]
                log.warning("round %d: %d of %d devices summed (provisioned %d): the sum carried "
                            "noise multiplier %.4g < %.4g, accounted as such", server_round, n,
                            plan.sampled, plan.min_included, sigma, provisioned)
            if self.spectral is not None:
                norm = self._spectral_step(server_round, total)
            else:
                mean = {k: (np.asarray(v, dtype=np.float64) / n).astype(np.float32)
                        for k, v in total.items()}
                norm = float(np.sqrt(sum(float(np.square(v).sum()) for v in mean.values())))
                self.state = self.optimizer.step(self.state, mean)
        for reason in reasons:
            log.warning("round %d: %s", server_round, reason)
        eps = [self.distributed.epsilon(str(i)) for i in included] if n > 0 else []
        metrics = ({"epsilon_max": max(eps), "epsilon_median": float(np.median(eps))}
                   if eps else {})
        return RoundReport(
            server_round=server_round, sampled=plan.sampled, aggregated=n, refused=refused,
            dropped=plan.sampled - n - refused, drop_reasons=reasons, update_norm=norm,
            train_metrics=metrics,
        )

    def _spectral_sum(self, server_round: int, plan: RoundPlan,
                      total: Mapping[str, np.ndarray] | None, included: Sequence[int], *,
                      refused: int, drop_reasons: Sequence[str]) -> RoundReport:
        """Spectral round on a secure sum: user-level noise added (and ledgered), then used.

        Under user-level DP each device's contribution has norm at most 1 (built so, and
        clipped to 1 on the device); the server never sees one, only the sum, to which it
        adds ``N(0, z²)`` per coordinate. With privacy off the sum is used as it is.
        """
        assert self.spectral is not None
        reasons = list(drop_reasons)
        phase = self.spectral.phase(server_round)
        reference, max_norm = self.reply_reference(server_round, plan.noise_share)
        n = len(included)
        if total is not None and n > 0:
            why = validate_delta(dict(total), reference, max_norm=max_norm * n)
            if why is not None:
                reasons.append(f"secure sum rejected: {why}")
                n = 0
        norm = 0.0
        eps: dict[str, float] = {}
        if total is not None and n > 0:
            noisy = {phase: np.asarray(total[phase], dtype=np.float64)}
            if self.user_dp is not None:
                z = self.spectral.noise_multiplier(phase)
                noisy[phase] = noisy[phase] + self.noise.normal(
                    z * self.user_dp.clip, reference[phase].shape)
                self.user_dp.record(server_round, noise_multiplier=z,
                                    purpose=f"spectral-{phase}")
                eps = {"epsilon_user": self.user_dp.epsilon()}
            norm = self._spectral_step(server_round, noisy)
        for reason in reasons:
            log.warning("round %d: %s", server_round, reason)
        return RoundReport(
            server_round=server_round, sampled=plan.sampled, aggregated=n, refused=refused,
            dropped=plan.sampled - n - refused, drop_reasons=reasons, update_norm=norm,
            train_metrics=eps,
        )

    @staticmethod
    def combine_evaluation(sums: Sequence[Mapping[str, float]]) -> dict[str, float]:
        """Means of the devices' metric sums (keys like ``ndcg@10``, plus ``users``)."""
        sums = [s for s in sums if s and s.get("users", 0) > 0]
        if not sums:
            return {}
        return combine_metric_sums(sums)
