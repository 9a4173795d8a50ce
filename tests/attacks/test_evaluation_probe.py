"""A server that crafts the item table to read a device's held-out items through evaluation.

With every item embedding zero and the biases of ten chosen items at 10, 9, …, 1, the ranking
of every user is the chosen items in that order. A device's exact metric sums (NDCG, recall,
precision and HR at 10 and 20) then say exactly which of the ten are in its held-out set: on
the landed main of 2026-11-29 one evaluation reply gave them all away, outside any accounting.
"""

import itertools
import math

import numpy as np
import pytest

from fedrec.common.evaluation.metrics import evaluation_keys, user_metric_sums

N_ITEMS, DIM, KS = 80, 4, (10, 20)
PROBES = np.arange(10, 20)  # the ten items the server places at ranks 1..10
HELD_OUT = np.array([11, 14, 18])  # three of them are in the device's held-out set
TRAIN = np.array([40, 41, 42, 43, 44])


def _crafted_table() -> dict[str, np.ndarray]:
    bias = np.full((N_ITEMS, 1), -100.0, dtype=np.float32)
    bias[PROBES, 0] = np.arange(10, 0, -1)
    return {
        "item_embedding.weight": np.zeros((N_ITEMS, DIM), dtype=np.float32),
        "item_bias.weight": bias,
    }


def _candidates():
    """Every (subset of probe positions, held-out count) and its exact metric vector."""
    out = []
    scores = _crafted_table()["item_bias.weight"][:, 0]
    for size in range(0, 4):
        for subset in itertools.combinations(range(10), size):
            for extra in range(0, 3):  # held-out items outside the probes
                test = np.concatenate([PROBES[list(subset)], 60 + np.arange(extra)])
                if len(test) == 0:
                    continue
                sums = user_metric_sums(scores, TRAIN, test, ks=KS)
                out.append((frozenset(subset), np.array([sums[k] for k in evaluation_keys(KS)])))
    return out


def _decode(vector: np.ndarray, candidates) -> frozenset:
    """The attacker's maximum-likelihood guess under Gaussian noise: the nearest candidate."""
    return min(candidates, key=lambda c: float(np.sum((c[1] - vector) ** 2)))[0]


TRUTH = frozenset(int(np.flatnonzero(PROBES == i)[0]) for i in HELD_OUT)


def _device(sigma_budget=1e4):
    from fedrec.client.device import Device
    from fedrec.common.privacy.dpsgd import DPConfig, LocalConfig

    events = []
    dev = Device(
        "device-000001",
        TRAIN,
        n_items=N_ITEMS,
        dim=DIM,
        local=LocalConfig(),
        dp=DPConfig(noise_multiplier=1.0, budget_epsilon=sigma_budget, accountant="rdp"),
        test_items=HELD_OUT,
        on_release=lambda event, **context: events.append(event),
    )
    return dev, events


def test_control_exact_sums_give_the_held_out_items_away():
    candidates = _candidates()
    exact = _device()[0].evaluate(_crafted_table(), KS)
    vector = np.array([exact[k] for k in evaluation_keys(KS)])
    assert _decode(vector, candidates) == TRUTH  # 3 of 3 found, no false hit


def test_a_private_device_never_sends_exact_sums():
    dev, events = _device()
    for sigma in (None, 0.0, -1.0):
        out = dev.evaluation_release(_crafted_table(), KS, 1, noise_multiplier=sigma)
        assert type(out).__name__ == "Refusal" and out.code == "privacy-policy"
    assert events == [] and dev.epsilon_spent() == 0


def test_the_probe_learns_only_what_is_accounted():
    from fedrec.common.privacy.accountant import epsilon_of

    candidates = _candidates()
    dev, events = _device()
    exact = dev.evaluate(_crafted_table(), KS)
    exact_vector = np.array([exact[k] for k in evaluation_keys(KS)])
    sigma, trials = 2.0, 60
    hits, residuals = 0, []
    for rnd in range(1, trials + 1):
        reply = dev.evaluation_release(_crafted_table(), KS, rnd, noise_multiplier=sigma)
        vector = np.array([reply[k] for k in evaluation_keys(KS)])
        residuals.append(vector - exact_vector)
        hits += _decode(vector, candidates) == TRUTH
    # every reply was accounted before it left: one Gaussian release of sensitivity
    # sqrt(#values) each, in the device's accountant and its ledger
    width = len(evaluation_keys(KS))
    assert len(events) == trials
    assert {(e.purpose, e.noise_multiplier, e.max_grad_norm) for e in events} == {
        ("evaluation", sigma, math.sqrt(width))
    }
    assert dev.epsilon_spent() == pytest.approx(epsilon_of("rdp", [(sigma, 1.0, trials)], 1e-5))
    # and the noise is what was accounted: std sigma * sqrt(#values) on every value
    residuals = np.concatenate(residuals)
    assert np.std(residuals) == pytest.approx(sigma * math.sqrt(width), rel=0.12)
    # so the probe that decoded the exact sums every time is now near chance
    assert hits / trials < 0.15, hits


@pytest.mark.slow
def test_a_run_with_federated_evaluation_accounts_it_within_the_budget(tmp_path):
    """The planned evaluation releases are in the calibration: no device ends over budget."""
    import json

    from fedrec.common.config import RunConfig
    from fedrec.simulations.loop import run_plain

    cfg = RunConfig(
        synthetic_users=40,
        synthetic_items=50,
        dim=4,
        num_rounds=4,
        fraction_train=0.5,
        eval_every=2,
        epsilon=4.0,
        accountant="rdp",
        eval_noise_multiplier=20.0,
        run_dir=str(tmp_path / "run"),
    )
    assert cfg.evaluation_history() == ((20.0, 1.0, 2),)
    res = run_plain(cfg, ledger_dir=tmp_path / "ledgers")
    assert "federated_eval" in res.rounds[1] and "eval" in res.rounds[1]
    purposes, finals = [], []
    for path in (tmp_path / "ledgers").glob("*.jsonl"):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        purposes += [r["purpose"] for r in records]
        finals.append(records[-1]["claimed_epsilon"])
    assert purposes.count("evaluation") == 2 * 40  # every device, both evaluation rounds
    assert max(finals) <= 4.0 + 1e-6
    assert max(finals) > 3.8  # and the calibration spends the budget, training included
