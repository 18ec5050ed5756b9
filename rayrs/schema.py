"""The two tables rayrs writes, documented once. `analysis/` reads exactly these columns.

**metrics.parquet** — one row per trial x epoch, built from the checkpoints' ``meta.json`` files.
Accuracies are fractions in [0, 1]; losses are mean cross-entropy; ``robust`` means under the evaluation
attack (PGD-20 in the trial's threat model at ``eval_eps``); ``train_*`` are measured on a fixed subset of
the training set after the epoch (not the running training loss, which is ``train_objective``).
``train_examples`` / ``test_examples`` count the images each split's accuracies were measured on (the
subset sizes), so that every accuracy gets its binomial interval (`analysis.uncertainty`); results written
before rayrs recorded them carry nulls (`OPTIONAL_EPOCH_COLUMNS`). ``best_epoch`` is the trial's epoch of
highest test robust accuracy (Rice et al. 2020's early stopping; every epoch is kept), the same on every row
of the trial.

**similarity/<kind>/<job>.parquet** — one row per layer pair per comparison. Side ``a`` and side ``b``
each name a trial (``model_*``), a checkpoint epoch and a probe (the inputs fed to that model):
``benign`` for clean test images, or an adversarial probe id. ``layer_*`` is the layer's position in
execution order among the comparison's compared layers, those of its ``layer_types``
(`rayrs.models.comparable_layers`): by default the paper's conv / bn / act / pool / linear, and for
cross_epoch also ``block`` (each residual block's output, after the addition), which shifts every later
index. Within one job the indices are 0..L-1; across jobs compared with different types, match layers by
``name_*``. ``name_*`` is the module path (``block2.0.relu1``; a residual block's output is the block's own
path, ``block2.0``; the k-th later call of a module that runs repeatedly gets ``#k``) and ``type_*`` one of
conv / bn / act / pool / linear / block. ``value`` is the measure (linear CKA, computed with the
unbiased HSIC estimator and summed over ``n_examples`` probe inputs in minibatches, ``passes`` times).

Probes: ``benign`` (clean test images), or an adversarial probe
``adversarial:<trial>@<epoch>:<threat_model>:<eps>:<steps>`` (the same test images attacked on that
checkpoint, in that threat model, with the evaluation attack). What each ``kind`` holds:

- ``cross_layer`` (Figs 2, 3): one model, one epoch, ``benign`` on both sides; every layer pair.
- ``cross_model`` (Figs 2d, 7): two models on ``benign`` probes; every layer pair (L_a x L_b).
- ``benign_vs_adversarial`` (Fig 4): one model and epoch; ``probe_a`` benign, ``probe_b`` adversarial crafted
  on that model; every layer pair (Fig 4 is the diagonal ``layer_a == layer_b``).
- ``transfer`` (Fig 5): ``model_a`` the source, ``model_b`` the target, both fed the source's adversarial
  probe; every layer pair. Plus one row per (source, target) with ``measure = "transfer_accuracy"``,
  ``layer_a = layer_b = -1``, names and types ``"output"``: the target's accuracy on the source's adversarial
  examples (Fig 5a; source == target is the white-box attack).
- ``cross_epoch`` (Figs 6, 25): one model, ``epoch_a`` vs ``epoch_b``; same-layer pairs only
  (``layer_a == layer_b``): every layer at every epoch against the final epoch (``epoch_b`` = final; Fig 6),
  and for the chosen matrix layers every ordered pair of epochs once (Fig 25). Each side's probe is benign,
  or that epoch's own adversarial probe.
- ``measure``: ``cka`` (in [0, 1], 1 = same up to rotation and scale), ``procrustes`` (Ding et al. 2021's
  distance 2 - 2 ||A^T B||_*, in [0, 2], 0 = same), ``svcca`` (mean canonical correlation of each layer's top
  20 singular directions, as the paper's code computes it, in [0, 1]) or ``svcca_variance`` (the same over
  the directions of 99% of each layer's variance, Raghu et al. 2017) — App. B.1, on the first
  min(probe, batch, 1024) probe inputs, so ``n_examples`` is that count and ``passes`` is 1 — or
  ``transfer_accuracy`` (``passes`` 1).

A file holds the rows of one job only: ``job`` is the file's name and ``kind`` its folder; readers refuse a
file that says otherwise (`check_job_rows`: copied or swapped from another job).

Each value's uncertainty follows the schema's columns: ``std_error`` (`STD_ERROR_FIELD`) and ``jackknife``
(`JACKKNIFE_FIELD`, a list of G = 20 floats). The probe's examples are split into G fixed groups (an example's
group is its position in the probe modulo G, the same in every job on that probe), and ``jackknife[g]`` is the
value computed again with group g's examples left out of every minibatch and pass; ``std_error`` is the
delete-a-group jackknife standard error sqrt((G - 1) / G * sum_g (jackknife[g] - mean)^2), and a 95% interval
is ``value`` +- t(G - 1) = 2.093 of them (`rayrs.similarity.cka`). Because the groups are the same examples in
every job on a probe, a number derived from several values (a block-structure score, the difference of two
models' CKA) gets its own standard error by computing it on each replicate. ``transfer_accuracy`` rows carry the
same for the accuracy; Procrustes and SVCCA rows (one minibatch) carry nulls.

After those, rayrs writes ``seconds`` (`SECONDS_FIELD`), the same on every row of a job: the
compute time charged to the comparison (its own arithmetic plus an equal share of the forward passes and
Grams it shares with other jobs of its task; not checkpoint loading or adversarial-probe crafting), the
input of App. B.1's cost figure. Readers treat it as optional.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from rayrs.storage import DamagedFile, way_out

if TYPE_CHECKING:
    from rayrs.storage import Storage

SIMILARITY_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),  # cross_layer | cross_model | benign_vs_adversarial | transfer | cross_epoch
        ("measure", pa.string()),  # cka | procrustes | svcca | svcca_variance | transfer_accuracy
        ("model_a", pa.string()),
        ("epoch_a", pa.int32()),
        ("probe_a", pa.string()),
        ("model_b", pa.string()),
        ("epoch_b", pa.int32()),
        ("probe_b", pa.string()),
        ("layer_a", pa.int32()),
        ("layer_b", pa.int32()),
        ("name_a", pa.string()),
        ("name_b", pa.string()),
        ("type_a", pa.string()),
        ("type_b", pa.string()),
        ("value", pa.float64()),
        ("n_examples", pa.int64()),
        ("passes", pa.int32()),
        ("job", pa.string()),
    ]
)

# The compute time of the comparison, appended after SIMILARITY_SCHEMA's columns (optional for readers).
SECONDS_FIELD = pa.field("seconds", pa.float64())
# Each value's uncertainty, appended after SIMILARITY_SCHEMA's columns (optional for readers: older files lack
# them): its delete-a-group jackknife standard error, and the G replicates it comes from (see the docstring).
STD_ERROR_FIELD = pa.field("std_error", pa.float64())
JACKKNIFE_FIELD = pa.field("jackknife", pa.list_(pa.float64()))

# Trial parameters copied into every metrics row, so a figure can group by them without joins.
TRIAL_COLUMNS = {
    "experiment": pa.string(),
    "trial": pa.string(),
    "dataset": pa.string(),
    "arch": pa.string(),
    "depth": pa.int32(),
    "width": pa.int32(),
    "method": pa.string(),
    "threat_model": pa.string(),
    "eps": pa.float64(),
    "seed": pa.int32(),
    # How the trial froze layers (`trial_freeze`): null for none, "block1 from epoch 20", or "CKA-guided". Without it
    # a frozen trial and its unfrozen twin (same method, eps, seed) would be read as one configuration.
    "freeze": pa.string(),
}
# Trial columns that metrics files written by older versions of rayrs lack: null in their rows.
OPTIONAL_TRIAL_COLUMNS = frozenset({"freeze"})
EPOCH_COLUMNS = {
    "epoch": pa.int32(),
    "lr": pa.float64(),
    "train_objective": pa.float64(),
    "eval_eps": pa.float64(),
    "train_clean_acc": pa.float64(),
    "train_clean_loss": pa.float64(),
    "train_robust_acc": pa.float64(),
    "train_robust_loss": pa.float64(),
    "test_clean_acc": pa.float64(),
    "test_clean_loss": pa.float64(),
    "test_robust_acc": pa.float64(),
    "test_robust_loss": pa.float64(),
    "train_examples": pa.int64(),
    "test_examples": pa.int64(),
    "epoch_seconds": pa.float64(),
}
# Epoch metrics that checkpoints written by older versions of rayrs lack: null in their metrics rows.
OPTIONAL_EPOCH_COLUMNS = frozenset({"train_examples", "test_examples"})
# CKA-guided freezing (`rayrs.freezing`), appended after METRICS_SCHEMA's columns only by sweeps that use it
# (optional for readers: older files and other sweeps lack them). ``frozen_blocks``: the residual blocks frozen
# during the epoch (block k froze at the first epoch where frozen_blocks > k); ``freeze_check_seconds``: the
# check's time after the epoch (included in ``epoch_seconds``); ``probe_cka_benign`` / ``probe_cka_adversarial``:
# per block in network order, the linear CKA of its output on the probe with the previous epoch's (null at
# epoch 1, and adversarial null for standard training). ``frozen_macs_share``: the frozen modules' share of
# the model's multiply-accumulates during the epoch (= the share of its weight-gradient work skipped; null in
# files from before it). ``freeze_blocks`` / ``block_frozen_from``: the residual blocks in network order and,
# per block, the first epoch it trained frozen as decided by the end of this epoch (null: not frozen); the
# trial's last row holds its final decisions (what Fig 6 marks).
FREEZING_COLUMNS = {
    "frozen_blocks": pa.int32(),
    "freeze_check_seconds": pa.float64(),
    "probe_cka_benign": pa.list_(pa.float64()),
    "probe_cka_adversarial": pa.list_(pa.float64()),
    "frozen_macs_share": pa.float64(),
    "freeze_blocks": pa.list_(pa.string()),
    "block_frozen_from": pa.list_(pa.int32()),
}
METRICS_SCHEMA = pa.schema(list(TRIAL_COLUMNS.items()) + list(EPOCH_COLUMNS.items()) + [("best_epoch", pa.int32())])


def check_job_rows(storage: Storage, rel: str, table: pa.Table) -> None:
    """Refuse a similarity file (``similarity/<kind>/<job>.parquet``) whose rows are not of that kind and job."""
    kind, job = rel.split("/")[-2], rel.rsplit("/", 1)[-1].removesuffix(".parquet")
    owners = {
        column: set(table.column(column).unique().to_pylist()) if column in table.column_names else None
        for column in ("kind", "job")
    }
    if owners["kind"] == {kind} and owners["job"] == {job}:
        return
    found = "no job column" if owners["job"] is None else f"rows of job(s) {', '.join(sorted(map(str, owners['job'])))}"
    raise DamagedFile(
        f"{storage.full_path(rel)} holds {found}, not of {kind} job {job} (copied or swapped?); {way_out(rel)}"
    )
