"""sweeps/paper_digits.yaml, the paper in miniature: it asks for every method, threat model, freezing and
comparison kind, and for what each section of the report needs to be drawn (checked from its plan, without
running it: the run takes minutes; the README gives its measured time)."""

from collections.abc import Callable
from pathlib import Path

import pytest

from rayrs.attacks import THREAT_MODELS
from rayrs.config import TrialSpec, comparison_kinds, expand, load_experiment
from rayrs.methods import METHODS
from rayrs.similarity.jobs import SimilarityJob, plan_jobs

SWEEP = Path(__file__).resolve().parents[1] / "sweeps" / "paper_digits.yaml"


@pytest.fixture(scope="module")
def plan() -> tuple[dict[str, TrialSpec], list[SimilarityJob]]:
    experiment = load_experiment(SWEEP)
    trials = expand(experiment)
    return {t.name: t for t in trials}, plan_jobs(experiment, trials)


def test_it_trains_every_method_every_threat_model_and_a_frozen_model(plan):
    trials, _ = plan
    configs = [t.config for t in trials.values()]
    assert {c.train.method for c in configs} == set(METHODS)
    assert {c.train.threat_model for c in configs} == set(THREAT_MODELS)  # the paper's five and their variants
    assert any(c.train.freeze is not None for c in configs)
    assert {c.data.dataset for c in configs} == {"digits"}


def test_it_plans_every_comparison_kind_with_every_measure_and_both_probe_kinds(plan):
    _, jobs = plan
    assert {job.kind for job in jobs} == set(comparison_kinds())
    assert {job.measure for job in jobs if job.kind == "cross_layer"} == {"cka", "procrustes", "svcca"}
    assert {job.probe_a for job in jobs if job.kind == "cross_epoch"} == {"benign", "adversarial"}


def _robust(trial: TrialSpec) -> bool:
    return trial.config.train.method != "standard" and trial.config.train.eps > 0


def _pairs(jobs: list[SimilarityJob], kind: str, measure: str = "cka") -> list[tuple[str, str]]:
    return [(j.a.trial, j.b.trial) for j in jobs if j.kind == kind and j.measure == measure and j.a.trial != j.b.trial]


def _fig3(trials: dict[str, TrialSpec], jobs: list[SimilarityJob]) -> bool:
    """Cross-layer heatmaps of one family (dataset, arch, depth, threat model) at 2+ eps or 2+ widths."""
    families: dict[tuple, set] = {}
    for job in jobs:
        if job.kind == "cross_layer" and job.measure == "cka":
            c = trials[job.a.trial].config
            families.setdefault((c.data.dataset, c.model.arch, c.model.depth, c.train.threat_model), set()).add(
                (c.train.eps, c.model.width)
            )
    return any(len({e for e, _ in v}) > 1 or len({w for _, w in v}) > 1 for v in families.values())


def _threat_model_pairs(trials: dict[str, TrialSpec], jobs: list[SimilarityJob]) -> bool:
    """Fig 7: robust models of different threat models compared, each reference (linf, snow) in some pair."""
    covered = set()
    for a, b in _pairs(jobs, "cross_model"):
        ta, tb = trials[a], trials[b]
        models = {ta.config.train.threat_model, tb.config.train.threat_model}
        if _robust(ta) and _robust(tb) and len(models) == 2:
            covered |= models & {"linf", "snow"}
    return covered == {"linf", "snow"}


def _measured_alike(jobs: list[SimilarityJob]) -> bool:
    """App. B.1: one comparison (kind, models, probes) with CKA and with both other measures."""
    measures: dict[tuple, set] = {}
    for job in jobs:
        key = (job.kind, job.a, job.b, job.probe_a, job.probe_b)
        measures.setdefault(key, set()).add(job.measure)
    return any(m >= {"cka", "procrustes", "svcca"} for m in measures.values())


# What each section of the report (analysis.report.FIGURES) needs from a sweep, from the reasons it gives when
# it skips (analysis/*.py NoData messages).
NEEDS: dict[str, Callable[[dict[str, TrialSpec], list[SimilarityJob]], bool]] = {
    "table1": lambda trials, jobs: bool(trials),
    "accuracy_curves": lambda trials, jobs: bool(trials),
    "cross_layer": lambda trials, jobs: any(j.kind == "cross_layer" and j.probe_a == "benign" for j in jobs),
    "fig2d_cross_model": lambda trials, jobs: any(
        _robust(trials[a]) != _robust(trials[b]) for a, b in _pairs(jobs, "cross_model")
    ),
    "fig3_eps_width": _fig3,
    "block_structure": lambda trials, jobs: any(j.kind == "cross_layer" for j in jobs),
    "fig4_benign_vs_adversarial": lambda trials, jobs: any(
        j.kind == "benign_vs_adversarial" and _robust(trials[j.a.trial]) for j in jobs
    ) and any(j.kind == "benign_vs_adversarial" and not _robust(trials[j.a.trial]) for j in jobs),
    "fig5a_transferability": lambda trials, jobs: bool(_pairs(jobs, "transfer", "transfer_accuracy")),
    "fig5bcd_transfer_cka": lambda trials, jobs: any(
        _robust(trials[a]) != _robust(trials[b]) for a, b in _pairs(jobs, "transfer")
    ),
    "fig6_convergence": lambda trials, jobs: {
        trials[j.a.trial].config.train.method for j in jobs if j.kind == "cross_epoch" and j.probe_a == "benign"
    } == {"standard", "pgd", "trades"},
    "convergence_epoch": lambda trials, jobs: any(j.kind == "cross_epoch" and j.probe_a == "benign" for j in jobs),
    "fig25_epoch_by_epoch": lambda trials, jobs: {j.probe_a for j in jobs if j.kind == "cross_epoch" and j.layers}
    == {"benign", "adversarial"},
    "fig7_threat_models": _threat_model_pairs,
    "appb1_agreement": lambda trials, jobs: _measured_alike(jobs),
    "appb1_cost": lambda trials, jobs: _measured_alike(jobs),
}


def test_every_section_of_the_report_has_what_it_needs(plan):
    from analysis.report import FIGURES

    assert set(NEEDS) == set(FIGURES)  # a new figure needs a line here (and perhaps a trial or comparison)
    trials, jobs = plan
    missing = [name for name, needs in NEEDS.items() if not needs(trials, jobs)]
    assert missing == []
