"""Comparison jobs: what to compare (checkpoints x probes), grouped into tasks, computed anywhere, into Parquet.

A job (`SimilarityJob`) is one Parquet file ``similarity/<kind>/<id>.parquet``: a plain, hashable description
whose id is a content hash of everything that determines its rows (kind, both checkpoints' trial
fingerprints and epochs, probes, CKA settings, measure, the types of its compared layers, and for cross_epoch
its epochs and matrix layers). A rerun skips every job whose file exists; an interrupted run loses at most the
jobs in flight. The rows of each kind follow `rayrs.schema`.

A task (`SimilarityTask`) is every job of one *home* trial, the trial on side ``a`` of each job (the source
of a transfer), run together in one Ray task: a checkpoint is loaded and forwarded once per probe minibatch,
and the Grams of that (checkpoint, probe minibatch) feed every job that needs them. A view records the layers
of every type some job of the task compares; each job reads its own out of them (`_Selection`: no copy when
they are all of them). Every adversarial probe a task uses is crafted on its home trial's checkpoints
(`rayrs.similarity.probes`), so tasks never wait on one another.

Per minibatch, the views (a checkpoint fed a probe) are formed in this order, each released when its step
is done:
  1. the home trial's final checkpoint, on each probe it needs (kept to the end of the minibatch);
  2. each other trial's final checkpoint (cross_model partners, transfer targets), one model at a time;
  3. each earlier epoch of the home trial (cross_layer / benign_vs_adversarial epochs, cross_epoch), one
     epoch at a time.
Every pair of views a job needs is (step 1, any step) or two views of the same step, so at most 4 views'
Grams are alive at once: the home final checkpoint's (benign, adversarial) and the step in progress's. A
cross_epoch over E checkpoints is therefore E forward passes per probe and minibatch (O(E): each epoch is
paired with the final one as it streams past), and its epoch x epoch matrix keeps only the C chosen layers'
Grams of every epoch: C x E x n^2 float32 per probe kind.

Memory bound at WRN-28-10 (L = 80 layers of the paper's types; 92 with its 12 residual blocks, 15% more),
minibatch n = 1024, E = 100 epochs, C = 4 matrix layers (at most 8), benign and adversarial probes: one
view's Grams are L n^2 x 4 B = 320 MiB, so 4 views take 1.25 GiB, and the two matrix stacks
2 x 4 x 100 x 4 MiB = 3.1 GiB (6.25 GiB at C = 8): 4.4 GiB, against
100 x 320 MiB = 31 GiB for every epoch's Grams at once (plus, in both cases, one forward pass's activations,
~0.7 GB for WRN-28-10's widest layer at n = 1024). Procrustes/SVCCA views hold (L, m, m) float64 sample spaces
instead: 640 MiB a view at m = 1024, 2 x 4 x 100 x 8 MiB = 6.25 GiB of matrix stacks. Adversarial probes stay
on the CPU (one per epoch for adversarial cross_epoch: 12.6 MB each for 1024 CIFAR-10 images) and only a
minibatch at a time goes to the device. Up to `MODEL_CACHE` checkpoints stay loaded; a task touching more
(cross_epoch) reloads each once per minibatch.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from rayrs import storage as layout
from rayrs.config import (
    BenignVsAdversarial,
    CkaConfig,
    CrossEpoch,
    CrossLayer,
    CrossModel,
    Experiment,
    Transfer,
    TrialConfig,
    TrialSpec,
    probe_dataset,
)
from rayrs.models import PAPER_LAYER_TYPES, Layer, layer_types, model_layers
from rayrs.schema import JACKKNIFE_FIELD, SECONDS_FIELD, SIMILARITY_SCHEMA, STD_ERROR_FIELD
from rayrs.similarity.cka import JACKKNIFE_GROUPS, MinibatchCKA, jackknife_std_error
from rayrs.similarity.grams import GramRecorder, channels_last, reuse_freed_memory
from rayrs.similarity.measures import MEASURE_EXAMPLES, MEASURES, layer_sample_spaces
from rayrs.similarity.probes import ADVERSARIAL, BENIGN, AdversarialProbe, adversarial_probe
from rayrs.sources import ProbeSource, TestImages, TrialModel
from rayrs.storage import Storage

TRANSFER_ACCURACY = "transfer_accuracy"
OUTPUT_LAYER = -1  # layer index of a transfer_accuracy row: the model's prediction
MODEL_CACHE = 4  # checkpoints kept loaded on the device within a task


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


@dataclass(frozen=True)
class TaskProgress:
    """A step of a task is done: an adversarial probe made or read, or a probe minibatch forwarded."""

    trial: str
    done: int
    total: int
    detail: str


@dataclass(frozen=True)
class JobDone:
    job: SimilarityJob
    rows: int


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
    return AdversarialProbe.of(trial.name, epoch, trial.config, cka.probe_size).id


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
        epochs = range(1, final + 1) if comparison.epochs == "all" else sorted({*comparison.epochs, final})
        layers = comparison.matrix_layers(model_layers(trial.config, comparison.layer_types))
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


# -- execution ---------------------------------------------------------------------------------------------------------
def run_task(task: SimilarityTask, configs: dict[str, TrialConfig], storage: Storage,
             device: torch.device) -> Iterator[TaskProgress | JobDone]:
    """Compute every job of ``task``, writing each one's Parquet file atomically as soon as it is complete.

    Yields a `TaskProgress` after each step (probe made or read, minibatch forwarded) and a `JobDone` per
    job written, so a caller can draw progress bars; exhaust it to run the task. On a CPU, the process's
    malloc is first set to reuse freed memory (`reuse_freed_memory`).
    """
    if torch.device(device).type == "cpu":
        reuse_freed_memory()
    yield from _TaskRun(task, configs, storage, device).run()


def run_job(job: SimilarityJob, configs: dict[str, TrialConfig], storage: Storage, device: torch.device) -> int:
    """Compute one job alone and write its Parquet file; returns the number of rows written."""
    events = run_task(SimilarityTask(job.a.trial, (job,)), configs, storage, device)
    return sum(event.rows for event in events if isinstance(event, JobDone))


def load_checkpoint_model(storage: Storage, ref: ModelRef, config: TrialConfig, data: TestImages) -> torch.nn.Module:
    """The checkpoint ``ref`` in eval mode, on the device of ``data`` (what the trial is probed on)."""
    return TrialModel(storage, ref.trial, config, data).load(ref.epoch)


@dataclass(frozen=True)
class _View:
    """A checkpoint fed a probe."""

    model: ModelRef
    probe: str


@dataclass(frozen=True, eq=False)
class _Selection:
    """A job's compared layers among a view's layers (those of every type the task's jobs compare).

    ``layers``: the job's layers, indexed 0..L_job-1 in execution order (its rows' ``layer_*``); ``index``:
    where their Grams (or sample spaces) sit in the view's (L_view, n, n) stack, None when they are all of it.
    """

    layers: list[Layer]
    index: torch.Tensor | None = None

    def pick(self, rep: torch.Tensor) -> torch.Tensor:
        """The job's (L_job, n, n) slice of a view's stack (a copy unless it is the whole stack)."""
        return rep if self.index is None else rep.index_select(0, self.index.to(rep.device))

    def view_indices(self, indices: tuple[int, ...]) -> tuple[int, ...]:
        """The view's stack positions of the job's layers ``indices``."""
        return indices if self.index is None else tuple(int(self.index[i]) for i in indices)


@dataclass(frozen=True)
class _Estimate:
    """A job's values and, where its measure has them, their delete-a-group jackknife replicates.

    value: (...) float64; replicates: (G, ...) float64, the values with each of the G groups of probe examples
    left out (`rayrs.similarity.cka.MinibatchCKA`), or None (Procrustes and SVCCA, computed on one minibatch).
    """

    value: np.ndarray
    replicates: np.ndarray | None = None


class _Pair:
    """One job's two views and its measure, accumulated over minibatches: (L_a, L_b), or (L,) same-layer.

    ``select_a`` / ``select_b`` pick the job's layers out of each view's stack (`_Selection`). CKA also
    accumulates its jackknife over `JACKKNIFE_GROUPS` groups of probe examples (each value's standard error)."""

    def __init__(self, a: _View, b: _View, measure: str, select_a: _Selection, select_b: _Selection,
                 same_layer: bool = False):
        self.a, self.b, self.measure, self.same_layer = a, b, measure, same_layer
        self.select_a, self.select_b = select_a, select_b
        self._cka: MinibatchCKA | None = None
        self._value: torch.Tensor | None = None

    def update(self, rep_a: torch.Tensor, rep_b: torch.Tensor, group_of: torch.Tensor) -> None:
        """Add one minibatch: both views' stacks (L, n, n) and each example's group (n,)."""
        # One view against itself stays one tensor (MinibatchCKA then reads the self terms off its product).
        same = rep_a is rep_b and self.select_a is self.select_b
        rep_a = self.select_a.pick(rep_a)
        rep_b = rep_a if same else self.select_b.pick(rep_b)
        if self.measure != "cka":  # one minibatch only
            self._value = MEASURES[self.measure].compute(rep_a, rep_b, same_layer=self.same_layer)
            return
        if self._cka is None:
            self._cka = MinibatchCKA(rep_a.shape[0], rep_b.shape[0], device=rep_a.device, groups=JACKKNIFE_GROUPS)
        self._cka.update(rep_a, rep_b, group_of)

    def result(self) -> _Estimate:
        if self.measure != "cka":
            return _Estimate(self._value.cpu().numpy())
        values, replicates = self._cka.compute(), self._cka.jackknife()
        if self.same_layer:
            values, replicates = values.diagonal(), replicates.diagonal(dim1=1, dim2=2)
        return _Estimate(values.cpu().numpy(), replicates.cpu().numpy())


class _Stack:
    """cross_epoch's epoch x epoch matrix of a few layers: their Grams (or sample spaces) of every epoch's
    view for one minibatch, (C, E, n, n), paired all against all when the minibatch ends."""

    def __init__(self, views: list[_View], layers: tuple[int, ...], measure: str):
        self.views, self.layers, self.measure = views, layers, measure
        self._slot = {view: i for i, view in enumerate(views)}
        self._stack: torch.Tensor | None = None
        everything = _Selection([])  # the stack is already the chosen layers'
        self._pairs = [_Pair(views[0], views[0], measure, everything, everything) for _ in layers]  # epochs x epochs

    def observe(self, view: _View, rep: torch.Tensor) -> None:
        if self._stack is None:
            shape = (len(self.layers), len(self.views), *rep.shape[1:])
            self._stack = torch.empty(shape, dtype=rep.dtype, device=rep.device)
        self._stack[:, self._slot[view]] = rep[list(self.layers)]

    def end_batch(self, group_of: torch.Tensor) -> None:
        for pair, stack in zip(self._pairs, self._stack):
            pair.update(stack, stack, group_of)
        self._stack = None

    def result(self) -> _Estimate:
        """(C, E, E) values between every two epochs, per matrix layer (replicates (G, C, E, E))."""
        results = [pair.result() for pair in self._pairs]
        replicates = None if results[0].replicates is None else np.stack([r.replicates for r in results], axis=1)
        return _Estimate(np.stack([r.value for r in results]), replicates)


class _Accuracy:
    """A model's accuracy on a probe (the first pass over it covers every input once), counted per group of
    probe examples so that it has a jackknife like CKA's (`_Estimate`)."""

    def __init__(self, view: _View):
        self.view = view
        self.correct = torch.zeros(JACKKNIFE_GROUPS, dtype=torch.int64)
        self.count = torch.zeros(JACKKNIFE_GROUPS, dtype=torch.int64)

    def observe(self, logits: torch.Tensor, labels: torch.Tensor, group_of: torch.Tensor) -> None:
        hits = (logits.argmax(dim=1) == labels).cpu().long()
        groups = group_of.cpu()
        self.correct += torch.bincount(groups, weights=hits, minlength=JACKKNIFE_GROUPS).long()
        self.count += torch.bincount(groups, minlength=JACKKNIFE_GROUPS)

    def result(self) -> _Estimate:
        """(1, 1) accuracy; replicates (G, 1, 1) with each group's examples left out."""
        correct, count = int(self.correct.sum()), int(self.count.sum())
        left_out = (correct - self.correct).double() / (count - self.count).clamp_min(1).double()
        return _Estimate(np.array([[correct / count]]), left_out.numpy().reshape(-1, 1, 1))


@dataclass
class _Work:
    """What one job needs computed, and how its rows come out."""

    job: SimilarityJob
    pairs: list[_Pair] = field(default_factory=list)
    stacks: list[_Stack] = field(default_factory=list)
    accuracies: list[_Accuracy] = field(default_factory=list)
    layers_a: list[Layer] = field(default_factory=list)  # the job's compared layers on each side
    layers_b: list[Layer] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)  # cross_epoch: the epoch of each pair
    probe_ids: list[str] = field(default_factory=list)  # cross_epoch: the probe id of each epoch
    seconds: float = 0.0  # compute time charged to this job (`_TaskRun._sweep`)


class _TaskRun:
    def __init__(self, task: SimilarityTask, configs: dict[str, TrialConfig], storage: Storage, device: torch.device):
        self.task, self.configs, self.storage, self.device = task, configs, storage, torch.device(device)
        self.home = task.trial
        self.final = configs[self.home].train.epochs
        first = task.jobs[0]
        self.size, self.batch_size, self.passes = first.probe_size, first.batch_size, first.passes
        self.pool = first.pool_features  # one probe dataset per task, so one answer (`CkaConfig.pools`)
        # Every trial of a task is probed on the home trial's probe dataset (the planners pair only trials
        # whose `probe_dataset` agrees), read from its test split alone.
        self.probe_source = ProbeSource.of(configs[self.home], self.size, self.device)
        self.data = self.probe_source.data
        self.count = self.probe_source.count
        self.labels = self.probe_source.labels
        self.sources = {trial: TrialModel(storage, trial, configs[trial], self.data) for trial in task.trials}
        self.adversarial: dict[str, AdversarialProbe] = {}
        self.probes: dict[str, torch.Tensor] = {}  # adversarial probe id -> (n, C, H, W) float32 on the CPU
        self._models: OrderedDict[ModelRef, torch.nn.Module] = OrderedDict()
        # Each view records the layers of every type some job of the task compares; each job picks its own.
        types = layer_types({t for job in task.jobs for t in job.layer_types})
        self._layers = {trial: source.layers(types) for trial, source in self.sources.items()}
        self._selections: dict[tuple[str, tuple[str, ...]], _Selection] = {}
        self.work = [self._plan(job) for job in task.jobs]

    # -- what each job needs --------------------------------------------------------------------------------
    def _probe(self, trial: str, epoch: int) -> str:
        probe = AdversarialProbe.of(trial, epoch, self.configs[trial], self.size)
        self.adversarial[probe.id] = probe
        return probe.id

    def _plan(self, job: SimilarityJob) -> _Work:
        work = _Work(job)
        if job.kind == "cross_epoch":
            def probe_of(epoch: int) -> str:
                return BENIGN if job.probe_a == BENIGN else self._probe(job.a.trial, epoch)

            views = [_View(ModelRef(job.a.trial, e, job.a.fingerprint), probe_of(e)) for e in job.epochs]
            final = views[job.epochs.index(job.a.epoch)]
            select = self._selection(job.a.trial, job.layer_types)
            work.layers_a = work.layers_b = select.layers
            work.pairs = [_Pair(view, final, job.measure, select, select, same_layer=True) for view in views]
            work.stacks = [_Stack(views, select.view_indices(job.layers), job.measure)]
            work.epochs, work.probe_ids = list(job.epochs), [view.probe for view in views]
            return work
        for side, probe in (("a", job.probe_a), ("b", job.probe_b)):
            if probe != BENIGN:  # crafted on side a's checkpoint (its own, or a transfer's source)
                expected = self._probe(job.a.trial, job.a.epoch)
                assert probe == expected, f"job {job.id}: probe_{side} {probe} is not {expected}"
        a, b = _View(job.a, job.probe_a), _View(job.b, job.probe_b)
        if job.measure == TRANSFER_ACCURACY:
            work.accuracies = [_Accuracy(b)]
        else:
            select_a = self._selection(job.a.trial, job.layer_types)
            select_b = self._selection(job.b.trial, job.layer_types)
            work.layers_a, work.layers_b = select_a.layers, select_b.layers
            work.pairs = [_Pair(a, b, job.measure, select_a, select_b)]
        return work

    def _selection(self, trial: str, types: tuple[str, ...]) -> _Selection:
        """The layers of ``types`` among ``trial``'s view layers (one `_Selection` per trial and types)."""
        key = (trial, types)
        if key not in self._selections:
            view = self._layers[trial]
            chosen = [layer for layer in view if layer.type in types]
            if len(chosen) == len(view):
                self._selections[key] = _Selection(view)
            else:
                index = torch.tensor([layer.index for layer in chosen], device=self.device)
                self._selections[key] = _Selection([replace(layer, index=i) for i, layer in enumerate(chosen)], index)
        return self._selections[key]

    # -- checkpoints, layers, probes ------------------------------------------------------------------------
    def model(self, ref: ModelRef) -> torch.nn.Module:
        """The checkpoint's model in eval mode (a few are kept loaded)."""
        if ref in self._models:
            self._models.move_to_end(ref)
            return self._models[ref]
        model = self.sources[ref.trial].load(ref.epoch)
        self._models[ref] = model
        if len(self._models) > MODEL_CACHE:
            self._models.popitem(last=False)
        return model

    def layers(self, trial: str) -> list[Layer]:
        """Every layer a view of ``trial`` records: those of every type the task's jobs compare."""
        return self._layers[trial]

    def inputs(self, probe: str, batch: torch.Tensor) -> torch.Tensor:
        """(b, C, H, W) float32 probe inputs at positions ``batch`` of the probe, on the device."""
        if probe == BENIGN:
            return self.probe_source.benign(batch)
        return self.probes[probe][batch.cpu()].to(self.device)

    # -- the run --------------------------------------------------------------------------------------------
    def run(self) -> Iterator[TaskProgress | JobDone]:
        gram_work = [w for w in self.work if w.job.measure in ("cka", TRANSFER_ACCURACY)]
        sample_work = [w for w in self.work if w.job.measure in MEASURES]
        gram_batches = self._gram_batches(gram_work)
        examples = min(self.count, self.batch_size, MEASURE_EXAMPLES)
        sample_batches = [(True, torch.arange(examples))] if sample_work else []
        total = len(self.adversarial) + len(gram_batches) + len(sample_batches)
        done = 0
        for probe in sorted(self.adversarial.values(), key=lambda p: p.epoch):
            source = ModelRef(probe.trial, probe.epoch, probe.fingerprint)
            images, crafted = adversarial_probe(probe, self.storage, self.data, self.configs[probe.trial],
                                                lambda source=source: self.model(source))
            self.probes[probe.id] = images
            done += 1
            yield TaskProgress(self.home, done, total, f"{'crafted' if crafted else 'read'} probe {probe.id}")
        for work_list, batches, represent, n_examples, passes, what in (
            (gram_work, gram_batches, self._grams, self.count, self.passes, "CKA"),
            (sample_work, sample_batches, self._sample_spaces, examples, 1, "Procrustes/SVCCA"),
        ):
            if not work_list:
                continue
            for number in self._sweep(work_list, batches, represent):
                done += 1
                yield TaskProgress(self.home, done, total, f"{what} minibatch {number}/{len(batches)}")
            for work in work_list:
                table = self._table(work, n_examples, passes)
                self.storage.write_table(work.job.output, table)
                yield JobDone(work.job, table.num_rows)

    def _gram_batches(self, work: list[_Work]) -> list[tuple[bool, torch.Tensor]]:
        """(first pass?, probe positions) of every minibatch; one pass when only accuracies are needed."""
        if not work:
            return []
        passes = self.passes if any(w.pairs for w in work) else 1
        batches = []
        for pass_index in range(passes):
            order = torch.randperm(self.count, generator=torch.Generator().manual_seed(pass_index))
            # Within a minibatch, the examples in jackknife-group order (the group: the position in the probe,
            # modulo the groups): each group's rows of every Gram are then one slice (MinibatchCKA), and the
            # order within a minibatch changes no value.
            batches += [(pass_index == 0, batch[torch.argsort(batch % JACKKNIFE_GROUPS, stable=True)])
                        for batch in order.split(self.batch_size)]
        return batches

    def _grams(self, view: _View, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L, b, b) float32 U-centred Grams of the view's layers on one minibatch, and the logits."""
        model = self.model(view.model)
        with torch.no_grad(), GramRecorder(model, self.layers(view.model.trial), self.pool) as recorder:
            logits = model(channels_last(self.inputs(view.probe, batch)))
            return recorder.take(), logits

    def _sample_spaces(self, view: _View, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L, b, b) float64 sample spaces of the view's layers (`rayrs.similarity.measures`), and the logits."""
        model = self.model(view.model)
        return layer_sample_spaces(model, self.layers(view.model.trial), self.inputs(view.probe, batch), self.pool)

    def _steps(self, views: set[_View]) -> list[list[_View]]:
        """The views in the order of the module docstring: home final, other models, earlier home epochs."""
        def key(view: _View) -> tuple:
            home_final = view.model.trial == self.home and view.model.epoch == self.final
            return (not home_final, view.model.trial == self.home, view.model.epoch, view.model.trial, view.probe)

        steps: list[list[_View]] = []
        for view in sorted(views, key=key):
            if steps and steps[-1][0].model == view.model:
                steps[-1].append(view)
            else:
                steps.append([view])
        return steps

    def _sweep(self, work: list[_Work], batches: list[tuple[bool, torch.Tensor]], represent) -> Iterator[int]:
        """Form each view once per minibatch and feed every pair, stack and accuracy that uses it.

        Each job is charged its compute time (`_Work.seconds`, App. B.1's cost of a measure): its pairs' and
        stacks' own arithmetic, plus an equal share of each view it uses (the forward pass and Grams or sample
        spaces, formed once for all the jobs that use the view). Loading checkpoints and crafting adversarial
        probes are not charged: both are cached across jobs.
        """
        pairs = [pair for w in work for pair in w.pairs]
        stacks = [stack for w in work for stack in w.stacks]
        accuracies = [acc for w in work for acc in w.accuracies]
        owner = {id(item): w for w in work for item in (*w.pairs, *w.stacks, *w.accuracies)}
        users: defaultdict[_View, set[int]] = defaultdict(set)  # view -> indices of the jobs that use it
        for index, w in enumerate(work):
            for view in {v for pair in w.pairs for v in (pair.a, pair.b)} | {v for st in w.stacks for v in st.views}:
                users[view].add(index)
            for accuracy in w.accuracies:
                users[accuracy.view].add(index)
        pairs_of, stacks_of, accuracies_of = defaultdict(list), defaultdict(list), defaultdict(list)
        for pair in pairs:
            pairs_of[pair.a].append(pair)
            if pair.b != pair.a:
                pairs_of[pair.b].append(pair)
        for stack in stacks:
            for view in stack.views:
                stacks_of[view].append(stack)
        for accuracy in accuracies:
            accuracies_of[accuracy.view].append(accuracy)
        steps = self._steps(set(pairs_of) | set(stacks_of) | set(accuracies_of))
        kept = {view for view in steps[0] if view.model.trial == self.home and view.model.epoch == self.final}
        for number, (first_pass, batch) in enumerate(batches, start=1):
            alive: dict[_View, torch.Tensor] = {}
            group_of = (batch % JACKKNIFE_GROUPS).to(self.device)  # each example's jackknife group
            fed = 0
            for step in steps:
                for view in step:
                    self.model(view.model)  # loaded (or found in the cache) before the clock starts
                    started = self._now()
                    rep, logits = represent(view, batch)
                    share = (self._now() - started) / len(users[view])
                    for index in users[view]:
                        work[index].seconds += share
                    alive[view] = rep
                    for pair in pairs_of[view]:
                        if pair.a in alive and pair.b in alive:  # the second of its views to arrive feeds it
                            started = self._now()
                            pair.update(alive[pair.a], alive[pair.b], group_of)
                            owner[id(pair)].seconds += self._now() - started
                            fed += 1
                    for stack in stacks_of[view]:
                        stack.observe(view, rep)
                    if first_pass:
                        for accuracy in accuracies_of[view]:
                            accuracy.observe(logits, self.labels[batch.to(self.device)], group_of)
                for view in step:
                    if view not in kept:
                        del alive[view]
            for stack in stacks:
                started = self._now()
                stack.end_batch(group_of)
                owner[id(stack)].seconds += self._now() - started
            assert fed == len(pairs), f"{fed} of {len(pairs)} pairs fed: a pair's views were never alive together"
            yield number

    def _now(self) -> float:
        """A clock reading after the device's queued work is done (CUDA runs asynchronously)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    # -- rows ----------------------------------------------------------------------------------------------------
    def _table(self, work: _Work, n_examples: int, passes: int) -> pa.Table:
        """The job's rows, with its compute time in a ``seconds`` column (`rayrs.schema.SECONDS_FIELD`)."""
        table = self._job_rows(work, n_examples, passes)
        return table.append_column(SECONDS_FIELD, pa.array([work.seconds] * table.num_rows, pa.float64()))

    def _job_rows(self, work: _Work, n_examples: int, passes: int) -> pa.Table:
        job = work.job
        if job.measure == TRANSFER_ACCURACY:
            (accuracy,) = work.accuracies
            return similarity_table(job, [], [], accuracy.result(), int(accuracy.count.sum()), 1, output_row=True)
        if job.kind != "cross_epoch":
            (pair,) = work.pairs
            return similarity_table(job, work.layers_a, work.layers_b, pair.result(), n_examples, passes)
        to_final = [pair.result() for pair in work.pairs]
        replicates = None if to_final[0].replicates is None else np.stack([r.replicates for r in to_final], axis=1)
        return cross_epoch_table(job, work.layers_a, work.epochs, work.probe_ids,
                                 _Estimate(np.stack([r.value for r in to_final]), replicates),
                                 work.stacks[0].result(), n_examples, passes)


def similarity_table(job: SimilarityJob, layers_a: list[Layer], layers_b: list[Layer], values: _Estimate,
                     n_examples: int, passes: int | None = None, output_row: bool = False) -> pa.Table:
    """Rows of ``values`` (L_a, L_b) in `rayrs.schema.SIMILARITY_SCHEMA`, one per layer pair, with each value's
    standard error and jackknife replicates where the measure has them.

    With ``output_row`` (a transfer_accuracy job), ``values`` is (1, 1) and its single row has layer -1 and
    name and type "output".
    """
    if output_row:
        ia = ib = np.array([OUTPUT_LAYER])
        names_a = names_b = types_a = types_b = ["output"]
    else:
        grid = np.meshgrid(np.arange(len(layers_a)), np.arange(len(layers_b)), indexing="ij")
        ia, ib = (index.ravel() for index in grid)
        names_a, types_a = [layers_a[i].name for i in ia], [layers_a[i].type for i in ia]
        names_b, types_b = [layers_b[j].name for j in ib], [layers_b[j].type for j in ib]
    replicates = None if values.replicates is None else values.replicates.reshape(values.replicates.shape[0], -1).T
    return _rows(job, job.a.epoch, job.b.epoch, job.probe_a, job.probe_b, ia, ib, names_a, names_b, types_a, types_b,
                 values.value.ravel(), n_examples, job.passes if passes is None else passes, replicates)


def cross_epoch_table(job: SimilarityJob, layers: list[Layer], epochs: list[int], probes: list[str],
                      to_final: _Estimate, matrix: _Estimate, n_examples: int, passes: int) -> pa.Table:
    """cross_epoch rows, same-layer pairs only: every layer at each epoch vs the final epoch (``to_final``,
    (E, L)), and for the matrix layers every (epoch_a, epoch_b) with epoch_b before the final one (``matrix``,
    (C, E, E)): together each matrix layer's full epoch x epoch square, each pair once."""
    final = epochs.index(job.a.epoch)
    rows: list[tuple[int, int, str, str, int]] = []  # epoch_a, epoch_b, probe_a, probe_b, layer
    picks: list[tuple[_Estimate, tuple[int, ...]]] = []  # where each row's value sits
    for i, epoch in enumerate(epochs):
        for index in range(len(layers)):
            rows.append((epoch, epochs[final], probes[i], probes[final], index))
            picks.append((to_final, (i, index)))
    for c, index in enumerate(job.layers):
        for i, j in ((i, j) for i in range(len(epochs)) for j in range(len(epochs)) if j != final):
            rows.append((epochs[i], epochs[j], probes[i], probes[j], index))
            picks.append((matrix, (c, i, j)))
    epoch_a, epoch_b, probe_a, probe_b, layer = (list(column) for column in zip(*rows))
    names = [layers[i].name for i in layer]
    types = [layers[i].type for i in layer]
    value = np.array([estimate.value[where] for estimate, where in picks])
    replicates = None
    if to_final.replicates is not None:
        replicates = np.stack([estimate.replicates[(slice(None), *where)] for estimate, where in picks])
    return _rows(job, epoch_a, epoch_b, probe_a, probe_b, layer, layer, names, names, types, types, value,
                 n_examples, passes, replicates)


def _rows(job: SimilarityJob, epoch_a: Any, epoch_b: Any, probe_a: Any, probe_b: Any, layer_a: Any, layer_b: Any,
          name_a: list[str], name_b: list[str], type_a: list[str], type_b: list[str], value: np.ndarray,
          n_examples: int, passes: int, replicates: np.ndarray | None = None) -> pa.Table:
    """A table in `SIMILARITY_SCHEMA` plus ``std_error`` and ``jackknife`` (`rayrs.schema`); scalar arguments
    are repeated on every row. ``replicates``: (rows, G) jackknife replicates, or None (both columns null)."""
    count = len(value)

    def column(values: Any) -> Any:
        return values if isinstance(values, (list, np.ndarray)) else [values] * count

    columns = {
        "kind": column(job.kind),
        "measure": column(job.measure),
        "model_a": column(job.a.trial),
        "epoch_a": column(epoch_a),
        "probe_a": column(probe_a),
        "model_b": column(job.b.trial),
        "epoch_b": column(epoch_b),
        "probe_b": column(probe_b),
        "layer_a": column(layer_a),
        "layer_b": column(layer_b),
        "name_a": name_a,
        "name_b": name_b,
        "type_a": type_a,
        "type_b": type_b,
        "value": np.asarray(value, dtype=np.float64),
        "n_examples": column(n_examples),
        "passes": column(passes),
        "job": column(job.id),
    }
    table = pa.table(columns, schema=SIMILARITY_SCHEMA)
    if replicates is None:
        errors = pa.nulls(count, STD_ERROR_FIELD.type)
        lists = pa.nulls(count, JACKKNIFE_FIELD.type)
    else:
        errors = pa.array(jackknife_std_error(torch.from_numpy(replicates.T)).numpy(), STD_ERROR_FIELD.type)
        lists = pa.array(list(replicates), JACKKNIFE_FIELD.type)
    return table.append_column(STD_ERROR_FIELD, errors).append_column(JACKKNIFE_FIELD, lists)


__all__ = [
    "ADVERSARIAL",
    "BENIGN",
    "TRANSFER_ACCURACY",
    "JobDone",
    "ModelRef",
    "SimilarityJob",
    "SimilarityTask",
    "TaskProgress",
    "model_layers",
    "plan_jobs",
    "plan_tasks",
    "run_job",
    "run_task",
    "similarity_table",
]
