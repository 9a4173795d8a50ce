"""The tutorial's algorithm (``docs/tutorial.md``): DP most-popular in one module.

The contract tests (tests/contracts) already run it in every privacy mode on both
transports, because it is registered; here: it is exactly the most-popular baseline without
privacy, its noise is the accounted noise, and the tutorial shows its code as it is.
"""

import re
from pathlib import Path

import numpy as np
import pytest

from fedrec.common.config import RunConfig

ROOT = Path(__file__).resolve().parents[2]


def test_without_privacy_it_is_the_most_popular_baseline():
    from fedrec.simulations.baselines import most_popular
    from fedrec.simulations.federation import federated_dataset
    from fedrec.simulations.loop import run_plain

    cfg = RunConfig.from_flat(
        {
            "algorithm": "popularity",
            "privacy": "off",
            "synthetic-users": 80,
            "synthetic-items": 60,
            "dim": 4,
        }
    )
    result = run_plain(cfg)
    baseline = most_popular(federated_dataset(cfg).split, ks=cfg.k_values)
    for key in ("ndcg@10", "recall@10", "hr@20"):
        assert result.final[key] == pytest.approx(baseline[key], abs=1e-12)


def test_a_private_release_carries_the_accounted_noise(tmp_path):
    from fedrec.common.audit.report import audit_run
    from fedrec.simulations.loop import run_plain

    cfg = RunConfig.from_flat(
        {
            "algorithm": "popularity",
            "privacy": "local",
            "synthetic-users": 80,
            "synthetic-items": 60,
            "dim": 4,
            "epsilon": 1.0,
            "reproducible": True,
        }
    )
    off = run_plain(cfg.replace(privacy="off")).state["item_bias.weight"]
    noisy = run_plain(cfg, ledger_dir=tmp_path).state["item_bias.weight"]
    (sigma,) = cfg.noise_multipliers()
    # 80 devices each add N(0, sigma^2) to every count: the sum's noise has std sigma·√80
    assert np.std(noisy - off) == pytest.approx(sigma * np.sqrt(80), rel=0.25)
    report = audit_run(tmp_path, accountants=("prv",), write=False, plots=False, workers=1)
    assert report.ok and len(report.devices) == 80
    assert max(a.epsilon["prv"] for a in report.devices) <= 1.0 + 1e-6


def test_the_tutorial_shows_the_module_as_it_is():
    page = (ROOT / "docs" / "tutorial.md").read_text()
    source = (ROOT / "common" / "algorithms" / "popularity.py").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.DOTALL)
    assert source in blocks  # the whole module, verbatim
    assert '"popularity": "fedrec.common.algorithms.popularity:Popularity",' in page
