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

import numpy as np

__all__ = ["augment"]


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
    """
    n_real = len(train_items)
    if total <= n_real:
        return []
    if not 0 < keep <= 1:
        raise ValueError(f"keep must lie in (0, 1], got {keep}")
    rng = np.random.default_rng([seed, 2024])
    counts = np.bincount(np.concatenate(train_items), minlength=n_items).astype(float)
    counts += 1e-3  # every item reachable
    pop = counts / counts.sum()
    out: list[np.ndarray] = []
    for _ in range(total - n_real):
        template = train_items[int(rng.integers(n_real))]
        kept = template[rng.random(len(template)) < keep]
        need = len(template) - len(kept)
        chosen = set(kept.tolist())
        while need > 0:
            draws = rng.choice(n_items, size=2 * need + 4, p=pop)
            for i in draws.tolist():
                if i not in chosen:
                    chosen.add(i)
                    need -= 1
                    if need == 0:
                        break
        out.append(np.array(sorted(chosen), dtype=np.int64))
    return out
