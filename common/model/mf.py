"""Matrix factorization with parameters split into *global* and *local*.

``score(u, i) = <p_u, q_i> + b_i`` where ``p_u`` is the user's embedding (local: it never
leaves the device), ``q_i`` the item embedding and ``b_i`` the item bias (global: the server
aggregates them). The split is part of the API (:attr:`MatrixFactorization.GLOBAL`,
:meth:`~MatrixFactorization.global_state`, :meth:`~MatrixFactorization.local_state`) so that
federated code sends the one and keeps the other, and a test can check that nothing local is
ever sent.

A device holds a model with ``n_users=1``; the centralized trainer holds every user.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from fedrec.common.algorithms.base import TABLE_KEYS

__all__ = ["MatrixFactorization", "GLOBAL_KEYS", "LOCAL_KEYS"]

#: Parameter names shared through the server (item side): the item table.
GLOBAL_KEYS: tuple[str, ...] = TABLE_KEYS
#: Parameter names that stay on the device (user side).
LOCAL_KEYS: tuple[str, ...] = ("user_embedding.weight",)


class MatrixFactorization(nn.Module):
    """Biased matrix factorization ``<p_u, q_i> + b_i``.

    Args:
        n_users: rows of the user table (1 on a device).
        n_items: catalog size.
        dim: embedding dimension.
        item_bias: learn a per-item bias (global). When False the bias stays at zero and is
            not trained, but the parameter still exists so shapes never depend on settings.
        init_std: standard deviation of the normal initialisation of embeddings.
        generator: a ``torch.Generator`` for the initialisation (randomness from outside).
        init_items: draw the item embeddings (the default); ``False`` starts them at zero
            without a draw, for a device, whose item table is always the server's (a draw of
            ``n_items x dim`` normals per device built, only to be overwritten, was a quarter
            of a large simulation's time).
    """

    GLOBAL = GLOBAL_KEYS
    LOCAL = LOCAL_KEYS

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int = 64,
        *,
        item_bias: bool = True,
        init_std: float = 0.1,
        generator: torch.Generator | None = None,
        init_items: bool = True,
    ):
        super().__init__()
        if n_users < 1 or n_items < 1:
            raise ValueError(f"need at least one user and one item, got {n_users}, {n_items}")
        if dim < 1:
            raise ValueError(f"the embedding dimension must be positive, got {dim}")
        self.n_users, self.n_items, self.dim = n_users, n_items, dim
        self.use_item_bias = item_bias
        # initialised below from ``generator``: skip nn.Embedding's own draw from torch's
        # global generator (a wasted item table of normals for every device built)
        self.user_embedding = nn.Embedding(n_users, dim, _weight=torch.empty(n_users, dim))
        self.item_embedding = nn.Embedding(n_items, dim, _weight=torch.empty(n_items, dim))
        self.item_bias = nn.Embedding(n_items, 1, _weight=torch.empty(n_items, 1))
        with torch.no_grad():
            self.user_embedding.weight.normal_(0.0, init_std, generator=generator)
            if init_items:
                self.item_embedding.weight.normal_(0.0, init_std, generator=generator)
            else:
                self.item_embedding.weight.zero_()
            self.item_bias.weight.zero_()
        self.item_bias.weight.requires_grad_(item_bias)

    # --- scoring -------------------------------------------------------------------------
    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of (user, item) pairs, shape ``users.shape``."""
        p = self.user_embedding(users)
        q = self.item_embedding(items)
        return (p * q).sum(-1) + self.item_bias(items).squeeze(-1)

    @torch.no_grad()
    def full_scores(self, users: torch.Tensor | np.ndarray) -> np.ndarray:
        """Scores of every item for each user, ``(len(users), n_items)`` float32 numpy."""
        users = torch.as_tensor(np.asarray(users), dtype=torch.long)
        p = self.user_embedding(users)
        s = p @ self.item_embedding.weight.T + self.item_bias.weight.T
        return s.numpy()

    # --- the global/local split ----------------------------------------------------------
    def global_state(self) -> dict[str, np.ndarray]:
        """Copies of the global (item-side) parameters as float32 numpy arrays."""
        sd = self.state_dict()
        return {k: sd[k].detach().cpu().numpy().astype(np.float32, copy=True) for k in GLOBAL_KEYS}

    def local_state(self) -> dict[str, np.ndarray]:
        """Copies of the local (user-side) parameters; these never leave a device."""
        sd = self.state_dict()
        return {k: sd[k].detach().cpu().numpy().astype(np.float32, copy=True) for k in LOCAL_KEYS}

    def load_global_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Overwrite the global parameters (e.g. with the server's item table).

        Raises:
            ValueError: if a key is missing or a shape does not match.
        """
        self._load(state, GLOBAL_KEYS)

    def load_local_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Overwrite the local parameters (e.g. a device's persisted user embedding)."""
        self._load(state, LOCAL_KEYS)

    def _load(self, state: Mapping[str, np.ndarray], keys: tuple[str, ...]) -> None:
        params = dict(self.named_parameters())
        for k in keys:
            if k not in state:
                raise ValueError(f"missing parameter {k!r}; got keys {sorted(state)}")
            value = torch.as_tensor(np.asarray(state[k], dtype=np.float32))
            if tuple(value.shape) != tuple(params[k].shape):
                raise ValueError(
                    f"parameter {k!r} has shape {tuple(value.shape)}, "
                    f"expected {tuple(params[k].shape)}"
                )
            with torch.no_grad():
                params[k].copy_(value)

    def global_parameters(self) -> list[nn.Parameter]:
        """The global parameters (item embeddings and biases) as torch parameters."""
        params = dict(self.named_parameters())
        return [params[k] for k in GLOBAL_KEYS]

    def local_parameters(self) -> list[nn.Parameter]:
        """The local parameters (the user embedding table) as torch parameters."""
        params = dict(self.named_parameters())
        return [params[k] for k in LOCAL_KEYS]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every parameter that training updates (item bias only when enabled)."""
        return [p for p in self.parameters() if p.requires_grad]
