"""Running comparisons: one task's jobs computed together, streaming over probe minibatches and views.

A task (`SimilarityTask`) is every job of one *home* trial, the trial on side ``a`` of each job (the source
of a transfer), run together in one Ray task: a checkpoint is loaded and forwarded once per probe minibatch,
and the Grams of that (checkpoint, probe minibatch) feed every job that needs them. A view records the layers
of every type some job of the task compares; each job reads its own out of them (`_Selection`: no copy when
they are all of them). Every adversarial probe a task uses is crafted on its home trial's checkpoints
(`rayrs.similarity.probes`), so tasks never wait on one another. A "trial" here may be a sweep's model entry
(a network rayrs did not train): its checkpoints are then its weights files (`rayrs.entries.model_source`).

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

import time
from collections import OrderedDict, defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import torch

from rayrs.config import ModelEntrySpec, TrialConfig
from rayrs.entries import model_source
from rayrs.models import Layer, layer_types, selects
from rayrs.schema import SECONDS_FIELD
from rayrs.similarity.cka import JACKKNIFE_GROUPS, MinibatchCKA
from rayrs.similarity.grams import GramRecorder, channels_last, reuse_freed_memory
from rayrs.similarity.measures import MEASURE_EXAMPLES, MEASURES, layer_sample_spaces
from rayrs.similarity.plan import TRANSFER_ACCURACY, ModelRef, SimilarityJob, SimilarityTask
from rayrs.similarity.probes import BENIGN, AdversarialProbe, adversarial_probe
from rayrs.similarity.rows import Estimate, cross_epoch_table, similarity_table
from rayrs.sources import ProbeSource, TestImages, TrialModel
from rayrs.storage import Storage

MODEL_CACHE = 4  # checkpoints kept loaded on the device within a task


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


# -- execution ---------------------------------------------------------------------------------------------------------
def run_task(task: SimilarityTask, configs: dict[str, TrialConfig], storage: Storage,
             device: torch.device, models: Mapping[str, ModelEntrySpec] | None = None) -> Iterator[TaskProgress | JobDone]:
    """Compute every job of ``task``, writing each one's Parquet file atomically as soon as it is complete.

    ``configs``: every compared model's configuration, by name; ``models``: those that are model entries
    (weights files: `rayrs.entries.model_source`), the others being trained trials (their checkpoints).

    Yields a `TaskProgress` after each step (probe made or read, minibatch forwarded) and a `JobDone` per
    job written, so a caller can draw progress bars; exhaust it to run the task. On a CPU, the process's
    malloc is first set to reuse freed memory (`reuse_freed_memory`).
    """
    if torch.device(device).type == "cpu":
        reuse_freed_memory()
    yield from _TaskRun(task, configs, storage, device, models).run()


def run_job(job: SimilarityJob, configs: dict[str, TrialConfig], storage: Storage, device: torch.device,
            models: Mapping[str, ModelEntrySpec] | None = None) -> int:
    """Compute one job alone and write its Parquet file; returns the number of rows written."""
    events = run_task(SimilarityTask(job.a.trial, (job,)), configs, storage, device, models)
    return sum(event.rows for event in events if isinstance(event, JobDone))


def probe_batches(count: int, batch_size: int, passes: int) -> list[tuple[bool, torch.Tensor]]:
    """(first pass?, (b,) int64 probe positions) of every minibatch of ``passes`` passes over ``count`` examples,
    each pass in its own seeded order (seed = the pass's index), so every run forms the same minibatches."""
    batches = []
    for pass_index in range(passes):
        order = torch.randperm(count, generator=torch.Generator().manual_seed(pass_index))
        # Within a minibatch, the examples in jackknife-group order (the group: the position in the probe,
        # modulo the groups): each group's rows of every Gram are then one slice (MinibatchCKA), and the
        # order within a minibatch changes no value.
        batches += [(pass_index == 0, batch[torch.argsort(batch % JACKKNIFE_GROUPS, stable=True)])
                    for batch in order.split(batch_size)]
    return batches


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

    def result(self) -> Estimate:
        if self.measure != "cka":
            return Estimate(self._value.cpu().numpy())
        values, replicates = self._cka.compute(), self._cka.jackknife()
        if self.same_layer:
            values, replicates = values.diagonal(), replicates.diagonal(dim1=1, dim2=2)
        return Estimate(values.cpu().numpy(), replicates.cpu().numpy())


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

    def result(self) -> Estimate:
        """(C, E, E) values between every two epochs, per matrix layer (replicates (G, C, E, E))."""
        results = [pair.result() for pair in self._pairs]
        replicates = None if results[0].replicates is None else np.stack([r.replicates for r in results], axis=1)
        return Estimate(np.stack([r.value for r in results]), replicates)


class _Accuracy:
    """A model's accuracy on a probe (the first pass over it covers every input once), counted per group of
    probe examples so that it has a jackknife like CKA's (`Estimate`)."""

    def __init__(self, view: _View):
        self.view = view
        self.correct = torch.zeros(JACKKNIFE_GROUPS, dtype=torch.int64)
        self.count = torch.zeros(JACKKNIFE_GROUPS, dtype=torch.int64)

    def observe(self, logits: torch.Tensor, labels: torch.Tensor, group_of: torch.Tensor) -> None:
        hits = (logits.argmax(dim=1) == labels).cpu().long()
        groups = group_of.cpu()
        self.correct += torch.bincount(groups, weights=hits, minlength=JACKKNIFE_GROUPS).long()
        self.count += torch.bincount(groups, minlength=JACKKNIFE_GROUPS)

    def result(self) -> Estimate:
        """(1, 1) accuracy; replicates (G, 1, 1) with each group's examples left out."""
        correct, count = int(self.correct.sum()), int(self.count.sum())
        left_out = (correct - self.correct).double() / (count - self.count).clamp_min(1).double()
        return Estimate(np.array([[correct / count]]), left_out.numpy().reshape(-1, 1, 1))


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
    def __init__(self, task: SimilarityTask, configs: dict[str, TrialConfig], storage: Storage, device: torch.device,
                 models: Mapping[str, ModelEntrySpec] | None = None):
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
        models = models or {}
        self.sources = {
            trial: model_source(models[trial], self.data, self.device) if trial in models
            else TrialModel(storage, trial, configs[trial], self.data)
            for trial in task.trials
        }
        self.adversarial: dict[str, AdversarialProbe] = {}
        self.probes: dict[str, torch.Tensor] = {}  # adversarial probe id -> (n, C, H, W) float32 on the CPU
        self._models: OrderedDict[ModelRef, torch.nn.Module] = OrderedDict()
        # Each view records the layers of every type some job of the task compares; each job picks its own.
        types = layer_types({t for job in task.jobs for t in job.layer_types})
        self._layers = {trial: source.layers(types) for trial, source in self.sources.items()}
        self._selections: dict[tuple[str, tuple[str, ...]], _Selection] = {}
        self.work = [self._plan(job) for job in task.jobs]

    # -- what each job needs --------------------------------------------------------------------------------
    def _probe(self, trial: str, epoch: int, fingerprint: str) -> str:
        probe = AdversarialProbe.of(trial, epoch, self.configs[trial], self.size, fingerprint)
        self.adversarial[probe.id] = probe
        return probe.id

    def _plan(self, job: SimilarityJob) -> _Work:
        work = _Work(job)
        if job.kind == "cross_epoch":
            def probe_of(epoch: int) -> str:
                return BENIGN if job.probe_a == BENIGN else self._probe(job.a.trial, epoch, job.a.fingerprint)

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
                expected = self._probe(job.a.trial, job.a.epoch, job.a.fingerprint)
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
            chosen = [layer for layer in view if selects(types, layer)]  # by type or by name:<glob>
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
        return probe_batches(self.count, self.batch_size, self.passes if any(w.pairs for w in work) else 1)

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
                                 Estimate(np.stack([r.value for r in to_final]), replicates),
                                 work.stacks[0].result(), n_examples, passes)


__all__ = ["MODEL_CACHE", "JobDone", "TaskProgress", "load_checkpoint_model", "probe_batches", "run_job", "run_task"]
