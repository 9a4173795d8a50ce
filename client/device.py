"""One device: its interactions, its user embedding, its accountant, its ledger.

:class:`Device` is plain Python (no Flower): the Flower ``ClientApp`` wraps it, a benchmark
runs it in a loop, and an app embeds it. In a round the device

1. refuses, with a stated reason, if the round would take it past its ε budget;
2. loads the server's item table, trains locally (DP-SGD when on, every trainable parameter
   including its user embedding under the private optimizer);
3. records the privacy event (ledger hook) *before* the update leaves;
4. returns only the dense delta of the global (item) parameters, one fixed shape whatever
   items it touched, and, with DP off only, its example count and loss.

The user embedding and the interactions never appear in anything a method returns for
sending; :meth:`Device.state_dict` is for the device's own storage.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from fedrec.client import budget
from fedrec.common.algorithms.features import profile_fold_in
from fedrec.common.algorithms.spectral import PHASES, SpectralSpec, contribution
from fedrec.common.evaluation.metrics import evaluation_keys, user_metric_sums
from fedrec.common.model.mf import GLOBAL_KEYS, MatrixFactorization
from fedrec.common.privacy.dpsgd import DPConfig, LocalConfig, make_accountant, train_local
from fedrec.common.privacy.policy import PolicyViolation, RefusalCode, check_arrays
from fedrec.common.privacy.randomness import NoiseSource, derive_seed
from fedrec.common.privacy.secagg import SecureSession, secure_range, sgd_update_bounds

__all__ = ["Device", "TrainReply", "Refusal", "PrivacyEvent"]


@dataclass(frozen=True)
class PrivacyEvent:
    """One DP release by a device: what its ledger records before the update leaves."""

    device_id: str
    server_round: int
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    target_delta: float
    budget_epsilon: float
    claimed_epsilon: float
    accountant: str
    purpose: str = "dp-sgd"
    randomness: str = "os-entropy"


@dataclass
class TrainReply:
    """What a device sends after training: the item-table delta and harmless metadata."""

    delta: dict[str, np.ndarray]
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Refusal:
    """A device declined a round.

    Only ``code`` (a :class:`~fedrec.common.privacy.policy.RefusalCode`) is ever sent; ``detail`` is
    for the device's own log, and the ε figures for its own reports.
    """

    code: RefusalCode
    detail: str = ""
    epsilon_spent: float = 0.0
    epsilon_needed: float = 0.0

    @property
    def reason(self) -> str:
        """Code and detail in words (local logs only)."""
        return f"{self.code}: {self.detail}" if self.detail else str(self.code)


class Device:
    """A simulated or embedded device holding one user's data and state.

    Args:
        device_id: a stable id (used for seeds and the ledger).
        train_items: the user's training item indices (positives).
        n_items: catalog size (must match the server's item table).
        dim: embedding dimension (must match the server's item table).
        local: local training recipe.
        dp: DP-SGD settings, or ``None`` to train without privacy.
        test_items: held-out items for on-device evaluation (optional).
        item_bias: whether the item biases are trained.
        init_std: initialisation scale of the user embedding.
        seed: seeds the user embedding and the local sampling and noise (reproducible
            simulations: not private against anyone who knows the seed); ``None`` (the
            default) draws everything from OS entropy
            (:class:`~fedrec.common.privacy.randomness.NoiseSource`).
        on_release: called with a :class:`PrivacyEvent` after local DP training and before
            the reply is returned (the ledger writer). If it raises, nothing is sent.
        report_metrics: with DP off, send the example count and the training loss (both are
            data; set False when the protection is elsewhere, e.g. server-side user-level DP).
        spectral: the run's spectral settings (``algorithm = "spectral"``): the device then
            answers :meth:`spectral_round` and ranks with the fold-in of its own items.
        spectral_noise: ``(σ_popularity, σ_cooccurrence)`` the device adds (times the
            sensitivity) in spectral rounds under example-level DP (needs ``dp``).
    """

    def __init__(
        self,
        device_id: str,
        train_items: np.ndarray,
        *,
        n_items: int,
        dim: int,
        local: LocalConfig,
        dp: DPConfig | None,
        test_items: np.ndarray | None = None,
        item_bias: bool = True,
        init_std: float = 0.1,
        seed: int | None = None,
        on_release: Callable[[PrivacyEvent], None] | None = None,
        report_metrics: bool = True,
        spectral: SpectralSpec | None = None,
        spectral_noise: tuple[float, float] | None = None,
    ):
        self.device_id = str(device_id)
        self.train_items = np.asarray(train_items, dtype=np.int64)
        self.test_items = (
            np.asarray(test_items, dtype=np.int64) if test_items is not None else None
        )
        if len(self.train_items) and (self.train_items.min() < 0
                                      or self.train_items.max() >= n_items):
            raise ValueError(f"device {device_id}: item indices outside [0, {n_items})")
        self.local, self.dp = local, dp
        self.on_release = on_release
        self.report_metrics = report_metrics and dp is None
        self._seed = derive_seed(seed, device_id) if seed is not None else None
        if self._seed is not None:
            self.noise = NoiseSource.seeded(self._seed)
            gen = torch.Generator().manual_seed(self._seed)
        else:
            self.noise = NoiseSource.secure()
            gen = self.noise.torch_generator()
        self._generator = gen
        self.model = MatrixFactorization(
            1, n_items, dim, item_bias=item_bias, init_std=init_std, generator=gen
        )
        self.accountant = make_accountant(dp.accountant) if dp is not None else None
        self.rounds_trained = 0
        self.spectral = spectral
        if spectral is not None and dp is not None and spectral_noise is None:
            raise ValueError("a spectral device under DP needs its noise multipliers")
        self.spectral_noise = spectral_noise

    # --- privacy ---------------------------------------------------------------------------
    def epsilon_spent(self) -> float:
        """ε spent so far by this device's accountant at its δ (0 with DP off or no rounds)."""
        if self.dp is None or self.accountant is None or not self.accountant.history:
            return 0.0
        return budget.epsilon_spent(self.accountant, self.dp.target_delta)

    def epsilon_if_trained(self) -> float:
        """ε after one more round with the current settings."""
        assert self.dp is not None and self.accountant is not None
        return budget.epsilon_after_round(
            self.accountant, noise_multiplier=self.dp.noise_multiplier,
            sample_rate=self.local.sample_rate, steps=self.local.steps,
            delta=self.dp.target_delta,
        )

    def _over_budget(self, needed: float) -> Refusal | None:
        """The refusal of a release that would bring ε to ``needed``, or ``None`` if within."""
        assert self.dp is not None
        if needed <= self.dp.budget_epsilon + 1e-9:
            return None
        spent = self.epsilon_spent()
        return Refusal(RefusalCode.BUDGET,
                       f"this round would bring epsilon to {needed:.4g} > budget "
                       f"{self.dp.budget_epsilon:g} (spent {spent:.4g})", spent, needed)

    def _refuse(self, violation: PolicyViolation) -> Refusal:
        spent = self.epsilon_spent()
        return Refusal(violation.code, violation.detail, spent, spent)

    def table_shapes(self) -> dict[str, tuple[int, ...]]:
        """The item table this device expects from the server: names and exact shapes."""
        return {k: tuple(v.shape) for k, v in self.model.global_state().items()}

    @staticmethod
    def _check_share(noise_share: float | None) -> None:
        if noise_share is not None and not (0 < float(noise_share) <= 1):
            raise PolicyViolation(RefusalCode.NOT_SECURE,
                                  f"noise share {noise_share!r} outside (0, 1]")

    def _event(self, server_round: int, *, noise_multiplier: float, max_grad_norm: float,
               sample_rate: float, steps: int, purpose: str) -> PrivacyEvent:
        assert self.dp is not None
        return PrivacyEvent(
            device_id=self.device_id, server_round=int(server_round),
            noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
            sample_rate=sample_rate, steps=steps, target_delta=self.dp.target_delta,
            budget_epsilon=self.dp.budget_epsilon, claimed_epsilon=self.epsilon_spent(),
            accountant=self.dp.accountant, purpose=purpose, randomness=self.noise.label)

    def secure_range(self, noise_share: float | None, phase: str | None = None) -> float:
        """The SecAgg+ range this device needs so that its share is never clipped.

        From the device's own settings only (:mod:`fedrec.common.privacy.secagg`): a spectral
        contribution lies in ``[0, 1]`` plus noise of std ``σ·Δ·share``; a DP-SGD item update
        is bounded by :func:`~fedrec.common.privacy.secagg.sgd_update_bounds`.
        """
        share = 1.0 if noise_share is None else float(noise_share)
        if phase is not None:
            assert self.spectral is not None
            sigma = (self.spectral_noise[PHASES.index(phase)]
                     if self.spectral_noise is not None and self.dp is not None else 0.0)
            std = sigma * self.spectral.sensitivity(phase) * share
            return secure_range(1.0, std, int(np.prod(self.spectral.shape(phase))))
        if self.dp is None:
            raise PolicyViolation(RefusalCode.UNSUPPORTED,
                                  "a secure sum of SGD updates needs device DP (noise shares)")
        signal, std = sgd_update_bounds(
            lr=self.local.lr, steps=self.local.steps, max_grad_norm=self.dp.max_grad_norm,
            batch_size_norm=self.local.batch_size_norm,
            noise_multiplier=self.dp.noise_multiplier, noise_share=share)
        return secure_range(signal, std, sum(int(np.prod(s)) for s in
                                             self.table_shapes().values()))

    def check_secure(self, session: SecureSession | None, *, noise_share: float | None,
                     phase: str | None = None) -> None:
        """Raise :class:`PolicyViolation` unless this round's secure sum is safe to join.

        A noise share, or a spectral contribution without device noise, may only leave inside
        a secure sum (``not-secure`` otherwise); a share ``s`` needs at least ``1/s²``
        devices in the group; the session's range must be at least :meth:`secure_range`.
        """
        self._check_share(noise_share)
        needs_secure = noise_share is not None or (phase is not None and self.dp is None)
        if session is None:
            if needs_secure:
                raise PolicyViolation(RefusalCode.NOT_SECURE,
                                      "this contribution may only leave inside a secure sum")
            return
        if noise_share is not None and session.group_size < session.min_group(noise_share):
            raise PolicyViolation(RefusalCode.NOT_SECURE,
                                  f"noise share {noise_share:g} needs a secure group of "
                                  f"{session.min_group(noise_share)}, this one has "
                                  f"{session.group_size}")
        if session.clipping_range < self.secure_range(noise_share, phase):
            raise PolicyViolation(RefusalCode.NOT_SECURE,
                                  f"the secure sum's range {session.clipping_range:g} would "
                                  f"clip this device's share (needs "
                                  f"{self.secure_range(noise_share, phase):g})")

    # --- the round -------------------------------------------------------------------------
    def train(self, global_state: Mapping[str, np.ndarray], server_round: int, *,
              noise_share: float | None = None) -> TrainReply | Refusal:
        """Train one round from the server's item table; reply or refuse.

        The table must have exactly this device's shapes and finite values, or the device
        refuses (``bad-request``) before any work. Under DP a device with no training
        interactions trains anyway (its update is pure noise, accounted like any other): a
        refusal would tell the server that it has no data.

        ``noise_share`` switches to distributed DP for this round (see
        :func:`fedrec.common.privacy.dpsgd.train_local`): the item update carries that share of
        the noise and must only ever leave the device inside a secure sum of at least
        ``1 / noise_share²`` devices. The ledger records the full noise multiplier the sum is
        provisioned for (``purpose="distributed-dp-sgd"``); the server records the noise that
        was actually present.
        """
        try:
            check_arrays(global_state, self.table_shapes())
            self._check_share(noise_share)
        except PolicyViolation as violation:
            return self._refuse(violation)
        if self.dp is None and len(self.train_items) == 0:
            if self.report_metrics:  # privacy off: nothing to hide, nothing to learn from
                return Refusal(RefusalCode.UNSUPPORTED, "no training interactions")
            return TrainReply(delta={k: np.zeros(v, dtype=np.float32)
                                     for k, v in self.table_shapes().items()}, num_examples=1)
        if self.dp is not None:
            refusal = self._over_budget(self.epsilon_if_trained())
            if refusal is not None:
                return refusal
        self.model.load_global_state(global_state)
        before = self.model.global_state()
        result = train_local(
            self.model, self.train_items, local=self.local, dp=self.dp,
            accountant=self.accountant, generator=self._generator,
            noise_share=noise_share if self.dp is not None else None,
            noise_source=self.noise,
        )
        self.rounds_trained += 1
        after = self.model.global_state()
        delta = {k: (after[k] - before[k]).astype(np.float32) for k in GLOBAL_KEYS}
        if self.dp is not None:
            event = self._event(
                server_round, noise_multiplier=self.dp.noise_multiplier,
                max_grad_norm=self.dp.max_grad_norm, sample_rate=result.sample_rate,
                steps=result.steps,
                purpose="dp-sgd" if noise_share is None else "distributed-dp-sgd")
            if self.on_release is not None:
                self.on_release(event)  # recorded before the update leaves
            # Under DP the example count and the loss are data: send neither.
            return TrainReply(delta=delta, num_examples=1, metrics={})
        if not self.report_metrics:
            return TrainReply(delta=delta, num_examples=1, metrics={})
        return TrainReply(
            delta=delta, num_examples=len(self.train_items),
            metrics={"loss": result.mean_loss},
        )

    def _check_selection(self, phase: str, selected: np.ndarray | None) -> np.ndarray | None:
        """The server's item selection of a co-occurrence round, checked (``bad-request``)."""
        assert self.spectral is not None
        if phase != "cooccurrence":
            return None
        if selected is None:
            raise PolicyViolation(RefusalCode.BAD_REQUEST, "no item selection")
        sel = np.asarray(selected)
        if (sel.ndim != 1 or sel.dtype.kind not in "iu" or len(sel) != self.spectral.n_selected
                or (len(sel) and (sel.min() < 0 or sel.max() >= self.spectral.n_items))
                or np.any(np.diff(sel) <= 0)):
            raise PolicyViolation(RefusalCode.BAD_REQUEST,
                                  f"the selection must be {self.spectral.n_selected} sorted "
                                  f"distinct item indices in [0, {self.spectral.n_items})")
        return sel.astype(np.int64)

    def spectral_round(self, phase: str, server_round: int, *,
                       selected: np.ndarray | None = None,
                       noise_share: float | None = None) -> TrainReply | Refusal:
        """Answer one round of the spectral algorithm (:mod:`fedrec.common.algorithms.spectral`).

        The reply's only array, named after ``phase``, is the device's contribution: under
        example-level DP (``dp`` set) with Gaussian noise of std ``σ_phase · Δ_phase`` already
        added (times ``noise_share`` inside a secure sum), accounted and written to the ledger
        before it is returned; otherwise noise-free (the server adds user-level noise). Its
        shape depends only on the run's settings. A device with no items contributes zeros
        (plus its noise), like any other.
        """
        if self.spectral is None:
            return Refusal(RefusalCode.UNSUPPORTED, "not configured for the spectral algorithm")
        try:
            if phase not in self.spectral.phases:
                raise PolicyViolation(RefusalCode.BAD_REQUEST, f"unknown phase {phase!r}")
            sel = self._check_selection(phase, selected)
            self._check_share(noise_share)
        except PolicyViolation as violation:
            return self._refuse(violation)
        index = PHASES.index(phase)
        sigma = self.spectral_noise[index] if self.spectral_noise is not None else 0.0
        if self.dp is not None:
            refusal = self._over_budget(budget.epsilon_after_round(
                self.accountant, noise_multiplier=sigma, sample_rate=1.0, steps=1,
                delta=self.dp.target_delta))
            if refusal is not None:
                return refusal
        if self.noise.is_seeded:  # as before: one stream per round from the device's generator
            rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,),
                                                          generator=self._generator)))
        else:
            rng = self.noise.rng
        values = contribution(self.train_items, phase, self.spectral, selected=sel, rng=rng)
        self.rounds_trained += 1
        if self.spectral.unit == "user":  # norm 1 by construction; clipped to make it a rule
            norm = float(np.linalg.norm(values))
            values = values * min(1.0, 1.0 / norm) if norm > 0 else values
        if self.dp is None:
            return TrainReply(delta={phase: values.astype(np.float32)}, num_examples=1)
        std = sigma * self.spectral.sensitivity(phase) * (
            1.0 if noise_share is None else float(noise_share))
        noise = (rng.normal(0.0, std, size=values.shape) if self.noise.is_seeded
                 else self.noise.normal(std, values.shape))
        values = values + noise
        self.accountant.step(noise_multiplier=float(sigma), sample_rate=1.0)
        event = self._event(
            server_round, noise_multiplier=sigma,
            max_grad_norm=self.spectral.sensitivity(phase), sample_rate=1.0, steps=1,
            purpose=f"spectral-{phase}" + ("" if noise_share is None else "-distributed"))
        if self.on_release is not None:
            self.on_release(event)  # recorded before the contribution leaves
        return TrainReply(delta={phase: values.astype(np.float32)}, num_examples=1)

    def _fold_in(self) -> None:
        """The user embedding from the device's own items and the item table, on the device.

        Spectral: the sum of the embeddings of the device's items (PureSVD). Features (one
        round): the log-ratio profile of :func:`fedrec.common.algorithms.features.profile_fold_in`.
        """
        assert self.spectral is not None
        emb = self.model.item_embedding.weight.detach().numpy()
        if self.spectral.rounds == 1:
            bias = self.model.item_bias.weight.detach().numpy()
            u = profile_fold_in(emb, bias, self.train_items, scale=self.spectral.feature_scale,
                                smoothing=self.spectral.feature_smoothing)
        elif len(self.train_items):
            u = emb[self.train_items].sum(axis=0, keepdims=True)
        else:
            u = np.zeros((1, emb.shape[1]), dtype=np.float32)
        self.model.load_local_state({"user_embedding.weight": u.astype(np.float32)})

    def evaluate(self, global_state: Mapping[str, np.ndarray], ks: tuple[int, ...]
                 ) -> dict[str, float] | None:
        """Rank all items locally against the held-out items; exact metric *sums* (or None).

        This is a measurement, not a release: the simulator calls it on the devices it holds
        (:mod:`fedrec.simulations.measure`). What may be *sent* is
        :meth:`evaluation_release`.
        """
        if self.test_items is None or len(self.test_items) == 0:
            return None
        self.model.load_global_state(global_state)
        if self.spectral is not None:
            self._fold_in()
        scores = self.model.full_scores(np.zeros(1, dtype=np.int64))[0]
        return user_metric_sums(scores, self.train_items, self.test_items, ks=ks)

    def evaluation_release(self, global_state: Mapping[str, np.ndarray], ks: tuple[int, ...],
                           server_round: int, *, noise_multiplier: float | None,
                           noise_share: float | None = None) -> dict[str, float] | Refusal:
        """The metric sums this device may send for a federated evaluation, or a refusal.

        The sums are a function of the device's held-out interactions, so under DP they are a
        release like any other: the vector of :func:`evaluation_keys` (each metric of one
        user lies in ``[0, 1]``, ``users`` is 0 or 1) has L2 sensitivity ``√(len)`` under
        add/remove of one interaction, and gets Gaussian noise of std
        ``noise_multiplier · √(len)`` (times ``noise_share`` inside a secure sum), accounted
        in the device's accountant and written to its ledger (``purpose="evaluation"``) before
        it is returned. A device without a held-out set sends the same noised zeros, so
        whether it has one is as protected as the metrics. Without DP (privacy off) the exact
        sums are returned; a device that adds no noise but whose run is private (user-level
        DP) refuses: its sums would leave outside any accounting.
        """
        try:
            check_arrays(global_state, self.table_shapes())
            self._check_share(noise_share)
        except PolicyViolation as violation:
            return self._refuse(violation)
        keys = evaluation_keys(ks)
        sums = self.evaluate(global_state, ks) or {}
        values = np.array([float(sums.get(k, 0.0)) for k in keys])
        if self.dp is None:
            if self.report_metrics:  # privacy off: nothing is promised
                return dict(zip(keys, values.tolist(), strict=True))
            return Refusal(RefusalCode.PRIVACY_POLICY,
                           "evaluation sums would leave without device noise in a private run")
        if noise_multiplier is None or not noise_multiplier > 0:
            return Refusal(RefusalCode.PRIVACY_POLICY, "evaluation without noise under DP")
        sensitivity = float(np.sqrt(len(keys)))
        refusal = self._over_budget(budget.epsilon_after_round(
            self.accountant, noise_multiplier=float(noise_multiplier), sample_rate=1.0, steps=1,
            delta=self.dp.target_delta))
        if refusal is not None:
            return refusal
        std = float(noise_multiplier) * sensitivity * (
            1.0 if noise_share is None else float(noise_share))
        values = values + self.noise.normal(std, values.shape)
        self.accountant.step(noise_multiplier=float(noise_multiplier), sample_rate=1.0)
        event = self._event(server_round, noise_multiplier=float(noise_multiplier),
                            max_grad_norm=sensitivity, sample_rate=1.0, steps=1,
                            purpose="evaluation")
        if self.on_release is not None:
            self.on_release(event)  # recorded before the sums leave
        return dict(zip(keys, values.tolist(), strict=True))

    def recommend(self, k: int, global_state: Mapping[str, np.ndarray] | None = None
                  ) -> np.ndarray:
        """Top-``k`` unseen items for this device's user (computed on the device)."""
        from fedrec.common.evaluation.metrics import topk_items

        if global_state is not None:
            self.model.load_global_state(global_state)
        if self.spectral is not None:
            self._fold_in()
        scores = self.model.full_scores(np.zeros(1, dtype=np.int64))[0]
        return topk_items(scores, self.train_items, k)

    # --- persistence (device-local storage only) -------------------------------------------
    def state_dict(self) -> dict[str, object]:
        """The device's own state: user embedding, accountant, round count, RNG state."""
        return {
            "user_embedding": self.model.local_state()["user_embedding.weight"],
            "accountant": json.dumps(
                self.accountant.state_dict() if self.accountant is not None else None
            ),
            "rounds_trained": self.rounds_trained,
            "generator": self._generator.get_state().numpy().copy(),
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.model.load_local_state({"user_embedding.weight": state["user_embedding"]})
        acc = json.loads(str(state["accountant"]))
        if acc is not None and self.accountant is not None:
            acc["history"] = [tuple(h) for h in acc.get("history", [])]
            self.accountant.load_state_dict(acc)
        self.rounds_trained = int(state["rounds_trained"])  # type: ignore[arg-type]
        gen_state = state.get("generator")
        if gen_state is not None and self.noise.is_seeded:  # a secure device draws afresh
            self._generator.set_state(torch.as_tensor(np.asarray(gen_state), dtype=torch.uint8))
