"""The similarity rows joined with what a query needs: each layer's block and each model's training.

A question such as "mean CKA between block1 and the head, robust vs standard" should be one filter and one
group_by. The Parquet files keep one row per layer pair and name the models by trial id only (`rayrs.schema`);
`similarity_view` adds, for each side ``a`` and ``b``, the block of the layer (`analysis.layers.block_of`) and the
model's parameters and labels (`analysis.load.attach_trials`: ``method_a``, ``threat_model_a``, ``eps_a``,
``arch_a``, ``depth_a``, ``width_a``, ``seed_a``, ``robust_a``, ``training_a``, ``config_a``, ...).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from analysis.layers import block_of
from analysis.load import attach_trials, read_metrics, read_similarity
from rayrs import storage as layout
from rayrs.errors import UserError
from rayrs.storage import Storage

VIEW_FILE = "similarity_view.parquet"  # what `rayrs analyze --format parquet` writes into the report folder


def similarity_view(results: str | Path | Storage) -> pl.DataFrame:
    """Every similarity row of the experiment at ``results`` (a folder, an ``s3://`` URI or a `Storage`), joined.

    One row per layer pair per comparison, with the similarity Parquet's columns (`rayrs.schema.SIMILARITY_SCHEMA`
    plus ``std_error`` / ``seconds`` where the files have them), then ``block_a`` / ``block_b`` ("stem", "block1",
    ..., "head"; null for the ``transfer_accuracy`` rows' "output", which is not a layer) and each side's trial
    (`analysis.load.attach_trials`, suffixed ``_a`` / ``_b``; a sweep's model entries too, from its
    ``models.json``). Reads only; nothing is written.
    """
    storage = results if isinstance(results, Storage) else Storage(str(results))
    storage.check()
    if not storage.exists(layout.METRICS) and not storage.exists(layout.SWEEP_CONFIG):
        raise UserError(
            f"{storage.root}: no {layout.METRICS} or {layout.SWEEP_CONFIG} here; "
            "point at an experiment's results folder, e.g. results/quickstart"
        )
    return joined_view(read_similarity(storage), read_metrics(storage, models=True))


def joined_view(similarity: pl.DataFrame, metrics: pl.DataFrame) -> pl.DataFrame:
    """`similarity_view` of rows already read: ``similarity`` (`read_similarity`) joined with ``metrics``'
    trials and model entries (`read_metrics(storage, models=True)`)."""
    return attach_trials(with_job_blocks(similarity), metrics)


def with_job_blocks(rows: pl.DataFrame) -> pl.DataFrame:
    """``rows`` with ``block_a`` / ``block_b``, the block of each side's layer, found within its own job.

    Per job, because a layer index means a different layer in another comparison (cross_epoch compares block
    outputs too, another model may be deeper), and because a layer's block depends on its place in the
    network: a layer outside every stage is "stem" before the first and "head" after (`block_of`).
    """
    job = ["kind", "job"]  # a job id names one comparison of one kind (a hand-assembled tree may reuse ids across kinds)
    for side in "ab":
        layers = (
            rows.select(*job, pl.col(f"layer_{side}").alias("layer"), pl.col(f"name_{side}").alias("name"))
            .filter(pl.col("layer") >= 0)
            .unique(subset=[*job, "layer"], keep="first")
            .sort([*job, "layer"])
        )
        blocks = [block for _, one in layers.group_by(job, maintain_order=True) for block in block_of(one["name"].to_list())]
        table = layers.select(
            *job, pl.col("layer").alias(f"layer_{side}"), pl.Series(f"block_{side}", blocks, dtype=pl.String)
        )
        rows = rows.join(table, on=[*job, f"layer_{side}"], how="left", maintain_order="left")
    return rows
