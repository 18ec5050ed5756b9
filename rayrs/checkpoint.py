"""Per-epoch checkpoints: weights and optimiser state as safetensors, metadata as JSON. Never pickles.

An epoch's checkpoint is complete when its ``meta.json`` exists: it is written after both tensor files, each
of which is itself written atomically (`rayrs.storage`). A crash therefore leaves either a whole epoch or an
epoch that readers do not see, and training resumes from the last complete one.

Every file says whose it is: ``meta.json`` holds its trial and epoch, and each safetensors file the same in
its header's metadata. A reader checks them, so a file copied or swapped from another trial or epoch is
refused (one line naming it and the way out) instead of silently read as this one's.

What an epoch keeps (the sweep's ``checkpoint:`` section, `rayrs.config.CheckpointConfig`):

- ``model.safetensors``, every epoch: the weights, archived in ``weights_dtype``. In bfloat16 only the floating
  parameters are rounded; buffers keep their dtype (BatchNorm's running statistics stay float32: they are
  under 1% of the bytes, and a running mean large against its running std would lose a visible part of that
  std to bf16's 8-bit mantissa; ``num_batches_tracked`` stays int64).
- ``optimizer.safetensors``, the resume state: the optimiser's tensors, plus, when the archive is bf16, the
  float32 value of every tensor the archive rounded (keys ``weights:<name>``), so that resuming is exact.
  With ``optimizer: last`` only the latest committed epoch has one: epoch e-1's is deleted after epoch e's
  meta.json is written, never before, so a crash at any point leaves a resumable epoch. Readers other than
  `restore` never open it; an epoch without it is complete (its meta.json says so).
"""

from __future__ import annotations

import json
import re
import struct
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from rayrs import storage as layout
from rayrs.errors import UserError
from rayrs.schema import EPOCH_COLUMNS, OPTIONAL_EPOCH_COLUMNS
from rayrs.storage import DamagedFile, Storage

_EPOCH_META = re.compile(r"/epoch_(\d+)/meta\.json$")
WEIGHTS_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_EXACT_WEIGHTS = "weights:"  # key prefix, in the resume state, of the float32 tensors a bf16 archive rounded


def save_epoch(
    storage: Storage, trial: str, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer, meta: dict[str, Any],
    weights_dtype: str = "float32",
) -> None:
    """Write the checkpoint of ``trial`` after ``epoch``: weights (as ``weights_dtype``), the resume state
    (optimiser tensors, and the float32 tensors the archive rounded), then meta.json."""
    weights = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    owner = _owner(trial, epoch)
    archive = archived(model, weights, weights_dtype)
    storage.write_bytes(layout.weights(trial, epoch), save_safetensors(archive, metadata=owner))
    resume = _optimizer_tensors(model, optimizer)
    resume.update({_EXACT_WEIGHTS + name: weights[name] for name in weights if archive[name].dtype != weights[name].dtype})
    storage.write_bytes(layout.optimizer_state(trial, epoch), save_safetensors(resume, metadata=owner))
    storage.write_json(layout.epoch_meta(trial, epoch), {"trial": trial, "epoch": epoch, "weights_dtype": weights_dtype, **meta})


def archived(model: nn.Module, state: dict[str, torch.Tensor], weights_dtype: str) -> dict[str, torch.Tensor]:
    """``state`` (``model``'s state dict, any device, the meta device too) as the archive stores it: floating
    parameters in ``weights_dtype``, buffers as they are (see the module docstring for why)."""
    dtype = WEIGHTS_DTYPES[weights_dtype]
    parameters = {name for name, _ in model.named_parameters()}
    return {name: tensor.to(dtype) if name in parameters and tensor.is_floating_point() else tensor
            for name, tensor in state.items()}


def drop_optimizer_states(storage: Storage, trial: str, epochs: list[int]) -> None:
    """Delete the resume state (``optimizer.safetensors``) of ``trial``'s ``epochs`` where it exists.

    Only for epochs older than a committed one: the caller keeps the latest committed epoch's.
    """
    for epoch in epochs:
        storage.delete_file(layout.optimizer_state(trial, epoch))


def completed_epochs(storage: Storage, trial: str) -> list[int]:
    """Epochs of ``trial`` whose checkpoint is complete (its ``meta.json`` is there), ascending.

    From one recursive listing of the trial's folder, whatever its number of epochs: on an object store one
    LIST, not a HEAD per epoch (`rayrs status` and ``--resume`` over hundreds of trials; `tests/test_scale.py`).
    """
    epochs = []
    for path in storage.list_files(layout.trial_dir(trial), "/meta.json"):
        match = _EPOCH_META.search(path)
        if match and path == layout.epoch_meta(trial, int(match[1])):  # exactly the name save_epoch gives it
            epochs.append(int(match[1]))
    return sorted(epochs)


def read_meta(storage: Storage, trial: str, epoch: int) -> dict[str, Any]:
    """``trial``'s meta.json of ``epoch``, checked to be what `save_epoch` writes: an object of this epoch (and of
    this trial, where it names one: a file copied or swapped from another is refused) with a ``metrics`` object
    whose values are numbers."""
    path = layout.epoch_meta(trial, epoch)
    meta = storage.read_json(path)
    problem = _meta_problem(meta, epoch)
    if problem is None and "trial" in meta and meta["trial"] != trial:  # copied or swapped from another trial
        problem = f"it is of trial {meta['trial']!r}, not {trial!r}"
    if problem is not None:
        raise _not_an_epoch_record(storage, path, trial, problem)
    return meta


def read_metrics(storage: Storage, trial: str, epoch: int) -> dict[str, Any]:
    """The metrics of ``trial``'s ``epoch`` as `rayrs.train` records them: every column of `EPOCH_COLUMNS`
    (those of `OPTIONAL_EPOCH_COLUMNS` may be absent: older checkpoints lack them)."""
    metrics = read_meta(storage, trial, epoch)["metrics"]
    missing = [name for name in EPOCH_COLUMNS if name not in metrics and name not in OPTIONAL_EPOCH_COLUMNS]
    if missing or metrics["epoch"] != epoch:
        problem = f"metric {missing[0]!r} is missing" if missing else f"its metrics are of epoch {metrics['epoch']}"
        raise _not_an_epoch_record(storage, layout.epoch_meta(trial, epoch), trial, problem)
    return metrics


def _meta_problem(meta: Any, epoch: int) -> str | None:
    if not isinstance(meta, dict):
        return f"a JSON {type(meta).__name__}, not an object"
    if meta.get("epoch") != epoch:
        return f"it is of epoch {meta.get('epoch')!r}, not {epoch}" if "epoch" in meta else "no epoch"
    metrics = meta.get("metrics")
    if not isinstance(metrics, dict):
        return "no metrics"
    for name, value in metrics.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"metric {name!r} is not a number"
    return None


def _not_an_epoch_record(storage: Storage, path: str, trial: str, problem: str) -> UserError:
    return DamagedFile(
        f"{storage.full_path(path)} is not an epoch record of rayrs ({problem}); "
        f"rerun the sweep with --redo {trial} to retrain that trial"
    )


def load_weights(storage: Storage, trial: str, epoch: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The state dict of ``trial`` after ``epoch``, on ``device``; a bf16 archive's tensors come back float32."""
    state = _read_tensors(storage, layout.weights(trial, epoch), trial, epoch, device)
    return {name: tensor.float() if tensor.dtype == torch.bfloat16 else tensor for name, tensor in state.items()}


def load_model_weights(storage: Storage, trial: str, epoch: int, model: nn.Module) -> None:
    """Load ``trial``'s weights after ``epoch`` into ``model`` (on its device).

    A checkpoint of another architecture (names or shapes that differ) is one line naming the file and the
    first difference, not torch's error listing every tensor.
    """
    path = layout.weights(trial, epoch)
    state = _read_tensors(storage, path, trial, epoch, next(model.parameters()).device)
    expected = model.state_dict()
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    reshaped = [name for name in expected if name in state and state[name].shape != expected[name].shape]
    if missing or unexpected or reshaped:
        if reshaped:
            name = reshaped[0]
            difference = f"{name} is {tuple(state[name].shape)} there, {tuple(expected[name].shape)} in the trial's model"
        else:
            difference = (f"{len(missing)} of the model's tensors missing, e.g. {missing[0]}" if missing
                          else f"{len(unexpected)} tensors the model lacks, e.g. {unexpected[0]}")
        raise UserError(
            f"checkpoint {storage.full_path(path)} holds the weights of another model ({difference}); "
            f"rerun the sweep with --redo {trial} to retrain that trial"
        )
    model.load_state_dict(state)


def restore(
    storage: Storage, trial: str, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Load weights and resume state of ``epoch`` into ``model``/``optimizer``; return its meta.json.

    The weights are exactly those trained: from the archive, overwritten by the resume state's float32 copies
    of whatever a bf16 archive rounded.
    """
    device = next(model.parameters()).device
    load_model_weights(storage, trial, epoch, model)
    if not storage.exists(layout.optimizer_state(trial, epoch)):
        raise UserError(
            f"{storage.full_path(layout.optimizer_state(trial, epoch))} is missing: epoch {epoch} is {trial}'s latest "
            f"complete epoch, and training cannot resume exactly without its optimiser state (with checkpoint.optimizer: "
            f"last only the latest epoch keeps one); rerun the sweep with --redo {trial} to retrain that trial"
        )
    state = _read_tensors(storage, layout.optimizer_state(trial, epoch), trial, epoch, device)
    by_name = dict(model.named_parameters())
    exact = {key.removeprefix(_EXACT_WEIGHTS): tensor for key, tensor in state.items() if key.startswith(_EXACT_WEIGHTS)}
    if exact:
        model.load_state_dict(exact, strict=False)  # copies into the parameters, which stay float32
    for key, tensor in state.items():
        if key.startswith(_EXACT_WEIGHTS):
            continue
        name, slot = key.rsplit(":", 1)
        optimizer.state[by_name[name]][slot] = tensor
    return read_meta(storage, trial, epoch)


def _optimizer_tensors(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Optimiser state keyed ``<parameter name>:<slot>`` (e.g. SGD's momentum_buffer), tensors only."""
    names = {parameter: name for name, parameter in model.named_parameters()}
    tensors = {}
    for parameter, slots in optimizer.state.items():
        for slot, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{names[parameter]}:{slot}"] = value.detach().contiguous().cpu()
    return tensors


def _owner(trial: str, epoch: int) -> dict[str, str]:
    """The safetensors metadata that says whose checkpoint a file is (`stamp`)."""
    return stamp({"epoch": str(epoch), "trial": trial})


def stamp(record: dict[str, str]) -> dict[str, str]:
    """``record`` as safetensors metadata that is the same bytes in every run: one key holding sorted JSON.

    safetensors writes its metadata from a hash map, so two keys come out in either order from one file to the
    next, and two runs that computed the same tensors would write different files. Read back by `read_stamp`.
    """
    return {"rayrs": json.dumps(record, sort_keys=True)}


def read_stamp(raw: bytes) -> dict[str, str]:
    """The record `stamp` put in a safetensors file's header (8 bytes of little-endian header length, then
    JSON); a file written before stamps gets its metadata as it is."""
    (length,) = struct.unpack("<Q", raw[:8])
    metadata = json.loads(raw[8 : 8 + length]).get("__metadata__") or {}
    return json.loads(metadata["rayrs"]) if "rayrs" in metadata else metadata


def _read_tensors(storage: Storage, path: str, trial: str, epoch: int, device: torch.device | str) -> dict[str, torch.Tensor]:
    """The tensors of an existing checkpoint file, checked to be ``trial``'s at ``epoch``.

    A missing file is `MissingFile` ("is missing"); "unreadable" is said only of a file that exists and is
    damaged. Files written before checkpoints carried their owner (no metadata) are read as they are.
    """
    raw = storage.read_bytes(path)  # MissingFile when absent
    try:
        tensors = load_safetensors(raw)
        owner = read_stamp(raw)
    except (SafetensorError, ValueError, struct.error) as error:
        raise DamagedFile(
            f"checkpoint {storage.full_path(path)} is unreadable ({error}); "
            f"rerun the sweep with --redo {trial} to retrain that trial"
        ) from None
    if "trial" in owner and (owner.get("trial"), owner.get("epoch")) != (trial, str(epoch)):
        raise DamagedFile(
            f"checkpoint {storage.full_path(path)} holds trial {owner['trial']!r}'s epoch {owner['epoch']}, not "
            f"trial {trial!r}'s epoch {epoch} (copied or swapped?); rerun the sweep with --redo {trial} to retrain that trial"
        )
    return {name: tensor.to(device) for name, tensor in tensors.items()}
