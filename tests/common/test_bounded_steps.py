"""A local step does not grow with a device's data: heavy and light devices both train."""

from __future__ import annotations

import numpy as np
import torch

from fedrec.common.model.mf import MatrixFactorization
from fedrec.common.privacy.accountant import make_accountant
from fedrec.common.privacy.dpsgd import DPConfig, LocalConfig, train_local


def _delta_norm(n_items_held: int, *, dp: DPConfig | None) -> float:
    model = MatrixFactorization(1, 3000, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # aligned item rows: every example pulls the user the same way
        model.item_embedding.weight.fill_(0.3)
    before = {**model.global_state(), **model.local_state()}
    items = np.random.default_rng(1).choice(3000, n_items_held, replace=False)
    local = LocalConfig(epochs=1.0, sample_rate=1.0, lr=0.5, batch_size_norm=40.0)
    train_local(
        model,
        items,
        local=local,
        dp=dp,
        accountant=make_accountant("rdp") if dp is not None else None,
        generator=torch.Generator().manual_seed(2),
    )
    after = {**model.global_state(), **model.local_state()}
    return float(np.sqrt(sum(np.sum((after[k] - before[k]) ** 2) for k in before)))


def test_a_non_private_step_is_a_mean_beyond_batch_size_norm_examples():
    light, heavy = _delta_norm(20, dp=None), _delta_norm(2000, dp=None)
    # a sum over 2,000 examples divided by 40 would be about 50 times the light step
    assert heavy < 3 * light, (light, heavy)
