"""What local (per-device) DP can at best achieve: the noisy-popularity bound.

``python -m fedrec.simulations.limits --dataset ml-100k --data-dir PATH``

In the local trust model every device adds its own full noise. The cheapest useful release is
the device's item-count vector (example-level L2 sensitivity 1: one interaction changes one
count by one) with Gaussian noise of std ``σ``; summed over ``N`` devices the popularity
estimate carries noise of std ``σ·√N`` per item. This script ranks items by that noisy
popularity on the evaluation protocol's split, for several ``σ`` (with the analytic-Gaussian
ε of one such release at δ), and prints NDCG@10 beside the exact most-popular list.

It is a bound in spirit, not a theorem: any local-DP model must at least learn popularity
through the same noise, and spending the whole budget on this one release is the best case
for it.
"""

from __future__ import annotations

import argparse

import numpy as np

from fedrec.common.config import RunConfig

__all__ = ["noisy_popularity", "add_arguments", "run", "main"]


def noisy_popularity(
    sigmas: list[float], *, cfg: RunConfig, delta: float, seeds: int = 3
) -> list[dict[str, float]]:
    """NDCG@10 of popularity counted with per-device Gaussian noise of std σ (mean of seeds)."""
    # scipy and torch load on use, not when the command line is parsed
    from fedrec.common.evaluation.metrics import evaluate
    from fedrec.common.privacy.accounting import analytic_gaussian_epsilon
    from fedrec.simulations.federation import federated_dataset

    fed = federated_dataset(cfg)
    sp = fed.split
    n_devices = fed.n_users
    pop = np.bincount(sp.train.item, minlength=fed.n_items).astype(float)
    exact = evaluate(lambda r: np.tile(pop, (len(r), 1)), sp.train, sp.test, ks=(10,))
    rows = [{"sigma": 0.0, "epsilon": float("inf"), "ndcg@10": exact["ndcg@10"]}]
    for sigma in sigmas:
        vals = []
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            noisy = pop + rng.normal(0.0, sigma * np.sqrt(n_devices), size=pop.shape)
            vals.append(
                evaluate(lambda r, s=noisy: np.tile(s, (len(r), 1)), sp.train, sp.test, ks=(10,))[
                    "ndcg@10"
                ]
            )
        rows.append(
            {
                "sigma": sigma,
                "epsilon": analytic_gaussian_epsilon(
                    noise_multiplier=sigma, target_delta=delta, steps=1
                ),
                "ndcg@10": float(np.mean(vals)),
            }
        )
    return rows


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Options of ``python -m fedrec.simulations.limits`` and ``fedrec limits``."""
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--sigmas", default="0.5,1,2,3,5")


def run(args: argparse.Namespace) -> int:
    """Print the table."""
    from fedrec.simulations.federation import federated_dataset

    cfg = RunConfig.from_flat({"dataset": args.dataset, "data-dir": args.data_dir})
    rows = noisy_popularity([float(s) for s in args.sigmas.split(",")], cfg=cfg, delta=args.delta)
    print(
        f"noisy popularity on {args.dataset} ({federated_dataset(cfg).n_users} devices), "
        f"delta {args.delta:g}, one Gaussian release per device:"
    )
    print("  sigma   epsilon   NDCG@10")
    for r in rows:
        label = "exact" if r["sigma"] == 0 else f"{r['sigma']:5.2f}"
        print(f"  {label:>5}  {r['epsilon']:8.3f}   {r['ndcg@10']:.4f}")
    return 0


def main(argv: list[str] | None = None) -> None:
    """Print the table."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(ap)
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
