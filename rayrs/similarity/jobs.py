"""Comparison jobs: what to compare (checkpoints x probes), grouped into tasks, computed anywhere, into Parquet.

The similarity stage's public surface, in three rooms: `rayrs.similarity.plan` (which jobs and tasks a
sweep asks for, and their ids), `rayrs.similarity.run` (a task's jobs computed together, streaming over
probe minibatches and views) and `rayrs.similarity.rows` (a job's Parquet rows). The models come from a
model source and the probe images from a probe source (`rayrs.sources`).
"""

from rayrs.models import model_layers
from rayrs.similarity.plan import (
    PLANNERS,
    TRANSFER_ACCURACY,
    ModelRef,
    SimilarityJob,
    SimilarityTask,
    plan_jobs,
    plan_tasks,
)
from rayrs.similarity.probes import ADVERSARIAL, BENIGN
from rayrs.similarity.rows import OUTPUT_LAYER, cross_epoch_table, similarity_table
from rayrs.similarity.run import MODEL_CACHE, JobDone, TaskProgress, _TaskRun, load_checkpoint_model, run_job, run_task

# `_TaskRun` too: tests count its work by patching its methods.
__all__ = [
    "ADVERSARIAL",
    "BENIGN",
    "MODEL_CACHE",
    "OUTPUT_LAYER",
    "PLANNERS",
    "TRANSFER_ACCURACY",
    "JobDone",
    "ModelRef",
    "SimilarityJob",
    "SimilarityTask",
    "TaskProgress",
    "_TaskRun",
    "cross_epoch_table",
    "load_checkpoint_model",
    "model_layers",
    "plan_jobs",
    "plan_tasks",
    "run_job",
    "run_task",
    "similarity_table",
]
