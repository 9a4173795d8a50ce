"""Server optimizers on the item table, and the mean they step with.

Pure numpy: a federated algorithm (:mod:`fedrec.common.algorithms.sgd`) turns the round's
aggregate into the next item table with one of these (FedAvg's step, FedAdam).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "weighted_mean",
    "ServerOptimizer",
    "FedAvgStep",
    "FedAdamStep",
    "make_server_optimizer",
]

State = dict[str, np.ndarray]


def weighted_mean(deltas: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]) -> State:
    """Weighted mean of deltas (weights are normalised; they must be positive)."""
    if not deltas:
        raise ValueError("nothing to aggregate")
    w = np.asarray(weights, dtype=np.float64)
    if len(w) != len(deltas) or (w <= 0).any():
        raise ValueError("one positive weight per delta is required")
    w = w / w.sum()
    return {
        k: sum(wi * d[k].astype(np.float64) for wi, d in zip(w, deltas, strict=True)).astype(
            np.float32
        )
        for k in deltas[0]
    }


class ServerOptimizer:
    """Turns the aggregated delta (a pseudo-gradient, negated) into a new global state."""

    def step(self, params: State, delta: State) -> State:
        """Return the new global parameters."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, object]:
        """Optimizer state for checkpoints."""
        return {}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore :meth:`state_dict`."""


@dataclass
class FedAvgStep(ServerOptimizer):
    """``params + lr · delta`` (FedAvg for ``lr = 1``; a larger server step otherwise)."""

    lr: float = 1.0

    def step(self, params: State, delta: State) -> State:
        """Apply the step."""
        return {k: (params[k] + self.lr * delta[k]).astype(np.float32) for k in params}


@dataclass
class FedAdamStep(ServerOptimizer):
    """FedAdam (Reddi et al., "Adaptive Federated Optimization", 2021), as in Flower's FedAdam."""

    lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        self.m: State = {}
        self.v: State = {}
        self.t = 0

    def step(self, params: State, delta: State) -> State:
        """Apply one adaptive step with bias correction."""
        self.t += 1
        out = {}
        for k, p in params.items():
            d = delta[k]
            m = self.m.get(k, np.zeros_like(d))
            v = self.v.get(k, np.zeros_like(d))
            m = self.beta1 * m + (1 - self.beta1) * d
            v = self.beta2 * v + (1 - self.beta2) * d * d
            self.m[k], self.v[k] = m, v
            m_hat = m / (1 - self.beta1**self.t)
            v_hat = v / (1 - self.beta2**self.t)
            out[k] = (p + self.lr * m_hat / (np.sqrt(v_hat) + self.tau)).astype(np.float32)
        return out

    def state_dict(self) -> dict[str, object]:
        """Moments and step count."""
        return {"m": self.m, "v": self.v, "t": self.t}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore moments and step count."""
        self.m = dict(state["m"])  # type: ignore[arg-type]
        self.v = dict(state["v"])  # type: ignore[arg-type]
        self.t = int(state["t"])  # type: ignore[arg-type]


def make_server_optimizer(
    kind: str, *, lr: float, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
) -> ServerOptimizer:
    """Build a server optimizer by name (``"fedavg"`` or ``"fedadam"``)."""
    if kind == "fedavg":
        return FedAvgStep(lr=lr)
    if kind == "fedadam":
        return FedAdamStep(lr=lr, beta1=beta1, beta2=beta2, tau=tau)
    raise ValueError(f"server optimizer must be 'fedavg' or 'fedadam', got {kind!r}")
