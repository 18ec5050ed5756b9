"""Weights files a user brings: read without running anything in them, matched to a network by name.

Two formats are read. safetensors (``.safetensors``) holds tensors and nothing else. A PyTorch file (``.pt``,
``.pth``, ``.bin``, ``.ckpt``, anything else) is a pickle, and unpickling may call any function the file
names; it is read with ``torch.load(..., weights_only=True)`` only, whose unpickler admits tensors, numbers,
strings and containers and refuses every other global. A file that needs more (a pickled model object, an
optimiser class, a lambda, ``exec``) is refused in one line that says how to convert it where the file is
trusted; nothing in it runs.

RobustBench-format checkpoints are accepted as they come: the state dict bare, or under ``state_dict`` /
``model_state_dict`` (beside an epoch count or metrics), with the ``module.`` prefix DataParallel adds to every
name removed.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from rayrs.errors import UserError

SAFETENSORS_SUFFIX = ".safetensors"
# Where a training script usually puts the state dict in the dict it saves (RobustBench, Lightning-free loops).
STATE_DICT_KEYS = ("state_dict", "model_state_dict")
DATA_PARALLEL_PREFIX = "module."


def _convert_hint(path: Path) -> str:
    target = path.with_suffix(SAFETENSORS_SUFFIX)
    return (
        f"if you trust the file, convert it once to safetensors: python -c \"import torch; "
        f"from safetensors.torch import save_file; save_file(torch.load('{path}', weights_only=False), "
        f"'{target}')\" (adding ['state_dict'] after torch.load(...) if the state dict is nested) and pass {target}"
    )


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in the weights file ``path``, on the CPU: name -> tensor.

    safetensors files by their ``.safetensors`` suffix, every other file as a PyTorch file read with
    ``weights_only=True``; the state dict is unwrapped from ``state_dict`` / ``model_state_dict`` and stripped
    of DataParallel's ``module.`` prefix (`rayrs.weights` module docstring).

    Raises:
        UserError: a missing or unreadable file, a file that needs arbitrary unpickling (refused unread),
            or one whose content is not a state dict.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist; give the path of a .safetensors or PyTorch state dict file")
    if path.suffix == SAFETENSORS_SUFFIX:
        try:
            return _state_dict(load_file(path), path)
        except SafetensorError as err:
            raise UserError(f"weights file {path} is not a readable safetensors file ({err}); write it again") from None
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        wanted = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f"it names {wanted.group(1)}" if wanted else "it holds more than tensors"
        raise UserError(
            f"weights file {path} refused: reading it needs arbitrary unpickling ({what}), which can run code; "
            f"{_convert_hint(path)}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        reason = " ".join(str(err).split())[:200]
        raise UserError(f"weights file {path} is neither safetensors nor a PyTorch file torch.load reads ({reason})") from None
    return _state_dict(content, path)


def _state_dict(content: object, path: Path) -> dict[str, torch.Tensor]:
    """The name -> tensor dict in a loaded file: bare or nested under `STATE_DICT_KEYS`, without ``module.``."""
    if isinstance(content, dict):
        for key in STATE_DICT_KEYS:
            if isinstance(content.get(key), dict):
                content = content[key]
                break
    if not isinstance(content, dict) or not content:
        raise UserError(f"weights file {path} holds no state dict (a dict of name -> tensor, bare or under "
                        f"{' or '.join(STATE_DICT_KEYS)}); save model.state_dict()")
    others = [name for name, value in content.items() if not isinstance(value, torch.Tensor)]
    if others:
        raise UserError(f"weights file {path}: {others[0]!r} is not a tensor ({type(content[others[0]]).__name__}); "
                        f"save model.state_dict() alone, or nest it under 'state_dict'")
    if all(name.startswith(DATA_PARALLEL_PREFIX) for name in content):
        content = {name[len(DATA_PARALLEL_PREFIX):]: value for name, value in content.items()}
    return dict(content)


def load_weights_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Load ``state`` into ``model`` (on the model's device, in its dtypes) and return the model in eval mode.

    Names must match exactly, shapes too; ``source`` (the file) and the first difference are named in one line.

    Raises:
        UserError: missing or unexpected names, or a tensor of another shape.
    """
    expected = model.state_dict()
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of the model's tensors missing, first {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} the model lacks, first {unexpected[0]}")
        raise UserError(f"weights file {source} does not fit the architecture ({'; '.join(parts)}); "
                        f"check the architecture named for it, or the file")
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape:
            raise UserError(f"weights file {source} does not fit the architecture ({name} is "
                            f"{tuple(state[name].shape)} there, {tuple(tensor.shape)} in the model)")
    model.load_state_dict(state)
    return model.eval()


__all__ = ["load_weights_into", "read_weights"]
