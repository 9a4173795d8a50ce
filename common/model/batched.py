"""Many devices' local (non-private) SGD on the MF model, batched in one tensor program.

:func:`train_many` computes, for a chunk of devices at once, exactly what
:func:`~fedrec.common.privacy.dpsgd.train_local` computes for each of them with ``dp=None`` and
the plain ``"sgd"`` optimizer: the same Poisson-sampled batches and negatives, drawn from each
device's own generator in the same order (so a seeded device makes the same draws on either
path), the same per-example losses, each step's loss over ``max(batch_size_norm, batch)``, and
one SGD step per batch on the device's user embedding (``lr · user_lr_scale``) and on its copy
of the item tables (``lr``). A device's copy is the server's table plus its delta, one
``(B, items, dim)`` tensor for the chunk; a step gathers only the rows its batches touch and
scatters ``-lr`` times their gradients into the deltas, so a chunk's steps are a few tensor
operations instead of ``B`` optimizer loops over whole tables; only the draws stay a loop over
devices. Results equal the per-device path's to float rounding (the per-device path rounds
``(table - lr·grad) - table``, this one ``-lr·grad``, and elementwise kernels may round a value
differently by its position in a larger tensor).

It covers the modes in which a device adds no noise of its own (privacy ``off`` and user-level
DP, where the server clips and noises); example-level DP-SGD keeps the per-device Opacus path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedrec.common.model.training import GatheredBatch, example_losses, sample_negatives

__all__ = ["BatchedResult", "train_many", "chunk_size"]


@dataclass
class BatchedResult:
    """What :func:`train_many` computed for ``B`` devices.

    Attributes:
        item_embedding: ``(B, items, dim)`` float32, each device's item-embedding delta.
        item_bias: ``(B, items, 1)`` float32, each device's item-bias delta.
        users: ``(B, dim)`` float32, each device's user embedding after training.
        loss_sums: ``(B,)`` the summed per-example losses of every batch (float64).
        seen: ``(B,)`` examples seen over the steps.
    """

    item_embedding: torch.Tensor
    item_bias: torch.Tensor
    users: torch.Tensor
    loss_sums: np.ndarray
    seen: np.ndarray


def chunk_size(n_items: int, dim: int, budget_bytes: int = 64 << 20, most: int = 256) -> int:
    """How many devices one :func:`train_many` call should take: the tables within ``budget``.

    A device's delta of the item tables is ``items · (dim + 1)`` floats; as much again is
    left for a step's temporaries.
    """
    per_device = 2 * 4 * n_items * (dim + 1)
    return int(max(1, min(most, budget_bytes // per_device)))


def _draw_step(
    positives: Sequence[torch.Tensor],
    generators: Sequence[torch.Generator],
    *,
    sample_rate: float,
    n_items: int,
    n_neg: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step's batches: each device's Poisson sample and negatives, from its generator.

    The draws are those of Opacus' ``UniformWithReplacementSampler`` and of
    :func:`~fedrec.common.model.training.sample_negatives`, in the per-device path's order.
    Returns the device of every example ``(N,)`` and its item ids ``(N, 1 + n_neg)``.
    """
    owners, ids = [], []
    for b, (pos, gen) in enumerate(zip(positives, generators, strict=True)):
        mask = torch.rand(len(pos), generator=gen) < sample_rate
        b_pos = pos[mask.nonzero(as_tuple=False).reshape(-1)]
        if len(b_pos) == 0:
            continue
        neg = sample_negatives(b_pos, n_items, n_neg, gen)
        ids.append(torch.cat([b_pos.unsqueeze(1), neg], 1))
        owners.append(torch.full((len(b_pos),), b, dtype=torch.long))
    if not ids:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, 1 + n_neg, dtype=torch.long)
    return torch.cat(owners), torch.cat(ids)


def train_many(
    item_embedding: np.ndarray,
    item_bias: np.ndarray,
    users: np.ndarray,
    positives: Sequence[np.ndarray],
    generators: Sequence[torch.Generator],
    *,
    local,  # noqa: ANN001 - a LocalConfig (fedrec.common.privacy.dpsgd)
    train_bias: bool = True,
) -> BatchedResult:
    """Non-private local SGD of ``B`` devices from the same item tables, batched.

    Args:
        item_embedding: the server's item embeddings ``(items, dim)``.
        item_bias: the server's item biases ``(items, 1)``.
        users: the devices' user embeddings ``(B, dim)``.
        positives: each device's training items (at least one each).
        generators: each device's generator (its sampling and negatives are drawn from it).
        local: the devices' common recipe; its optimizer must be ``"sgd"``.
        train_bias: whether the item biases are trained.

    Returns:
        The item-table deltas, the user embeddings after training and the loss sums.
    """
    if local.optimizer != "sgd":
        raise ValueError(
            f"batched training runs the plain 'sgd' optimizer, not {local.optimizer!r}"
        )
    if any(len(p) == 0 for p in positives):
        raise ValueError("every device in a batch needs at least one training interaction")
    emb0 = torch.as_tensor(np.asarray(item_embedding, dtype=np.float32))
    bias0 = torch.as_tensor(np.asarray(item_bias, dtype=np.float32)).reshape(-1)
    n_devices, (n_items, dim) = len(positives), emb0.shape
    # each device's table is the server's plus its own delta; only the rows a batch touches
    # are gathered, and a step scatters into the delta alone
    deltas = torch.zeros(n_devices, n_items, dim)
    bias_deltas = torch.zeros(n_devices, n_items)
    u = torch.as_tensor(np.asarray(users, dtype=np.float32)).reshape(n_devices, dim).clone()
    pos = [torch.as_tensor(np.asarray(p, dtype=np.int64)) for p in positives]
    n_neg = 1 if local.loss == "bpr" else local.n_negatives
    loss_sums, seen = np.zeros(n_devices), np.zeros(n_devices, dtype=np.int64)
    for step in range(local.steps):
        owners, ids = _draw_step(
            pos, generators, sample_rate=local.sample_rate, n_items=n_items, n_neg=n_neg
        )
        if len(owners) == 0:
            continue
        count = torch.bincount(owners, minlength=n_devices)
        rows = owners.unsqueeze(1).expand_as(ids)
        items, bias = emb0[ids], bias0[ids]
        if step:  # the first step starts from the server's table: no delta yet
            items, bias = items + deltas[rows, ids], bias + bias_deltas[rows, ids]
        g = GatheredBatch(
            user=u[owners].requires_grad_(True),
            items=items.requires_grad_(True),
            bias=bias.requires_grad_(train_bias),
            item_ids=ids,
            user_ids=owners,
        )
        losses = example_losses(g, loss=local.loss, l2=local.l2)
        denom = count.to(losses.dtype).clamp(min=local.batch_size_norm)
        grads = torch.autograd.grad((losses / denom[owners]).sum(), g.tensors())
        with torch.no_grad():  # an SGD step: minus lr times the gradient
            u.index_add_(0, owners, grads[0], alpha=-local.lr * local.user_lr_scale)
            flat = (rows * n_items + ids).reshape(-1)  # (device, item) as one row index
            deltas.view(-1, dim).index_add_(0, flat, grads[1].reshape(-1, dim), alpha=-local.lr)
            if train_bias:
                bias_deltas.view(-1).index_add_(0, flat, grads[2].reshape(-1), alpha=-local.lr)
        sums = torch.zeros(n_devices, dtype=torch.float64)
        loss_sums += sums.index_add_(0, owners, losses.detach().double()).numpy()
        seen += count.numpy()
    return BatchedResult(
        item_embedding=deltas,
        item_bias=bias_deltas.unsqueeze(-1),
        users=u,
        loss_sums=loss_sums,
        seen=seen,
    )
