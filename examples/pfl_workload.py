"""Issue 15's speed workload in pfl-research 0.6.0 (Apple's PFL simulator), for comparison.

Not part of fedrec (pfl is not a dependency, and nothing imports this file). Run it in a
separate virtual environment (docs/benchmarks.md, "Against pfl-research")::

    python -m venv /tmp/pflvenv
    /tmp/pflvenv/bin/pip install torch==2.13.0
    /tmp/pflvenv/bin/pip install 'pfl[pytorch]==0.6.0'
    /tmp/pflvenv/bin/python examples/pfl_workload.py --data-dir ../shared/datasets/ml-100k \
        --devices 943 --cohort 100 --rounds 12

The workload is the one ``fedrec simulate --engine loop`` runs in docs/benchmarks.md: ML-100K,
one device per user, the temporal split (the last ``max(1, n // 5)`` interactions of each user
held out), MF with d = 32, a user embedding local to each device (kept in the device's state,
never part of the update) and global item embeddings and biases; one local SGD step (lr 0.5)
on the device's training items, each with 4 uniform negatives, binary cross-entropy summed and
divided by ``max(40, n)``; user-level DP: each update clipped to L2 norm 0.5 and Gaussian
noise of std 1.0 x 0.5 added to the sum on the server (pfl's ``GaussianMechanism`` applied
centrally), the mean over the cohort applied with a server learning rate of 24. With
``--devices`` above 943 the population is resampled from ML-100K's users as fedrec's
``--population`` does (:func:`fedrec.simulations.population.augment`, re-implemented here).

It prints seconds per round (the median of the rounds after the first) and the peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from pfl.aggregate.simulate import SimulatedBackend
from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
from pfl.callback.base import TrainingProcessCallback
from pfl.data.dataset import Dataset
from pfl.data.federated_dataset import FederatedDataset
from pfl.data.sampling import get_user_sampler
from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
from pfl.metrics import Metrics
from pfl.model.pytorch import PyTorchModel
from pfl.privacy import CentrallyAppliedPrivacyMechanism, GaussianMechanism

DIM, LR, NEGATIVES, NORM, CLIP, NOISE, SERVER_LR = 32, 0.5, 4, 40.0, 0.5, 1.0, 24.0


def load_train_items(data_dir: Path) -> tuple[list[np.ndarray], int]:
    """ML-100K's training items per user (temporal split, as fedrec's) and the catalog size."""
    raw = np.loadtxt(data_dir / "u.data", dtype=np.int64)
    users, items, times = raw[:, 0], raw[:, 1], raw[:, 3]
    uid = np.unique(users, return_inverse=True)[1]
    iid = np.unique(items, return_inverse=True)[1]
    order = np.lexsort((iid, times, uid))
    out = []
    for u in range(uid.max() + 1):
        seq = iid[order][uid[order] == u]
        n_test = max(1, len(seq) // 5)
        out.append(np.unique(seq[: len(seq) - n_test]))
    return out, int(iid.max() + 1)


def augment(train: list[np.ndarray], n_items: int, total: int, seed: int = 0) -> list[np.ndarray]:
    """Synthetic devices resampled from real users (fedrec's population.augment)."""
    rng = np.random.default_rng([seed, 2024])
    counts = np.bincount(np.concatenate(train), minlength=n_items).astype(float) + 1e-3
    pop = counts / counts.sum()
    out = []
    for _ in range(total - len(train)):
        template = train[int(rng.integers(len(train)))]
        chosen = set(template[rng.random(len(template)) < 0.8].tolist())
        while len(chosen) < len(template):
            for i in rng.choice(n_items, size=2 * (len(template) - len(chosen)) + 4, p=pop):
                if len(chosen) < len(template):
                    chosen.add(int(i))
        out.append(np.array(sorted(chosen), dtype=np.int64))
    return out


class ItemTables(torch.nn.Module):
    """The global half of MF (item embeddings and biases); the user row comes per device."""

    def __init__(self, n_items: int):
        super().__init__()
        self.item_embedding = torch.nn.Parameter(torch.randn(n_items, DIM) * 0.1)
        self.item_bias = torch.nn.Parameter(torch.zeros(n_items, 1))
        self.user: torch.Tensor | None = None  # the current device's embedding (local)

    def loss(self, positives: torch.Tensor) -> torch.Tensor:
        """BCE of the positives and 4 uniform negatives each, summed, over max(40, n)."""
        n_items = self.item_embedding.shape[0]
        draw = torch.randint(0, n_items - 1, (len(positives), NEGATIVES))
        neg = draw + (draw >= positives.unsqueeze(1)).long()
        ids = torch.cat([positives.unsqueeze(1), neg], 1)
        scores = (self.item_embedding[ids] @ self.user[0]) + self.item_bias[ids].squeeze(-1)
        labels = torch.zeros_like(scores)
        labels[:, 0] = 1.0
        bce = torch.nn.functional.binary_cross_entropy_with_logits(scores, labels, reduction="sum")
        return bce / max(NORM, float(len(positives)))

    def metrics(self, positives: torch.Tensor, eval: bool = False) -> dict:  # noqa: A002
        """No metrics: the benchmark times training rounds only."""
        return {}


class LocalUserFedAvg(FederatedAveraging):
    """FedAvg whose devices keep a user embedding of their own (trained, never sent)."""

    def __init__(self, n_users: int):
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.users = torch.randn(n_users, 1, DIM, generator=gen) * 0.1

    def train_one_user(self, initial_model_state, model, user_dataset, central_context):
        """FedAvg's local SGD, with this device's embedding loaded, stepped and kept."""
        u = int(user_dataset.user_id)
        net = model.pytorch_model
        net.user = self.users[u].clone().requires_grad_(True)
        stats, metrics = super().train_one_user(
            initial_model_state, model, user_dataset, central_context
        )
        with torch.no_grad():  # the same SGD step on the local embedding
            self.users[u] = net.user - LR * net.user.grad
        return stats, metrics


class RoundTimer(TrainingProcessCallback):
    """Seconds between consecutive central iterations."""

    def __init__(self) -> None:
        self.marks = [time.perf_counter()]

    def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
        """Record the time; never stop training."""
        self.marks.append(time.perf_counter())
        return False, Metrics()


def main() -> None:
    """Run the workload and print s/round and peak RSS."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=Path("../shared/datasets/ml-100k"))
    ap.add_argument("--devices", type=int, default=943)
    ap.add_argument("--cohort", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train, n_items = load_train_items(args.data_dir)
    train += augment(train, n_items, args.devices)
    tensors = [torch.as_tensor(t) for t in train]
    data = FederatedDataset(
        lambda uid: Dataset(raw_data=[tensors[int(uid)]], user_id=uid),
        get_user_sampler("random", [str(u) for u in range(len(train))]),
    )
    net = ItemTables(n_items)
    model = PyTorchModel(
        net,
        local_optimizer_create=torch.optim.SGD,
        central_optimizer=torch.optim.SGD(net.parameters(), lr=SERVER_LR),
    )
    mechanism = CentrallyAppliedPrivacyMechanism(GaussianMechanism(CLIP, NOISE))
    backend = SimulatedBackend(training_data=data, val_data=None, postprocessors=[mechanism])
    timer = RoundTimer()
    LocalUserFedAvg(len(train)).run(
        algorithm_params=NNAlgorithmParams(
            central_num_iterations=args.rounds,
            evaluation_frequency=10**9,
            train_cohort_size=args.cohort,
            val_cohort_size=0,
        ),
        backend=backend,
        model=model,
        model_train_params=NNTrainHyperParams(
            local_num_epochs=1, local_learning_rate=LR, local_batch_size=None
        ),
        model_eval_params=NNEvalHyperParams(local_batch_size=None),
        callbacks=[timer],
    )
    rounds = np.diff(timer.marks)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"pfl {args.devices} devices, cohort {args.cohort}, threads {torch.get_num_threads()}: "
        f"{statistics.median(rounds[1:]):.4f} s/round (median of rounds 2-{len(rounds)}), "
        f"peak RSS {rss:.0f} MB; rounds {' '.join(f'{r:.3f}' for r in rounds)}"
    )


if __name__ == "__main__":
    main()
