"""Defaults that depend on the privacy mode and the catalog: the embedding dimension."""

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


@pytest.mark.parametrize(
    ("n_items", "dim"),
    [(2, 8), (400, 8), (1023, 8), (1024, 16), (1682, 16), (16383, 16), (16384, 32), (10**6, 64)],
)
def test_without_privacy_the_dim_grows_with_the_catalogs_fourth_root(n_items, dim):
    assert default_dim("off", n_items) == dim
    for private in ("local", "distributed", "user"):
        assert default_dim(private, n_items) == 8  # noise is per coordinate: small under DP
    cfg = RunConfig.from_flat({"algorithm": "warm-sgd", "privacy": "off"}).with_catalog(n_items)
    assert cfg.dim == dim


def test_the_catalog_resolves_only_an_unset_dim_and_reaches_the_non_private_twin():
    private = RunConfig.from_flat({"algorithm": "warm-sgd", "privacy": "distributed"})
    assert private.with_catalog(400).dim == 8
    assert private.with_catalog(400).without_privacy().dim == 8  # the catalog's rule
    assert private.with_catalog(5000).without_privacy().dim == 16
    assert private.with_catalog(5000).replace(seed=3).without_privacy().dim == 16
    assert private.without_privacy().with_catalog(400).dim == 8  # resolved later, still
    chosen = RunConfig.from_flat({"privacy": "off", "dim": 32})
    assert chosen.with_catalog(400).dim == 32  # a set value stays
    assert chosen.with_catalog(400).without_privacy().dim == 32


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


@pytest.mark.parametrize(
    ("n_items", "interactions", "dim"),
    [
        (10_000, 31_944, 8),  # items-10k: 3.2 per item; the catalog alone says 16
        (1682, 80_367, 16),  # ML-100K's training split: 48 per item; the catalog's 16 stays
        (400, 10**6, 8),  # plenty of data never raises the catalog's rule
        (16_384, 16_384 * 64, 32),
        (16_384, 16_384 * 8, 16),
        (5, 1, 8),  # at least 8
    ],
)
def test_without_privacy_few_interactions_per_item_cap_the_dim(n_items, interactions, dim):
    assert default_dim("off", n_items, interactions) == dim
    for private in ("local", "distributed", "user"):  # the data's size never sets a private dim
        assert default_dim(private, n_items, interactions) == 8
    private = RunConfig.from_flat({"algorithm": "warm-sgd", "privacy": "user"})
    resolved = private.with_catalog(n_items, interactions)
    assert resolved.dim == 8
    assert resolved.without_privacy().dim == dim
    assert resolved.replace(seed=2).without_privacy().dim == dim
    off = RunConfig.from_flat({"algorithm": "warm-sgd", "privacy": "off"})
    assert off.with_catalog(n_items, interactions).dim == dim
    assert off.with_catalog(n_items).dim == default_dim("off", n_items)  # not known: catalog


@pytest.mark.parametrize(
    ("engine", "items", "users", "dim"),
    [
        ("loop", 30, 20, 8),
        pytest.param("loop", 1100, 300, 16, marks=pytest.mark.slow),
        ("loop", 1100, 20, 8),
        pytest.param("flower", 30, 20, 8, marks=pytest.mark.slow),  # starts Ray: 30 s
    ],
)
def test_a_run_without_privacy_records_the_dim_its_data_gave(tmp_path, engine, items, users, dim):
    """1,100 items ask for 16; 20 synthetic users give too few interactions per item for it."""
    run_dir = tmp_path / "run"
    flags = ["--set", f"synthetic-users={users}", "--set", f"synthetic-items={items}"]
    flags += ["--rounds", "3"]
    argv = ["simulate", "--engine", engine, "--privacy", "off", "--run-dir", str(run_dir)]
    assert main([*argv, *flags]) == 0
    config = json.loads((run_dir / "config.json").read_text())["run_config"]
    assert config["dim"] == dim
    tables = np.load(run_dir / "item_embeddings.npz")
    assert dim in {a.shape[-1] for a in tables.values() if a.ndim == 2}
