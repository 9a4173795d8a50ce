"""Implicit-feedback training of :class:`~fedrec.common.model.mf.MatrixFactorization`.

Two objectives over sampled negatives:

* ``"bpr"``: Bayesian personalized ranking, ``-log σ(s(u,i) - s(u,j))`` for a positive ``i``
  and a sampled negative ``j``;
* ``"bce"``: binary cross-entropy with the positive labelled 1 and ``n_negatives`` sampled
  items labelled 0.

Losses are computed *per example* from embedding rows gathered out of the tables
(:func:`example_losses`), so that the differentially private trainer can get each example's
gradient from one backward pass (see :mod:`fedrec.common.privacy.dpsgd`). Negatives are drawn
uniformly from the whole catalog (excluding only the example's own positive), which does not
depend on any other example: a requirement for example-level DP.

:class:`CentralizedTrainer` trains all users in one process; it is the reference that the
federated version is measured against.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from fedrec.common.data.schema import Interactions
from fedrec.common.model.mf import MatrixFactorization

__all__ = [
    "TrainConfig",
    "GatheredBatch",
    "sample_negatives",
    "example_losses",
    "CentralizedTrainer",
]

log = logging.getLogger("fedrec.train")

LOSSES = ("bpr", "bce")


@dataclass
class TrainConfig:
    """Hyper-parameters of (non-private, centralized) MF training.

    Attributes:
        dim: embedding dimension.
        loss: ``"bpr"`` or ``"bce"``.
        epochs: passes over the training interactions.
        batch_size: interactions per step.
        lr: Adam learning rate.
        l2: L2 penalty on the embedding rows of each example (per-example regularisation).
        n_negatives: negatives per positive for ``"bce"`` (``"bpr"`` uses one).
        item_bias: learn item biases.
        init_std: initialisation scale of the embeddings.
        seed: seed of initialisation and sampling.
    """

    dim: int = 64
    loss: str = "bpr"
    epochs: int = 40
    batch_size: int = 1024
    lr: float = 0.005
    l2: float = 1e-4
    n_negatives: int = 4
    item_bias: bool = True
    init_std: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        for name in ("dim", "epochs", "batch_size", "n_negatives"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {self.l2}")

    def to_dict(self) -> dict[str, object]:
        """The config as a plain dict (for JSON)."""
        return asdict(self)


def sample_negatives(
    positives: torch.Tensor, n_items: int, n: int, generator: torch.Generator
) -> torch.Tensor:
    """Uniform negatives, ``(len(positives), n)``, never equal to the example's own positive.

    Drawn from ``n_items - 1`` values and shifted past the positive, so the distribution is
    uniform over the other items and independent of every other example.
    """
    if n_items < 2:
        raise ValueError("negative sampling needs a catalog of at least two items")
    draw = torch.randint(0, n_items - 1, (len(positives), n), generator=generator)
    return draw + (draw >= positives.unsqueeze(1)).long()


@dataclass
class GatheredBatch:
    """Embedding rows gathered for a batch, as leaf-like tensors whose gradients are per example.

    Row ``b`` of every tensor belongs to example ``b`` only, so the gradient of the summed
    loss with respect to these tensors is, row by row, each example's own gradient.
    """

    user: torch.Tensor  # (B, d)
    items: torch.Tensor  # (B, 1 + n_neg, d): column 0 the positive
    bias: torch.Tensor  # (B, 1 + n_neg)
    item_ids: torch.Tensor  # (B, 1 + n_neg)
    user_ids: torch.Tensor  # (B,)

    def tensors(self) -> list[torch.Tensor]:
        """The tensors that carry per-example gradients (bias only when it is trained)."""
        out = [self.user, self.items]
        if self.bias.requires_grad:
            out.append(self.bias)
        return out


def gather(model: MatrixFactorization, users: torch.Tensor, items: torch.Tensor) -> GatheredBatch:
    """Gather the embedding rows a batch touches (differentiable w.r.t. the tables)."""
    return GatheredBatch(
        user=model.user_embedding(users),
        items=model.item_embedding(items),
        bias=model.item_bias(items).squeeze(-1),
        item_ids=items,
        user_ids=users,
    )


def example_losses(g: GatheredBatch, *, loss: str, l2: float) -> torch.Tensor:
    """The per-example loss ``(B,)`` of a gathered batch (column 0 of items is the positive)."""
    scores = torch.einsum("bd,bkd->bk", g.user, g.items) + g.bias
    if loss == "bpr":
        # one negative per positive; with more, average the pairwise terms
        diff = scores[:, :1] - scores[:, 1:]
        per = -torch.nn.functional.logsigmoid(diff).mean(1)
    elif loss == "bce":
        labels = torch.zeros_like(scores)
        labels[:, 0] = 1.0
        per = torch.nn.functional.binary_cross_entropy_with_logits(
            scores, labels, reduction="none"
        ).sum(1)
    else:
        raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")
    if l2:
        per = per + l2 * (g.user.pow(2).sum(-1) + g.items.pow(2).sum((-1, -2)))
    return per


class CentralizedTrainer:
    """Non-private MF on all users in one process (the reference for federated training).

    Example:
        >>> trainer = CentralizedTrainer(TrainConfig(epochs=5))  # doctest: +SKIP
        >>> model = trainer.fit(split.train)  # doctest: +SKIP
    """

    def __init__(self, config: TrainConfig | None = None):
        self.config = config or TrainConfig()
        self.history: list[dict[str, float]] = []

    def fit(
        self,
        train: Interactions,
        *,
        on_epoch: Callable[[int, MatrixFactorization, float], None] | None = None,
    ) -> MatrixFactorization:
        """Train a fresh model on ``train`` and return it.

        Args:
            train: the training interactions (every rating is a positive).
            on_epoch: called as ``on_epoch(epoch, model, mean_loss)`` after each epoch (for
                validation, early stopping by raising ``StopIteration``, or progress).
        """
        cfg = self.config
        if len(train) == 0:
            raise ValueError("cannot train on an empty set of interactions")
        gen = torch.Generator().manual_seed(cfg.seed)
        model = MatrixFactorization(
            train.n_users,
            train.n_items,
            cfg.dim,
            item_bias=cfg.item_bias,
            init_std=cfg.init_std,
            generator=gen,
        )
        opt = torch.optim.Adam(model.trainable_parameters(), lr=cfg.lr)
        users = torch.as_tensor(train.user)
        items = torch.as_tensor(train.item)
        n = len(users)
        n_neg = 1 if cfg.loss == "bpr" else cfg.n_negatives
        for epoch in range(cfg.epochs):
            t0 = time.perf_counter()
            perm = torch.randperm(n, generator=gen)
            total = 0.0
            for start in range(0, n, cfg.batch_size):
                idx = perm[start : start + cfg.batch_size]
                pos = items[idx]
                neg = sample_negatives(pos, train.n_items, n_neg, gen)
                g = gather(model, users[idx], torch.cat([pos.unsqueeze(1), neg], 1))
                loss = example_losses(g, loss=cfg.loss, l2=cfg.l2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            mean_loss = total / n
            self.history.append(
                {"epoch": epoch, "loss": mean_loss, "seconds": time.perf_counter() - t0}
            )
            log.debug("epoch %d loss %.4f", epoch, mean_loss)
            if on_epoch is not None:
                try:
                    on_epoch(epoch, model, mean_loss)
                except StopIteration:
                    break
        return model
