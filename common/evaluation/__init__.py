"""Evaluation: full-ranking top-K metrics."""

from fedrec.common._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "DEFAULT_KS": "metrics",
        "ScoreFn": "metrics",
        "combine_metric_sums": "metrics",
        "combine_noisy_sums": "metrics",
        "evaluate": "metrics",
        "evaluate_sampled": "metrics",
        "evaluation_keys": "metrics",
        "sample_negatives": "metrics",
        "topk_items": "metrics",
        "user_metric_sums": "metrics",
    },
)
