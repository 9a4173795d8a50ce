import numpy as np
import pytest

from fedrec.common.data.splits import temporal_split
from fedrec.common.data.synthetic import make_synthetic
from fedrec.common.evaluation.metrics import evaluate
from fedrec.common.model.nonpersonalized import MostPopular
from fedrec.common.model.training import CentralizedTrainer, TrainConfig, sample_negatives


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic(n_users=300, n_items=120, dim=4, mean_interactions=25, seed=3)


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["bpr", "bce"])
def test_mf_recovers_known_latent_structure(synthetic, loss):
    """Data with a known answer: MF must beat popularity and rank like the true factors."""
    split = temporal_split(synthetic.interactions)
    cfg = TrainConfig(dim=8, loss=loss, epochs=25, batch_size=256, lr=0.01, l2=1e-3, n_negatives=4)
    model = CentralizedTrainer(cfg).fit(split.train)
    mf = evaluate(model.full_scores, split.train, split.test, ks=(10,))
    pop = evaluate(MostPopular().fit(split.train).scores, split.train, split.test, ks=(10,))
    assert mf["ndcg@10"] > pop["ndcg@10"] + 0.05
    # learned scores agree with the generator's true scores (rank correlation per user)
    learned = model.full_scores(np.arange(50))
    true = synthetic.true_scores(np.arange(50))
    corr = [
        np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1]
        for a, b in zip(learned, true, strict=True)
    ]
    assert np.median(corr) > 0.5


def test_negatives_are_uniform_and_never_the_positive():
    import torch

    gen = torch.Generator().manual_seed(0)
    pos = torch.randint(0, 5, (20000,), generator=gen)
    neg = sample_negatives(pos, 5, 1, gen)[:, 0]
    assert not (neg == pos).any()
    counts = np.bincount(neg.numpy(), minlength=5) / len(neg)
    np.testing.assert_allclose(counts, 0.2, atol=0.02)


def test_train_config_validation():
    with pytest.raises(ValueError, match="loss"):
        TrainConfig(loss="mse")
    with pytest.raises(ValueError):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="empty"):
        from fedrec.common.data.schema import IdMap, Interactions

        empty = Interactions([], [], [], [], IdMap(["a"]), IdMap(["x"]))
        CentralizedTrainer(TrainConfig(epochs=1)).fit(empty)
