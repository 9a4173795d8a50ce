"""From a dataset to simulated devices: one device per user.

:func:`federated_dataset` loads and splits the dataset a :class:`RunConfig` names (cached per
process, so each Flower simulation worker loads it once); :func:`make_device` builds the
:class:`~fedrec.client.device.Device` of one user, with its own ledger writer when DP is on.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedrec.client.device import Device
from fedrec.common.algorithms.base import Algorithm
from fedrec.common.config import DEVICE_DP_MODES, RunConfig
from fedrec.common.data.schema import Interactions
from fedrec.common.data.splits import Split, random_split, temporal_split

__all__ = [
    "device_id",
    "FederatedDataset",
    "federated_dataset",
    "federated_features",
    "make_device",
    "resolve_noise_multiplier",
]


@dataclass
class FederatedDataset:
    """A dataset split per user: device ``u`` holds ``train_items[u]`` and ``test_items[u]``."""

    data: Interactions
    split: Split
    train_items: Sequence[np.ndarray]
    test_items: Sequence[np.ndarray]
    #: each device's recency of its training items (aligned with ``train_items``): a real
    #: user's :meth:`~fedrec.common.data.schema.Interactions.user_item_recency`, a synthetic
    #: device's its template's (:class:`~fedrec.simulations.population.PopulationRecency`)
    train_recency: Sequence[np.ndarray] = ()

    def recency(self, user: int) -> np.ndarray | None:
        """Where each of device ``user``'s training items lies in its history, if known."""
        return self.train_recency[user] if user < len(self.train_recency) else None

    @property
    def n_users(self) -> int:
        """Number of devices (one per user; synthetic devices included)."""
        return len(self.train_items)

    @property
    def n_real_users(self) -> int:
        """Number of real users (the first ``n_real_users`` devices; the rest are synthetic)."""
        return self.data.n_users

    @property
    def n_items(self) -> int:
        """Catalog size."""
        return self.data.n_items

    @property
    def n_train_interactions(self) -> int:
        """Training interactions over every device (synthetic ones included)."""
        return int(_lengths(self.train_items).sum())


def _lengths(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Each device's number of items (a Ragged's own, without building an array each)."""
    lengths = getattr(arrays, "lengths", None)
    if lengths is not None:
        return lengths()
    return np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))


def _load(cfg: RunConfig) -> Interactions:
    from fedrec.common.data.loaders import load_dataset

    if cfg.dataset == "synthetic":
        return load_dataset(
            "synthetic", n_users=cfg.synthetic_users, n_items=cfg.synthetic_items, seed=cfg.seed
        )
    if not cfg.data_dir:
        raise ValueError(f"dataset {cfg.dataset!r} needs --data-dir (the folder with its files)")
    if cfg.dataset == "events":
        return load_dataset("events", cfg.data_dir, **events_mapping(cfg))
    return load_dataset(cfg.dataset, cfg.data_dir)


def events_mapping(cfg: RunConfig) -> dict[str, object]:
    """The keyword arguments of :func:`~fedrec.common.data.loaders.load_event_log` for a run.

    Raises:
        ValueError: the user or item column is not set (naming the file's columns).
    """
    from fedrec.common.data.loaders import event_log_columns

    if not (cfg.events_user_col and cfg.events_item_col):
        found = ", ".join(map(repr, event_log_columns(cfg.data_dir, sep=_sep(cfg.events_sep))))
        raise ValueError(
            f"dataset events needs a column mapping: --columns user=COL,item=COL"
            f"[,weight=COL][,timestamp=COL] (run-config keys events-user-col, "
            f"events-item-col, ...); {cfg.data_dir} has columns: {found}"
        )
    return {
        "user_col": cfg.events_user_col,
        "item_col": cfg.events_item_col,
        "weight_col": cfg.events_weight_col or None,
        "timestamp_col": cfg.events_timestamp_col or None,
        "sep": _sep(cfg.events_sep),
    }


def _sep(key: str) -> str | None:
    return {"": None, "tab": "\t"}.get(key, key)


@functools.lru_cache(maxsize=4)
def _cached(
    dataset: str,
    data_dir: str,
    users: int,
    items: int,
    seed: int,
    split: str,
    population: int = 0,
    events: tuple[tuple[str, str], ...] = (),
) -> FederatedDataset:
    cfg = RunConfig.from_flat(
        {
            "dataset": dataset,
            "data-dir": data_dir,
            "synthetic-users": users,
            "synthetic-items": items,
            "seed": seed,
            "split": split,
            **dict(events),
        },
        privacy="off",
    )
    data = _load(cfg)
    sp = temporal_split(data) if split == "temporal" else random_split(data, seed=seed)
    train, test = sp.train.user_items(), sp.test.user_items()
    recency: Sequence[np.ndarray] = sp.train.user_item_recency()
    if population > len(train):
        from fedrec.simulations.population import PopulationRecency, grow

        real = train
        train, templates = grow(real, data.n_items, population, seed=seed)  # compact
        test = test + [np.zeros(0, dtype=np.int64)] * (len(train) - len(real))
        recency = PopulationRecency(recency, real, train, templates, seed=seed)
    return FederatedDataset(data, sp, train, test, recency)


def _has_history(fed: FederatedDataset, user: int, cfg: RunConfig) -> bool:
    """A real user's device, or a synthetic one of a run that reads recency.

    Only then is a synthetic device's history computed.
    """
    return user < getattr(fed, "n_real_users", fed.n_users) or cfg.reads_recency()


def federated_dataset(cfg: RunConfig) -> FederatedDataset:
    """The dataset of a run, split per user (cached per process).

    Raises:
        ValueError: the run cannot work with this dataset
            (:meth:`~fedrec.common.config.RunConfig.check_feasible` with its population and
            the most examples one device holds), before anything trains.
    """
    fed = _cached(
        cfg.dataset,
        str(Path(cfg.data_dir).expanduser()) if cfg.data_dir else "",
        cfg.synthetic_users,
        cfg.synthetic_items,
        cfg.seed,
        cfg.split,
        cfg.population,
        tuple((k, v) for k, v in cfg.to_flat().items() if k.startswith("events-")),
    )
    key = tuple(sorted(cfg.to_flat().items()))
    if key not in _FEASIBLE:
        most = int(_lengths(fed.train_items).max(initial=0))
        cfg.check_feasible(n_devices=fed.n_users, max_examples=most or None)
        _FEASIBLE.add(key)
    return fed


_FEASIBLE: set[tuple] = set()


def federated_features(cfg: RunConfig) -> np.ndarray:
    """The public item features of the run's dataset (genres, release-year bins)."""
    from fedrec.common.data.item_features import item_features

    data = federated_dataset(cfg).data
    return item_features(data.items, data.n_items, year_bins=cfg.feature_year_bins)[0]


def resolve_noise_multiplier(cfg: RunConfig) -> float:
    """The run's device noise multiplier (:meth:`RunConfig.device_noise`)."""
    return cfg.device_noise()


def device_algorithm(cfg: RunConfig, n_items: int) -> Algorithm:
    """The algorithm's device half for a run (one per process and configuration).

    Devices need no public item features: they fold the received table in.
    """
    key = (tuple(sorted(cfg.to_flat().items())), n_items)
    if key not in _ALGORITHMS:
        _ALGORITHMS.clear()  # one run at a time per process
        _ALGORITHMS[key] = cfg.algorithm_class()(cfg, n_items)
    return _ALGORITHMS[key]


_ALGORITHMS: dict[tuple, Algorithm] = {}


def device_id(user: int) -> str:
    """The ledger id of the simulated device of dense user ``user``."""
    return f"device-{user:06d}"


def make_device(
    fed: FederatedDataset,
    user: int,
    cfg: RunConfig,
    *,
    ledger_dir: Path | None,
    algorithm: Algorithm | None = None,
) -> Device:
    """The simulated device of dense user ``user`` (its ledger under ``ledger_dir``).

    Its signing key comes from the run's keystore (outside the run directory; see
    :mod:`fedrec.common.audit.keystore`), where enrollment registered it. ``algorithm`` is
    :func:`device_algorithm`'s for ``cfg``, passed by a caller that builds many devices
    (looking it up took as long as building the rest of a device).
    """
    if not 0 <= user < fed.n_users:
        raise ValueError(f"partition {user} does not exist: the dataset has {fed.n_users} users")
    dp = cfg.dp_config(resolve_noise_multiplier(cfg)) if cfg.privacy in DEVICE_DP_MODES else None
    name = device_id(user)
    on_release = None
    if dp is not None and ledger_dir is not None:
        from fedrec.client.ledger_writer import LedgerWriter
        from fedrec.common.audit.keystore import Keystore

        keystore = Keystore.for_run(Path(ledger_dir).parent, cfg.keystore)
        on_release = LedgerWriter(name, ledger_dir, key=keystore.device_key(name))
    return Device(
        name,
        fed.train_items[user],
        n_items=fed.n_items,
        recency=fed.recency(user) if _has_history(fed, user, cfg) else None,
        dim=cfg.dim,
        local=cfg.local_config(),
        dp=dp,
        algorithm=algorithm if algorithm is not None else device_algorithm(cfg, fed.n_items),
        test_items=fed.test_items[user],
        item_bias=cfg.item_bias,
        init_std=cfg.init_std,
        seed=cfg.device_seed,
        on_release=on_release,
        report_metrics=cfg.privacy == "off",
    )
