"""Canary audits of federated runs: honest runs stay below their claim, noise-off runs are caught.

Runs are seeded (reproducible noise, fixed inclusion bits), so each verdict repeats.
"""

from __future__ import annotations

import pytest

from fedrec.simulations.canary_federation import audit_federation, format_table


def _pair(algorithm: str, mode: str, epsilon: float):
    honest = audit_federation(algorithm, mode, epsilon=epsilon, seed=0)
    broken = audit_federation(algorithm, mode, noise_off=True, epsilon=epsilon, seed=0)
    return honest, broken


def _check_pair(honest, broken, epsilon: float) -> None:
    for row in (honest, broken):
        assert row.claimed_epsilon == pytest.approx(epsilon, abs=1e-3)  # what the run records
        assert row.detectable > row.claimed_epsilon  # sized so that the claim is detectable
    assert broken.claimed_epsilon == pytest.approx(honest.claimed_epsilon)
    assert honest.lower_bound <= honest.claimed_epsilon and honest.verdict == "consistent"
    assert honest.v < honest.r  # the noise hides some canaries
    assert broken.v == broken.r and broken.verdict == "caught"
    assert broken.lower_bound > broken.claimed_epsilon


def test_example_level_canaries_catch_noise_off_and_not_an_honest_run():
    honest, broken = _pair("popularity", "local", 3.0)
    assert honest.canaries == broken.canaries == "interactions"
    _check_pair(honest, broken, 3.0)


@pytest.mark.slow
def test_popularity_release_noise_off_caught_at_claim_8_honest_not_flagged():
    honest, broken = _pair("popularity", "local", 8.0)
    assert honest.m == broken.m > 10_000  # a claim of 8 needs this many canaries
    _check_pair(honest, broken, 8.0)


def test_user_level_canary_devices_catch_noise_off_and_not_an_honest_run():
    honest, broken = _pair("popularity", "user", 3.0)
    assert honest.canaries == broken.canaries == "devices"
    _check_pair(honest, broken, 3.0)
    assert broken.estimate == float("inf")  # Andrew et al.: no overlap left
    assert honest.estimate is not None and honest.estimate < 2 * honest.claimed_epsilon


def test_a_claim_above_the_detectable_maximum_says_so_instead_of_passing_silently():
    row = audit_federation("popularity", "local", noise_off=True, epsilon=8.0, m=200)
    assert row.v == row.r  # every guess right, and still
    assert row.detectable < 8.0 and row.verdict == "NOT CAUGHT"
    assert "detectable maximum" in row.note
    assert "detectable maximum" in format_table([row])


def test_a_refused_combination_is_shown_as_refused(monkeypatch):
    from fedrec.common.algorithms.popularity import Popularity

    monkeypatch.setattr(Popularity, "modes", {**Popularity.modes, "user": "no user-level unit"})
    row = audit_federation("popularity", "user", epsilon=3.0)
    assert row.verdict == "refused" and "no user-level unit" in row.note
    assert "refused" in format_table([row])


@pytest.mark.slow
def test_device_training_noise_off_caught_at_claim_8_honest_not_flagged():
    honest, broken = _pair("sgd", "local", 8.0)  # Opacus DP-SGD on the canary device
    _check_pair(honest, broken, 8.0)


@pytest.mark.slow
def test_user_level_dp_fedavg_canaries_at_claim_8():
    honest, broken = _pair("sgd", "user", 8.0)  # cosines with random-direction updates
    _check_pair(honest, broken, 8.0)
    assert honest.estimate < broken.estimate


@pytest.mark.slow
def test_the_table_command_runs_every_algorithm_and_mode(tmp_path, capsys):
    from fedrec.cli import main
    from fedrec.common.algorithms.registry import REGISTRY

    out = tmp_path / "table.md"
    assert main(["canary", "--table", "--epsilon", "2", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.strip() in capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 7 * len(REGISTRY)  # off once, then honest and noise off per mode
    for name in REGISTRY:
        assert f"| {name} | user | noise off |" in text
    for line in rows[1:]:
        verdict = line.rstrip(" |").rsplit("|", 1)[1].strip()
        if "| honest |" in line:
            assert verdict in ("consistent", "refused"), line
        elif "| noise off |" in line:
            assert verdict in ("caught", "refused"), line


def test_bad_input_is_one_line(capsys):
    from fedrec.cli import main

    assert main(["canary", "--algorithm", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0] and "sgd" in err[0]
