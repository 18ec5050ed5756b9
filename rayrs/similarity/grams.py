"""Per-layer Gram matrices formed inside forward hooks.

A layer's activation becomes its U-centred (n, n) Gram the moment the layer returns, so a forward pass holds
O(layers * n^2) floats instead of every activation (hundreds of MB a layer at n = 1024 on a WRN-28-10).
Forming the Gram inside the hook also captures an activation before a later in-place op overwrites it:
BatchNorm followed by ReLU(inplace=True) records the batch-norm output, not the post-ReLU values.
"""

import ctypes
import sys
from collections.abc import Sequence
from functools import cache
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from rayrs.similarity.cka import MIN_EXAMPLES, Int8Scratch, centered_gram, u_center

__all__ = ["GramRecorder", "LayerRef", "channels_last", "layer_grams", "pool_features", "reuse_freed_memory"]


class LayerRef(Protocol):
    """What the recorder needs of a layer (rayrs.models.Layer has it).

    index: slot of this layer's Gram in `GramRecorder.take()`; a layer list's indices are 0..L-1.
    module_name: dotted name of the module in `model.named_modules()` ("" is the model itself).
    call: which call of that module in one forward pass (0 for a module that runs once; a module reused k
        times, like torchvision BasicBlock's `relu`, gives k layers with call 0..k-1).
    """

    @property
    def index(self) -> int: ...

    @property
    def module_name(self) -> str: ...

    @property
    def call(self) -> int: ...


def pool_features(output: Tensor) -> Tensor:
    """A layer's output as its features under ``cka.pool_features``: a 4-D map (n, C, H, W) spatially averaged
    to (n, C), as the paper code's ``register_hooks(..., pool=True)`` does (``adaptive_avg_pool2d`` to 1 x 1,
    "used for large resolution images"); any other output as it is."""
    return output.mean(dim=(2, 3)) if output.dim() == 4 else output


class GramRecorder:
    """Context manager: forward hooks that turn each listed layer's output into a U-centred Gram.

    model: the network; layers: the layers to record, indices a permutation of 0..L-1.
    Inside the `with` block, each forward pass of `model` on n examples fills an (L, n, n) float32 buffer:
    slot `layer.index` = u_center(centered_gram(output of the `layer.call`-th call of `layer.module_name`)),
    with ``pool``, of that output spatially averaged first (`pool_features`).
    Calls are counted per module and the counts restart at every call of `model`. Gram computation is
    never recorded by autograd. On exit every hook is removed.
    """

    def __init__(self, model: nn.Module, layers: Sequence[LayerRef], pool: bool = False) -> None:
        self.model = model
        self.pool = pool
        self.layers = list(layers)
        indices = sorted(layer.index for layer in self.layers)
        if indices != list(range(len(self.layers))):
            raise ValueError(
                f"GramRecorder: layer indices must be 0..{len(self.layers) - 1}, each once; got {indices}. "
                "Renumber the layers you pass."
            )
        # module name -> {call: slot}
        self._routes: dict[str, dict[int, int]] = {}
        for layer in self.layers:
            calls = self._routes.setdefault(layer.module_name, {})
            if layer.call in calls:
                raise ValueError(
                    f"GramRecorder: layers {calls[layer.call]} and {layer.index} are both call {layer.call} "
                    f"of module {layer.module_name!r}"
                )
            calls[layer.call] = layer.index
        self._modules: dict[str, nn.Module] = {}
        for name in self._routes:
            try:
                self._modules[name] = model.get_submodule(name)
            except AttributeError:
                raise ValueError(
                    f"GramRecorder: the model has no module named {name!r}; layer names come from "
                    "model.named_modules()"
                ) from None
        self._handles: list[RemovableHandle] = []
        self._counts: dict[str, int] = {}
        self._grams: Tensor | None = None
        self._filled: list[bool] = []
        self._scratch = Int8Scratch()

    def __enter__(self) -> "GramRecorder":
        if self._handles:
            raise RuntimeError("GramRecorder is already active")
        self._reset()
        self._handles.append(self.model.register_forward_pre_hook(lambda module, args: self._reset()))
        for name, module in self._modules.items():
            self._handles.append(module.register_forward_hook(self._make_hook(name)))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._scratch = Int8Scratch()  # let the largest layer's int8 slices go

    def take(self) -> Tensor:
        """(L, n, n) float32 U-centred Grams of the last forward pass, slot = layer.index; then reset.

        For a pass of n < 4 examples (too few for the unbiased HSIC, which skips them) the slots hold zeros.
        """
        missing = [layer for layer, filled in zip(self._slot_layers(), self._filled) if not filled]
        if self._grams is None or missing:
            described = ", ".join(f"{layer.module_name!r} call {layer.call}" for layer in missing)
            raise RuntimeError(
                f"GramRecorder.take: no Gram for {described or 'any layer'}; run a forward pass of the model "
                "inside the `with` block first (and check each module runs as often as its layers' calls say)"
            )
        grams = self._grams
        self._reset()
        return grams

    def _slot_layers(self) -> list[LayerRef]:
        return sorted(self.layers, key=lambda layer: layer.index)

    def _reset(self) -> None:
        self._counts = dict.fromkeys(self._routes, 0)
        self._grams = None
        self._filled = [False] * len(self.layers)

    def _make_hook(self, name: str):
        routes = self._routes[name]

        def hook(module: nn.Module, args: object, output: object) -> None:
            call = self._counts[name]
            self._counts[name] = call + 1
            slot = routes.get(call)
            if slot is None:
                return
            if not isinstance(output, Tensor):
                raise TypeError(
                    f"GramRecorder: module {name!r} returned {type(output).__name__}, not a Tensor; "
                    "record a module whose output is one tensor"
                )
            n = output.shape[0]
            if self._grams is None:
                self._grams = torch.zeros(len(self.layers), n, n, dtype=torch.float32, device=output.device)
            elif self._grams.shape[-1] != n:
                raise RuntimeError(
                    f"GramRecorder: module {name!r} output has {n} examples, other layers had {self._grams.shape[-1]}"
                )
            if n >= MIN_EXAMPLES:
                with torch.no_grad():
                    features = pool_features(output.detach()) if self.pool else output.detach()
                    self._grams[slot] = u_center(centered_gram(features, self._scratch))
            self._filled[slot] = True

        return hook


def channels_last(inputs: Tensor) -> Tensor:
    """Images (n, C, H, W) in channels-last memory order, the layout a probing forward pass should use.

    Convolutions keep the layout of their input, and on it they run faster: a WRN-16-2 forward pass on 1024
    CIFAR-sized images takes 2.4 s instead of 3.2 s on 2 CPU cores. A Gram is blind to the order of the
    features, so `flatten_examples` then reads each activation in its memory order, without a copy.
    Other inputs are returned as they are.
    """
    return inputs.contiguous(memory_format=torch.channels_last) if inputs.dim() == 4 else inputs


def layer_grams(model: nn.Module, layers: Sequence[LayerRef], inputs: Tensor, pool: bool = False) -> Tensor:
    """U-centred Grams of `layers` for one batch: (L, n, n) float32 on the model's device.

    inputs: (n, ...) a batch the model accepts. pool: spatially average 4-D outputs first (`pool_features`).
    The forward pass runs under torch.no_grad() with the model in eval mode; every submodule's train/eval mode
    is restored afterwards (frozen parts stay as they were).
    """
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad(), GramRecorder(model, layers, pool) as recorder:
            model(channels_last(inputs))
            return recorder.take()
    finally:
        for module, training in modes.items():
            module.training = training


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
# Free memory that glibc may keep at the top of the heap before it gives it back to the system.
_KEPT_FREE_BYTES = 1 << 30


@cache
def reuse_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for the next allocation instead of unmapping it. Process-wide.

    Why: glibc serves every allocation above 32 MB with a fresh mmap and unmaps it on free, so each activation
    of a probing forward pass (128 MB for a WRN-16-2 layer at n = 1024, 44 of them) costs page faults and
    zeroing again: on 2 CPU cores a WRN-16-2 pass with its Grams takes about 4.5 s that way and 3.8 s with
    freed memory reused (PyTorch's CPU performance guide suggests preloading jemalloc or tcmalloc for the
    same reason; this needs no preload). rayrs calls it in processes that compute similarities on a CPU.
    Freed memory then stays with the process, which keeps the RSS of its largest pass (only more than 1 GiB
    free at the top of the heap goes back). Returns whether it took effect (glibc Linux only).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _KEPT_FREE_BYTES) == 1
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
