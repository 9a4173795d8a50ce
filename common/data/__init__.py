"""Data: interaction schema, format loaders, splits, synthetic data, public item features."""

from fedrec.common._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "DATASETS": "loaders",
        "DUPLICATE_POLICIES": "loaders",
        "DataFormatError": "schema",
        "IdMap": "schema",
        "Interactions": "schema",
        "ItemMetadata": "schema",
        "Split": "splits",
        "SyntheticDataset": "synthetic",
        "YEAR_COLUMNS": "item_features",
        "generate_synthetic": "synthetic",
        "held_out_counts": "splits",
        "item_features": "item_features",
        "load_dataset": "loaders",
        "load_event_log": "loaders",
        "load_ml100k": "loaders",
        "load_ml1m": "loaders",
        "load_ml_latest": "loaders",
        "load_recbole": "loaders",
        "make_synthetic": "synthetic",
        "random_split": "splits",
        "temporal_split": "splits",
        "validation_split": "splits",
    },
)
