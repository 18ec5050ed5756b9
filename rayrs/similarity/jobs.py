"""Comparison jobs: what to compare (checkpoints x probes), computed on any node, written as Parquet.

A job is a plain, hashable description of one comparison. Its id is a content hash of everything that
determines the result (kind, both checkpoints' trial fingerprints and epochs, probes, CKA settings), and its
output path is derived from that id, so a rerun skips every job whose Parquet file exists and an interrupted
run loses at most the jobs in flight.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import torch

from rayrs import checkpoint
from rayrs import storage as layout
from rayrs.config import CkaConfig, CrossLayer, Experiment, TrialConfig, TrialSpec
from rayrs.data import ImageDataset, to_float
from rayrs.models import Layer, comparable_layers
from rayrs.schema import SIMILARITY_SCHEMA
from rayrs.similarity.cka import MinibatchCKA
from rayrs.similarity.grams import layer_grams
from rayrs.storage import Storage
from rayrs.train import build_for, fixed_subset, load_trial_data

BENIGN = "benign"


@dataclass(frozen=True)
class ModelRef:
    """One checkpoint: a trial after a given epoch. The fingerprint pins the trial's configuration."""

    trial: str
    epoch: int
    fingerprint: str


@dataclass(frozen=True)
class SimilarityJob:
    kind: str
    a: ModelRef
    b: ModelRef
    probe_size: int
    batch_size: int
    passes: int
    probe_a: str = BENIGN
    probe_b: str = BENIGN
    measure: str = "cka"

    @property
    def id(self) -> str:
        canonical = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def output(self) -> str:
        return layout.similarity(self.kind, self.id)

    def describe(self) -> str:
        if self.a == self.b:
            return f"{self.kind} {self.a.trial}@{self.a.epoch}"
        return f"{self.kind} {self.a.trial}@{self.a.epoch} vs {self.b.trial}@{self.b.epoch}"


def plan_jobs(experiment: Experiment, trials: list[TrialSpec]) -> list[SimilarityJob]:
    """Every comparison job that the experiment's ``compare`` section asks for."""
    jobs = []
    for comparison in experiment.compare:
        if isinstance(comparison, CrossLayer):
            for trial in trials:
                epochs = [trial.config.train.epochs] if comparison.epochs == "final" else comparison.epochs
                for epoch in epochs:
                    ref = ModelRef(trial.name, epoch, trial.fingerprint)
                    jobs.append(_job(comparison.kind, ref, ref, experiment.cka))
    return jobs


def _job(kind: str, a: ModelRef, b: ModelRef, cka: CkaConfig) -> SimilarityJob:
    return SimilarityJob(kind=kind, a=a, b=b, probe_size=cka.probe_size, batch_size=cka.batch_size, passes=cka.passes)


def benign_probe(data: ImageDataset, size: int) -> torch.Tensor:
    """The benign probe inputs: the same ``size`` test images (uint8, (N, C, H, W)) for every model."""
    return data.test_images[fixed_subset(size, data.test_images.shape[0], data.test_images.device)]


def load_checkpoint_model(storage: Storage, ref: ModelRef, config: TrialConfig, data: ImageDataset) -> torch.nn.Module:
    model = build_for(config, data, data.test_images.device)
    model.load_state_dict(checkpoint.load_weights(storage, ref.trial, ref.epoch, data.test_images.device))
    return model.eval()


def run_job(job: SimilarityJob, configs: dict[str, TrialConfig], storage: Storage, device: torch.device) -> int:
    """Compute ``job`` and write its Parquet file atomically; returns the number of rows written."""
    data = load_trial_data(configs[job.a.trial], device)
    probe = benign_probe(data, job.probe_size)
    model_a = load_checkpoint_model(storage, job.a, configs[job.a.trial], data)
    layers_a = comparable_layers(model_a, to_float(probe[:2]))
    same_side = job.a == job.b and job.probe_a == job.probe_b
    model_b = model_a if same_side else load_checkpoint_model(storage, job.b, configs[job.b.trial], data)
    layers_b = layers_a if same_side else comparable_layers(model_b, to_float(probe[:2]))
    accumulator = MinibatchCKA(len(layers_a), len(layers_b), device=device)
    for pass_index in range(job.passes):
        order = torch.randperm(probe.shape[0], generator=torch.Generator().manual_seed(pass_index)).to(device)
        for batch in order.split(job.batch_size):
            inputs = to_float(probe[batch])
            grams_a = layer_grams(model_a, layers_a, inputs)
            grams_b = grams_a if same_side else layer_grams(model_b, layers_b, inputs)
            accumulator.update(grams_a, grams_b)
    table = similarity_table(job, layers_a, layers_b, accumulator.compute().cpu().numpy(), probe.shape[0])
    storage.write_table(job.output, table)
    return table.num_rows


def similarity_table(
    job: SimilarityJob, layers_a: list[Layer], layers_b: list[Layer], values: np.ndarray, n_examples: int
) -> pa.Table:
    """Rows of ``values`` (L_a, L_b) in `rayrs.schema.SIMILARITY_SCHEMA`, one per layer pair."""
    ia, ib = np.meshgrid(np.arange(len(layers_a)), np.arange(len(layers_b)), indexing="ij")
    ia, ib = ia.ravel(), ib.ravel()
    count = ia.size

    def repeat(value):
        return [value] * count

    columns = {
        "kind": repeat(job.kind),
        "measure": repeat(job.measure),
        "model_a": repeat(job.a.trial),
        "epoch_a": repeat(job.a.epoch),
        "probe_a": repeat(job.probe_a),
        "model_b": repeat(job.b.trial),
        "epoch_b": repeat(job.b.epoch),
        "probe_b": repeat(job.probe_b),
        "layer_a": ia,
        "layer_b": ib,
        "name_a": [layers_a[i].name for i in ia],
        "name_b": [layers_b[j].name for j in ib],
        "type_a": [layers_a[i].type for i in ia],
        "type_b": [layers_b[j].type for j in ib],
        "value": values.ravel().astype(np.float64),
        "n_examples": repeat(n_examples),
        "passes": repeat(job.passes),
        "job": repeat(job.id),
    }
    return pa.table(columns, schema=SIMILARITY_SCHEMA)
