"""Local training of one user's MF model, optionally under example-level DP-SGD (Opacus).

This is what a device runs in a round (and what a benchmark runs in a loop). With DP on:

* batches are **Poisson-sampled** over the user's own interactions (Opacus'
  :class:`~opacus.utils.uniform_sampler.UniformWithReplacementSampler`), sampling rate
  ``q`` the same on every device (see :class:`LocalConfig`);
* each example's gradient is **clipped** to ``max_grad_norm`` over *every* trainable parameter
  (the user embedding included). Per-example norms come from one backward pass to the
  embedding rows gathered for the batch, which is exactly how Opacus' ghost clipping works;
  rows a single example gathers twice (a negative equal to another negative) are merged
  before the norm is taken, so the norm is exact;
* **noise** ``N(0, (noise_multiplier·max_grad_norm)²)`` is added to every coordinate of every
  trainable parameter and the sum divided by the expected batch size, by Opacus'
  :class:`~opacus.optimizers.DPOptimizerFastGradientClipping`;
* every step is accounted in the device's Opacus accountant, which persists across rounds.

The noise touches every row of the item table, so the update's density never depends on
which items the user has.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from fedrec.common.model.mf import MatrixFactorization
from fedrec.common.model.training import (
    LOSSES,
    GatheredBatch,
    example_losses,
    gather,
    sample_negatives,
)
from fedrec.common.privacy.accountant import ACCOUNTANTS
from fedrec.common.privacy.randomness import NoiseSource

if TYPE_CHECKING:  # Opacus is imported where a DP step needs it: a process that trains no
    # device with DP-SGD (user-level DP, no privacy) never loads it (about 110 MB resident)
    from opacus.accountants import IAccountant

__all__ = [
    "DPConfig",
    "LocalConfig",
    "LocalResult",
    "train_local",
    "per_example_sq_norms",
]


@dataclass(frozen=True)
class DPConfig:
    """Example-level DP-SGD settings of a device (keyword names as in Opacus).

    Attributes:
        noise_multiplier: Gaussian noise std as a multiple of ``max_grad_norm``.
        max_grad_norm: per-example clipping norm over all trainable parameters.
        target_delta: δ of the (ε, δ) guarantee.
        budget_epsilon: the device refuses a round that would take its ε past this.
        accountant: ``"prv"`` (tight, Opacus' PRV accountant) or ``"rdp"``.
    """

    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    target_delta: float = 1e-5
    budget_epsilon: float = 8.0
    accountant: str = "prv"

    def __post_init__(self) -> None:
        if self.noise_multiplier < 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if self.max_grad_norm <= 0:
            raise ValueError(f"The clipping norm should be positive, got {self.max_grad_norm}")
        if not 0 < self.target_delta < 1:
            raise ValueError(f"target_delta must lie in (0, 1), got {self.target_delta}")
        if self.budget_epsilon <= 0:
            raise ValueError(f"budget_epsilon must be positive, got {self.budget_epsilon}")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}")

    def to_dict(self) -> dict[str, object]:
        """The config as a plain dict."""
        return asdict(self)


@dataclass(frozen=True)
class LocalConfig:
    """How a device trains in one round.

    Attributes:
        epochs: expected passes over the user's interactions (steps = ceil(epochs / q)).
        sample_rate: Poisson sampling rate ``q`` of each example into a batch. It is the same
            for every device whatever its data size, so that the noise multiplier calibrated
            for a budget does not depend on any device's data.
        lr: learning rate of the local optimizer.
        optimizer: ``"sgd"`` or ``"adam"``.
        loss: ``"bpr"`` or ``"bce"``.
        n_negatives: sampled negatives per positive (``"bce"``; ``"bpr"`` uses 1).
        l2: per-example L2 penalty on the gathered embedding rows.
        user_lr_scale: the user embedding's learning rate as a multiple of ``lr``.
        batch_size_norm: the constant a step's summed (clipped, noised) gradient is divided
            by, the same on every device. It must not depend on the device's data: a divisor
            such as the expected batch size ``q·n`` differs between neighbouring datasets, so
            the noise scale of one update would reveal ``n`` (and whether one interaction is
            present) outside the accounted mechanism. Heavy devices carry proportionally more
            signal; :func:`train_local` bounds each step's sum so that none can blow up.
    """

    epochs: float = 1.0
    sample_rate: float = 0.25
    lr: float = 0.1
    optimizer: str = "sgd"
    loss: str = "bpr"
    n_negatives: int = 1
    l2: float = 0.0
    user_lr_scale: float = 1.0
    batch_size_norm: float = 40.0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate must lie in (0, 1], got {self.sample_rate}")
        if self.epochs <= 0 or self.lr <= 0 or self.n_negatives < 1:
            raise ValueError("epochs, lr and n_negatives must be positive")
        if self.user_lr_scale < 0:
            raise ValueError(f"user_lr_scale must be >= 0, got {self.user_lr_scale}")
        if not self.batch_size_norm > 0 or not math.isfinite(self.batch_size_norm):
            raise ValueError(
                f"batch_size_norm must be a positive constant, got {self.batch_size_norm}: a "
                "step normalisation that depends on the device's data size (0 used to mean "
                "'q*n') would reveal the data size through the noise scale of an update"
            )

    @property
    def steps(self) -> int:
        """DP-SGD steps per round: ``ceil(epochs / sample_rate)``."""
        return max(1, math.ceil(self.epochs / self.sample_rate - 1e-9))

    def to_dict(self) -> dict[str, object]:
        """The config as a plain dict."""
        return asdict(self)


@dataclass
class LocalResult:
    """What one local training produced (metrics only; no data)."""

    steps: int
    sample_rate: float
    examples: int
    mean_loss: float


def per_example_sq_norms(g: GatheredBatch, grads: list[torch.Tensor]) -> torch.Tensor:
    """Exact squared norm of each example's gradient over the whole parameter set.

    ``grads`` are the gradients of the summed loss w.r.t. ``g.tensors()``. An example touches
    one user row and ``K`` item rows; when two of its ``K`` items are the same row their
    gradients add, so the item part is ``Σ_{k,l: id_k = id_l} <g_k, g_l>``.
    """
    g_user, g_items = grads[0], grads[1]
    same = (g.item_ids.unsqueeze(2) == g.item_ids.unsqueeze(1)).to(g_items.dtype)  # (B,K,K)
    if len(grads) > 2:
        # the bias is one more coordinate of each gathered row: <g_k, g_l> + b_k b_l
        g_items = torch.cat([g_items, grads[2].unsqueeze(-1)], -1)
    gram = torch.bmm(g_items, g_items.transpose(1, 2))  # (B,K,K)
    return g_user.pow(2).sum(-1) + (gram * same).sum((1, 2))


@functools.cache
def _dp_optimizer_class() -> type:
    """:class:`_DPOptimizer`, defined on first use (its base class imports Opacus)."""
    from opacus.optimizers import DPOptimizerFastGradientClipping

    class _DPOptimizer(DPOptimizerFastGradientClipping):
        """Opacus' fast-gradient-clipping DP optimizer with fedrec's noise source and shares.

        Opacus stores ``p.summed_grad = copy.deepcopy(p.grad.data)`` on every step, which goes
        through Python's deepcopy machinery for each parameter; ``clone()`` makes the same copy.
        Scaling and the step are Opacus' own. The noise is Opacus' Gaussian of std
        ``noise_multiplier · max_grad_norm`` with three differences, each off by default:

        * ``noise_source``: a secure :class:`~fedrec.common.privacy.randomness.NoiseSource`
          draws the noise (OS entropy, Opacus' four-normal construction) instead of the torch
          generator;
        * ``noise_scale``: parameters listed there get that fraction of the noise std (distributed
          DP: the item tables carry a share of the noise, the rest coming from the other devices
          in the secure sum);
        * ``sum_bound``: before the noise, every coordinate of those parameters' summed clipped
          gradient is clamped to ``[-sum_bound, sum_bound]``. A clamp is a projection onto a box,
          which is non-expansive, so one example still moves the clamped sum by at most
          ``max_grad_norm`` (the sensitivity, and so the DP guarantee, are unchanged); it bounds
          every coordinate of the update by public quantities, which sizes the secure sum's range.
        """

        noise_scale: dict[int, float] | None = None
        noise_source: NoiseSource | None = None
        sum_bound: float | None = None

        def add_noise(self) -> None:
            scale = self.noise_scale or {}
            for p in self.params:
                summed = p.summed_grad
                if self.sum_bound is not None and id(p) in scale:
                    summed = summed.clamp(-self.sum_bound, self.sum_bound)
                std = self.noise_multiplier * self.max_grad_norm * scale.get(id(p), 1.0)
                if std == 0:
                    noise = torch.zeros_like(summed)
                elif self.noise_source is not None and not self.noise_source.is_seeded:
                    noise = torch.from_numpy(self.noise_source.normal(std, tuple(summed.shape))).to(
                        summed.dtype
                    )
                else:  # Opacus' own draw (seeded runs repeat exactly)
                    noise = torch.normal(
                        mean=0,
                        std=std,
                        size=summed.shape,
                        generator=self.generator,
                        dtype=summed.dtype,
                    )
                p.grad = (summed + noise).view_as(p)

        def accumulate(self) -> None:
            for p in self.params:
                if p.summed_grad is not None:
                    p.summed_grad.add_(p.grad.data)
                else:
                    p.summed_grad = p.grad.data.clone()

    return _DPOptimizer


def _accumulate_clipped(
    model: MatrixFactorization, g: GatheredBatch, grads: list[torch.Tensor], factor: torch.Tensor
) -> None:
    """Add the clipped per-example gradients into the tables' ``.grad``.

    This is what a second backward pass through the embedding lookups of :func:`gather`
    would add.
    """
    f = factor.unsqueeze(-1)
    user_grad = model.user_embedding.weight.grad
    user_grad.index_add_(0, g.user_ids, grads[0] * f)
    ids = g.item_ids.reshape(-1)
    d = grads[1].shape[-1]
    model.item_embedding.weight.grad.index_add_(0, ids, (grads[1] * f.unsqueeze(-1)).reshape(-1, d))
    if len(grads) > 2:
        model.item_bias.weight.grad.index_add_(0, ids, (grads[2] * f).reshape(-1, 1))


def _local_optimizer(model: MatrixFactorization, local: LocalConfig) -> torch.optim.Optimizer:
    groups = [
        {"params": model.local_parameters(), "lr": local.lr * local.user_lr_scale},
        {"params": [p for p in model.global_parameters() if p.requires_grad], "lr": local.lr},
    ]
    if local.optimizer == "adam":
        return torch.optim.Adam(groups)
    return torch.optim.SGD(groups)


def _check_noise_share(noise_share: float | None, dp: DPConfig | None, local: LocalConfig) -> None:
    """Reject distributed-DP settings :func:`train_local` cannot honour."""
    if noise_share is not None:
        if dp is None:
            raise ValueError("noise_share (distributed DP) needs DP settings")
        if not 0 < noise_share <= 1:
            raise ValueError(f"noise_share must lie in (0, 1], got {noise_share}")
        if local.optimizer != "sgd":
            raise ValueError("distributed DP needs the linear 'sgd' local optimizer")


def _build_optimizer(
    model: MatrixFactorization,
    local: LocalConfig,
    dp: DPConfig | None,
    gen: torch.Generator,
    *,
    noise_share: float | None,
    noise_source: NoiseSource | None,
    update_bound: float | None = None,
) -> tuple[torch.optim.Optimizer, list[torch.Tensor], list[torch.Tensor]]:
    """The local optimizer (wrapped in :class:`_DPOptimizer` with ``dp``).

    Returns the optimizer, every parameter it trains and the trainable global parameters.
    With ``noise_share`` the item tables' learning rate is 0 (they stay at the server's
    values; :func:`train_local` applies their summed noisy gradients at the end).
    """
    norm_size = local.batch_size_norm
    base = _local_optimizer(model, local)
    params = [p for group in base.param_groups for p in group["params"]]
    global_params = [p for p in model.global_parameters() if p.requires_grad]
    if noise_share is not None:
        base.param_groups[1]["lr"] = 0.0
    if dp is None:
        return base, params, global_params
    optimizer = _dp_optimizer_class()(
        base,
        noise_multiplier=dp.noise_multiplier,
        max_grad_norm=dp.max_grad_norm,
        expected_batch_size=norm_size,
        loss_reduction="mean",
        generator=gen,
    )
    optimizer.noise_source = noise_source
    if noise_share is not None:
        optimizer.noise_scale = {id(p): float(noise_share) for p in global_params}
        optimizer.sum_bound = dp.max_grad_norm * norm_size
        if update_bound is not None:  # no coordinate of the update's signal beyond it
            bound = update_bound * norm_size / (local.lr * local.steps)
            optimizer.sum_bound = min(optimizer.sum_bound, bound)
    return optimizer, params, global_params


def _poisson_batches(n: int, q: float, gen: torch.Generator, steps: int) -> Iterable[list[int]]:
    """Poisson sampling over the device's ``n`` examples, ``steps`` batches.

    With no examples every batch is empty and the update is the noise alone, exactly what
    the sampler would give for a device without data.
    """
    if n:
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        return UniformWithReplacementSampler(
            num_samples=n, sample_rate=q, generator=gen, steps=steps
        )
    return [[] for _ in range(steps)]


def _train_batch(
    model: MatrixFactorization,
    pos: torch.Tensor,
    batch: list[int],
    *,
    local: LocalConfig,
    dp: DPConfig | None,
    gen: torch.Generator,
) -> tuple[float, int]:
    """Put one batch's gradients into ``.grad`` (clipped per example under ``dp``).

    Draws the batch's negatives from ``gen``. Returns the batch's summed loss and its size.
    """
    n_neg = 1 if local.loss == "bpr" else local.n_negatives
    idx = torch.as_tensor(batch, dtype=torch.long)
    b_pos = pos[idx]
    neg = sample_negatives(b_pos, model.n_items, n_neg, gen)
    zero_user = torch.zeros(1, dtype=torch.long)
    g = gather(model, zero_user.expand(len(idx)), torch.cat([b_pos.unsqueeze(1), neg], 1))
    losses = example_losses(g, loss=local.loss, l2=local.l2)
    batch_loss = float(losses.detach().sum())
    tensors = g.tensors()
    if dp is None:  # no privacy: a step is a mean over at least batch_size_norm examples
        (losses.sum() / max(local.batch_size_norm, len(idx))).backward()
    else:
        grads = torch.autograd.grad(losses.sum(), tensors)
        norms = per_example_sq_norms(g, list(grads)).sqrt()
        factor = (dp.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        _accumulate_clipped(model, g, list(grads), factor)
    return batch_loss, len(idx)


def _zero_grads(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
    """Zero every trained parameter's ``.grad`` in place, allocating the missing ones."""
    optimizer.zero_grad(set_to_none=False)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)


def _descend_summed(
    global_params: list[torch.Tensor], summed: list[torch.Tensor], lr: float
) -> None:
    """Distributed DP: move the item tables by ``-lr`` times their summed noisy gradients."""
    with torch.no_grad():
        for acc, p in zip(summed, global_params, strict=True):
            p.sub_(lr * acc)


def _check_inputs(
    model: MatrixFactorization,
    dp: DPConfig | None,
    accountant: IAccountant | None,
    noise_share: float | None,
    local: LocalConfig,
) -> None:
    if model.n_users != 1:
        raise ValueError("train_local trains a single user's model (n_users == 1)")
    if dp is not None and accountant is None:
        raise ValueError("DP training needs the device's accountant to record its steps")
    _check_noise_share(noise_share, dp, local)


def train_local(
    model: MatrixFactorization,
    positives: np.ndarray,
    *,
    local: LocalConfig,
    dp: DPConfig | None,
    accountant: IAccountant | None = None,
    generator: torch.Generator | None = None,
    noise_share: float | None = None,
    noise_source: NoiseSource | None = None,
    update_bound: float | None = None,
) -> LocalResult:
    """Train ``model`` (one user, ``n_users == 1``) on the user's positive items, in place.

    Args:
        model: the device's model; the item table should hold the server's current values.
        positives: the user's training item indices; may be empty under DP (the update is
            then pure noise: a device must not reveal that it has no data by refusing).
        local: the local training recipe.
        dp: DP-SGD settings, or ``None`` for non-private training (same sampling, no clipping
            or noise; a step's loss is the batch's mean once it holds more than
            ``batch_size_norm`` examples, so a step does not grow with the device's data).
        accountant: the device's Opacus accountant; required with ``dp``; every step is
            recorded in it.
        generator: source of randomness for sampling (and, unless ``noise_source`` is a
            secure source, for the noise): a seeded one in reproducible simulations; ``None``
            draws one from OS entropy.
        noise_source: where the DP noise comes from; a secure
            :class:`~fedrec.common.privacy.randomness.NoiseSource` (OS entropy, Opacus' four-normal
            construction) unless it is seeded or ``None`` (then the torch ``generator``).
        noise_share: distributed DP (needs ``dp``): the item tables get noise of std
            ``noise_share · noise_multiplier · max_grad_norm`` per step instead of the full
            std, and are **not** moved during local training: every step's gradient is taken
            at the server's item table, and the item tables end at
            ``initial - lr · Σ_steps noisy_grad``. The user embedding gets the full noise and
            is updated every step. So the secure *sum* over ``k ≥ 1/noise_share²`` devices of
            their item updates is a post-processing of per-step Gaussian releases with the full
            noise, exactly as one centralized DP-SGD step per local step would be (see
            :mod:`fedrec.server.distributed_dp`). Needs the plain ``"sgd"`` optimizer, which is
            linear in the gradients. Each step's clipped sum of the item tables is clamped
            coordinate-wise to ``±max_grad_norm · batch_size_norm`` (non-expansive, so the
            sensitivity is unchanged), which bounds every coordinate of the update by public
            quantities (:func:`secure_sum_range`).
        update_bound: with ``noise_share``, each step's sum is clamped so that no coordinate
            of the item update's noise-free part exceeds it (a projection): ``row-clip``.

    Returns:
        Steps taken, sampling rate, examples seen, mean loss.
    """
    _check_inputs(model, dp, accountant, noise_share, local)
    pos = torch.as_tensor(np.asarray(positives, dtype=np.int64))
    n = len(pos)
    if n < 1 and dp is None:
        raise ValueError("a device needs at least one training interaction")
    q, steps = local.sample_rate, local.steps
    gen = generator if generator is not None else NoiseSource.secure().torch_generator()
    opts = {"noise_share": noise_share, "noise_source": noise_source, "update_bound": update_bound}
    optimizer, params, global_params = _build_optimizer(model, local, dp, gen, **opts)
    # distributed DP: the item tables' noisy gradients add up, applied after the last step
    summed = None if noise_share is None else [torch.zeros_like(p) for p in global_params]
    total_loss, seen = 0.0, 0
    model.train()
    for batch in _poisson_batches(n, q, gen, steps):
        _zero_grads(optimizer, params)
        if batch:
            batch_loss, batch_seen = _train_batch(model, pos, batch, local=local, dp=dp, gen=gen)
            total_loss, seen = total_loss + batch_loss, seen + batch_seen
        optimizer.step()
        if summed is not None:
            for acc, p in zip(summed, global_params, strict=True):
                acc.add_(p.grad)
        if dp is not None and accountant is not None:
            accountant.step(noise_multiplier=dp.noise_multiplier, sample_rate=q)
    if summed is not None:
        _descend_summed(global_params, summed, local.lr)
    model.eval()
    return LocalResult(
        steps=steps, sample_rate=q, examples=seen, mean_loss=total_loss / max(1, seen)
    )
