"""Empirical one-run audit of fedrec's own device training (canary interactions).

``python -m fedrec.simulations.canary_audit [--noise-multiplier 1.0] [--rounds 2]``

A device holds ``m`` canary interactions, one per reserved canary item, each included with
probability ½ (Steinke, Nasr and Jagielski, 2023); it trains with exactly the code a device
runs in a round (:func:`fedrec.common.privacy.dpsgd.train_local`, Opacus DP-SGD with Poisson
sampling).
What the server receives is the item-table delta, so the auditor scores each canary by the
released change of its item's bias and embedding norm: guess "included" for the highest
scores and "excluded" for the lowest. The one-run bound then gives an ε lower bound at
confidence 1−β that must not exceed the ε the device's accountant claims; with the noise
switched off the bound exceeds it, which catches a broken implementation.

``--algorithm spectral`` audits the spectral algorithm's popularity release instead
(:meth:`fedrec.client.device.Device.spectral_round`, example-level): the device's items are
the included canaries, and each canary is scored by the released count of its item.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MFCanaryResult",
    "audit_device_training",
    "audit_spectral_release",
    "add_arguments",
    "run",
    "main",
]


@dataclass
class MFCanaryResult:
    """Outcome: guesses, correct guesses, the empirical bound and the claimed ε."""

    r: int
    v: int
    epsilon_lower_bound: float
    claimed_epsilon: float


def audit_device_training(
    *,
    m: int = 1000,
    k_guesses: int = 200,
    noise_multiplier: float,
    claimed_noise_multiplier: float | None = None,
    rounds: int = 1,
    sample_rate: float = 1.0,
    dim: int = 4,
    seed: int = 0,
    beta: float = 0.05,
    delta: float = 1e-5,
) -> MFCanaryResult:
    """Audit one device's DP training with ``m`` canary interactions.

    ``noise_multiplier`` is what training really uses; ``claimed_noise_multiplier`` (default:
    the same) is what the accountant is told — set them apart to simulate a broken release.
    """
    import torch  # torch, Opacus, scipy, dp_accounting load on use, not at CLI parse time

    from fedrec.common.audit.canary import run_canary_audit
    from fedrec.common.model.mf import MatrixFactorization
    from fedrec.common.privacy.accountant import make_accountant
    from fedrec.common.privacy.dpsgd import DPConfig, LocalConfig, train_local

    claimed_sigma = (
        noise_multiplier if claimed_noise_multiplier is None else claimed_noise_multiplier
    )
    local = LocalConfig(
        epochs=1.0,
        sample_rate=sample_rate,
        lr=0.5,
        loss="bpr",
        batch_size_norm=float(m) * sample_rate,
    )
    gen = torch.Generator().manual_seed(seed)
    acc = make_accountant("rdp")

    def train_and_score(included: np.ndarray) -> np.ndarray:
        n_items = m + 50  # the canary items, then 50 ordinary items for negatives
        model = MatrixFactorization(1, n_items, dim, generator=gen)
        before = model.global_state()
        items = np.flatnonzero(included)
        dp = DPConfig(
            noise_multiplier=noise_multiplier,
            max_grad_norm=1.0,
            budget_epsilon=1e9,
            accountant="rdp",
        )
        for _ in range(rounds):
            if len(items):
                train_local(model, items, local=local, dp=dp, accountant=acc, generator=gen)
        after = model.global_state()
        return (after["item_bias.weight"] - before["item_bias.weight"])[:m, 0]

    result = run_canary_audit(
        train_and_score, m=m, seed=seed, beta=beta, delta=delta, k_guesses=k_guesses
    )
    claimed = make_accountant("rdp")
    claimed.history = [
        (h[0] if claimed_sigma == noise_multiplier else claimed_sigma, h[1], h[2])
        for h in acc.history
    ]
    eps = float(claimed.get_epsilon(delta=delta)) if claimed_sigma > 0 else float("inf")
    return MFCanaryResult(result.r, result.v, result.epsilon_lower_bound, eps)


def audit_spectral_release(
    *,
    m: int = 1000,
    k_guesses: int = 200,
    noise_multiplier: float,
    claimed_noise_multiplier: float | None = None,
    seed: int = 0,
    beta: float = 0.05,
    delta: float = 1e-5,
) -> MFCanaryResult:
    """Audit one device's spectral popularity release with ``m`` canary items.

    The device is the product's :class:`~fedrec.client.device.Device`; with
    ``noise_multiplier`` 0 it releases its contribution without noise (a broken release)
    while the claim is computed at ``claimed_noise_multiplier``.
    """
    from fedrec.client.device import Device
    from fedrec.common.algorithms.base import Task
    from fedrec.common.algorithms.spectral import Spectral
    from fedrec.common.audit.canary import run_canary_audit
    from fedrec.common.config import RunConfig
    from fedrec.common.privacy.accountant import make_accountant
    from fedrec.common.privacy.dpsgd import DPConfig, LocalConfig

    claimed_sigma = (
        noise_multiplier if claimed_noise_multiplier is None else claimed_noise_multiplier
    )
    algorithm = Spectral(
        RunConfig(algorithm="spectral", num_rounds=2, dim=1, spectral_top_items=1, privacy="off"), m
    )
    algorithm.noise = (noise_multiplier, noise_multiplier)  # the release under audit
    local = LocalConfig()

    def release_and_score(included: np.ndarray) -> np.ndarray:
        dp = (
            DPConfig(
                noise_multiplier=noise_multiplier,
                max_grad_norm=1.0,
                budget_epsilon=1e9,
                target_delta=delta,
                accountant="rdp",
            )
            if noise_multiplier > 0
            else None
        )
        device = Device(
            "canary-device",
            np.flatnonzero(included),
            n_items=m,
            dim=1,
            local=local,
            dp=dp,
            seed=seed,
            algorithm=algorithm,
        )
        if not included.any():
            return np.zeros(m)
        out = device.contribute(Task("popularity"), device.model.global_state(), 1)
        return np.asarray(out.arrays["popularity"], dtype=np.float64)

    result = run_canary_audit(
        release_and_score, m=m, seed=seed, beta=beta, delta=delta, k_guesses=k_guesses
    )
    claimed = make_accountant("rdp")
    claimed.history = [(claimed_sigma, 1.0, 1)]
    return MFCanaryResult(
        result.r, result.v, result.epsilon_lower_bound, float(claimed.get_epsilon(delta=delta))
    )


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Options of ``python -m fedrec.simulations.canary_audit`` and ``fedrec canary``."""
    ap.add_argument("--noise-multiplier", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--m", type=int, default=1000)
    ap.add_argument("--guesses", type=int, default=200)
    ap.add_argument(
        "--algorithm",
        choices=("sgd", "spectral"),
        default="sgd",
        help="audit DP-SGD training (default) or the spectral popularity release",
    )


def run(args: argparse.Namespace) -> int:
    """Print the audit of an honest run and of a run with the noise switched off."""
    import torch

    torch.set_num_threads(1)
    if args.algorithm == "spectral":
        honest = audit_spectral_release(
            m=args.m, k_guesses=args.guesses, noise_multiplier=args.noise_multiplier
        )
        broken = audit_spectral_release(
            m=args.m,
            k_guesses=args.guesses,
            noise_multiplier=0.0,
            claimed_noise_multiplier=args.noise_multiplier,
        )
    else:
        honest = audit_device_training(
            m=args.m,
            k_guesses=args.guesses,
            noise_multiplier=args.noise_multiplier,
            rounds=args.rounds,
        )
        broken = audit_device_training(
            m=args.m,
            k_guesses=args.guesses,
            noise_multiplier=0.0,
            claimed_noise_multiplier=args.noise_multiplier,
            rounds=args.rounds,
        )
    for name, res in (("honest", honest), ("noise off (broken)", broken)):
        verdict = (
            "CAUGHT: lower bound exceeds the claim"
            if (res.epsilon_lower_bound > res.claimed_epsilon)
            else "consistent with the claim"
        )
        print(
            f"{name:20s} guesses {res.r}, correct {res.v}, empirical eps >= "
            f"{res.epsilon_lower_bound:.3f}, claimed eps {res.claimed_epsilon:.3f}: {verdict}"
        )
    return 0


def main(argv: list[str] | None = None) -> None:
    """Print the audit of an honest run and of a run with the noise switched off."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(ap)
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
