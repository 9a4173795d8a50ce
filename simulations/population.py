"""A larger population of devices for simulations: real users plus synthetic look-alikes.

User-level DP needs many devices (the noise on a mean falls as ``1/(q·N)``); MovieLens 100K has
943 users. :func:`augment` adds synthetic devices, each resampled from a real user's
**training** interactions: a template user is drawn uniformly, each of its training items is
kept with probability ``keep``, and the rest of the template's count is filled with items
drawn by training popularity. Synthetic devices hold training data only; every evaluation
still ranks for the real users against their held-out items, which no synthetic device ever
saw.

This is a simulation device for studying scale, not a privacy claim about the real users:
the synthetic devices are derived from the real training data.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

__all__ = ["augment", "Ragged", "population", "grow", "PopulationRecency"]

#: Synthetic devices built between two compactions (bounds the Python objects alive at once).
_BLOCK = 20_000


def _device_index(u: int, n: int) -> int:
    """``u`` as an index into ``n`` devices (negative from the end), or IndexError."""
    u = int(u) + (n if int(u) < 0 else 0)
    if not 0 <= u < n:
        raise IndexError(f"device {u} out of range (population {n})")
    return u


class Ragged(Sequence[np.ndarray]):
    """Per-device item arrays in two flat arrays: ``items[offsets[u]:offsets[u + 1]]``.

    A million devices cost their items (2 bytes each below 32,768 items) and 8 bytes of
    offset each, not a numpy object each. Indexing gives device ``u``'s items as a view.
    """

    def __init__(self, items: np.ndarray, offsets: np.ndarray) -> None:
        self.items, self.offsets = items, offsets

    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray], n_items: int) -> Ragged:
        """The arrays, in order, in the smallest integer type that holds ``n_items``."""
        dtype = np.int16 if n_items <= np.iinfo(np.int16).max else np.int32
        lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        items = np.concatenate([np.asarray(a) for a in arrays]) if len(arrays) else np.zeros(0)
        return cls(items.astype(dtype, copy=False), offsets)

    @classmethod
    def concat(cls, parts: Sequence[Ragged]) -> Ragged:
        """The devices of ``parts``, one after the other."""
        items = np.concatenate([p.items for p in parts])
        starts = np.cumsum([0] + [p.offsets[-1] for p in parts[:-1]])
        offsets = np.concatenate(
            [parts[0].offsets[:1]] + [p.offsets[1:] + s for p, s in zip(parts, starts, strict=True)]
        )
        return cls(items, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, u):  # noqa: ANN001, ANN204 - Sequence's int and slice
        if isinstance(u, slice):
            return [self[i] for i in range(*u.indices(len(self)))]
        u = _device_index(u, len(self))
        return self.items[self.offsets[u] : self.offsets[u + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[u] for u in range(len(self)))

    def __add__(self, other: Sequence[np.ndarray]) -> list[np.ndarray]:
        return list(self) + list(other)

    def lengths(self) -> np.ndarray:
        """Each device's number of items."""
        return np.diff(self.offsets)


def population(
    train_items: Sequence[np.ndarray], n_items: int, total: int, *, seed: int = 0
) -> Ragged:
    """The real devices' training items followed by :func:`augment`'s synthetic ones, compact."""
    return grow(train_items, n_items, total, seed=seed)[0]


def grow(
    train_items: Sequence[np.ndarray], n_items: int, total: int, *, seed: int = 0
) -> tuple[Ragged, np.ndarray]:
    """:func:`population`, and the template (a real device) each synthetic device came from."""
    real = Ragged.from_arrays(train_items, n_items)
    if total <= len(train_items):
        return real, np.zeros(0, dtype=np.int32)
    blocks, templates = _augment_blocks(train_items, n_items, total, seed, 0.8)
    return Ragged.concat([real, *blocks]), templates


class PopulationRecency(Sequence[np.ndarray]):
    """Where each device's training items lie in its history, synthetic devices included.

    A real device's recency is its own (``Interactions.user_item_recency``). A synthetic
    device takes its template's history: a kept item keeps the template's recency, and the
    items redrawn by popularity take the recencies of the template items they replaced, in
    an order drawn from ``seed`` and the device. Computed when asked for (a million devices
    keep only their templates' indices).
    """

    def __init__(
        self,
        real: Sequence[np.ndarray],
        real_items: Sequence[np.ndarray],
        items: Sequence[np.ndarray],
        templates: np.ndarray,
        seed: int = 0,
    ) -> None:
        if len(real) != len(real_items) or len(items) != len(real_items) + len(templates):
            raise ValueError("recency, templates and devices do not line up")
        self.real, self.real_items, self.items = real, real_items, items
        self.templates, self.seed = np.asarray(templates), int(seed)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, u):  # noqa: ANN001, ANN204 - Sequence's int and slice
        if isinstance(u, slice):
            return [self[i] for i in range(*u.indices(len(self)))]
        u = _device_index(u, len(self))
        n_real = len(self.real)
        if u < n_real:
            return self.real[u]
        t = int(self.templates[u - n_real])
        template = np.asarray(self.real_items[t])
        rec = np.asarray(self.real[t], dtype=np.float64)
        own = np.asarray(self.items[u])
        pos = np.minimum(np.searchsorted(template, own), max(len(template) - 1, 0))
        hit = (template[pos] == own) if len(template) else np.zeros(len(own), dtype=bool)
        out = np.empty(len(own))
        out[hit] = rec[pos[hit]]
        kept = np.zeros(len(template), dtype=bool)
        kept[pos[hit]] = True
        rng = np.random.default_rng([self.seed, 2025, u])
        out[~hit] = rng.permutation(rec[~kept])[: int((~hit).sum())]
        return out


def augment(
    train_items: list[np.ndarray], n_items: int, total: int, *, seed: int = 0, keep: float = 0.8
) -> list[np.ndarray]:
    """``total - len(train_items)`` synthetic training-item arrays resampled from the real ones.

    Args:
        train_items: the real devices' training items (sorted unique indices per device).
        n_items: the catalog size.
        total: the population size wanted (real devices included).
        seed: the generator's seed.
        keep: the probability that a template's item is kept (the rest are redrawn by
            popularity, so synthetic devices are not copies).

    Returns:
        The synthetic devices' training items (sorted unique indices), possibly empty list.
        :func:`population` gives the same devices in a compact :class:`Ragged`.
    """
    if total <= len(train_items):
        return []
    blocks, _ = _augment_blocks(train_items, n_items, total, seed, keep)
    return [a.astype(np.int64) for block in blocks for a in block]


def _augment_blocks(
    train_items: Sequence[np.ndarray], n_items: int, total: int, seed: int, keep: float
) -> tuple[list[Ragged], np.ndarray]:
    """The synthetic devices, :data:`_BLOCK` at a time, each block compacted; the templates."""
    n_real = len(train_items)
    if not 0 < keep <= 1:
        raise ValueError(f"keep must lie in (0, 1], got {keep}")
    rng = np.random.default_rng([seed, 2024])
    counts = np.bincount(np.concatenate(train_items), minlength=n_items).astype(float)
    counts += 1e-3  # every item reachable
    pop = counts / counts.sum()
    cdf = pop.cumsum()
    cdf /= cdf[-1]  # what Generator.choice(p=pop) draws through
    blocks, out = [], []
    templates = np.zeros(total - n_real, dtype=np.int32)
    for d in range(total - n_real):
        templates[d] = int(rng.integers(n_real))
        template = train_items[int(templates[d])]
        kept = template[rng.random(len(template)) < keep]
        need = len(template) - len(kept)
        chosen = set(kept.tolist())
        while need > 0:
            draws = cdf.searchsorted(rng.random(2 * need + 4), side="right")
            for i in draws.tolist():
                if i not in chosen:
                    chosen.add(i)
                    need -= 1
                    if need == 0:
                        break
        out.append(np.array(sorted(chosen), dtype=np.int64))
        if len(out) == _BLOCK:
            blocks.append(Ragged.from_arrays(out, n_items))
            out = []
    if out:
        blocks.append(Ragged.from_arrays(out, n_items))
    return blocks, templates
