"""Defaults that depend on the privacy mode: the embedding dimension (``default_dim``)."""

import json

import numpy as np
import pytest

from fedrec.cli import main
from fedrec.common.config import RunConfig, default_dim


@pytest.mark.parametrize(
    ("privacy", "dim"), [("off", 16), ("local", 8), ("distributed", 8), ("user", 8)]
)
def test_an_unset_dim_takes_the_privacy_modes_default(privacy, dim):
    cfg = RunConfig.from_flat({"algorithm": "warm-sgd", "privacy": privacy})
    assert cfg.dim == dim == default_dim(privacy)


def test_a_set_dim_and_an_algorithms_own_default_come_first():
    assert RunConfig.from_flat({"privacy": "off", "dim": 8}).dim == 8
    assert RunConfig.from_flat({"privacy": "distributed", "dim": 16}).dim == 16
    assert RunConfig.from_flat({"privacy": "off", "algorithm": "features"}).dim == 64
    assert RunConfig.from_flat({}).dim == 8  # privacy's own default is local


def test_the_non_private_twin_takes_the_non_private_default_only_where_dim_was_unset():
    private = RunConfig.from_flat({"algorithm": "warm-sgd", "privacy": "distributed"})
    twin = private.without_privacy()
    assert (twin.privacy, twin.dim) == ("off", 16)
    assert private.replace(seed=4).without_privacy().dim == 16  # survives other changes
    assert private.replace(dim=12).without_privacy().dim == 12  # a set value stays
    chosen = RunConfig.from_flat({"algorithm": "warm-sgd", "privacy": "user", "dim": 8})
    assert chosen.without_privacy().dim == 8
    assert RunConfig(privacy="local").without_privacy().dim == 8  # built directly: as given


def test_a_run_without_privacy_records_the_dim_it_trained(tmp_path):
    run_dir = tmp_path / "run"
    flags = ["--set", "synthetic-users=20", "--set", "synthetic-items=30", "--rounds", "3"]
    argv = ["simulate", "--engine", "loop", "--privacy", "off", "--run-dir", str(run_dir)]
    assert main([*argv, *flags]) == 0
    config = json.loads((run_dir / "config.json").read_text())["run_config"]
    assert config["dim"] == 16
    tables = np.load(run_dir / "item_embeddings.npz")
    assert 16 in {a.shape[-1] for a in tables.values() if a.ndim == 2}
