"""The "This run:" sentences: "as in the paper" only where the interval of the effect excludes no effect; a tie,
an effect inside its interval, or results without uncertainty never read as agreement. Small hand-made frames
whose answer is known; `test_analysis_real.py` runs the same sentences on real digits runs."""

from __future__ import annotations

import pytest
from synthetic import frame_with_uncertainty, similarity_row
from test_analysis import NET, bright_cka, block_cka, metrics_frame, metrics_row, pairs, similarity_frame

from analysis.findings import (
    MORE_PROBES,
    MORE_TEST_IMAGES,
    NO_INTERVAL,
    accuracy_finding,
    convergence_epoch_finding,
    convergence_finding,
    cross_layer_finding,
    eps_width_finding,
)
from analysis.summary import summarize

EPOCH_NET = [("conv1", "conv"), ("block1.0.conv1", "conv"), ("block2.0.conv1", "conv"), ("fc", "linear")]


def robust_accuracy_metrics(curve: list[float], images: int) -> object:
    """A standard trial and a PGD-AT eps=0.15 trial whose test robust accuracy follows ``curve``."""
    rows = [metrics_row("std", "standard", 0.0, e, test_examples=images) for e in range(1, len(curve) + 1)]
    rows += [
        metrics_row("pgd", "pgd", 0.15, epoch, test_robust_acc=accuracy, test_examples=images)
        for epoch, accuracy in enumerate(curve, start=1)
    ]
    return metrics_frame(rows)


def test_a_one_point_drop_on_256_images_is_not_called_robust_overfitting():
    # The quickstart's case (the issue: "PGD-AT eps=0.15 0.4 points — robust overfitting, as Rice et al. and the
    # paper report", from 256 test images whose standard error is about 3 points): any drop was overfitting.
    metrics = robust_accuracy_metrics([0.20, 0.33, 0.39, 0.42, 0.43, 0.44, 0.455, 0.462, 0.455, 0.450], 256)

    sentence = accuracy_finding(metrics, similarity_frame([]), summarize(similarity_frame([]), metrics))

    assert "PGD-AT ε=0.15 1.2 points [0.0, " in sentence
    assert "as Rice et al. and the paper report" not in sentence
    assert "no loss distinguishable from none at this sample size" in sentence
    assert f"{MORE_TEST_IMAGES} would resolve it" in sentence


def test_an_18_point_drop_on_450_images_is_robust_overfitting_as_the_paper_reports():
    metrics = robust_accuracy_metrics([0.30, 0.45, 0.55, 0.60, 0.58, 0.52, 0.45, 0.42], 450)

    sentence = accuracy_finding(metrics, similarity_frame([]), summarize(similarity_frame([]), metrics))

    assert "PGD-AT ε=0.15 18.0 points [" in sentence
    assert sentence.endswith("robust overfitting in PGD-AT ε=0.15, as Rice et al. and the paper report.")


def every_epoch_close_to_final(trial: str, epochs: int = 4) -> list[dict]:
    """cross_epoch rows of a model whose every layer's CKA to the final epoch is 0.95 or more from epoch 1."""
    return [
        similarity_row("cross_epoch", trial, trial, layer, layer, 1.0 if epoch == epochs else 0.95 + 0.01 * layer,
                       epoch_a=epoch, epoch_b=epochs, layers=EPOCH_NET, job=trial)
        for layer in range(len(EPOCH_NET))
        for epoch in range(1, epochs + 1)
    ]


def test_every_block_converging_at_epoch_1_is_a_tie_not_early_layers_first():
    # The issue: "a run where every block reaches its convergence epoch at epoch 1 is reported as 'early layers
    # converge first, as in the paper'".
    metrics = metrics_frame([metrics_row("m", "pgd", 8 / 255, e) for e in range(1, 5)])
    similarity = frame_with_uncertainty("m", every_epoch_close_to_final("m"), lambda r: 0.0 if r["value"] == 1 else 0.005)
    summary = summarize(similarity, metrics)

    blocks = convergence_finding(metrics, similarity, summary)
    layers = convergence_epoch_finding(metrics, similarity, summary)

    assert set(summary.filter(statistic="convergence_epoch")["value"]) == {1.0}
    for sentence in (blocks, layers):
        assert "as in the paper" not in sentence and "unlike the paper" not in sentence
        assert "not distinguishable at this sample size" in sentence


def test_early_layers_converging_strictly_first_beyond_their_ranges_agree_with_the_paper():
    metrics = metrics_frame([metrics_row("m", "pgd", 8 / 255, e) for e in range(1, 7)])
    # Layer l's CKA to the final epoch 6 reaches 0.95 at epoch 1 + l and is far below 0.9 before.
    rows = [
        similarity_row("cross_epoch", "m", "m", layer, layer, 1.0 if epoch == 6 else (0.97 if epoch > layer else 0.5),
                       epoch_a=epoch, epoch_b=6, layers=EPOCH_NET, job="m")
        for layer in range(len(EPOCH_NET))
        for epoch in range(1, 7)
    ]
    similarity = frame_with_uncertainty("m", rows, lambda r: 0.0 if r["value"] == 1 else 0.01)
    summary = summarize(similarity, metrics)

    assert "early layers converge first (strictly, beyond the ranges), as in the paper" in convergence_finding(
        metrics, similarity, summary
    )


def block_and_bright(error: float | None) -> tuple[object, object]:
    """A standard model with a block structure and a PGD-AT one without; every CKA with standard error ``error``."""
    metrics = metrics_frame([metrics_row("std", "standard", 0.0, 3), metrics_row("pgd", "pgd", 8 / 255, 3)])
    rows = pairs("cross_layer", "std", "std", block_cka) + pairs("cross_layer", "pgd", "pgd", bright_cka)
    if error is None:
        return metrics, similarity_frame(rows)
    return metrics, frame_with_uncertainty("golden", rows, lambda r: 0.0 if r["value"] == 1 else error)


def test_a_block_structure_fading_beyond_its_interval_agrees_with_the_paper():
    metrics, similarity = block_and_bright(0.01)

    sentence = cross_layer_finding(metrics, similarity, summarize(similarity, metrics))

    assert sentence.endswith("— robust is lower, as in the paper.")
    # Neighbours (0.9 + 0.9 + 0.1 + 0.9 + 0.9) / 5 = 0.74, far layers (|i - j| > 2, across blocks) 0.1.
    assert "standard 0.64 [" in sentence and "PGD-AT ε=8/255 0.00 [" in sentence


def test_results_without_uncertainty_make_no_comparison_with_the_paper():
    metrics, similarity = block_and_bright(None)

    sentence = cross_layer_finding(metrics, similarity, summarize(similarity, metrics))

    assert "as in the paper" not in sentence and NO_INTERVAL in sentence


def test_a_score_that_falls_less_than_its_interval_is_not_distinguishable():
    # eps 0 -> 2/255: the score drops by about 0.004, far inside an interval of about +-0.05. Before intervals, the
    # finding called any fall within 0.01 "falls as eps grows, as in the paper".
    metrics = metrics_frame([metrics_row("std", "standard", 0.0, 3), metrics_row("pgd2", "pgd", 2 / 255, 3)])
    rows = pairs("cross_layer", "std", "std", block_cka) + pairs(
        "cross_layer", "pgd2", "pgd2", lambda i, j: block_cka(i, j) - 0.005 * (abs(i - j) == 1)
    )
    similarity = frame_with_uncertainty("eps", rows, lambda r: 0.0 if r["value"] == 1 else 0.05)

    sentence = eps_width_finding(metrics, similarity, summarize(similarity, metrics))

    assert "as in the paper" not in sentence
    assert f"not distinguishable at this sample size: {MORE_PROBES} would resolve it" in sentence
