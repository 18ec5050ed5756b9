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


def __getattr__(name: str):
    # `rayrs.compare` imports torch and the similarity stage on first use, so `import rayrs` (the CLI's
    # start) stays light.
    if name == "compare":
        from rayrs.similarity.compare import compare

        return compare
    raise AttributeError(f"module 'rayrs' has no attribute {name!r}")


__all__ = ["compare"]
