"""Where the randomness of DP mechanisms comes from: OS entropy, or a seed for research.

A differentially private release is only private if nobody can regenerate its noise: a
server whose Gaussian noise or Poisson sampling comes from ``np.random.default_rng(seed)``
with the seed in the run config hands anyone who reads the config the means to subtract the
noise. :class:`NoiseSource` is the one place that decides.

* :meth:`NoiseSource.secure` (the default of every private run): a numpy ``Philox``
  counter-based generator keyed with 128 bits from the operating system's CSPRNG
  (:mod:`secrets`); Gaussian noise is drawn as the sum of four normals divided by two, the
  construction of Opacus' ``secure_mode`` (Holohan & Braghin 2021, §5.1), so that the
  floating-point attacks of Mironov's class (Mironov 2012; Jin et al. 2022) cannot read the
  unnoised value from the low bits of one sample. Torch generators for on-device sampling
  are seeded from the same OS source (:meth:`NoiseSource.torch_generator`).
* :meth:`NoiseSource.seeded` (``reproducible = true`` in a run config, or ``seed`` in a
  device's own settings): numpy's default generator from the seed, plain normals, exactly
  repeatable. Every ledger record, run summary and audit report of such a run says
  :data:`SEEDED_WARNING`.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported only when a torch generator is asked for
    import torch

__all__ = ["NoiseSource", "SECURE", "SEEDED", "SEEDED_WARNING", "derive_seed"]

#: Label of noise drawn from OS entropy (recorded in ledgers and summaries).
SECURE = "os-entropy"
#: Label of noise drawn from a seed.
SEEDED = "seeded"
#: What a run, ledger or audit with seeded noise must say.
SEEDED_WARNING = (
    "noise and sampling were SEEDED (reproducible mode): not private against "
    "anyone who knows the seed"
)


def derive_seed(seed: int, *names: object) -> int:
    """A 64-bit seed for one named stream of a seeded run (``sha256(seed/name/...)``)."""
    text = "/".join(str(x) for x in (seed, *names))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


class NoiseSource:
    """Randomness of DP noise and sampling: OS entropy, or (for research) a seed.

    Args:
        seed: ``None`` for OS entropy (:meth:`secure`); an int (or a sequence of ints, as
            numpy's ``default_rng`` takes) for a reproducible stream (:meth:`seeded`).

    Attributes:
        rng: a numpy generator for sampling decisions (which devices, which examples).
    """

    def __init__(self, seed: int | Sequence[int] | None = None):
        self._seed = seed
        if seed is None:
            self.rng = np.random.Generator(np.random.Philox(key=secrets.randbits(128)))
        else:
            self.rng = np.random.default_rng(seed)

    @classmethod
    def secure(cls) -> NoiseSource:
        """Noise and sampling from OS entropy: nobody can replay them."""
        return cls(None)

    @classmethod
    def seeded(cls, seed: int | Sequence[int]) -> NoiseSource:
        """A reproducible source; not private against anyone who knows ``seed``."""
        return cls(seed)

    @property
    def is_seeded(self) -> bool:
        """Whether the stream can be replayed from a seed."""
        return self._seed is not None

    @property
    def label(self) -> str:
        """:data:`SECURE` or :data:`SEEDED` (what ledgers and summaries record)."""
        return SEEDED if self.is_seeded else SECURE

    def normal(self, std: float, shape: int | tuple[int, ...]) -> np.ndarray:
        """Gaussian noise ``N(0, std²)`` of ``shape`` (float64).

        Secure sources sum four normals of std ``std`` and halve the sum (same distribution,
        no exploitable floating-point pattern); seeded sources draw one normal per entry so
        that seeded runs repeat exactly.
        """
        if std < 0:
            raise ValueError(f"noise std must be >= 0, got {std}")
        if std == 0:
            return np.zeros(shape, dtype=np.float64)
        if self.is_seeded:
            return self.rng.normal(0.0, std, size=shape)
        total = self.rng.normal(0.0, std, size=shape)
        for _ in range(3):
            total += self.rng.normal(0.0, std, size=shape)
        return total / 2.0

    def torch_generator(self) -> torch.Generator:
        """A torch generator drawing from this source (seeded from it, or from OS entropy)."""
        import torch

        gen = torch.Generator()
        if self.is_seeded:
            gen.manual_seed(int(self.rng.integers(0, 2**63 - 1)))
        else:
            gen.manual_seed(secrets.randbits(63))
        return gen

    def __repr__(self) -> str:
        return f"NoiseSource({self.label})"
