"""A results folder from Python: a trained trial's checkpoint as a model, in one call (`load_model`).

The network is the one training built (`rayrs.sources.TrialModel`: the architecture from the trial's
``trial.json``, sized by its dataset's test split), with the weights of one epoch (safetensors, read through
`rayrs.checkpoint`, which refuses a file of another trial or architecture in one line).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rayrs import checkpoint
from rayrs import storage as layout
from rayrs.catalog import read_trial_record
from rayrs.config import TrialConfig
from rayrs.errors import UserError
from rayrs.sources import TrialModel, load_probe_data
from rayrs.storage import Storage


def load_model(
    results: str | Path | Storage, trial: str, epoch: int | None = None, device: torch.device | str = "cpu"
) -> nn.Module:
    """Trial ``trial`` of the experiment at ``results`` (a folder or URI) after ``epoch`` (default: its last
    finished epoch), as an eval-mode ``nn.Module`` on ``device``.

    The model takes (n, C, H, W) float images in [0, 1] (its input normalisation is inside it) and returns
    (n, classes) logits. Its dataset's test split is read to size it as training did (for digits, CIFAR-10 and
    the folders, at the ``data.root`` the trial was trained with). A trial or epoch that is not there is a
    `UserError` naming what is.
    """
    storage = results if isinstance(results, Storage) else Storage(str(results))
    storage.check()
    trials = storage.list_dir(layout.TRIALS_DIR)
    if trial not in trials:
        raise UserError(
            f"{storage.full_path(layout.TRIALS_DIR)}: no trial {trial!r}; its trials: {', '.join(trials) or 'none'}"
        )
    config = TrialConfig.model_validate(read_trial_record(storage, trial)["config"])
    epochs = checkpoint.completed_epochs(storage, trial)
    if not epochs:
        raise UserError(f"{storage.full_path(layout.trial_dir(trial))}: trial {trial!r} has no finished epoch yet")
    if epoch is None:
        epoch = epochs[-1]
    elif epoch not in epochs:
        raise UserError(
            f"{storage.full_path(layout.trial_dir(trial))}: no checkpoint of epoch {epoch}; "
            f"its finished epochs: {_ranges(epochs)}"
        )
    return TrialModel(storage, trial, config, load_probe_data(config, device)).load(epoch)


def _ranges(epochs: list[int]) -> str:
    """[1, 2, 3, 5] -> "1-3, 5"."""
    spans: list[list[int]] = []
    for epoch in epochs:
        if spans and epoch == spans[-1][1] + 1:
            spans[-1][1] = epoch
        else:
            spans.append([epoch, epoch])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


__all__ = ["load_model"]
