"""A job's Parquet rows: one per layer pair (or epoch pair), in `rayrs.schema.SIMILARITY_SCHEMA` plus each
value's jackknife standard error and replicates (`rayrs.schema`), with the job's id on every row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from rayrs.models import Layer
from rayrs.schema import JACKKNIFE_FIELD, SIMILARITY_SCHEMA, STD_ERROR_FIELD
from rayrs.similarity.cka import jackknife_std_error
from rayrs.similarity.plan import SimilarityJob

OUTPUT_LAYER = -1  # layer index of a transfer_accuracy row: the model's prediction


@dataclass(frozen=True)
class Estimate:
    """A job's values and, where its measure has them, their delete-a-group jackknife replicates.

    value: (...) float64; replicates: (G, ...) float64, the values with each of the G groups of probe examples
    left out (`rayrs.similarity.cka.MinibatchCKA`), or None (Procrustes and SVCCA, computed on one minibatch).
    """

    value: np.ndarray
    replicates: np.ndarray | None = None


def similarity_table(job: SimilarityJob, layers_a: list[Layer], layers_b: list[Layer], values: Estimate,
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
                      to_final: Estimate, matrix: Estimate, n_examples: int, passes: int) -> pa.Table:
    """cross_epoch rows, same-layer pairs only: every layer at each epoch vs the final epoch (``to_final``,
    (E, L)), and for the matrix layers every (epoch_a, epoch_b) with epoch_b before the final one (``matrix``,
    (C, E, E)): together each matrix layer's full epoch x epoch square, each pair once."""
    final = epochs.index(job.a.epoch)
    rows: list[tuple[int, int, str, str, int]] = []  # epoch_a, epoch_b, probe_a, probe_b, layer
    picks: list[tuple[Estimate, tuple[int, ...]]] = []  # where each row's value sits
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


__all__ = ["OUTPUT_LAYER", "Estimate", "cross_epoch_table", "similarity_table"]
