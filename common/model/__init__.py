"""The MF model, its centralized trainer, reference recommenders and on-device ranking."""

from fedrec.common._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "Availability": "ranking",
        "CentralizedTrainer": "training",
        "Explanation": "ranking",
        "FedAdamStep": "optimizers",
        "FedAvgStep": "optimizers",
        "Freshness": "ranking",
        "GLOBAL_KEYS": "mf",
        "GatheredBatch": "training",
        "LOCAL_KEYS": "mf",
        "MatrixFactorization": "mf",
        "MostPopular": "nonpersonalized",
        "RandomRecommender": "nonpersonalized",
        "RankedItem": "ranking",
        "ServerOptimizer": "optimizers",
        "TrainConfig": "training",
        "example_losses": "training",
        "explain": "ranking",
        "fold_in": "ranking",
        "freshness_boost": "ranking",
        "intra_list_similarity": "ranking",
        "make_server_optimizer": "optimizers",
        "mmr_order": "ranking",
        "rank": "ranking",
        "sample_negatives": "training",
        "score_items": "ranking",
        "top_candidates": "ranking",
        "weighted_mean": "optimizers",
    },
)
