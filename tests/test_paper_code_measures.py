"""CKA, SVCCA and Procrustes against golden values from running the paper's own code.

The fixture ``tests/fixtures/paper_code/measures.safetensors`` holds fixed random features and what the
reference (inspire-group/robust_representation_similarity) computes from them: minibatch CKA as its ``cka.py``
accumulates it, ``similarity_metrics.metrics.svcca`` and ``metrics.orthogonal_procrustes``
(``make_measures.py`` beside it regenerates it and says how it was run).
"""

import torch

from paper_golden import load_fixture
from rayrs.similarity.cka import MinibatchCKA, centered_gram, u_center
from rayrs.similarity.measures import MEASURES, procrustes, sample_space, svcca, svcca_variance

GOLDEN = load_fixture("measures")


def layers(prefix: str) -> list[torch.Tensor]:
    count = sum(1 for key in GOLDEN if key.startswith(prefix))
    return [GOLDEN[f"{prefix}{i}"] for i in range(count)]


def minibatch_cka(first: list[torch.Tensor], second: list[torch.Tensor]) -> torch.Tensor:
    """rayrs's streaming CKA fed the fixture's minibatches, in order, as a comparison job feeds it."""
    cka = MinibatchCKA(len(first), len(second))
    start = 0
    for size in GOLDEN["cka.batches"].tolist():
        grams_a, grams_b = (torch.stack([u_center(centered_gram(x[start : start + size])) for x in side])
                            for side in (first, second))
        cka.update(grams_a, grams_a if second is first else grams_b)
        start += size
    return cka.compute()


def test_minibatch_cka_is_what_the_papers_cka_py_accumulates():
    # cka.py averages each minibatch's unbiased HSIC of raw float32 Grams (np.mean), then takes the ratio; rayrs
    # sums HSIC of U-centred Grams of centred features. Equal minibatch weights make mean and sum the same ratio;
    # what is left is the reference's float32 rounding of raw Grams (features with means up to 2): 4e-7 measured.
    side_a, side_b = layers("cka.a."), layers("cka.b.")
    assert torch.allclose(minibatch_cka(side_a, side_b), GOLDEN["cka.ab"], rtol=0, atol=5e-6)
    assert torch.allclose(minibatch_cka(side_a, side_a), GOLDEN["cka.aa"], rtol=0, atol=5e-6)


def test_svcca_is_the_papers_top_20_directions_and_the_variance_rule_is_its_own_measure():
    spaces = torch.stack([sample_space(x) for x in layers("svcca.x.")])
    golden = GOLDEN["svcca.values"]
    assert torch.allclose(svcca(spaces, spaces), golden, rtol=0, atol=1e-9)
    assert torch.allclose(MEASURES["svcca"].compute(spaces, spaces), golden, rtol=0, atol=1e-9)
    assert torch.allclose(svcca(spaces, spaces, same_layer=True), golden.diagonal(), rtol=0, atol=1e-9)
    # The 99%-of-variance rule (Raghu et al.) keeps more than 20 directions of these layers, and gives other
    # values: it is the separately named measure, not the paper's.
    variance = MEASURES["svcca_variance"].compute(spaces, spaces)
    assert torch.allclose(variance, svcca_variance(spaces, spaces))
    off_diagonal = ~torch.eye(3, dtype=torch.bool)
    assert (variance - golden)[off_diagonal].abs().min() > 0.05


def test_procrustes_is_the_papers_orthogonal_procrustes():
    spaces = torch.stack([sample_space(x) for x in layers("svcca.x.")])
    assert torch.allclose(procrustes(spaces, spaces), GOLDEN["procrustes.values"], rtol=0, atol=1e-9)
    registered = MEASURES["procrustes"].compute(spaces, spaces)
    assert torch.allclose(registered, GOLDEN["procrustes.values"], rtol=0, atol=1e-9)
