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

The WideResNets of the paper's code (``models/wide_resnet.py``) and of RobustBench's CIFAR model zoo name their
tensors differently from rayrs's ``wrn`` (``block1.layer.0.conv1.weight``, ``convShortcut``, a final ``bn1``)
but compute the same function: such a file is loaded into ``wrn`` by renaming (`PAPER_WRN_NAMES`), after which
every name and shape must fit as for any file.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import nn

from rayrs.errors import UserError
from rayrs.models import WideResNet

SAFETENSORS_SUFFIX = ".safetensors"
# Where a training script usually puts the state dict in the dict it saves (RobustBench, Lightning-free loops).
STATE_DICT_KEYS = ("state_dict", "model_state_dict")
DATA_PARALLEL_PREFIX = "module."

# The paper's WideResNet (its models/wide_resnet.py; RobustBench's CIFAR WideResNets use the same names) -> rayrs's
# `wrn`, one (pattern, replacement) per difference; the first pattern matching the whole name applies, a name no
# pattern matches (conv1.*, fc.*) is the same in both. A replacement of None drops the tensor.
# Both blocks compute bn1 -> relu -> conv1 -> bn2 -> relu -> conv2, plus x, or plus a 1x1 conv of relu(bn1(x))
# where channels change (the paper's `equalInOut` false, which in a WRN is exactly where rayrs's shape changes).
PAPER_WRN_NAMES: tuple[tuple[re.Pattern[str], str | None], ...] = (
    # NetworkBlock keeps its blocks in a Sequential named `layer`; the 1x1 shortcut conv is `convShortcut`.
    (re.compile(r"(block\d+)\.layer\.(\d+)\.convShortcut\.(.+)"), r"\1.\2.shortcut.\3"),
    (re.compile(r"(block\d+)\.layer\.(\d+)\.(.+)"), r"\1.\2.\3"),
    # The final BatchNorm before pooling (rayrs: `bn`; inside blocks both say bn1).
    (re.compile(r"bn1\.(.+)"), r"bn.\1"),
    # TRADES's WideResNet (and RobustBench's with sub_block1=True) builds a second first group that its forward
    # never runs: its tensors do not change the network's function.
    (re.compile(r"sub_block1\..+"), None),
)
# Which architectures read files written under another code's names: rayrs's class -> (whose names, the table).
FOREIGN_NAMES: dict[type[nn.Module], tuple[str, tuple[tuple[re.Pattern[str], str | None], ...]]] = {
    WideResNet: ("the paper's / RobustBench's WideResNet", PAPER_WRN_NAMES),
}


def _convert_hint(path: Path) -> str:
    target = path.with_suffix(SAFETENSORS_SUFFIX)
    return (
        f"if you trust the file, convert it once to safetensors: python -c \"import torch; "
        f"from safetensors.torch import save_file; save_file(torch.load('{path}', weights_only=False), "
        f"'{target}')\" (adding ['state_dict'] after torch.load(...) if the state dict is nested) and pass {target}"
    )


def read_weights(path: str | Path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """The state dict in the weights file ``path``, on the CPU: name -> tensor.

    safetensors files by their ``.safetensors`` suffix, every other file as a PyTorch file read with
    ``weights_only=True``; the state dict is unwrapped from ``state_dict`` / ``model_state_dict`` and stripped
    of DataParallel's ``module.`` prefix (`rayrs.weights` module docstring).

    ``sha256``: the hex SHA-256 the file had when the sweep was planned (`rayrs.entries`), or None. The file is
    read once, into memory, and both hashed and parsed from those bytes: a file replaced after planning is
    refused, and one replaced between a check and a second read cannot slip through (there is no second read).

    Raises:
        UserError: a missing or unreadable file, a file that needs arbitrary unpickling (refused unread),
            one whose content is not a state dict, or one whose bytes are not those of ``sha256``.
    """
    path, data = _file_bytes(path)
    if sha256 is not None and (found := hashlib.sha256(data).hexdigest()) != sha256:
        raise UserError(f"weights file {path} changed after the sweep was planned (SHA-256 {found[:12]}..., planned "
                        f"{sha256[:12]}...): put the planned file back, or run the sweep again to compare the new one")
    return _parse_weights(path, data)


def read_weights_hashed(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """`read_weights`'s state dict and the hex SHA-256 of the very bytes it was parsed from (one read: what a
    sweep plans with, `rayrs.entries`). Raises as `read_weights`."""
    path, data = _file_bytes(path)
    return _parse_weights(path, data), hashlib.sha256(data).hexdigest()


def _file_bytes(path: str | Path) -> tuple[Path, bytes]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist; give the path of a .safetensors or PyTorch state dict file")
    return path, path.read_bytes()


def _parse_weights(path: Path, data: bytes) -> dict[str, torch.Tensor]:
    """The state dict in ``data``, the bytes of the weights file ``path`` (`read_weights`)."""
    if path.suffix == SAFETENSORS_SUFFIX:
        try:
            return _state_dict(load_safetensors(data), path)
        except SafetensorError as err:
            raise UserError(f"weights file {path} is not a readable safetensors file ({err}); write it again") from None
    try:
        content = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
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

    Names must match exactly, shapes too, after renaming a file written under another code's names
    (`FOREIGN_NAMES`: the paper's WideResNet into rayrs's ``wrn``); ``source`` (the file) and the first
    difference are named in one line.

    Raises:
        UserError: missing or unexpected names, or a tensor of another shape.
    """
    expected = model.state_dict()
    state, source = _renamed(model, state, expected, source)
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


def _renamed(model: nn.Module, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
             source: str) -> tuple[dict[str, torch.Tensor], str]:
    """``state`` under ``model``'s names where it uses another code's (`FOREIGN_NAMES`), and how to name it.

    Nothing changes when the names already fit or no table applies; when one does, ``source`` says so, so that
    a mismatch left after renaming is reported under the names the model expects.
    """
    if state.keys() == expected.keys() or type(model) not in FOREIGN_NAMES:
        return state, source
    whose, table = FOREIGN_NAMES[type(model)]
    renamed: dict[str, torch.Tensor] = {}
    changed = False
    for name, tensor in state.items():
        new = _rename(name, table)
        changed = changed or new != name
        if new is None:
            continue
        if new in renamed:
            raise UserError(f"weights file {source} does not fit the architecture (two of its tensors become "
                            f"{new} under {whose} names); check the file")
        renamed[new] = tensor
    if not changed:
        return state, source
    return renamed, f"{source} (read with {whose} names)"


def _rename(name: str, table: tuple[tuple[re.Pattern[str], str | None], ...]) -> str | None:
    """``name`` after the first entry of ``table`` whose pattern matches all of it (None: dropped); else as is."""
    for pattern, replacement in table:
        match = pattern.fullmatch(name)
        if match:
            return None if replacement is None else match.expand(replacement)
    return name


__all__ = ["load_weights_into", "read_weights"]
