"""The one interaction schema every loader produces, and the stable id mapping.

An :class:`Interactions` holds parallel numpy arrays (``user``, ``item``, ``weight``,
``timestamp``) over *dense* indices ``0..n-1``; :class:`IdMap` maps between the external ids a
dataset uses (``"242"``, ``"tt0114709"``) and those dense indices. The item map travels with
the model (it is saved beside the item embeddings) so that a device and the server agree on
what item 17 is.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["IdMap", "ItemMetadata", "Interactions", "DataFormatError"]


class DataFormatError(ValueError):
    """A data file does not have the format its loader expects.

    The message names the file, the line (1-based, as an editor shows it) when one is to blame,
    what was found and what was expected, on one line of bounded length.
    """

    #: A message longer than this is cut (a value is never quoted in full).
    MAX_MESSAGE = 600

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None):
        message = message.replace("\r", "\\r").replace("\n", "\\n")
        if len(message) > self.MAX_MESSAGE:
            message = message[: self.MAX_MESSAGE - 3] + "..."
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f", line {line}"
            where += ": "
        super().__init__(where + message)
        self.path = None if path is None else str(path)
        self.line = line


class IdMap:
    """A bijection between external ids (strings) and dense indices ``0..len-1``.

    Indices are assigned in the order ids are first added, so a map built from the same ids in
    the same order is the same map. Use :meth:`from_ids` with ``sort=True`` for an order that
    does not depend on file order.
    """

    def __init__(self, ids: Iterable[str] = ()):
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        for external in ids:
            self.add(external)

    @classmethod
    def from_ids(cls, ids: Iterable[object], *, sort: bool = True) -> IdMap:
        """Build a map from raw ids (deduplicated; numeric-aware sort when ``sort``)."""
        unique = list(dict.fromkeys(str(i) for i in ids))
        if sort:
            unique.sort(key=_natural_key)
        return cls(unique)

    def add(self, external: object) -> int:
        """Return the index of ``external``, adding it at the end if it is new."""
        key = str(external)
        idx = self._index.get(key)
        if idx is None:
            idx = len(self._ids)
            self._ids.append(key)
            self._index[key] = idx
        return idx

    def index(self, external: object) -> int:
        """The dense index of an external id; ``KeyError`` naming the id if unknown."""
        try:
            return self._index[str(external)]
        except KeyError:
            raise KeyError(f"unknown id {external!r} (the map has {len(self)} ids)") from None

    def indices(self, externals: Iterable[object]) -> np.ndarray:
        """Dense indices of many external ids, as an ``int64`` array."""
        return np.fromiter((self.index(e) for e in externals), dtype=np.int64)

    def external(self, index: int) -> str:
        """The external id at a dense index."""
        return self._ids[int(index)]

    def externals(self, indices: Iterable[int]) -> list[str]:
        """External ids of many dense indices."""
        return [self._ids[int(i)] for i in indices]

    def __contains__(self, external: object) -> bool:
        return str(external) in self._index

    def __len__(self) -> int:
        return len(self._ids)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdMap) and self._ids == other._ids

    def __repr__(self) -> str:
        return f"IdMap({len(self)} ids)"

    def to_list(self) -> list[str]:
        """The external ids in index order (what :meth:`save` writes)."""
        return list(self._ids)

    def save(self, path: str | Path) -> None:
        """Write the map as a JSON list of external ids in index order."""
        Path(path).write_text(json.dumps(self._ids))

    @classmethod
    def load(cls, path: str | Path) -> IdMap:
        """Read a map written by :meth:`save`."""
        return cls(json.loads(Path(path).read_text()))


def _natural_key(s: str) -> tuple[int, float, str]:
    """Numbers first, by value (ties, such as ``1`` and ``01``, by text), then text.

    ``nan``, ``inf`` and other non-finite spellings sort as text: a NaN key would leave the
    order to chance.
    """
    try:
        value = float(s)
    except ValueError:
        return (1, 0.0, s)
    return (0, value, s) if math.isfinite(value) else (1, 0.0, s)


@dataclass
class ItemMetadata:
    """Optional per-item metadata, indexed by dense item index.

    ``titles[i]`` and ``genres[i]`` describe item ``i``; either may be ``None`` where the
    dataset has no such column. ``extra`` holds any other columns by name.
    """

    titles: list[str | None] | None = None
    genres: list[tuple[str, ...]] | None = None
    extra: dict[str, list[object]] = field(default_factory=dict)

    def title(self, item: int) -> str | None:
        """The title of a dense item index, or ``None``."""
        return None if self.titles is None else self.titles[item]


@dataclass
class Interactions:
    """User-item interactions over dense indices, with the id maps that give them meaning.

    Attributes:
        user: ``int64`` dense user index per interaction.
        item: ``int64`` dense item index per interaction.
        weight: ``float32`` rating or weight per interaction (1.0 for pure implicit events).
        timestamp: ``int64`` seconds since the epoch (or any monotone clock) per interaction.
        user_map: external user ids ↔ dense indices (``len(user_map)`` users).
        item_map: external item ids ↔ dense indices (``len(item_map)`` items; items with no
            interaction, e.g. present only in the metadata, still count).
        items: optional item metadata, aligned with ``item_map``.
        name: a short label for logs and run directories.
    """

    user: np.ndarray
    item: np.ndarray
    weight: np.ndarray
    timestamp: np.ndarray
    user_map: IdMap
    item_map: IdMap
    items: ItemMetadata | None = None
    name: str = "interactions"

    def __post_init__(self) -> None:
        self.user = np.asarray(self.user, dtype=np.int64)
        self.item = np.asarray(self.item, dtype=np.int64)
        self.weight = np.asarray(self.weight, dtype=np.float32)
        self.timestamp = np.asarray(self.timestamp, dtype=np.int64)
        n = len(self.user)
        for label, arr in (
            ("item", self.item),
            ("weight", self.weight),
            ("timestamp", self.timestamp),
        ):
            if len(arr) != n:
                raise ValueError(f"{label} has {len(arr)} entries but user has {n}")
        if n:
            if self.user.min() < 0 or self.user.max() >= len(self.user_map):
                raise ValueError("user indices must lie in [0, len(user_map))")
            if self.item.min() < 0 or self.item.max() >= len(self.item_map):
                raise ValueError("item indices must lie in [0, len(item_map))")

    @property
    def n_users(self) -> int:
        """Number of users (the size of the user map)."""
        return len(self.user_map)

    @property
    def n_items(self) -> int:
        """Number of items (the size of the item map)."""
        return len(self.item_map)

    def __len__(self) -> int:
        return len(self.user)

    def subset(self, mask_or_index: np.ndarray) -> Interactions:
        """The interactions selected by a boolean mask or an index array (same id maps)."""
        return Interactions(
            user=self.user[mask_or_index],
            item=self.item[mask_or_index],
            weight=self.weight[mask_or_index],
            timestamp=self.timestamp[mask_or_index],
            user_map=self.user_map,
            item_map=self.item_map,
            items=self.items,
            name=self.name,
        )

    def by_user(self) -> list[np.ndarray]:
        """For each dense user, the positions of their interactions in these arrays.

        Within a user, positions are ordered by (timestamp, item index), the order the
        temporal split uses.
        """
        order = np.lexsort((self.item, self.timestamp, self.user))
        counts = np.bincount(self.user, minlength=self.n_users)
        return np.split(order, np.cumsum(counts)[:-1])

    def user_items(self) -> list[np.ndarray]:
        """For each dense user, the sorted unique item indices they interacted with."""
        return [np.unique(self.item[pos]) for pos in self.by_user()]

    def user_item_recency(self) -> list[np.ndarray]:
        """For each dense user, where each of :meth:`user_items` lies in their history.

        An item's time is its latest interaction's timestamp; its recency is the mid-rank of
        that time among the user's items, ``(#earlier + #same / 2) / n`` over the user's
        ``n`` distinct items: in ``(0, 1)``, ``(r + 0.5) / n`` for the ``r``-th of distinct
        times, ``0.5`` for every item of a user whose timestamps are all equal (no order).
        Aligned with :meth:`user_items` (sorted by item index).
        """
        out = []
        for pos in self.by_user():
            items, ts = self.item[pos], self.timestamp[pos]
            uniq, inverse = np.unique(items, return_inverse=True)
            last = np.full(len(uniq), np.iinfo(np.int64).min, dtype=np.int64)
            np.maximum.at(last, inverse, ts.astype(np.int64))
            ordered = np.sort(last)
            earlier = np.searchsorted(ordered, last, side="left")
            same = np.searchsorted(ordered, last, side="right") - earlier
            out.append((earlier + same / 2.0) / max(len(uniq), 1))
        return out

    def item_counts(self) -> np.ndarray:
        """Number of interactions per item (length ``n_items``)."""
        return np.bincount(self.item, minlength=self.n_items)

    @classmethod
    def from_arrays(
        cls,
        users: Sequence[object],
        items: Sequence[object],
        weights: Sequence[float] | None = None,
        timestamps: Sequence[int] | None = None,
        *,
        item_map: IdMap | None = None,
        user_map: IdMap | None = None,
        name: str = "interactions",
    ) -> Interactions:
        """Build from external ids; maps are created (sorted) unless given."""
        user_map = user_map if user_map is not None else IdMap.from_ids(users)
        item_map = item_map if item_map is not None else IdMap.from_ids(items)
        n = len(users)
        return cls(
            user=user_map.indices(users),
            item=item_map.indices(items),
            weight=np.ones(n, np.float32) if weights is None else np.asarray(weights),
            timestamp=np.arange(n) if timestamps is None else np.asarray(timestamps),
            user_map=user_map,
            item_map=item_map,
            name=name,
        )
