"""rayrs: Ray-distributed sweeps for representation similarity of robust networks.

Stages, one module each: `rayrs.config` (sweep files), `rayrs.data`, `rayrs.models`, `rayrs.attacks`,
`rayrs.sources` (the models and probes that training and comparisons share), `rayrs.train`, `rayrs.checkpoint`,
`rayrs.similarity`, `rayrs.catalog`, `rayrs.sweep` (the Ray wiring),
`rayrs.storage` (where everything lives) and `rayrs.cli`.
"""

import os

# Ray workers run in the driver's own environment. Ray's `uv run` hook would instead rebuild the uv environment
# in every worker and upload the working directory (results included); trials must not chdir into Ray's trial
# folders either, so that relative dataset paths keep their meaning. Tune's console tables give way to rayrs's
# own progress bars (Tune's legacy reporter is silent at verbose=0; the new one is not).
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


# The notebook entry points (README, "Python"): name -> the module defining it. Imported on first use, so that
# `import rayrs` (the CLI's start) stays light: they import torch, the similarity stage, Polars.
_ENTRY_POINTS = {
    "compare": "rayrs.similarity.compare",  # two models' layers on images, without Ray
    "load_model": "rayrs.results",  # a trial's checkpoint as a model
    "similarity_view": "analysis.view",  # the similarity rows with blocks and each model's training
}


def __getattr__(name: str):
    if name in _ENTRY_POINTS:
        import importlib

        return getattr(importlib.import_module(_ENTRY_POINTS[name]), name)
    raise AttributeError(f"module 'rayrs' has no attribute {name!r}")


__all__ = list(_ENTRY_POINTS)
