"""One device: its interactions, its user embedding, its accountant, its ledger.

:class:`Device` is plain Python (no Flower): the ``ClientApp`` wraps it, the in-process
transport calls it directly, and the SDK trains through it. It is algorithm-agnostic: what it
computes in a round is its :class:`~fedrec.common.algorithms.base.Algorithm`'s
:meth:`~fedrec.common.algorithms.base.Algorithm.contribute`. In a round the device

1. refuses, with a fixed code, a request that is malformed (a table of the wrong shape or
   with non-finite values, a noise share outside ``(0, 1]``) or that would take it past its ε
   budget, before any work;
2. computes its contribution (local DP-SGD for ``sgd``; a Gaussian release of its statistics
   for ``spectral`` and ``features``), with its DP noise when it adds noise;
3. records the privacy event (the ledger hook) *before* the contribution leaves;
4. returns only arrays of one fixed shape whatever items it holds, and, with privacy off
   only, its example count and loss.

The user embedding and the interactions never appear in anything a method returns for
sending; :meth:`Device.state_dict` is for the device's own storage.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch

from fedrec.common.algorithms.base import Algorithm, Contribution, Task
from fedrec.common.evaluation.metrics import evaluation_keys, user_metric_sums
from fedrec.common.model.mf import MatrixFactorization
from fedrec.common.privacy.accountant import epsilon_after, epsilon_spent, make_accountant
from fedrec.common.privacy.dpsgd import DPConfig, LocalConfig
from fedrec.common.privacy.events import PrivacyEvent
from fedrec.common.privacy.policy import PolicyViolation, Refusal, RefusalCode, check_arrays
from fedrec.common.privacy.randomness import NoiseSource, derive_seed
from fedrec.common.privacy.secagg import SecureSession, secure_range

__all__ = ["Device", "Contribution", "Refusal", "ReleaseHook"]

#: Called as ``hook(event, round=..., target_delta=..., budget_epsilon=..., claimed_epsilon=...,
#: accountant=...)`` after a DP release is computed and before it leaves the device (the
#: ledger writer; the keyword names are :meth:`~fedrec.common.audit.ledger.Ledger.append`'s).
#: A hook that returns the ledger record lets the device send its ledger head with the
#: release, for the server to countersign (:attr:`Device.ledger_head`).
ReleaseHook = Callable[..., object]


class Device:
    """A simulated or embedded device holding one user's data and state.

    Args:
        device_id: a stable id (used for seeds and the ledger).
        train_items: the user's training item indices (positives).
        n_items: catalog size (must match the server's item table).
        dim: embedding dimension (must match the server's item table).
        local: local training recipe.
        dp: DP settings, or ``None`` when the device adds no noise (privacy off, or user-level
            DP added by the server).
        algorithm: what the device computes in a round (default: local SGD,
            :class:`~fedrec.common.algorithms.sgd.SGD`, which needs only ``local``/``dp``).
        test_items: held-out items for on-device evaluation (optional).
        item_bias: whether the item biases are trained.
        init_std: initialisation scale of the user embedding.
        seed: seeds the user embedding and the local sampling and noise (reproducible
            simulations: not private against anyone who knows the seed); ``None`` (the
            default) draws everything from OS entropy
            (:class:`~fedrec.common.privacy.randomness.NoiseSource`).
        on_release: a :data:`ReleaseHook`, called with each release's
            :class:`~fedrec.common.privacy.events.PrivacyEvent` before it leaves the device
            (the ledger writer). If it raises, nothing is sent.
        report_metrics: with DP off, send the example count and the training loss (both are
            data; set False when the protection is elsewhere, e.g. server-side user-level DP).
        recency: where each of ``train_items`` lies in the user's history, in ``[0, 1]``
            (latest near 1; :meth:`~fedrec.common.data.schema.Interactions.user_item_recency`),
            aligned with ``train_items``; ``None`` (the default) when the order is unknown.
            Under user-level DP the popularity release weighs items by it
            (``popularity-recency``); it never leaves the device.
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
        algorithm: Algorithm | None = None,
        test_items: np.ndarray | None = None,
        item_bias: bool = True,
        init_std: float = 0.1,
        seed: int | None = None,
        on_release: ReleaseHook | None = None,
        report_metrics: bool = True,
        recency: np.ndarray | None = None,
    ):
        self.device_id = str(device_id)
        self.train_items = np.asarray(train_items, dtype=np.int64)
        self.recency = None if recency is None else np.asarray(recency, dtype=np.float64)
        if self.recency is not None and (
            self.recency.shape != self.train_items.shape
            or not np.all((self.recency >= 0) & (self.recency <= 1))
        ):
            raise ValueError(
                f"device {device_id}: recency must give one value in [0, 1] per training item"
            )
        self.test_items = np.asarray(test_items, dtype=np.int64) if test_items is not None else None
        if len(self.train_items) and (
            self.train_items.min() < 0 or self.train_items.max() >= n_items
        ):
            raise ValueError(f"device {device_id}: item indices outside [0, {n_items})")
        self.local, self.dp = local, dp
        if algorithm is None:
            from fedrec.common.algorithms.sgd import SGD
            from fedrec.common.config import RunConfig

            algorithm = SGD(RunConfig(dim=dim, item_bias=item_bias), n_items)
        self.algorithm = algorithm
        self.on_release = on_release
        self.ledger_head: dict[str, object] | None = None
        self.report_metrics = report_metrics and dp is None
        self._seed = derive_seed(seed, device_id) if seed is not None else None
        self._noise: NoiseSource | None = None  # a seeded one is made on first use
        if self._seed is not None:
            self.generator = torch.Generator().manual_seed(self._seed)
        else:
            self._noise = NoiseSource.secure()
            self.generator = self._noise.torch_generator()
        self.n_items, self.dim, self.use_item_bias = n_items, dim, item_bias
        self._init_std = init_std
        # the user embedding is drawn now, as MatrixFactorization draws it (the same draw from
        # the same generator); the model, an nn.Module, is built on first use
        # (:attr:`model`): a device trained batched never needs one, and building it was most
        # of the time a large population spent rebuilding devices
        self._user: torch.Tensor | None = torch.empty(1, dim).normal_(
            0.0, init_std, generator=self.generator
        )
        self._model: MatrixFactorization | None = None
        self.accountant = make_accountant(dp.accountant) if dp is not None else None
        self.rounds_trained = 0

    @property
    def noise(self) -> NoiseSource:
        """The device's noise and sampling source (seeded runs: from the device's seed)."""
        if self._noise is None:
            assert self._seed is not None
            self._noise = NoiseSource.seeded(self._seed)
        return self._noise

    @noise.setter
    def noise(self, source: NoiseSource) -> None:
        self._noise = source

    @property
    def model(self) -> MatrixFactorization:
        """The device's MF model: the server's item table (zeros until loaded) and its user.

        Built on first use, with the user embedding the device drew or was restored with.
        """
        if self._model is None:
            model = MatrixFactorization(  # its item table is the server's: not drawn
                1,
                self.n_items,
                self.dim,
                item_bias=self.use_item_bias,
                init_std=self._init_std,
                generator=torch.Generator(),  # its user draw is replaced by the device's
                init_items=False,
            )
            with torch.no_grad():
                model.user_embedding.weight.copy_(self._user)
            self._model, self._user = model, None
        return self._model

    def user_embedding(self) -> np.ndarray:
        """A copy of the user embedding, ``(1, dim)`` float32 (device storage; never sent)."""
        if self._user is not None:
            return self._user.numpy().copy()
        return self.model.local_state()["user_embedding.weight"]

    def set_user_embedding(self, value: np.ndarray) -> None:
        """Overwrite the user embedding (``(1, dim)``), with or without a built model."""
        if self._user is None:
            self.model.load_local_state({"user_embedding.weight": value})
            return
        user = torch.as_tensor(np.asarray(value, dtype=np.float32))
        if tuple(user.shape) != (1, self.dim):
            raise ValueError(
                f"parameter 'user_embedding.weight' has shape {tuple(user.shape)}, "
                f"expected {(1, self.dim)}"
            )
        self._user = user.clone()

    # --- privacy (what algorithms call) ----------------------------------------------------
    def epsilon_spent(self) -> float:
        """ε spent so far by this device's accountant at its δ (0 with DP off or no rounds)."""
        if self.dp is None or self.accountant is None or not self.accountant.history:
            return 0.0
        return epsilon_spent(self.accountant, self.dp.target_delta)

    def epsilon_after(self, events: Iterable[PrivacyEvent]) -> float:
        """ε after the planned ``events``."""
        assert self.dp is not None and self.accountant is not None
        return epsilon_after(self.accountant, events, self.dp.target_delta)

    def epsilon_if_trained(self) -> float:
        """ε after one more DP-SGD round with the current settings."""
        assert self.dp is not None
        return self.epsilon_after(
            [PrivacyEvent(self.dp.noise_multiplier, self.local.sample_rate, self.local.steps)]
        )

    def over_budget(self, needed: float) -> Refusal | None:
        """The refusal of a release that would bring ε to ``needed``, or ``None`` if within."""
        assert self.dp is not None
        if needed <= self.dp.budget_epsilon + 1e-9:
            return None
        spent = self.epsilon_spent()
        return Refusal(
            RefusalCode.BUDGET,
            f"this round would bring epsilon to {needed:.4g} > budget "
            f"{self.dp.budget_epsilon:g} (spent {spent:.4g})",
            spent,
            needed,
        )

    def refuse(self, violation: PolicyViolation) -> Refusal:
        """A refusal for a policy violation (nothing spent)."""
        spent = self.epsilon_spent()
        return Refusal(violation.code, violation.detail, spent, spent)

    def release(
        self,
        server_round: int,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        sample_rate: float,
        steps: int,
        purpose: str,
    ) -> None:
        """Record a release this device just computed: the hook runs before it may leave."""
        assert self.dp is not None
        event = PrivacyEvent(
            noise_multiplier,
            sample_rate,
            steps,
            max_grad_norm=max_grad_norm,
            unit="example",
            purpose=purpose,
            randomness=self.noise.label,
        )
        if self.on_release is not None:
            record = self.on_release(
                event,
                round=int(server_round),
                target_delta=self.dp.target_delta,
                budget_epsilon=self.dp.budget_epsilon,
                claimed_epsilon=self.epsilon_spent(),
                accountant=self.dp.accountant,
            )
            if isinstance(record, dict) and "hash" in record:
                self.ledger_head = {
                    "device_id": self.device_id,
                    "seq": int(record["seq"]),
                    "hash": str(record["hash"]),
                }

    def release_rng(self) -> np.random.Generator:
        """The generator of one release's random choices (seeded runs: a fresh stream each)."""
        if self.noise.is_seeded:  # one stream per round from the device's generator
            return np.random.default_rng(
                int(torch.randint(0, 2**62, (1,), generator=self.generator))
            )
        return self.noise.rng

    def release_noise(
        self, rng: np.random.Generator, std: float, shape: tuple[int, ...]
    ) -> np.ndarray:
        """Gaussian noise of a release (seeded: from ``rng``; else the secure source)."""
        if self.noise.is_seeded:
            return rng.normal(0.0, std, size=shape)
        return self.noise.normal(std, shape)

    def table_shapes(self) -> dict[str, tuple[int, ...]]:
        """The item table this device expects from the server: names and exact shapes."""
        return {
            "item_embedding.weight": (self.n_items, self.dim),
            "item_bias.weight": (self.n_items, 1),
        }

    @staticmethod
    def _check_share(noise_share: float | None) -> None:
        if noise_share is not None and not (0 < float(noise_share) <= 1):
            raise PolicyViolation(
                RefusalCode.NOT_SECURE, f"noise share {noise_share!r} outside (0, 1]"
            )

    # --- secure sums -----------------------------------------------------------------------
    def secure_range(self, noise_share: float | None, task: Task | None = None) -> float:
        """The SecAgg+ range this device needs so that its share is never clipped.

        From the algorithm's public contribution bounds (:mod:`fedrec.common.privacy.secagg`):
        the noise-free coordinate bound plus the Gaussian tail of this device's share.
        """
        spec = self.algorithm.contribution(task or Task("train"))
        share = 1.0 if noise_share is None else float(noise_share)
        std = spec.noise_per_coordinate * share if self.dp is not None else 0.0
        return secure_range(spec.coordinate_bound, std, spec.size)

    def check_secure(
        self, session: SecureSession | None, *, noise_share: float | None, task: Task | None = None
    ) -> None:
        """Raise :class:`PolicyViolation` unless this round's secure sum is safe to join.

        A noise share, or a raw statistic without device noise, may only leave inside a
        secure sum (``not-secure`` otherwise); a share ``s`` needs at least ``1/s²`` devices
        in the group; the session's range must be at least :meth:`secure_range`.
        """
        self._check_share(noise_share)
        needs_secure = noise_share is not None or (
            self.algorithm.raw_statistics and self.dp is None
        )
        if session is None:
            if needs_secure:
                raise PolicyViolation(
                    RefusalCode.NOT_SECURE, "this contribution may only leave inside a secure sum"
                )
            return
        if noise_share is not None and session.group_size < session.min_group(noise_share):
            raise PolicyViolation(
                RefusalCode.NOT_SECURE,
                f"noise share {noise_share:g} needs a secure group of "
                f"{session.min_group(noise_share)}, this one has "
                f"{session.group_size}",
            )
        needed = self.secure_range(noise_share, task)
        if session.clipping_range < needed:
            raise PolicyViolation(
                RefusalCode.NOT_SECURE,
                f"the secure sum's range {session.clipping_range:g} would "
                f"clip this device's share (needs {needed:g})",
            )

    # --- the round -------------------------------------------------------------------------
    def contribute(
        self,
        task: Task,
        global_state: Mapping[str, np.ndarray],
        server_round: int,
        *,
        noise_share: float | None = None,
    ) -> Contribution | Refusal:
        """Answer one round: the algorithm's contribution to ``task``, or a refusal.

        The table must have exactly this device's shapes and finite values, and a noise share
        must lie in ``(0, 1]``, or the device refuses (``bad-request``, ``not-secure``)
        before any work. Under DP a device with no data still contributes (noise alone): a
        refusal would tell the server that it has no data.

        ``noise_share`` switches to distributed DP for this round: the contribution carries
        that share of the noise and must only ever leave inside a secure sum of at least
        ``1 / noise_share²`` devices. The ledger records the noise the sum is provisioned
        for; the server records the noise that was actually present.
        """
        self.ledger_head = None  # set again by this message's release, if any
        try:
            check_arrays(global_state, self.table_shapes())
            self._check_share(noise_share)
        except PolicyViolation as violation:
            return self.refuse(violation)
        return self.algorithm.contribute(
            self, task, global_state, server_round=server_round, noise_share=noise_share
        )

    def train(
        self,
        global_state: Mapping[str, np.ndarray],
        server_round: int,
        *,
        noise_share: float | None = None,
    ) -> Contribution | Refusal:
        """A training round (``Task("train")``): :meth:`contribute` for SGD rounds."""
        return self.contribute(Task("train"), global_state, server_round, noise_share=noise_share)

    # --- ranking and evaluation ------------------------------------------------------------
    def scores(self, global_state: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Scores of every item for this device's user, as it ranks them (on the device).

        With ``global_state`` the algorithm folds the user in against that table first
        (:meth:`~fedrec.common.algorithms.base.Algorithm.fold_in`); the user embedding that
        training continues from is left as it was.
        """
        return self._scores(global_state)

    def _scores(self, global_state: Mapping[str, np.ndarray] | None) -> np.ndarray:
        if global_state is None:
            return self.model.full_scores(np.zeros(1, dtype=np.int64))[0]
        # a fold-in ranks only: the user embedding training continues from is left as it was
        trained = self.model.local_state()
        self.model.load_global_state(global_state)
        self.algorithm.fold_in(self, dict(global_state))
        scores = self.model.full_scores(np.zeros(1, dtype=np.int64))[0]
        self.model.load_local_state(trained)
        return scores

    def evaluate(
        self, global_state: Mapping[str, np.ndarray], ks: tuple[int, ...]
    ) -> dict[str, float] | None:
        """Rank all items locally against the held-out items; exact metric *sums* (or None).

        This is a measurement, not a release: the simulator calls it on the devices it holds
        (:mod:`fedrec.simulations.measure`). What may be *sent* is
        :meth:`evaluation_release`.
        """
        if self.test_items is None or len(self.test_items) == 0:
            return None
        return user_metric_sums(
            self._scores(global_state), self.train_items, self.test_items, ks=ks
        )

    def evaluation_release(
        self,
        global_state: Mapping[str, np.ndarray],
        ks: tuple[int, ...],
        server_round: int,
        *,
        noise_multiplier: float | None,
        noise_share: float | None = None,
    ) -> dict[str, float] | Refusal:
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
        self.ledger_head = None  # set again by this message's release, if any
        try:
            check_arrays(global_state, self.table_shapes())
            self._check_share(noise_share)
        except PolicyViolation as violation:
            return self.refuse(violation)
        keys = evaluation_keys(ks)
        sums = self.evaluate(global_state, ks) or {}
        values = np.array([float(sums.get(k, 0.0)) for k in keys])
        if self.dp is None:
            if self.report_metrics:  # privacy off: nothing is promised
                return dict(zip(keys, values.tolist(), strict=True))
            return Refusal(
                RefusalCode.PRIVACY_POLICY,
                "evaluation sums would leave without device noise in a private run",
            )
        if noise_multiplier is None or not noise_multiplier > 0:
            return Refusal(RefusalCode.PRIVACY_POLICY, "evaluation without noise under DP")
        sensitivity = math.sqrt(len(keys))
        refusal = self.over_budget(self.epsilon_after([PrivacyEvent(float(noise_multiplier))]))
        if refusal is not None:
            return refusal
        std = (
            float(noise_multiplier)
            * sensitivity
            * (1.0 if noise_share is None else float(noise_share))
        )
        values = values + self.noise.normal(std, values.shape)
        self.accountant.step(noise_multiplier=float(noise_multiplier), sample_rate=1.0)
        self.release(
            server_round,
            noise_multiplier=float(noise_multiplier),  # before it leaves
            max_grad_norm=sensitivity,
            sample_rate=1.0,
            steps=1,
            purpose="evaluation",
        )
        return dict(zip(keys, values.tolist(), strict=True))

    def recommend(self, k: int, global_state: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Top-``k`` unseen items for this device's user (computed on the device)."""
        from fedrec.common.evaluation.metrics import topk_items

        return topk_items(self._scores(global_state), self.train_items, k)

    # --- persistence (device-local storage only) -------------------------------------------
    def state_dict(self) -> dict[str, object]:
        """The device's own state: user embedding, accountant, round count, RNG state."""
        return {
            "user_embedding": self.user_embedding(),
            "accountant": json.dumps(
                self.accountant.state_dict() if self.accountant is not None else None
            ),
            "rounds_trained": self.rounds_trained,
            "generator": self.generator.get_state().numpy().copy(),
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.set_user_embedding(np.asarray(state["user_embedding"]))
        acc = json.loads(str(state["accountant"]))
        if acc is not None and self.accountant is not None:
            acc["history"] = [tuple(h) for h in acc.get("history", [])]
            self.accountant.load_state_dict(acc)
        self.rounds_trained = int(state["rounds_trained"])  # type: ignore[arg-type]
        gen_state = state.get("generator")
        seeded = self._noise.is_seeded if self._noise is not None else self._seed is not None
        if gen_state is not None and seeded:  # a secure device draws afresh
            self.generator.set_state(torch.as_tensor(np.asarray(gen_state), dtype=torch.uint8))
