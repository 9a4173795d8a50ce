"""Reference numbers on a split: most-popular and centralized MF with a small search.

The search (documented, small, on the validation slice only — the test slice is touched once,
at the end):

1. cut a validation slice off train with the temporal rule (:func:`validation_split`);
2. for each candidate of :data:`SEARCH_GRID`, train on train′ and evaluate NDCG@10 on the
   validation slice every ``eval_every`` epochs; keep the best (candidate, epoch count);
3. retrain the winner on the whole train for that many epochs; evaluate on test.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from fedrec.common.data.splits import Split, validation_split
from fedrec.common.evaluation.metrics import evaluate
from fedrec.common.model.nonpersonalized import MostPopular
from fedrec.common.model.training import CentralizedTrainer, TrainConfig

__all__ = ["SEARCH_GRID", "DEFAULT_MF", "most_popular", "centralized_mf", "run_baselines"]

#: Candidates of the centralized MF search (everything else as in :data:`DEFAULT_MF`).
SEARCH_GRID: tuple[dict[str, object], ...] = (
    {"loss": "bpr", "l2": 0.003, "dim": 128, "lr": 0.002},
    {"loss": "bpr", "l2": 0.01, "dim": 64, "lr": 0.005},
    {"loss": "bce", "n_negatives": 8, "l2": 0.003},
    {"loss": "bce", "n_negatives": 8, "l2": 0.01},
)
DEFAULT_MF = TrainConfig(
    dim=64, loss="bce", n_negatives=8, l2=0.01, lr=0.005, epochs=40, batch_size=1024
)


def most_popular(split: Split, ks: tuple[int, ...] = (10, 20)) -> dict[str, float]:
    """Full-ranking metrics of the most-popular list (popularity counted on train)."""
    model = MostPopular().fit(split.train)
    return evaluate(model.scores, split.train, split.test, ks=ks)


def _score_fn(model):
    return lambda users: model.full_scores(users)


def centralized_mf(
    split: Split,
    *,
    search: bool = True,
    base: TrainConfig = DEFAULT_MF,
    eval_every: int = 5,
    ks: tuple[int, ...] = (10, 20),
    log: Callable[[str], None] = lambda _msg: None,
) -> dict[str, object]:
    """Centralized MF: search on validation (optional), retrain, evaluate on test."""
    chosen, epochs, trials = base, base.epochs, []
    if search:
        inner = validation_split(split.train)
        best = (-1.0, base, base.epochs)
        for cand in SEARCH_GRID:
            cfg = replace(base, **cand)  # type: ignore[arg-type]
            curve: list[tuple[int, float]] = []

            def on_epoch(epoch: int, model, _loss: float, curve=curve) -> None:
                if (epoch + 1) % eval_every == 0:
                    m = evaluate(_score_fn(model), inner.train, inner.test, ks=(10,))
                    curve.append((epoch + 1, m["ndcg@10"]))

            t0 = time.perf_counter()
            CentralizedTrainer(cfg).fit(inner.train, on_epoch=on_epoch)
            ep, score = max(curve, key=lambda c: c[1])
            trials.append(
                {
                    "config": cand,
                    "best_epochs": ep,
                    "validation_ndcg@10": score,
                    "seconds": time.perf_counter() - t0,
                }
            )
            log(f"  search {cand}: validation NDCG@10 {score:.4f} at epoch {ep}")
            if score > best[0]:
                best = (score, cfg, ep)
        _, chosen, epochs = best
    final_cfg = replace(chosen, epochs=epochs)
    t0 = time.perf_counter()
    model = CentralizedTrainer(final_cfg).fit(split.train)
    train_seconds = time.perf_counter() - t0
    metrics = evaluate(_score_fn(model), split.train, split.test, ks=ks)
    return {
        "metrics": metrics,
        "config": final_cfg.to_dict(),
        "search": trials,
        "train_seconds": train_seconds,
    }


def run_baselines(
    split: Split,
    *,
    search: bool = True,
    seed: int = 0,
    log: Callable[[str], None] = lambda _msg: None,
) -> dict[str, object]:
    """Most-popular and centralized MF on ``split`` (plus the sampled-negative metrics)."""
    from fedrec.common.evaluation.metrics import evaluate_sampled

    t0 = time.perf_counter()
    pop = most_popular(split)
    pop_model = MostPopular().fit(split.train)
    pop_sampled = evaluate_sampled(pop_model.scores, split.train, split.test, seed=seed)
    log(f"most-popular: NDCG@10 {pop['ndcg@10']:.4f}  Recall@10 {pop['recall@10']:.4f}")
    mf = centralized_mf(split, search=search, base=replace(DEFAULT_MF, seed=seed), log=log)
    mf_metrics = mf["metrics"]
    log(
        f"centralized MF: NDCG@10 {mf_metrics['ndcg@10']:.4f}  "  # type: ignore[index]
        f"Recall@10 {mf_metrics['recall@10']:.4f}"
    )  # type: ignore[index]
    return {
        "protocol": "full ranking over all items not in the user's train; temporal split "
        "(last max(1, floor(n/5)) by (timestamp, item) as test)",
        "users": int(np.unique(split.test.user).size),
        "most_popular": pop,
        "most_popular_sampled_99_negatives": pop_sampled,
        "centralized_mf": mf,
        "seconds": time.perf_counter() - t0,
    }
