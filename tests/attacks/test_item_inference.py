"""A curious server ranks items by how the uploads it sees moved them (item inference).

The attacker knows every item's true training popularity (the strongest prior a server could
hold) and, per device, scores item ``i`` by ``popularity_i + λ · movement_i``, where the
movement is what the uploads it can see say about item ``i``: the change of its bias in a
device's own update where the server sees individual updates, or in the round's sum where it
sees only SecAgg+ sums. Its gain is the best mean AUC over λ minus the prior's AUC, over
the devices' training items against the items they never touched.

In the main job's mode (distributed DP, sums only) the server never holds an individual
upload, and the sums add at most 0.01 AUC over the prior. The control (privacy off, where the
server sees each device's update) shows that the attack finds a device's items when it can.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.cli.simulate import main_job_defaults
from fedrec.common.config import RunConfig
from fedrec.simulations import in_process
from fedrec.simulations.federation import federated_dataset
from fedrec.simulations.loop import run_plain

pytestmark = pytest.mark.slow

KEYS = {"synthetic-users": 120, "synthetic-items": 60, "seed": 4, "reproducible": True}


def _auc(scores: np.ndarray, positives: np.ndarray, negatives: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counting half."""
    pos, neg = scores[positives][:, None], scores[negatives][None, :]
    return float(np.mean(pos > neg) + 0.5 * np.mean(pos == neg))


def _row_movement(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """How an upload moved each item: the change of its bias (up for a device's items)."""
    return np.asarray(arrays["item_bias.weight"], dtype=np.float64)[:, 0]


def _watch(monkeypatch) -> dict[str, list]:
    """Record everything the server receives from the in-process transport."""
    seen: dict[str, list] = {"individual": [], "sums": []}
    train, secure_sum = (
        in_process.InProcessTransport.train,
        in_process.InProcessTransport.secure_sum,
    )

    def spy_train(self, request, nodes):
        replies = train(self, request, nodes)
        seen["individual"] += [(r.node, r.arrays) for r in replies if r.arrays is not None]
        return replies

    def spy_sum(self, request, nodes, plan):
        result = secure_sum(self, request, nodes, plan)
        if result.total is not None and request.task.name == "train":
            seen["sums"].append(result.total)
        return result

    monkeypatch.setattr(in_process.InProcessTransport, "train", spy_train)
    monkeypatch.setattr(in_process.InProcessTransport, "secure_sum", spy_sum)
    return seen


def _gain(cfg: RunConfig, seen: dict[str, list]) -> float:
    fed = federated_dataset(cfg)
    n_items = fed.n_items
    prior = np.bincount(np.concatenate(fed.train_items), minlength=n_items).astype(np.float64)
    prior /= prior.max()
    shared = sum((_row_movement(s) for s in seen["sums"]), np.zeros(n_items))
    own: dict[int, np.ndarray] = {}
    for node, arrays in seen["individual"]:
        if set(arrays) >= {"item_embedding.weight", "item_bias.weight"}:
            own[node] = own.get(node, np.zeros(n_items)) + _row_movement(arrays)
    aucs = {lam: [] for lam in (0.0, 0.01, 0.1, 1.0, 10.0, 100.0)}
    for u, items in enumerate(fed.train_items[: fed.n_real_users]):
        positives = np.unique(items)
        negatives = np.setdiff1d(np.arange(n_items), positives)
        if len(positives) == 0 or len(negatives) == 0:
            continue
        view = own.get(u, np.zeros(n_items)) + shared
        scale = np.abs(view).max()
        view = view / scale if scale > 0 else view
        for lam in aucs:
            aucs[lam].append(_auc(prior + lam * view, positives, negatives))
    base = float(np.mean(aucs[0.0]))
    return max(float(np.mean(v)) for v in aucs.values()) - base


def test_the_main_job_s_sums_add_at_most_001_auc_over_popularity(monkeypatch):
    seen = _watch(monkeypatch)
    cfg = RunConfig.from_flat(main_job_defaults(dict(KEYS)))
    assert cfg.privacy == "distributed" and cfg.algorithm == "warm-sgd"
    run_plain(cfg)
    assert seen["individual"] == []  # no individual upload ever reached the server
    assert seen["sums"]  # the DP-SGD rounds' sums did
    assert _gain(cfg, seen) <= 0.01


def test_control_individual_updates_reveal_a_device_s_items(monkeypatch):
    seen = _watch(monkeypatch)
    cfg = RunConfig.from_flat({**KEYS, "algorithm": "sgd", "privacy": "off", "num-rounds": 2})
    run_plain(cfg)
    assert seen["individual"]
    assert _gain(cfg, seen) > 0.05
