"""Planning comparisons: which jobs a sweep file's ``compare:`` list asks for, their ids, and their tasks.

A job (`SimilarityJob`) is one Parquet file ``similarity/<kind>/<id>.parquet``: a plain, hashable description
whose id is a content hash of everything that determines its rows (kind, both checkpoints' trial
fingerprints and epochs, probes, CKA settings, measure, the types of its compared layers, and for cross_epoch
its epochs and matrix layers). A rerun skips every job whose file exists; an interrupted run loses at most the
jobs in flight. The rows of each kind follow `rayrs.schema`.

The planners take trials and model entries alike (`rayrs.config.ModelEntrySpec`: a network rayrs did not
train, described as a trial; its fingerprint hashes its weights files, its kept epochs are those it has files
for), so every kind of comparison runs on both, mixed.

A task (`SimilarityTask`) is every job of one *home* trial, the trial on side ``a`` of each job (the source
of a transfer), run together in one Ray task (`rayrs.similarity.run`), which crafts every adversarial probe
its jobs use on the home trial's own checkpoints (`rayrs.similarity.probes`): tasks never wait on one another.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from rayrs import storage as layout
from rayrs.config import (
    BenignVsAdversarial,
    CkaConfig,
    CrossEpoch,
    CrossLayer,
    CrossModel,
    Experiment,
    Transfer,
    TrialSpec,
    probe_dataset,
)
from rayrs.models import PAPER_LAYER_TYPES, layer_types
from rayrs.similarity.measures import MEASURES
from rayrs.similarity.probes import BENIGN, AdversarialProbe

TRANSFER_ACCURACY = "transfer_accuracy"


@dataclass(frozen=True)
class ModelRef:
    """One checkpoint: a trial after a given epoch. The fingerprint pins the trial's configuration."""

    trial: str
    epoch: int
    fingerprint: str


@dataclass(frozen=True)
class SimilarityJob:
    """One comparison, one Parquet file. ``probe_a``/``probe_b``: a probe id (`rayrs.schema`); for cross_epoch
    the probe kind, ``benign`` or ``adversarial`` (each epoch on its own adversarial probe), ``a`` and ``b`` the
    final checkpoint, ``epochs`` the epochs compared with it and ``layers`` the epoch x epoch matrix's layers
    (indices among the compared layers). ``layer_types``: the compared layers' types, in `ALL_LAYER_TYPES`
    order. ``pool_features``: every measure sees 4-D activations spatially averaged to (n, channels)."""

    kind: str
    a: ModelRef
    b: ModelRef
    probe_size: int
    batch_size: int
    passes: int
    probe_a: str = BENIGN
    probe_b: str = BENIGN
    measure: str = "cka"
    epochs: tuple[int, ...] = ()
    layers: tuple[int, ...] = ()
    layer_types: tuple[str, ...] = PAPER_LAYER_TYPES
    pool_features: bool = False  # 4-D activations spatially averaged first (`CkaConfig.pool_features`)

    @property
    def id(self) -> str:
        fields = asdict(self)
        # Fields added after results were first written enter the hash only when they differ from their
        # defaults: a job that computes what it computed before keeps its id and its file, while any other
        # set of layers gives a new id.
        for name, default in _LATER_FIELDS.items():
            if fields[name] == default:
                del fields[name]
        revision = MEASURES[self.measure].revision if self.measure in MEASURES else 1
        if revision > 1:  # the measure's definition changed: its older files must not be taken for this job's
            fields["measure_revision"] = revision
        canonical = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def output(self) -> str:
        return layout.similarity(self.kind, self.id)

    def describe(self) -> str:
        measure = "" if self.measure == "cka" else f" ({self.measure})"
        if self.layer_types != PAPER_LAYER_TYPES:
            measure += f" [{'+'.join(self.layer_types)}]"
        if self.pool_features:
            measure += " pooled"
        if self.kind == "cross_epoch":
            epochs = f"{self.epochs[0]}..{self.a.epoch}"
            return f"cross_epoch {self.a.trial} epochs {epochs} on {self.probe_a} probes{measure}"
        if self.kind == "transfer":
            return f"transfer {self.a.trial}@{self.a.epoch} -> {self.b.trial}@{self.b.epoch}{measure}"
        if self.a == self.b:
            return f"{self.kind} {self.a.trial}@{self.a.epoch}{measure}"
        return f"{self.kind} {self.a.trial}@{self.a.epoch} vs {self.b.trial}@{self.b.epoch}{measure}"


_LATER_FIELDS: dict[str, Any] = {"layer_types": PAPER_LAYER_TYPES, "pool_features": False}


@dataclass(frozen=True)
class SimilarityTask:
    """The jobs of one home trial (side ``a`` of each), computed together: see the module docstring."""

    trial: str
    jobs: tuple[SimilarityJob, ...]

    @property
    def trials(self) -> set[str]:
        """Every trial whose checkpoints the task reads."""
        return {job.a.trial for job in self.jobs} | {job.b.trial for job in self.jobs}

    def describe(self) -> str:
        return f"{self.trial}: {len(self.jobs)} jobs"


# -- planning: the sweep file's `compare:` list -> jobs -> tasks ---------------------------------------------
def plan_jobs(experiment: Experiment, trials: list[TrialSpec]) -> list[SimilarityJob]:
    """Every comparison job that the experiment's ``compare`` section asks for, each once."""
    jobs: dict[str, SimilarityJob] = {}
    for comparison in experiment.compare:
        for job in PLANNERS[comparison.kind](comparison, trials, experiment.cka):
            jobs.setdefault(job.id, job)
    return list(jobs.values())


def plan_tasks(jobs: list[SimilarityJob]) -> list[SimilarityTask]:
    """Group jobs by their home trial (side ``a``), in order of first appearance."""
    grouped: dict[str, list[SimilarityJob]] = defaultdict(list)
    for job in jobs:
        grouped[job.a.trial].append(job)
    return [SimilarityTask(trial, tuple(group)) for trial, group in grouped.items()]


def _final(trial: TrialSpec) -> ModelRef:
    return ModelRef(trial.name, trial.config.train.epochs, trial.fingerprint)


def _selected(trials: list[TrialSpec], names: Any) -> list[TrialSpec]:
    return trials if names == "all" else [t for name in names for t in trials if t.name == name]


def _job(comparison: Any, home: TrialSpec, a: ModelRef, b: ModelRef, cka: CkaConfig, measure: str,
         **fields: Any) -> SimilarityJob:
    """A job of ``comparison`` whose side-a trial is ``home`` (both sides see the same probe dataset)."""
    return SimilarityJob(comparison.kind, a, b, cka.probe_size, cka.batch_size, cka.passes, measure=measure,
                         layer_types=layer_types(comparison.layer_types), pool_features=cka.pools(home.config),
                         **fields)


def _adversarial_id(trial: TrialSpec, epoch: int, cka: CkaConfig) -> str:
    return AdversarialProbe.of(trial.name, epoch, trial.config, cka.probe_size, trial.fingerprint).id


def _plan_cross_layer(comparison: CrossLayer, trials: list[TrialSpec], cka: CkaConfig) -> Iterator[SimilarityJob]:
    for trial in _selected(trials, comparison.trials):
        epochs = [trial.config.train.epochs] if comparison.epochs == "final" else comparison.epochs
        for epoch, measure in ((e, m) for e in epochs for m in comparison.measures):
            ref = ModelRef(trial.name, epoch, trial.fingerprint)
            yield _job(comparison, trial, ref, ref, cka, measure)


def _plan_cross_model(comparison: CrossModel, trials: list[TrialSpec], cka: CkaConfig) -> Iterator[SimilarityJob]:
    if comparison.pairs == "all":
        pairs = [(a, b) for i, a in enumerate(trials) for b in trials[i + 1 :]
                 if probe_dataset(a.config) == probe_dataset(b.config)]
    else:
        pairs = [(_selected(trials, [a])[0], _selected(trials, [b])[0]) for a, b in comparison.pairs]
    for (a, b), measure in ((pair, m) for pair in pairs for m in comparison.measures):
        yield _job(comparison, a, _final(a), _final(b), cka, measure)


def _plan_benign_vs_adversarial(comparison: BenignVsAdversarial, trials: list[TrialSpec],
                                cka: CkaConfig) -> Iterator[SimilarityJob]:
    for trial in _selected(trials, comparison.trials):
        epochs = [trial.config.train.epochs] if comparison.epochs == "final" else comparison.epochs
        for epoch, measure in ((e, m) for e in epochs for m in comparison.measures):
            ref = ModelRef(trial.name, epoch, trial.fingerprint)
            yield _job(comparison, trial, ref, ref, cka, measure, probe_b=_adversarial_id(trial, epoch, cka))


def _plan_transfer(comparison: Transfer, trials: list[TrialSpec], cka: CkaConfig) -> Iterator[SimilarityJob]:
    models = _selected(trials, comparison.models)
    for source in models:
        probe = _adversarial_id(source, source.config.train.epochs, cka)
        for target in models:
            if probe_dataset(source.config) != probe_dataset(target.config):
                continue
            for measure in [*comparison.measures, TRANSFER_ACCURACY]:
                yield _job(comparison, source, _final(source), _final(target), cka, measure, probe_a=probe,
                           probe_b=probe)


def _plan_cross_epoch(comparison: CrossEpoch, trials: list[TrialSpec], cka: CkaConfig) -> Iterator[SimilarityJob]:
    for trial in _selected(trials, comparison.trials):
        final = trial.config.train.epochs
        epochs = trial.kept_epochs if comparison.epochs == "all" else sorted({*comparison.epochs, final})
        layers = comparison.matrix_layers(trial.layers(comparison.layer_types))
        for probe, measure in ((p, m) for p in comparison.probes for m in comparison.measures):
            yield _job(comparison, trial, _final(trial), _final(trial), cka, measure, probe_a=probe, probe_b=probe,
                       epochs=tuple(epochs), layers=layers)


PLANNERS = {
    "cross_layer": _plan_cross_layer,
    "cross_model": _plan_cross_model,
    "benign_vs_adversarial": _plan_benign_vs_adversarial,
    "transfer": _plan_transfer,
    "cross_epoch": _plan_cross_epoch,
}


__all__ = ["PLANNERS", "TRANSFER_ACCURACY", "ModelRef", "SimilarityJob", "SimilarityTask", "plan_jobs", "plan_tasks"]
