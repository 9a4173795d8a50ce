"""The SDK an app embeds: :class:`FedRecClient`.

::

    from fedrec.client.sdk import FedRecClient, Event

    client = FedRecClient.open("fedrec.db", catalog=item_ids)
    client.record(Event("view", "item-42", time.time(), value=35.0))
    recs = client.recommend(10, diversity=0.3, explain=True)   # offline, on the device
    for r in recs:
        print(r.item_id, r.explanation)
    # when the app's federated round arrives (e.g. from the Flower ClientApp):
    reply = client.train_round(global_state, server_round,
                               policy_signals=PolicySignals(charging=True, on_wifi=True))
    print(client.privacy_report().epsilon_left)
    client.close()

Everything lives in one SQLite file (:mod:`fedrec.client.storage`): the events, the user
embedding, the accountant state, the device's privacy ledger, and the last item table,
catalog and popularity prior received. Recommendation needs only numpy
(:mod:`fedrec.common.model.ranking`); torch and Opacus are imported on the first
:meth:`FedRecClient.train_round`, so an app that records and recommends starts fast. Importing
this module pulls in no server, simulation or Ray code.

Privacy: a round trains with DP-SGD under the device's ε budget (example-level: one
interaction, all events on one item merged, see :mod:`fedrec.client.interactions`). The spend is
committed *before* training (write-ahead) and again before the reply is returned, so a crash
never under-counts it; :meth:`FedRecClient.forget` deletes the data but never the spend.
"""

from __future__ import annotations

import copy
import json
import math
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedrec.client.interactions import (
    Event,
    EventKind,
    ItemSignal,
    WeightPolicy,
    weights_from_events,
)
from fedrec.client.storage import CorruptStoreError, DeviceStore, Retention, StoreError
from fedrec.common.model.ranking import Explanation, Freshness, fold_in, rank, score_items
from fedrec.common.privacy.policy import (
    PolicyViolation,
    PrivacyPolicy,
    RefusalCode,
    TrainingRequest,
)

if TYPE_CHECKING:  # pragma: no cover
    from fedrec.client.device import Refusal, TrainReply
    from fedrec.common.privacy.dpsgd import DPConfig, LocalConfig

__all__ = [
    "FedRecClient",
    "Catalog",
    "Event",
    "EventKind",
    "WeightPolicy",
    "Retention",
    "TrainingPolicy",
    "PolicySignals",
    "Freshness",
    "Recommendation",
    "Recommendations",
    "PrivacyReport",
    "PrivacyPolicy",
    "RefusalCode",
    "DEFAULT_DP",
    "STATUS",
    "StoreError",
    "CorruptStoreError",
    "weights_from_events",
]

#: The SDK's DP settings when ``open`` gets none and the store has none: those of
#: :class:`fedrec.common.privacy.dpsgd.DPConfig` (a test keeps them equal), written out so that
#: opening a store does not import torch.
DEFAULT_DP: dict[str, Any] = {
    "noise_multiplier": 1.0,
    "max_grad_norm": 1.0,
    "target_delta": 1e-5,
    "budget_epsilon": 8.0,
    "accountant": "prv",
}
#: The keys a server's training recipe may carry (:meth:`FedRecClient.train_round`).
_RECIPE_KEYS = (
    "noise_multiplier",
    "max_grad_norm",
    "epsilon",
    "delta",
    "planned_participations",
    "local",
)
_ITEM_EMB, _ITEM_BIAS = "item_embedding.weight", "item_bias.weight"
_SECONDS_PER_DAY = 86400.0
_UNSET: Any = object()

STATUS = {
    "personalized": "ranked with this device's trained user embedding",
    "personalized-fold-in": "ranked from the items you interacted with (no trained user "
    "embedding yet)",
    "cold-start-popularity": "no history yet: the popularity prior published by the server",
    "cold-start-recent": "no history yet: the most recent items of the catalog",
    "cold-start-item-bias": "no history yet: the model's item biases (a popularity signal)",
    "cold-start-catalog": "no history yet and no prior: catalog order",
    "no-item-table": "no item table has been received yet (receive_model() or a training "
    "round), and no popularity prior: nothing to rank",
}


# --------------------------------------------------------------------------- value types


@dataclass(frozen=True)
class Catalog:
    """The items the app can recommend, in the item table's row order.

    Attributes:
        item_ids: one id per row of the item table.
        titles: display names by id (explanations use them), optional.
        genres: genres by id (explanations name a shared genre), optional.
        published_at: publication time by id, seconds since the epoch (freshness boost and the
            "most recent" cold start), optional.
    """

    item_ids: tuple[str, ...]
    titles: Mapping[str, str] | None = None
    genres: Mapping[str, Sequence[str]] | None = None
    published_at: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        ids = tuple(str(i) for i in self.item_ids)
        if len(set(ids)) != len(ids):
            raise ValueError("catalog item ids must be unique")
        object.__setattr__(self, "item_ids", ids)

    def to_json(self) -> dict[str, Any]:
        """JSON-friendly form (what the store keeps)."""
        return {
            "item_ids": list(self.item_ids),
            "titles": dict(self.titles) if self.titles else None,
            "genres": {k: list(v) for k, v in self.genres.items()} if self.genres else None,
            "published_at": (
                {k: float(v) for k, v in self.published_at.items()} if self.published_at else None
            ),
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Catalog:
        """Inverse of :meth:`to_json`."""
        return cls(
            tuple(value["item_ids"]),
            value.get("titles"),
            value.get("genres"),
            value.get("published_at"),
        )


@dataclass(frozen=True)
class TrainingPolicy:
    """When the app lets the device train, and how much (from signals the app passes in).

    Every limit here is decided from the device's state and public counts (rounds, steps,
    table size), never from its data: a refusal that depended on, say, the CPU time of the
    last round (which grows with the number of interactions) would tell the server about
    the data through *when* the device refuses.

    Attributes:
        require_charging: train only while charging.
        require_wifi: train only on Wi-Fi (an unmetered network).
        min_battery_level: when not charging, the battery level (0-1) below which the device
            does not train (None: no limit).
        max_rounds_per_day: trainings per rolling 24 hours (None: no limit).
        max_steps_per_day: local DP-SGD steps per rolling 24 hours (None: no limit); a round
            is refused when its steps would take the day past it.
        max_steps_per_round: the most local steps one round may ask for (a server asking for
            more is refused: ``resources``).
        max_table_entries: the largest item table (``n_items × (dim + 1)`` entries) the device
            accepts, for training and for :meth:`FedRecClient.receive_model`.
        max_memory_bytes: the most memory a training round may need
            (:func:`fedrec.common.privacy.policy.training_memory_bytes`).
    """

    require_charging: bool = True
    require_wifi: bool = True
    min_battery_level: float | None = None
    max_rounds_per_day: int | None = 4
    max_steps_per_day: int | None = None
    max_steps_per_round: int = 10_000
    max_table_entries: int = 2**25
    max_memory_bytes: int = 2**31

    def __post_init__(self) -> None:
        if self.min_battery_level is not None and not 0 <= self.min_battery_level <= 1:
            raise ValueError(
                f"min_battery_level is a fraction in [0, 1], got {self.min_battery_level}"
            )
        if self.max_rounds_per_day is not None and self.max_rounds_per_day < 0:
            raise ValueError("max_rounds_per_day must be >= 0")
        if self.max_steps_per_day is not None and self.max_steps_per_day < 0:
            raise ValueError("max_steps_per_day must be >= 0")
        for name in ("max_steps_per_round", "max_table_entries", "max_memory_bytes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer")

    def refusal(
        self, signals: PolicySignals, *, rounds_today: int, steps_today: int, steps: int
    ) -> str | None:
        """Why the device must not train now (for its own log), or None when it may."""
        if self.require_charging and not signals.charging:
            return "the device is not charging (the training policy requires it)"
        if self.require_wifi and not signals.on_wifi:
            return "the device is not on Wi-Fi (the training policy requires it)"
        if (
            self.min_battery_level is not None
            and not signals.charging
            and (signals.battery_level is None or signals.battery_level < self.min_battery_level)
        ):
            return (
                f"battery level {signals.battery_level} is below "
                f"{self.min_battery_level} and the device is not charging"
            )
        if self.max_rounds_per_day is not None and rounds_today >= self.max_rounds_per_day:
            return (
                f"{rounds_today} trainings in the last 24 h reach the limit of "
                f"{self.max_rounds_per_day} per day"
            )
        if self.max_steps_per_day is not None and steps_today + steps > self.max_steps_per_day:
            return (
                f"{steps_today} steps in the last 24 h plus {steps} for this round exceed "
                f"the limit of {self.max_steps_per_day} per day"
            )
        return None


@dataclass(frozen=True)
class PolicySignals:
    """The device's state, as the app reads it from the platform.

    Attributes:
        charging: the device is plugged in.
        on_wifi: the device is on Wi-Fi (unmetered).
        battery_level: battery fraction in [0, 1], if known.
        now: the current time (seconds since the epoch); None uses the clock.
    """

    charging: bool = False
    on_wifi: bool = False
    battery_level: float | None = None
    now: float | None = None

    @classmethod
    def coerce(cls, value: PolicySignals | Mapping[str, Any]) -> PolicySignals:
        """A :class:`PolicySignals` from itself or a mapping of its fields (``-`` or ``_``)."""
        if isinstance(value, PolicySignals):
            return value
        if not isinstance(value, Mapping):
            raise TypeError("policy_signals must be PolicySignals or a mapping of its fields")
        fields = {k.replace("-", "_"): v for k, v in value.items()}
        unknown = sorted(set(fields) - {"charging", "on_wifi", "battery_level", "now"})
        if unknown:
            raise ValueError(
                f"unknown policy signals {unknown}; expected charging, on_wifi, battery_level, now"
            )
        return cls(**fields)


@dataclass(frozen=True)
class Recommendation:
    """One recommended item.

    Attributes:
        item_id: the catalog id.
        score: the score it was ranked by (model score, or the cold-start prior).
        explanation: why, in words (when asked for).
        because_item_id: the interacted item the explanation names, if any.
        explanation_kind: ``"neighbour"``, ``"genre"``, ``"popular"``, ``"recent"`` …
    """

    item_id: str
    score: float
    explanation: str | None = None
    because_item_id: str | None = None
    explanation_kind: str | None = None


@dataclass(frozen=True)
class Recommendations(Sequence[Recommendation]):
    """A recommendation list with how it was made.

    Attributes:
        items: the recommendations, best first.
        status: a key of :data:`STATUS` (``"personalized"``, ``"cold-start-popularity"``,
            ``"no-item-table"`` …).
        message: the status in words.
    """

    items: tuple[Recommendation, ...]
    status: str
    message: str

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):  # type: ignore[override]
        return self.items[index]

    def __iter__(self) -> Iterator[Recommendation]:
        return iter(self.items)

    @property
    def item_ids(self) -> list[str]:
        """The recommended ids, best first."""
        return [r.item_id for r in self.items]


@dataclass(frozen=True)
class PrivacyReport:
    """What this device has spent of its privacy budget, and on what terms.

    Attributes:
        dp_enabled: the device trains with DP-SGD.
        epsilon_spent: ε spent at ``delta`` (counting rounds whose outcome a crash left
            unknown); ``inf`` if an update was ever sent without DP.
        epsilon_left: ``budget_epsilon - epsilon_spent`` (never below 0).
        budget_epsilon: the device's ε budget.
        delta: δ of the guarantee.
        unit: unit of privacy.
        relation: neighbouring relation.
        accountant: the accountant that computed ε.
        trust_model: who adds the noise.
        rounds_released: rounds whose update was released.
        rounds_pending: rounds whose spend was recorded ahead but that were not released (a
            crash or a failed training); their spend is counted.
        steps: DP-SGD steps over all rounds.
        history: the accountant's ``(noise_multiplier, sample_rate, steps)`` history.
        assumptions: what the guarantee assumes, in words.
    """

    dp_enabled: bool
    epsilon_spent: float
    epsilon_left: float
    budget_epsilon: float | None
    delta: float | None
    unit: str
    relation: str
    accountant: str | None
    trust_model: str
    rounds_released: int
    rounds_pending: int
    steps: int
    history: tuple[tuple[float, float, int], ...]
    assumptions: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """The report as a plain dict."""
        return asdict(self)


# --------------------------------------------------------------------------- the client


class FedRecClient:
    """The on-device recommender an app embeds. Create it with :meth:`open`."""

    def __init__(
        self,
        store: DeviceStore,
        *,
        device_id: str,
        dp: Mapping[str, Any] | None,
        local: Mapping[str, Any],
        policy: TrainingPolicy,
        weights: WeightPolicy,
        retention: Retention | None,
        sign_ledger: bool,
        ledger_path: Path | None,
        seed: int | None,
    ):
        self._store = store
        self.device_id = device_id
        self._dp = dict(dp) if dp is not None else None
        self._local = dict(local)
        self.policy = policy
        self.weights = weights
        self.retention = retention
        self._sign_ledger = sign_ledger
        self.ledger_path = ledger_path
        self._seed = seed
        self._lock = threading.RLock()
        self._ledger: Any = None
        self._load_model()
        self._load_signals()

    # --- opening ---------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        catalog: Catalog | Sequence[str] | None = None,
        device_id: str | None = None,
        dp: DPConfig | Mapping[str, Any] | None = _UNSET,
        local: LocalConfig | Mapping[str, Any] | None = None,
        policy: TrainingPolicy | None = None,
        weights: WeightPolicy | None = None,
        retention: Retention | None = None,
        sign_ledger: bool = True,
        ledger_path: str | Path | None = None,
        seed: int | None = None,
    ) -> FedRecClient:
        """Open (or create) the device's store.

        Args:
            path: the SQLite file.
            catalog: the item ids (or a :class:`Catalog` with metadata) in item-table row
                order; stored, so later opens may omit it.
            device_id: a stable id for the ledger (letters, digits, ``._-``); created and
                stored on first open when omitted.
            dp: DP-SGD settings (a ``DPConfig`` or its fields); omitted: the stored ones, else
                :data:`DEFAULT_DP`. ``None`` turns DP off and warns: updates then carry no
                guarantee.
            local: local training recipe (a ``LocalConfig`` or its fields); omitted: stored
                or ``LocalConfig()``. Fields given as a mapping are validated by
                ``LocalConfig`` at the first :meth:`train_round` (so that opening does not
                import torch).
            policy: when training is allowed (default :class:`TrainingPolicy`).
            weights: how events become training weights (default :class:`WeightPolicy`).
            retention: data minimization applied on open and before each round.
            sign_ledger: also write each release to a signed, hash-chained
                ``fedrec-ledger/1`` file for auditors (the key stays in the store).
            ledger_path: that file (default: beside the store, ``<stem>.ledger.jsonl``).
            seed: seeds the user-embedding initialisation and the DP sampling/noise (tests and
                simulations only; a deployed device leaves it None).

        Raises:
            StoreError: the file is not a fedrec store or has a newer schema.
            CorruptStoreError: SQLite cannot read the file (truncated or damaged).
            ValueError: settings that contradict what the store has already accounted.
        """
        path = Path(path)
        store = DeviceStore(path)
        try:
            device_id = _device_id(store, path, device_id)
            dp_settings = _open_dp_settings(store, dp)
            local_settings = _local_settings(local, store)
            store.set_meta("local", local_settings)
            ledger = (
                Path(ledger_path)
                if ledger_path is not None
                else path.with_name(path.stem + ".ledger.jsonl")
            )
            client = cls(
                store,
                device_id=str(device_id),
                dp=dp_settings,
                local=local_settings,
                policy=policy or TrainingPolicy(),
                weights=weights or WeightPolicy(),
                retention=retention,
                sign_ledger=sign_ledger,
                ledger_path=ledger if sign_ledger else None,
                seed=seed,
            )
        except BaseException:
            store.close()
            raise
        if catalog is not None:
            client.set_catalog(catalog)
        if retention is not None:
            client.apply_retention()
        return client

    def close(self) -> None:
        """Close the store (the client cannot be used afterwards)."""
        with self._lock:
            self._store.close()

    def __enter__(self) -> FedRecClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def store(self) -> DeviceStore:
        """The underlying :class:`DeviceStore` (for inspection and tests)."""
        return self._store

    # --- model, catalog, prior -------------------------------------------------------------
    def _load_model(self) -> None:
        got = self._store.get_arrays("item_table")
        self._emb = self._bias = None
        self._table_info: dict[str, Any] = {}
        if got is not None:
            arrays, self._table_info = got
            self._emb = np.ascontiguousarray(arrays[_ITEM_EMB], dtype=np.float32)
            self._bias = np.ascontiguousarray(arrays[_ITEM_BIAS], dtype=np.float32).reshape(-1)
        pop = self._store.get_arrays("popularity")
        self._pop = None if pop is None else pop[0]["popularity"].astype(np.float64)
        self._set_catalog_cache(self._store.get_json("catalog"))
        user = self._store.get_arrays("user_state")
        self._user = None if user is None else user[0]

    def _set_catalog_cache(self, value: Mapping[str, Any] | None) -> None:
        self._catalog = None if value is None else Catalog.from_json(value)
        self._index: dict[str, int] | None = None
        self._published = None
        self._genres_by_index = None
        self._history_cache = None
        if self._catalog is not None and self._catalog.published_at:
            pub = self._catalog.published_at
            self._published = np.array(
                [pub.get(i, np.nan) for i in self._catalog.item_ids], dtype=np.float64
            )
        if self._catalog is not None and self._catalog.genres:
            g = self._catalog.genres
            self._genres_by_index = [tuple(g.get(i, ())) for i in self._catalog.item_ids]

    @property
    def n_items(self) -> int | None:
        """Catalog size (from the catalog, else the item table), or None if neither is known."""
        if self._catalog is not None:
            return len(self._catalog.item_ids)
        if self._emb is not None:
            return int(self._emb.shape[0])
        if self._pop is not None:
            return len(self._pop)
        return None

    def _id_of(self, index: int) -> str:
        return self._catalog.item_ids[index] if self._catalog is not None else str(index)

    def _index_of(self, item_id: str) -> int | None:
        n = self.n_items
        if n is None:
            return None
        if self._catalog is None:
            return int(item_id) if item_id.isdigit() and int(item_id) < n else None
        if self._index is None:
            self._index = {i: k for k, i in enumerate(self._catalog.item_ids)}
        return self._index.get(item_id)

    def _name_of(self, index: int) -> str:
        item_id = self._id_of(index)
        titles = self._catalog.titles if self._catalog is not None else None
        return f'"{titles[item_id]}"' if titles and item_id in titles else f'"{item_id}"'

    def set_catalog(self, catalog: Catalog | Sequence[str]) -> None:
        """Store the catalog (ids in item-table row order, optional metadata).

        Raises:
            ValueError: a stored item table has a different number of rows (replace both at
                once with :meth:`receive_model`).
        """
        cat = catalog if isinstance(catalog, Catalog) else Catalog(tuple(catalog))
        with self._lock:
            if self._emb is not None and self._emb.shape[0] != len(cat.item_ids):
                raise ValueError(
                    f"the catalog has {len(cat.item_ids)} items but the stored item table has "
                    f"{self._emb.shape[0]} rows; pass the catalog with its item table to "
                    "receive_model(global_state, catalog=...)"
                )
            value = cat.to_json()
            self._store.put_json("catalog", value)
            self._set_catalog_cache(value)

    def receive_model(
        self,
        global_state: Mapping[str, np.ndarray],
        *,
        catalog: Catalog | Sequence[str] | None = None,
        popularity: np.ndarray | Mapping[str, float] | None = None,
        server_round: int | None = None,
    ) -> None:
        """Keep the server's item table (and catalog, popularity prior) for offline ranking.

        Args:
            global_state: ``item_embedding.weight`` ``(n, d)`` and ``item_bias.weight``
                ``(n, 1)`` (the server's global parameters).
            catalog: the catalog of this table, when it changed.
            popularity: the DP popularity histogram the server published (per row, or by id).
            server_round: the round the table comes from (informational).

        Raises:
            ValueError: the table is malformed, does not fit the catalog, or exceeds the
                training policy's ``max_table_entries`` / ``max_memory_bytes``.
        """
        emb, bias = _validate_table(global_state)
        try:
            self.privacy_policy().check_table(*emb.shape)
        except PolicyViolation as violation:
            raise ValueError(violation.detail) from None
        cat = None
        if catalog is not None:
            cat = catalog if isinstance(catalog, Catalog) else Catalog(tuple(catalog))
            if len(cat.item_ids) != emb.shape[0]:
                raise ValueError(
                    f"the catalog has {len(cat.item_ids)} ids for an item table "
                    f"of {emb.shape[0]} rows"
                )
        elif self._catalog is not None and len(self._catalog.item_ids) != emb.shape[0]:
            raise ValueError(
                f"the item table has {emb.shape[0]} rows but the stored catalog has "
                f"{len(self._catalog.item_ids)} ids; pass catalog= with the new table"
            )
        with self._lock:
            json_values: dict[str, Any] = {}
            arrays: dict[str, dict[str, np.ndarray]] = {
                "item_table": {_ITEM_EMB: emb, _ITEM_BIAS: bias.reshape(-1, 1)}
            }
            if cat is not None:
                json_values["catalog"] = cat.to_json()
            pop = None
            if popularity is not None:
                pop = self._popularity_array(popularity, emb.shape[0], cat)
                arrays["popularity"] = {"popularity": pop}
            info = {
                "item_table": {
                    "round": server_round,
                    "n_items": int(emb.shape[0]),
                    "dim": int(emb.shape[1]),
                    "received_at": time.time(),
                }
            }
            self._store.put_many(arrays=arrays, json_values=json_values, info=info)
            self._emb, self._bias, self._table_info = emb, bias.reshape(-1), info["item_table"]
            if cat is not None:
                self._set_catalog_cache(json_values["catalog"])
            if pop is not None:
                self._pop = pop
            self._history_cache = None

    def set_popularity(self, popularity: np.ndarray | Mapping[str, float]) -> None:
        """Store the popularity prior the server published (per catalog row, or by id)."""
        n = self.n_items
        if n is None and not isinstance(popularity, Mapping):
            n = len(np.asarray(popularity))
        if n is None:
            raise ValueError("a popularity prior by id needs the catalog first (set_catalog)")
        with self._lock:
            pop = self._popularity_array(popularity, n, None)
            self._store.put_arrays("popularity", {"popularity": pop})
            self._pop = pop

    def _popularity_array(
        self, popularity: np.ndarray | Mapping[str, float], n: int, catalog: Catalog | None
    ) -> np.ndarray:
        if isinstance(popularity, Mapping):
            cat = catalog or self._catalog
            ids = cat.item_ids if cat is not None else tuple(str(i) for i in range(n))
            pop = np.array([float(popularity.get(i, 0.0)) for i in ids], dtype=np.float64)
        else:
            pop = np.asarray(popularity, dtype=np.float64).reshape(-1)
        if pop.shape != (n,):
            raise ValueError(f"the popularity prior has {pop.shape[0]} entries, expected {n}")
        if not np.all(np.isfinite(pop)):
            raise ValueError("the popularity prior must be finite")
        return pop

    # --- events ----------------------------------------------------------------------------
    def _load_signals(self) -> None:
        signals: dict[str, ItemSignal] = {}
        for event in self._store.events():
            sig = signals.get(event.item_id)
            if sig is None:
                sig = signals[event.item_id] = ItemSignal()
            sig.add(event, self.weights)
        self._signals = signals
        self._history_cache = None

    def record(self, event: Event) -> int:
        """Store one event; when this returns (its id), the event survives any crash."""
        return self.record_many([event])[0]

    def record_many(self, events: Iterable[Event]) -> list[int]:
        """Store events atomically (all or none); returns their ids."""
        events = list(events)
        for e in events:
            if not isinstance(e, Event):
                raise TypeError(f"record() takes fedrec Event values, got {type(e).__name__}")
        with self._lock:
            ids = self._store.append_events(events)
            for event in events:
                sig = self._signals.get(event.item_id)
                if sig is None:
                    sig = self._signals[event.item_id] = ItemSignal()
                sig.add(event, self.weights)
            self._history_cache = None
        return ids

    def events(self, *, since: float | None = None) -> list[Event]:
        """The stored events, oldest first."""
        return self._store.events(since=since)

    def _history(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(seen item indices, positive item indices, their weights) in the current catalog."""
        if self._history_cache is None:
            seen, pos, w = [], [], []
            for item_id, sig in self._signals.items():
                idx = self._index_of(item_id)
                if idx is None:
                    continue
                if sig.seen:
                    seen.append(idx)
                if sig.weight > 0:
                    pos.append(idx)
                    w.append(sig.weight)
            order = np.argsort(pos, kind="stable") if pos else np.zeros(0, dtype=np.int64)
            self._history_cache = (
                np.asarray(sorted(seen), dtype=np.int64),
                np.asarray(pos, dtype=np.int64)[order],
                np.asarray(w, dtype=np.float64)[order],
            )
        return self._history_cache

    def training_items(self) -> np.ndarray:
        """Item indices the device trains on: weight >= ``weights.min_training_weight``."""
        with self._lock:
            _, pos, w = self._history()
            return pos[w >= self.weights.min_training_weight]

    # --- retention -------------------------------------------------------------------------
    def apply_retention(
        self, retention: Retention | None = None, *, now: float | None = None
    ) -> int:
        """Apply ``retention`` (default: the one given at open); returns events deleted."""
        retention = retention if retention is not None else self.retention
        if retention is None:
            return 0
        with self._lock:
            deleted = self._store.apply_retention(retention, now=now)
            if deleted:
                self._load_signals()
            return deleted

    def forget(self) -> int:
        """Delete every event and the user embedding; returns events deleted.

        The privacy spend, the ledger, the item table and catalog stay: forgetting data never
        lowers what the device has spent.
        """
        with self._lock:
            n = self._store.forget()
            self._user = None
            self._signals = {}
            self._history_cache = None
            return n

    # --- recommend -------------------------------------------------------------------------
    def recommend(
        self,
        k: int = 10,
        *,
        exclude_seen: bool = True,
        diversity: float = 0.0,
        freshness: Freshness | float | None = None,
        available: Iterable[str] | Callable[[str], bool] | np.ndarray | None = None,
        explain: bool = False,
    ) -> Recommendations:
        """Up to ``k`` items for this user, ranked on the device from the last item table.

        Args:
            k: list length.
            exclude_seen: leave out items the user acted on (any event but an impression).
            diversity: MMR λ in ``[0, 1]`` over item embeddings (0: pure relevance).
            freshness: a boost for recent items: a weight (using the catalog's
                ``published_at``, half-life 7 days) or a :class:`Freshness`.
            available: allowed items: ids, a predicate on an id, or a boolean mask over the
                catalog; others are never recommended.
            explain: attach an explanation to each item ("because you interacted with X").

        Never raises for lack of data: with no history it falls back to the server's
        popularity prior, then the most recent items, then the item biases, then catalog
        order; with no item table and no prior it returns an empty list whose ``status`` is
        ``"no-item-table"``. Invalid arguments raise ``ValueError``.
        """
        if not 0.0 <= float(diversity) <= 1.0:
            raise ValueError(f"diversity (MMR λ) must lie in [0, 1], got {diversity}")
        with self._lock:
            n = self.n_items
            if self._emb is None and self._pop is None:
                return Recommendations((), "no-item-table", STATUS["no-item-table"])
            seen, pos, weights = self._history()
            vectors = self._emb
            user = self._user_vector()
            fallback = "score"
            if self._emb is not None and user is not None:
                scores, status = score_items(user, self._emb, self._bias), "personalized"
            elif self._emb is not None and len(pos):
                scores = score_items(fold_in(self._emb, pos, weights), self._emb, self._bias)
                status = "personalized-fold-in"
            elif self._pop is not None:
                scores, status, fallback = self._pop, "cold-start-popularity", "popular"
            elif self._published is not None and np.isfinite(self._published).any():
                scores = np.where(np.isnan(self._published), -np.inf, self._published)
                status, fallback = "cold-start-recent", "recent"
            elif self._bias is not None and np.any(self._bias != 0):
                scores, status, fallback = self._bias, "cold-start-item-bias", "popular"
            else:
                scores = np.zeros(int(n or 0), dtype=np.float32)
                status, fallback = "cold-start-catalog", "catalog"
            if vectors is None:
                diversity = 0.0  # a prior without an item table: nothing to diversify over
            ranked = rank(
                scores,
                int(k),
                item_vectors=vectors,
                exclude=seen if exclude_seen and len(seen) else None,
                available=self._availability(available, len(scores)),
                diversity=float(diversity),
                freshness=self._freshness(freshness),
                explain_with=pos,
                genres=self._genres_by_index,
                explanation_fallback=fallback,
                explanations=explain,
            )
            items = tuple(self._recommendation(r) for r in ranked)
            return Recommendations(items, status, STATUS[status])

    def _user_vector(self) -> np.ndarray | None:
        if self._user is None or self._emb is None:
            return None
        vec = np.asarray(self._user["user_embedding"], dtype=np.float32).reshape(-1)
        return vec if vec.shape[0] == self._emb.shape[1] else None

    def _recommendation(self, r: Any) -> Recommendation:
        e: Explanation | None = r.explanation
        if e is None:
            return Recommendation(self._id_of(r.index), r.score)
        because = self._id_of(e.because) if e.because is not None else None
        return Recommendation(self._id_of(r.index), r.score, e.text(self._name_of), because, e.kind)

    def _availability(self, available: Any, n: int) -> Any:
        if available is None:
            return None
        if isinstance(available, np.ndarray) and available.dtype == bool:
            return available
        if callable(available):
            predicate = available
            return lambda i: bool(predicate(self._id_of(i)))
        if isinstance(available, str):
            available = [available]
        idx = [self._index_of(str(i)) for i in available]
        return np.asarray([i for i in idx if i is not None], dtype=np.int64)

    def _freshness(self, freshness: Freshness | float | None) -> Freshness | None:
        if freshness is None:
            return None
        if not isinstance(freshness, Freshness):
            freshness = Freshness(weight=float(freshness))
        if freshness.timestamps is None:
            if self._published is None:
                raise ValueError(
                    "a freshness boost needs per-item timestamps: open with "
                    "Catalog(published_at=...) or pass Freshness(timestamps=...)"
                )
            return Freshness(self._published, freshness.half_life, freshness.weight, freshness.now)
        ts = freshness.timestamps
        if isinstance(ts, Mapping):
            n = int(self.n_items or 0)
            arr = np.full(n, np.nan)
            for item_id, t in ts.items():
                i = self._index_of(str(item_id))
                if i is not None:
                    arr[i] = float(t)
            return Freshness(arr, freshness.half_life, freshness.weight, freshness.now)
        return freshness

    # --- training --------------------------------------------------------------------------
    def privacy_policy(self) -> PrivacyPolicy:
        """The device's own privacy policy: its DP settings and its training policy's ceilings.

        What a server asks (:meth:`train_round`'s ``recipe``) may only be stricter.
        """
        dp = self._dp if self._dp is not None else DEFAULT_DP
        return PrivacyPolicy(
            epsilon_budget=float(dp["budget_epsilon"]),
            delta=float(dp["target_delta"]),
            accountant=str(dp["accountant"]),
            allow_no_dp=self._dp is None,
            max_steps_per_round=int(self.policy.max_steps_per_round),
            max_table_entries=int(self.policy.max_table_entries),
            max_memory_bytes=int(self.policy.max_memory_bytes),
        )

    def train_round(
        self,
        global_state: Mapping[str, np.ndarray],
        server_round: int,
        *,
        policy_signals: PolicySignals | Mapping[str, Any],
        recipe: Mapping[str, Any] | None = None,
    ) -> TrainReply | Refusal:
        """Take part in one federated round: train locally (DP-SGD) or refuse with a code.

        Before any work the device checks, and refuses with a fixed
        :class:`~fedrec.common.privacy.policy.RefusalCode` (its only content on the wire):

        * ``bad-request``: the item table is malformed (missing arrays, wrong shapes,
          non-finite values, a catalog of another size), or the recipe is;
        * ``resources``: the table or the recipe exceeds the training policy's ceilings;
        * ``privacy-policy``: the recipe asks for a larger δ or ε than this device's own;
        * ``device-state``: the training policy forbids training now;
        * ``budget``: the round would take ε past the device's budget.

        A refusal spends nothing. Otherwise the intended spend is committed, the device trains
        (under DP also when it has no training interactions: its update is then noise alone,
        since a refusal would tell the server it has no data), and the final spend, the ledger
        record and the new user embedding are committed before the reply is returned.

        Args:
            global_state: the server's item table.
            server_round: the round number (recorded).
            policy_signals: the device's state (charging, network, battery).
            recipe: the server's training recipe for this round (the SDK's own settings when
                omitted): ``noise_multiplier`` (0: calibrate to ``epsilon``),
                ``max_grad_norm``, ``epsilon``, ``delta``, ``planned_participations``, and
                ``local`` (:class:`~fedrec.common.privacy.dpsgd.LocalConfig` fields). The device
                keeps its own budget, δ and accountant whatever the recipe says.

        Returns:
            ``TrainReply`` (the dense item-table delta to send) or ``Refusal``.
        """
        from fedrec.client.device import Refusal

        signals = PolicySignals.coerce(policy_signals)
        now = signals.now if signals.now is not None else time.time()
        with self._lock:
            spent_now = self._cached_epsilon()
            try:
                emb, _ = self._checked_table(global_state)
                dp, local = self._round_settings(recipe, emb.shape)
            except PolicyViolation as violation:
                return Refusal(violation.code, violation.detail, spent_now, spent_now)
            self.receive_model(global_state, server_round=server_round)
            if self.retention is not None:
                self.apply_retention(now=now)
            rounds_today, _ = self._store.rounds_since(now - _SECONDS_PER_DAY)
            reason = self.policy.refusal(
                signals,
                rounds_today=rounds_today,
                steps_today=self._store.steps_since(now - _SECONDS_PER_DAY),
                steps=local.steps,
            )
            if reason is not None:
                return Refusal(RefusalCode.DEVICE_STATE, reason, spent_now, spent_now)
            items = self.training_items()
            if len(items) == 0 and dp is None:
                return Refusal(
                    RefusalCode.UNSUPPORTED,
                    "no training interactions and no DP",
                    spent_now,
                    spent_now,
                )
            return self._train(global_state, server_round, items, dp, local, now)

    def _checked_table(
        self, global_state: Mapping[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The server's table, checked against this device (``bad-request``/``resources``)."""
        try:
            emb, bias = _validate_table(global_state)
        except ValueError as exc:
            raise PolicyViolation(RefusalCode.BAD_REQUEST, str(exc)) from None
        if self._catalog is not None and len(self._catalog.item_ids) != emb.shape[0]:
            raise PolicyViolation(
                RefusalCode.BAD_REQUEST,
                f"a table of {emb.shape[0]} rows for a catalog of "
                f"{len(self._catalog.item_ids)} items",
            )
        self.privacy_policy().check_table(*emb.shape)
        return emb, bias

    def _round_settings(
        self, recipe: Mapping[str, Any] | None, shape: tuple[int, int]
    ) -> tuple[DPConfig | None, LocalConfig]:
        """The DP settings and local recipe of a round, checked against the device's policy."""
        from fedrec.common.privacy.dpsgd import DPConfig, LocalConfig

        recipe = dict(recipe or {})
        unknown = sorted(set(recipe) - set(_RECIPE_KEYS))
        try:
            if unknown:
                raise ValueError(f"unknown recipe keys {unknown}")
            local = LocalConfig(**{**self._local, **dict(recipe.get("local") or {})})
        except (TypeError, ValueError) as exc:
            raise PolicyViolation(RefusalCode.BAD_REQUEST, f"bad recipe: {exc}") from None
        policy = self.privacy_policy()
        own = self._dp if self._dp is not None else None
        sigma = float(
            recipe.get("noise_multiplier", own["noise_multiplier"] if own is not None else 0.0)
        )
        epsilon = recipe.get("epsilon")
        delta = recipe.get("delta")
        policy.check(
            TrainingRequest(
                n_items=shape[0],
                dim=shape[1],
                steps=local.steps,
                noise_multiplier=sigma,
                sample_rate=local.sample_rate,
                epsilon=None if epsilon is None else float(epsilon),
                delta=None if delta is None else float(delta),
                dp=own is not None,
            )
        )
        if own is None:
            return None, local
        if sigma == 0:  # calibrated from public inputs, at the device's accountant
            participations = int(recipe.get("planned_participations", 1))
            if not 1 <= participations <= 10_000:
                raise PolicyViolation(
                    RefusalCode.BAD_REQUEST, f"planned_participations {participations} out of range"
                )
            sigma = _calibrated(
                float(epsilon),
                float(delta if delta is not None else policy.delta),
                local.sample_rate,
                local.steps * participations,
                policy.accountant,
            )
        max_grad_norm = float(recipe.get("max_grad_norm", own["max_grad_norm"]))
        try:
            dp = DPConfig(
                noise_multiplier=sigma,
                max_grad_norm=max_grad_norm,
                target_delta=policy.delta,
                budget_epsilon=policy.epsilon_budget,
                accountant=policy.accountant,
            )
        except ValueError as exc:
            raise PolicyViolation(RefusalCode.BAD_REQUEST, f"bad recipe: {exc}") from None
        return dp, local

    def _train(
        self,
        global_state: Mapping[str, np.ndarray],
        server_round: int,
        items: np.ndarray,
        dp: DPConfig | None,
        local: LocalConfig,
        now: float,
    ) -> TrainReply | Refusal:
        """Train one checked round: write-ahead of spend, train, commit (see train_round)."""
        from fedrec.client.device import Device, Refusal

        assert self._emb is not None
        device = Device(
            self.device_id,
            items,
            n_items=int(self._emb.shape[0]),
            dim=int(self._emb.shape[1]),
            local=local,
            dp=dp,
            seed=self._seed,
        )
        self._restore_device(device)
        release_id = None
        if dp is not None:
            spent = device.epsilon_spent()
            needed = device.epsilon_if_trained()
            self._store.cache_epsilon(epsilon=spent, delta=dp.target_delta)
            if needed > dp.budget_epsilon + 1e-9:
                return Refusal(
                    RefusalCode.BUDGET,
                    f"this round would bring epsilon to {needed:.4g} > budget "
                    f"{dp.budget_epsilon:g} (spent {spent:.4g}, delta "
                    f"{dp.target_delta:g})",
                    spent,
                    needed,
                )
            trial = copy.deepcopy(device.accountant)
            for _ in range(local.steps):
                trial.step(noise_multiplier=dp.noise_multiplier, sample_rate=local.sample_rate)
            # write-ahead of spend: counted from here on, whatever happens next
            release_id = self._store.begin_release(
                server_round=server_round,
                noise_multiplier=dp.noise_multiplier,
                max_grad_norm=dp.max_grad_norm,
                sample_rate=local.sample_rate,
                steps=local.steps,
                target_delta=dp.target_delta,
                budget_epsilon=dp.budget_epsilon,
                accountant=dp.accountant,
                history_after=trial.history,
                epsilon_after=needed,
            )
        round_id = self._store.start_round(server_round, started_at=now)
        cpu0 = time.process_time()
        device.on_release = self._release_hook(device, release_id, cpu0)
        try:
            result = device.train(global_state, server_round)
        except BaseException as exc:
            cpu = time.process_time() - cpu0
            if release_id is not None:
                self._store.abort_release(release_id, f"training failed: {exc!r}", cpu_seconds=cpu)
            self._store.finish_round(round_id, cpu_seconds=cpu, outcome="error")
            raise
        cpu = time.process_time() - cpu0
        if isinstance(result, Refusal):  # not expected after the checks above
            if release_id is not None:
                self._store.abort_release(release_id, result.reason, cpu_seconds=cpu)
            self._store.finish_round(round_id, cpu_seconds=cpu, outcome="refused")
            return result
        if dp is None:
            self._save_user_state(device)
            self._store.finish_round(round_id, cpu_seconds=cpu, outcome="sent-without-dp")
        else:
            self._store.finish_round(round_id, cpu_seconds=cpu, outcome="released")
        return result

    def _restore_device(self, device: Any) -> None:
        state = device.state_dict()
        privacy = self._store.privacy_state()
        acc = privacy.accountant_state_dict()
        state["accountant"] = _json_dumps(acc if device.accountant is not None else None)
        if (
            self._user is not None
            and np.asarray(self._user["user_embedding"]).shape
            == np.asarray(state["user_embedding"]).shape
        ):
            state["user_embedding"] = self._user["user_embedding"]
            if "generator" in self._user and self._seed is not None:
                state["generator"] = self._user["generator"]
        state["rounds_trained"] = int(self._store.get_meta("rounds_trained", 0))
        if acc is None and device.accountant is not None:
            state["accountant"] = _json_dumps(device.accountant.state_dict())
        device.load_state_dict(state)

    def _user_arrays(self, device: Any) -> dict[str, np.ndarray]:
        state = device.state_dict()
        return {
            "user_embedding": np.asarray(state["user_embedding"], dtype=np.float32),
            "generator": np.asarray(state["generator"]),
        }

    def _save_user_state(self, device: Any) -> None:
        arrays = self._user_arrays(device)
        self._store.put_arrays("user_state", arrays, {"dim": int(device.model.dim)})
        self._store.set_meta("rounds_trained", int(device.rounds_trained))
        self._user = arrays

    def _release_hook(self, device: Any, release_id: int | None, cpu0: float) -> Callable:
        def on_release(event: Any, **context: Any) -> None:
            record = None
            if self._sign_ledger:
                record = self._ledger_writer().append(event, **context)
            arrays = self._user_arrays(device)
            assert release_id is not None
            self._store.complete_release(
                release_id,
                accountant=context["accountant"],
                history=device.accountant.history,
                epsilon=context["claimed_epsilon"],
                delta=context["target_delta"],
                record=record,
                cpu_seconds=time.process_time() - cpu0,
                user_state=arrays,
                user_info={"dim": int(device.model.dim)},
            )
            self._store.set_meta("rounds_trained", int(device.rounds_trained))
            self._user = arrays

        return on_release

    def _ledger_writer(self) -> Any:
        if self._ledger is None:
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

            from fedrec.common.audit.ledger import DeviceKey, Ledger

            pem = self._store.get_meta("ledger_private_key")
            if pem is None:
                private = Ed25519PrivateKey.generate()
                pem = private.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ).decode("ascii")
                self._store.set_meta("ledger_private_key", pem)
            key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
            assert self.ledger_path is not None
            self._ledger = Ledger(
                self.ledger_path,
                DeviceKey(key),  # type: ignore[arg-type]
                device_id=self.device_id,
            )
            self._ledger_key = DeviceKey(key)  # type: ignore[arg-type]
        return self._ledger

    def ledger_public_key_pem(self) -> bytes:
        """The public key of this device's ledger signatures (what an auditor needs)."""
        with self._lock:
            self._ledger_writer()
            return self._ledger_key.public_pem()

    # --- privacy ---------------------------------------------------------------------------
    def _cached_epsilon(self) -> float:
        """ε spent at the configured δ (from the store's cache; recomputed when δ changed)."""
        state = self._store.privacy_state()
        if not state.history:
            return 0.0
        delta = float(self._dp["target_delta"]) if self._dp is not None else state.delta
        if state.epsilon is not None and state.delta == delta:
            return float(state.epsilon)
        from fedrec.common.privacy.accountant import epsilon_of

        assert state.accountant is not None and delta is not None
        eps = epsilon_of(state.accountant, state.history, float(delta))
        self._store.cache_epsilon(epsilon=eps, delta=float(delta))
        return eps

    def privacy_report(self) -> PrivacyReport:
        """What the device has spent and has left, with the accountant and assumptions."""
        with self._lock:
            state = self._store.privacy_state()
            releases = self._store.releases()
            released = sum(r.status == "released" for r in releases)
            pending = sum(r.status != "released" for r in releases)
            no_dp = self._store.count_rounds("sent-without-dp")
            dp = self._dp
            spent = self._cached_epsilon()
            if no_dp:
                spent = math.inf
            budget = float(dp["budget_epsilon"]) if dp is not None else None
            left = max(0.0, budget - spent) if budget is not None else 0.0
            kind = state.accountant or (dp["accountant"] if dp is not None else None)
            names = {
                "prv": "Opacus PRVAccountant (privacy random variables; tight)",
                "rdp": "Opacus RDPAccountant (Rényi DP; an upper bound)",
            }
            assumptions = [
                "DP-SGD with Poisson sampling of this device's own interactions, rate q per "
                "step, Gaussian noise of std noise_multiplier x max_grad_norm on every "
                "trainable parameter (the user embedding included), per-example clipping to "
                "max_grad_norm",
                "one example = one (user, item) interaction: all events this device recorded "
                "for one item merge into one example; neighbouring datasets add or remove one",
                "composition over every round this device trained, with the accountant state "
                "kept in its store across restarts",
                "a round whose spend was recorded but whose outcome a crash left unknown is "
                "counted as spent",
                "local trust model: each device adds the full noise; the server is not trusted",
                "only the item-table update leaves the device; events, the user embedding and "
                "recommendations never do",
                "the item table, catalog and popularity prior received are public; events "
                "never trained on (exposures, weights below the training threshold) are not "
                "released",
                "user-level DP added by the server, if any, is accounted by the server, not here",
            ]
            if dp is None or no_dp:
                assumptions.insert(
                    0,
                    "DP IS OFF for this device: updates sent without DP carry "
                    "no guarantee (epsilon is infinite)",
                )
            return PrivacyReport(
                dp_enabled=dp is not None,
                epsilon_spent=float(spent),
                epsilon_left=float(left),
                budget_epsilon=budget,
                delta=float(dp["target_delta"]) if dp is not None else state.delta,
                unit="example (one user-item interaction)",
                relation="add/remove",
                accountant=names.get(kind, kind) if kind else None,
                trust_model="local (noise added on the device)",
                rounds_released=int(released),
                rounds_pending=int(pending),
                steps=int(state.total_steps),
                history=state.history,
                assumptions=tuple(assumptions),
            )

    def status(self) -> dict[str, Any]:
        """A summary for the app: counts and what the device holds."""
        with self._lock:
            seen, pos, _ = self._history()
            return {
                "device_id": self.device_id,
                "events": self._store.event_count(),
                "items_seen": int(len(seen)),
                "positives": int(len(pos)),
                "training_items": int(len(self.training_items())),
                "catalog_items": self.n_items,
                "has_item_table": self._emb is not None,
                "item_table_round": self._table_info.get("round"),
                "has_popularity_prior": self._pop is not None,
                "has_user_embedding": self._user is not None,
                "schema_version": self._store.schema_version,
            }


# --------------------------------------------------------------------------- helpers


def _json_dumps(value: Any) -> str:
    return json.dumps(value)


def _calibrated(
    epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    """The noise multiplier that spends ``epsilon`` over ``steps`` steps (public inputs only)."""
    from fedrec.common.privacy.accountant import calibrate

    try:
        return calibrate(
            [(1.0, sample_rate, steps)],
            target_epsilon=epsilon,
            target_delta=delta,
            accountant=accountant,
        )
    except ValueError as exc:
        raise PolicyViolation(RefusalCode.BAD_REQUEST, f"cannot calibrate: {exc}") from None


def _open_dp_settings(store: DeviceStore, dp: Any) -> dict[str, Any] | None:
    """The DP settings an open resolves to, stored; warns loudly when DP is off."""
    dp_settings = _dp_settings(dp, store.get_meta("dp", _UNSET))
    if dp_settings is None:
        warnings.warn(
            "FedRecClient opened with dp=None: local training sends item updates "
            "WITHOUT differential privacy, so an update can reveal the items this "
            "user interacted with. Pass DP settings (or omit dp) in any deployment.",
            UserWarning,
            stacklevel=4,  # the caller of FedRecClient.open
        )
    _check_accountant_continues(store, dp_settings)
    store.set_meta("dp", dp_settings)
    return dp_settings


def _dp_settings(dp: Any, stored: Any) -> dict[str, Any] | None:
    """The DP settings to use: explicit, else stored, else :data:`DEFAULT_DP` (validated)."""
    if dp is _UNSET:
        if stored is _UNSET:
            return dict(DEFAULT_DP)
        if stored is None:
            return None
        stored = {k: v for k, v in stored.items() if k in DEFAULT_DP}  # drops retired keys
        return dict(DEFAULT_DP, **stored)
    if dp is None:
        return None
    settings = dict(dp) if isinstance(dp, Mapping) else dp.to_dict()
    unknown = sorted(set(settings) - set(DEFAULT_DP))
    if unknown:
        raise ValueError(f"unknown DP settings {unknown}; expected {sorted(DEFAULT_DP)}")
    out = dict(DEFAULT_DP, **settings)
    if float(out["noise_multiplier"]) < 0 or float(out["max_grad_norm"]) <= 0:
        raise ValueError("noise_multiplier must be >= 0 and max_grad_norm > 0")
    if not 0 < float(out["target_delta"]) < 1 or float(out["budget_epsilon"]) <= 0:
        raise ValueError("target_delta must lie in (0, 1) and budget_epsilon be positive")
    if out["accountant"] not in ("prv", "rdp"):
        raise ValueError(f"accountant must be 'prv' or 'rdp', got {out['accountant']!r}")
    return out


def _device_id(store: DeviceStore, path: Path, device_id: str | None) -> str:
    """The store's device id: the stored one, else ``device_id`` or a new one (then stored).

    Raises ``ValueError`` when ``device_id`` contradicts the stored id.
    """
    stored_id = store.get_meta("device_id")
    if device_id is None:
        device_id = stored_id or f"device-{uuid.uuid4().hex[:16]}"
    elif stored_id is not None and stored_id != device_id:
        raise ValueError(f"{path} belongs to device {stored_id!r}, not {device_id!r}")
    if stored_id is None:
        store.set_meta("device_id", device_id)
        store.set_meta("created_at", time.time())
    return device_id


def _check_accountant_continues(store: DeviceStore, dp_settings: Mapping[str, Any] | None) -> None:
    """Refuse an accountant other than the one the store's spend so far was accounted with."""
    spent = store.privacy_state()
    if (
        dp_settings is not None
        and spent.accountant is not None
        and spent.accountant != dp_settings["accountant"]
    ):
        raise ValueError(
            f"this device's spend so far was accounted with the {spent.accountant!r} "
            f"accountant; opening it with accountant={dp_settings['accountant']!r} "
            f"cannot continue that history. Keep accountant={spent.accountant!r}."
        )


def _local_settings(
    local: LocalConfig | Mapping[str, Any] | None, store: DeviceStore
) -> dict[str, Any]:
    """The local training recipe: explicit (a ``LocalConfig`` or its fields), else stored."""
    if local is None:
        return store.get_meta("local", {})
    if isinstance(local, Mapping):
        return dict(local)
    return local.to_dict()


def _validate_table(global_state: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    missing = [k for k in (_ITEM_EMB, _ITEM_BIAS) if k not in global_state]
    if missing:
        raise ValueError(f"the item table lacks {missing}; got keys {sorted(global_state)}")
    emb = np.ascontiguousarray(global_state[_ITEM_EMB], dtype=np.float32)
    bias = np.ascontiguousarray(global_state[_ITEM_BIAS], dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] < 1 or emb.shape[1] < 1:
        raise ValueError(f"{_ITEM_EMB} must be (n_items, dim), got {emb.shape}")
    if bias.reshape(-1).shape[0] != emb.shape[0] or bias.ndim not in (1, 2):
        raise ValueError(f"{_ITEM_BIAS} has shape {bias.shape}, expected ({emb.shape[0]}, 1)")
    if not (np.isfinite(emb).all() and np.isfinite(bias).all()):
        raise ValueError("the item table has NaN or infinite entries; refusing to keep it")
    return emb, bias.reshape(-1)
