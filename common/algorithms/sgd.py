"""``sgd``: rounds of local (DP-)SGD on the matrix-factorization model.

The server sends the item table; a sampled device trains its copy locally with Opacus DP-SGD
(Poisson-sampled batches over its own interactions, every parameter under the optimizer, its
user embedding included, :func:`~fedrec.common.privacy.dpsgd.train_local`) and replies with
the dense delta of the item table; the server steps with the mean delta (FedAvg's server
step or FedAdam). Each participation is ``steps`` Poisson-subsampled Gaussian steps in the
device's accountant. Under distributed DP the item tables carry a noise share and stay at the
server's values within the round, so the secure sum is a post-processing of DP-SGD steps with
the full noise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fedrec.common.algorithms.base import (
    Aggregate,
    Algorithm,
    Contribution,
    ContributionSpec,
    DeviceView,
    PlannedRelease,
    State,
    Task,
)
from fedrec.common.model.optimizers import make_server_optimizer
from fedrec.common.privacy.policy import Refusal
from fedrec.common.privacy.secagg import sgd_update_bounds

if TYPE_CHECKING:
    from fedrec.common.config import RunConfig

__all__ = ["SGD", "initial_item_table"]


def initial_item_table(cfg: RunConfig, n_items: int) -> State:
    """The server's initial item table, seeded by the run's seed (no data involved)."""
    import torch

    from fedrec.common.model.mf import MatrixFactorization

    model = MatrixFactorization(
        1,
        n_items,
        cfg.dim,
        item_bias=cfg.item_bias,
        init_std=cfg.init_std,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    return model.global_state()


def _user_bound(cfg: RunConfig, signal: float) -> float:
    """User-level DP: a coordinate of a clipped delta (and, with ``row-clip``, of its rows)."""
    bound = min(signal, cfg.user_clip)
    return min(bound, cfg.row_clip) if cfg.row_clip > 0 else bound


def _share_bound(cfg: RunConfig) -> float | None:
    """Distributed DP with ``row-clip``: the bound on a coordinate of an update's signal."""
    return float(cfg.row_clip) if cfg.privacy == "distributed" and cfg.row_clip > 0 else None


class SGD(Algorithm):
    """Rounds of local (DP-)SGD; the server steps with the mean item-table delta."""

    name = "sgd"
    summary = "rounds of local (DP-)SGD on the MF model (Opacus DP-SGD on devices)"

    def __init__(self, cfg: RunConfig, n_items: int, *, item_features: np.ndarray | None = None):
        super().__init__(cfg, n_items, item_features=item_features)
        self.optimizer = make_server_optimizer(
            cfg.server_optimizer,
            lr=cfg.server_lr,
            beta1=cfg.server_beta1,
            beta2=cfg.server_beta2,
            tau=cfg.server_tau,
        )

    @classmethod
    def check(cls, cfg: RunConfig) -> None:
        """Distributed DP needs the linear ``sgd`` local optimizer."""
        if cfg.privacy == "distributed" and cfg.local_optimizer != "sgd":
            raise ValueError(
                "privacy distributed needs local-optimizer sgd (linear in the "
                "gradients, so the secure sum is a post-processing of DP sums)"
            )

    @classmethod
    def planned_releases(cls, cfg: RunConfig) -> tuple[PlannedRelease, ...]:
        """Device modes: ``planned_participations`` rounds of ``steps`` DP-SGD steps each.

        User-level: one Poisson-sampled (rate ``fraction-train``) release per round.
        """
        if cfg.privacy == "user":
            return (PlannedRelease(1.0, cfg.fraction_train, 1, cfg.num_rounds),)
        local = cfg.local_config()
        return (PlannedRelease(1.0, local.sample_rate, local.steps, cfg.planned_participations),)

    def initial_state(self) -> State:
        """The seeded initial item table."""
        return initial_item_table(self.cfg, self.n_items)

    def task(self, server_round: int) -> Task:
        """Every round: train."""
        return Task("train")

    def contribution(self, task: Task) -> ContributionSpec:
        """The item table's shapes; a delta's bound from the local recipe (public)."""
        cfg, local = self.cfg, self.cfg.local_config()
        sigma = max(cfg.noise_multipliers(), default=0.0)
        signal, noise = sgd_update_bounds(
            lr=local.lr,
            steps=local.steps,
            max_grad_norm=cfg.max_grad_norm,
            batch_size_norm=local.batch_size_norm,
            noise_multiplier=sigma,
            noise_share=1.0,
        )
        if cfg.privacy not in ("local", "distributed"):  # the server adds it, if anyone
            noise = 0.0
        if _share_bound(cfg) is not None:  # each step's sum clamped tighter (row-clip)
            signal = min(signal, cfg.row_clip)
        shapes = {
            "item_embedding.weight": (self.n_items, cfg.dim),
            "item_bias.weight": (self.n_items, 1),
        }
        user = cfg.privacy == "user"  # each device clips its whole delta to user-clip
        return ContributionSpec(
            shapes=shapes,
            aggregate="mean",
            max_norm=float(cfg.user_clip) if user else float(cfg.max_update_norm),
            coordinate_bound=_user_bound(cfg, signal) if user else signal,
            sensitivity=cfg.user_clip if cfg.privacy == "user" else cfg.max_grad_norm,
            noise_multiplier=sigma,
            noise_per_coordinate=noise,
            sampling_probability=local.sample_rate,
            steps=local.steps,
            purpose="dp-sgd",
        )

    def reply_norm_bound(self, task: Task, noise_share: float) -> float:
        """``max-update-norm``: a configured cap on any reply, noise included."""
        return float(self.cfg.max_update_norm)

    def update(self, server_round: int, state: State, aggregate: Aggregate) -> State:
        """A server-optimizer step with the mean delta."""
        assert aggregate.mean is not None
        return self.optimizer.step(state, aggregate.mean)

    def server_state(self) -> dict[str, Any]:
        """The server optimizer's state."""
        return self.optimizer.state_dict()

    def load_server_state(self, state: Mapping[str, Any]) -> None:
        """Restore the server optimizer's state (a resumed run)."""
        self.optimizer.load_state_dict(state)

    def device_dp(self, device: DeviceView) -> Any:
        """The DP-SGD settings a device trains with (its own; ``None`` without device DP)."""
        return device.dp

    def contribute(
        self,
        device: DeviceView,
        task: Task,
        state: State,
        *,
        server_round: int,
        noise_share: float | None,
    ) -> Contribution | Refusal:
        """Local (DP-)SGD from the server's table; the reply is the dense table delta."""
        from fedrec.common.model.mf import GLOBAL_KEYS
        from fedrec.common.privacy.dpsgd import train_local
        from fedrec.common.privacy.policy import PolicyViolation, RefusalCode

        if task.name != "train" or task.arrays:
            return device.refuse(
                PolicyViolation(
                    RefusalCode.UNSUPPORTED, f"an SGD device trains; asked {task.name!r}"
                )
            )
        if device.dp is None and len(device.train_items) == 0:
            if device.report_metrics:  # privacy off: nothing to hide, nothing to learn from
                return Refusal(RefusalCode.UNSUPPORTED, "no training interactions")
            return Contribution(
                {k: np.zeros(v, dtype=np.float32) for k, v in device.table_shapes().items()}
            )
        dp = self.device_dp(device)
        if dp is not None:
            from fedrec.common.privacy.events import PrivacyEvent

            event = PrivacyEvent(dp.noise_multiplier, device.local.sample_rate, device.local.steps)
            refusal = device.over_budget(device.epsilon_after([event]))
            if refusal is not None:
                return refusal
        device.model.load_global_state(state)
        before = device.model.global_state()
        result = train_local(
            device.model,
            device.train_items,
            local=device.local,
            dp=dp,
            accountant=device.accountant,
            generator=device.generator,
            noise_share=noise_share if device.dp is not None else None,
            noise_source=device.noise,
            update_bound=_share_bound(self.cfg),
        )
        device.rounds_trained += 1
        after = device.model.global_state()
        delta = {k: (after[k] - before[k]).astype(np.float32) for k in GLOBAL_KEYS}
        if self.cfg.privacy == "user":  # one device's whole contribution: norm <= user-clip
            from fedrec.common.privacy.mechanisms.user import clip_delta

            delta = clip_delta(delta, self.cfg.user_clip)[0]
            if self.cfg.row_clip > 0:  # a defence against poisoning: bounded rows too
                from fedrec.common.robust import clip_rows

                delta = clip_rows(delta, self.cfg.row_clip)
        if dp is not None:
            device.release(  # recorded before the update leaves
                server_round,
                noise_multiplier=dp.noise_multiplier,
                max_grad_norm=dp.max_grad_norm,
                sample_rate=result.sample_rate,
                steps=result.steps,
                purpose="dp-sgd" if noise_share is None else "distributed-dp-sgd",
            )
            return Contribution(delta)  # the example count and the loss are data: neither
        if not device.report_metrics:
            return Contribution(delta)
        return Contribution(
            delta, num_examples=len(device.train_items), metrics={"loss": result.mean_loss}
        )

    def batchable(self, device: DeviceView, task: Task, noise_share: float | None) -> bool:
        """Whether :meth:`contribute_many` may compute this device's contribution batched.

        Where the device adds no noise of its own (privacy ``off``, user-level DP), trains with
        the plain ``"sgd"`` optimizer and has data, and this class's own :meth:`contribute` is
        the one that would run (a subclass that changes it, such as ``warm-sgd``, keeps the
        per-device path).
        """
        own = type(self).contribute is SGD.contribute and type(self).device_dp is SGD.device_dp
        return (
            own
            and task.name == "train"
            and not task.arrays
            and noise_share is None
            and device.dp is None
            and getattr(getattr(device, "local", None), "optimizer", None) == "sgd"
            and hasattr(device, "user_embedding")  # a Device: its user without its model
            and len(device.train_items) > 0
        )

    def contribute_many(
        self, devices: Sequence[DeviceView], task: Task, state: State, *, server_round: int
    ) -> list[Contribution]:
        """What :meth:`contribute` returns for each device, computed batched (:meth:`batchable`).

        The local SGD of devices with the same recipe runs as one tensor program
        (:func:`~fedrec.common.model.batched.train_many`); each device's draws come from its
        own generator in the per-device order, its user embedding is updated and its round
        counted, and its delta is clipped as :meth:`contribute` clips it (user-level DP:
        ``user-clip``, then ``row-clip``). The devices' copies of the item table are left as
        they were (every use loads the server's table first).
        """
        if not all(self.batchable(d, task, None) for d in devices):
            raise ValueError("contribute_many takes only devices batchable() accepts")
        groups: dict[tuple[Any, bool], list[int]] = {}
        for b, d in enumerate(devices):
            groups.setdefault((d.local, bool(d.use_item_bias)), []).append(b)
        out: dict[int, Contribution] = {}
        for members in groups.values():
            group = [devices[b] for b in members]
            out.update(zip(members, self._train_group(group, state), strict=True))
        return [out[b] for b in range(len(devices))]

    def _train_group(self, devices: list[DeviceView], state: State) -> list[Contribution]:
        """:meth:`contribute_many` for devices with one recipe."""
        import torch

        from fedrec.common.model.batched import train_many

        users = np.concatenate([d.user_embedding() for d in devices])
        result = train_many(
            state["item_embedding.weight"],
            state["item_bias.weight"],
            users,
            [d.train_items for d in devices],
            [d.generator for d in devices],
            local=devices[0].local,
            train_bias=bool(devices[0].use_item_bias),
        )
        emb, bias = result.item_embedding, result.item_bias
        if self.cfg.privacy == "user":  # each device's whole contribution: norm <= user-clip
            # clip_delta's norm and factor, the norms taken in float32 (to rounding; a float64
            # copy of a chunk's tables took 40 times as long)
            flat = [t.reshape(len(devices), -1) for t in (emb, bias)]
            norms = torch.stack([torch.linalg.vector_norm(t, dim=1) for t in flat]).double()
            norms = norms.square().sum(0).sqrt()
            factor = (self.cfg.user_clip / norms.clamp(min=1e-300)).clamp(max=1.0)
            for b, f in enumerate(factor.tolist()):
                if f < 1.0:
                    emb[b].mul_(f)
                    bias[b].mul_(f)
        out = []
        for b, device in enumerate(devices):
            device.set_user_embedding(result.users[b : b + 1].numpy())
            device.rounds_trained += 1
            delta = {"item_embedding.weight": emb[b].numpy(), "item_bias.weight": bias[b].numpy()}
            if self.cfg.privacy == "user" and self.cfg.row_clip > 0:
                from fedrec.common.robust import clip_rows

                delta = clip_rows(delta, self.cfg.row_clip)
            if not device.report_metrics:
                out.append(Contribution(delta))
                continue
            loss = float(result.loss_sums[b]) / max(1, int(result.seen[b]))
            out.append(
                Contribution(delta, num_examples=len(device.train_items), metrics={"loss": loss})
            )
        return out

    def fold_in(self, device: DeviceView, state: State) -> None:
        """``fold-in solve``: fit the user embedding to the device's items (on the device).

        ``trained`` keeps the embedding local training left. The solve uses every one of the
        device's interactions, which is why it only ranks: it is never part of a release.
        """
        if self.cfg.fold_in == "solve":
            self.reconstruct(device, state)

    def reconstruct(self, device: DeviceView, state: State) -> None:
        """Set the device's user embedding to the one fitted to its items against ``state``."""
        from fedrec.common.model.fold_in import solve_user_embedding

        u = solve_user_embedding(
            state["item_embedding.weight"],
            state["item_bias.weight"],
            device.train_items,
            n_negatives=self.cfg.n_negatives,
        )
        device.model.load_local_state({"user_embedding.weight": u})
