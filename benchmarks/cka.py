"""rayrs's all-pairs linear CKA against the public CKA libraries, side by side in one run.

Usage (from the repository root):
    uv run --group bench python benchmarks/cka.py --quick                  # ~10 min on 2 idle CPU cores
    uv run --group bench python benchmarks/cka.py                          # WRN-16-2, n = 1024, CPU (~1 hour)
    uv run --group bench python benchmarks/cka.py --device cuda --depth 28 --width 10 [--bf16]
    uv run --group bench python benchmarks/cka.py --model resnet50    # torchvision ResNet-50, 224 px, n = 256
    uv run --group bench python benchmarks/cka.py --model vit_s       # timm ViT-S/16 blocks, 224 px, n = 256

What is measured (same model, same probe inputs, same device; every measurement runs in its own subprocess,
started as `benchmarks/cka.py --measure NAME --config JSON`, so its peak memory is its own):

  profile              the forward pass alone; forward + a bare float32 X X^T per layer (no centring, no
                       HSIC: the float32 floor); the pieces of one rayrs Gram and of one MinibatchCKA.update
  floor                forward + rayrs's Grams: `layer_grams` (centring, Gram, U-centring in hooks), no HSIC
  rayrs                `layer_grams` + `MinibatchCKA(groups=JACKKNIFE_GROUPS).update(g, g, group_of)` +
                       `compute` + `std_error`: the cross_layer CKA with every value's standard error, as a
                       comparison job computes it (group_of: each example's position in the probe modulo G)
  pytorch_cka          pytorch-cka `compute_cka(model, model, loader)`: vectorised, keeps every activation
  torch_cka            torch-cka `CKA(model, model).compare(loader)`: a loop over layer pairs
  reference            float64 activations, float64 Grams and the unbiased HSIC written out term by term
                       (Song et al. 2012, eq. 5), the biased HSIC (Gretton et al. 2005) for contrast, and each
                       peer's own HSIC code fed the float64 Grams
  rayrs_cross_epoch    10 checkpoints, every epoch pair i < j, every layer pair: Grams once per checkpoint
                       per minibatch, then one `MinibatchCKA.update(grams_i, grams_j, group_of)` per epoch pair
                       (with the jackknife, as above)
  pytorch_cka_cross_epoch   the same workload, one `compute_cka(ckpt_i, ckpt_j, loader)` per epoch pair

On a CPU every measurement's process first runs `rayrs.similarity.grams.reuse_freed_memory` (glibc keeps
freed memory for reuse instead of unmapping it), as rayrs's own CPU workers do, so the allocator is not what
separates the contenders.

The model is a seeded random-init network in eval mode; the probe is seeded uniform [0, 1] pixels (n, 3, 32, 32),
or (n, 3, 224, 224) for the large models (`--model`, `MODEL_CASES`): torchvision's ResNet-50 with the paper's
layer types (~160 layers) and timm's ViT-S/16 with its transformer blocks' outputs (``name:blocks.*``), at
n = 256 by default and without the cross_epoch workloads (10 checkpoints of a large model) unless --only asks.
A peer that keeps every activation is not started where those activations would not fit in the memory the
machine has available (ResNet-50 at 224 px holds ~28M features an example): its row says so, with the figure.
Checkpoints for the cross_epoch workload are a seeded random walk from that model: checkpoint e adds e steps of
Gaussian noise, each step 5% of every weight tensor's standard deviation, so nearby epochs are similar.

Rounds (`benchmarks/timing.py`). The contenders run in `--rounds` rounds (default 3), each once a round, in the
order of `ROUND_ORDER` and reversed every other round, each in its own process as above, so that every
headline ratio is a ratio of two measurements taken in the same round, next to each other (or one apart, see
ROUND_ORDER), under the same load; the headline keys are medians of those per-round ratios, and every timed
figure is reported as {median, min, max, repeats}. A one-call contender times one call after one untimed
warm-up call in its process. torch-cka's layer grid (~10 min on 2 cores) and pytorch-cka's cross_epoch workload
(~25 min) are too slow to run whole every round: each round times a sample of rows / epoch pairs (all of them
once over the rounds by default; `--torch-cka-rows` / `--pytorch-cka-epoch-pairs` per round on request) and
scales it to the whole grid (`timing.round_sample`); that round's estimate is what is paired with rayrs's
time of the same round. The float64 `reference` runs once, after the rounds (it is an accuracy check).

The LAST line printed is one JSON object (see `summarise`); above it a table of times and peak memory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from timing import (
    MIN_ROUNDS,
    ORDER_NOTE,
    Ratio,
    check_rounds,
    describe,
    emit,
    figure_spreads,
    headlines,
    machine,
    round_sample,
    run_rounds,
)

RESULT_MARK = "@@cka-bench-result "
CHECKPOINTS = 10
CHECKPOINT_STEP = 0.05  # each random-walk step: this fraction of a weight tensor's std
QUICK_TORCH_CKA_ROWS = 2
QUICK_WORKLOAD_N = 512
QUICK_PYTORCH_CKA_EPOCH_PAIRS = 3
JACKKNIFE_REPEATS = 5  # updates with and without the jackknife timed to tell what it adds (`jackknife_seconds`)
# The large models of issue 16 (`--model`): architecture (`rayrs.sources.build_architecture`), probe image
# side, compared layers (`rayrs.models.comparable_layers` spec) and the default n.
MODEL_CASES: dict[str, dict[str, Any]] = {
    "resnet50": {"arch": "torchvision:resnet50", "image_size": 224,
                 "layers": ["conv", "bn", "act", "pool", "linear"], "n": 256},
    "vit_s": {"arch": "timm:vit_small_patch16_224", "image_size": 224, "layers": ["name:blocks.*"], "n": 256},
}
# A peer is not started where the activations it keeps would take more than this share of MemAvailable.
PEER_MEMORY_SHARE = 0.8
GOALS = {  # name: (goal, "ge" | "le")
    "speedup_vs_torch_cka": (50.0, "ge"),
    "time_over_forward_gram": (1.1, "le"),
    "speedup_vs_pytorch_cka": (1.0, "ge"),
    "speedup_vs_pytorch_cka_cross_epoch": (5.0, "ge"),
    "peak_rss_ratio_vs_pytorch_cka": (0.5, "le"),
    "max_abs_diff_vs_reference": (1e-4, "le"),
}


# ---------------------------------------------------------------------------------------------------------------
# Child side: one measurement per process. Everything that imports torch lives below `_child`.
# ---------------------------------------------------------------------------------------------------------------


class Bench:
    """What every measurement shares: the model, the probe minibatches and the compared layers.

    probe: list of (n, 3, 32, 32) float32 minibatches on the device. layers: rayrs's comparable_layers (L of
    them, execution order). peer_layers: the layers the peers can name, one per module (a peer hooks a module
    by its path and keeps the output of its LAST call); peer_index[k] is the rayrs index of peer layer k.
    """

    def __init__(self, cfg: dict[str, Any], *, n: int, batches: int) -> None:
        import torch

        from rayrs.models import PAPER_LAYER_TYPES, comparable_layers
        from rayrs.sources import build_architecture

        self.cfg = cfg
        self.torch = torch
        self.device = torch.device(cfg["device"])
        torch.manual_seed(cfg["seed"])
        size = cfg.get("image_size") or 32
        self.model = build_architecture(
            cfg["arch"], num_classes=10, in_channels=3, depth=cfg["depth"], width=cfg["width"], image_size=size,
        ).to(self.device).eval()
        generator = torch.Generator().manual_seed(cfg["seed"] + 1)
        probe = torch.rand(cfg["batches"] * cfg["n"], 3, size, size, generator=generator)  # same pixels for any n
        # Every contender gets these same tensors, as a data loader gives them (N, C, H, W). rayrs's probing
        # forward pass turns them channels-last itself (`rayrs.similarity.grams.channels_last`), part of its
        # method; the peers' hooks flatten with reshape, which would copy a channels-last activation.
        self.probe = [x.to(self.device) for x in probe[: n * batches].split(n)]
        self.n = n
        self.layers = comparable_layers(self.model, self.probe[0][:1], cfg.get("layers") or PAPER_LAYER_TYPES)
        last_call: dict[str, Any] = {}
        for layer in self.layers:
            last_call[layer.module_name] = layer  # dict keeps first-seen order, value = last call
        self.peer_layers = list(last_call.values())
        self.peer_names = [layer.module_name for layer in self.peer_layers]
        self.peer_index = [layer.index for layer in self.peer_layers]
        self.cpu_seconds: float | None = None  # CPU time (all threads) of the last `timed` call

    def peer_activation_bytes(self) -> int:
        """Bytes of float32 activations a peer keeps for one minibatch: every peer layer's output, n examples."""
        sizes: dict[int, int] = {}
        handles = hook_layers(self.model, self.peer_layers, lambda slot, output: sizes.__setitem__(slot, output[0].numel()))
        with self.torch.no_grad():
            self.model(self.probe[0][:1])
        for handle in handles:
            handle.remove()
        return sum(sizes.values()) * self.n * 4

    def peer_fits(self) -> str | None:
        """None where a peer's kept activations fit in `PEER_MEMORY_SHARE` of MemAvailable, else why not."""
        if self.device.type != "cpu":
            return None
        needed, available = self.peer_activation_bytes(), _mem_available_bytes()
        if available is None or needed <= PEER_MEMORY_SHARE * available:
            return None
        return (f"not run: it keeps every layer's activation, {needed / 2**30:.1f} GiB at n = {self.n}, and "
                f"{available / 2**30:.1f} GiB are available")

    def autocast(self):
        return self.torch.autocast(self.device.type, dtype=self.torch.bfloat16, enabled=self.cfg["bf16"])

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def warm_up(self) -> None:
        """One untimed forward (and GEMM) so that library set-up, and growing the heap to a forward pass's
        size, is not billed to the first measurement."""
        torch = self.torch
        with torch.no_grad(), self.autocast():
            self.model(self.probe[0])
        a = torch.randn(256, 256, device=self.device)
        a @ a.T
        self.sync()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def timed(self, fn: Callable[[], Any], warmup: int = 0) -> tuple[float, Any]:
        """Wall seconds of one call of fn after `warmup` untimed calls (device synchronised), and its result.

        One timed call per process: the repeats are the rounds (module docstring). The call's CPU seconds (all
        threads) go to self.cpu_seconds.
        """
        for _ in range(warmup):
            fn()  # its result is dropped before the timed call, so peaks do not stack
        self.sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        result = fn()
        self.sync()
        self.cpu_seconds = time.process_time() - cpu_start
        return time.perf_counter() - start, result

    def group_of(self, groups: int) -> list[Any]:
        """Each minibatch's (n,) int64 jackknife group labels: the example's position in the probe modulo G,
        as a comparison job labels them."""
        torch = self.torch
        return [(torch.arange(len(x), device=self.device) + k * self.n) % groups for k, x in enumerate(self.probe)]

    def loader(self, batches: list[Any]):
        """A DataLoader yielding (x,) for each prepared minibatch, on the device, without re-collating."""
        from torch.utils.data import DataLoader, Dataset

        class Minibatches(Dataset):
            def __len__(self) -> int:
                return len(batches)

            def __getitem__(self, i: int):
                return (batches[i],)

            def __repr__(self) -> str:
                return f"Probe({len(batches)} minibatches of {batches[0].shape[0]})"

        return DataLoader(Minibatches(), batch_size=None, shuffle=False)

    def checkpoints(self) -> list[Any]:
        """CHECKPOINTS models: a seeded random walk from the base weights (checkpoint 0 = the base model)."""
        import copy

        torch = self.torch
        generator = torch.Generator().manual_seed(self.cfg["seed"] + 2)
        models = [self.model]
        for _ in range(CHECKPOINTS - 1):
            model = copy.deepcopy(models[-1])
            with torch.no_grad():
                for param in model.parameters():
                    step = torch.randn(param.shape, generator=generator).to(param.device)
                    scale = param.std() if param.numel() > 1 else param.abs()
                    param.add_(step * CHECKPOINT_STEP * scale)
            models.append(model.eval())
        return models


def hook_layers(model, layers, on_output: Callable[[int, Any], None]) -> list[Any]:
    """Forward hooks calling on_output(layer.index, output) for each layer (module, call); returns handles.

    Call counts restart at every call of `model` (a pre-hook), as in rayrs's GramRecorder.
    """
    routes: dict[str, dict[int, int]] = {}
    for layer in layers:
        routes.setdefault(layer.module_name, {})[layer.call] = layer.index
    counts = dict.fromkeys(routes, 0)

    def reset(module, args) -> None:
        counts.update(dict.fromkeys(routes, 0))

    def make(name: str):
        def hook(module, args, output) -> None:
            call = counts[name]
            counts[name] = call + 1
            slot = routes[name].get(call)
            if slot is not None:
                on_output(slot, output)

        return hook

    handles = [model.register_forward_pre_hook(reset)]
    handles += [model.get_submodule(name).register_forward_hook(make(name)) for name in routes]
    return handles


def measure_floor(b: Bench) -> dict[str, Any]:
    """Forward + rayrs's U-centred Grams (`layer_grams`), no HSIC."""
    from rayrs.similarity import layer_grams

    def run() -> None:
        with b.autocast():
            for x in b.probe:
                layer_grams(b.model, b.layers, x)

    seconds, _ = b.timed(run, warmup=1)
    return {"seconds": seconds}


def measure_rayrs(b: Bench) -> dict[str, Any]:
    """The cross_layer comparison as a job computes it: `layer_grams` once per minibatch, all L x L pairs in one
    GEMM, and every value's jackknife standard error (`MinibatchCKA(groups=JACKKNIFE_GROUPS)`)."""
    from rayrs.similarity import MinibatchCKA, layer_grams
    from rayrs.similarity.cka import JACKKNIFE_GROUPS

    group_of = b.group_of(JACKKNIFE_GROUPS)
    parts: dict[str, float] = {}

    def run():
        parts.update(grams=0.0, hsic=0.0)
        cka = MinibatchCKA(len(b.layers), len(b.layers), device=b.device, groups=JACKKNIFE_GROUPS)
        for x, groups in zip(b.probe, group_of):
            start = time.perf_counter()
            with b.autocast():
                grams = layer_grams(b.model, b.layers, x)
            b.sync()
            middle = time.perf_counter()
            cka.update(grams, grams, groups)  # HSIC sums and their leave-one-group-out sums
            b.sync()
            parts["grams"] += middle - start
            parts["hsic"] += time.perf_counter() - middle
        start = time.perf_counter()
        values, errors = cka.compute(), cka.std_error()
        b.sync()
        parts["finish"] = time.perf_counter() - start
        return values, errors

    seconds, (values, errors) = b.timed(run, warmup=1)  # parts: the timed call's (run resets them)
    cpu = b.cpu_seconds
    return {"seconds": seconds, "cpu_seconds": cpu, "cka": values.cpu().tolist(),
            "std_error_max": float(errors.max()), "std_error_median": float(errors.median()), "parts": dict(parts),
            "jackknife_seconds": jackknife_seconds(b, same=True, pairs=1)}


def jackknife_seconds(b: Bench, *, same: bool, pairs: int) -> float:
    """What the jackknife adds to a run, measured in this process after the timed call: one minibatch's
    `MinibatchCKA.update` with groups minus the same update without (each the mean of JACKKNIFE_REPEATS,
    alternated so that a burst of load falls on both), times the updates in a run (minibatches x epoch pairs).
    same: one model's Grams on both sides (cross_layer); else two checkpoints' (cross_epoch). The Grams are
    computed again here, after the timed call, so they add nothing to its peak memory."""
    from rayrs.similarity import MinibatchCKA, layer_grams
    from rayrs.similarity.cka import JACKKNIFE_GROUPS

    models = [b.model] if same else b.checkpoints()[:2]
    with b.autocast():
        grams = [layer_grams(model, b.layers, b.probe[0]) for model in models]
    grams_b = grams[0] if same else grams[1]
    group_of = b.group_of(JACKKNIFE_GROUPS)[0]
    L = len(b.layers)

    def plain() -> None:
        MinibatchCKA(L, L, device=b.device).update(grams[0], grams_b)

    def with_groups() -> None:
        MinibatchCKA(L, L, device=b.device, groups=JACKKNIFE_GROUPS).update(grams[0], grams_b, group_of)

    plain(), with_groups()  # warm-up
    added = 0.0
    for _ in range(JACKKNIFE_REPEATS):
        added += b.timed(with_groups)[0] - b.timed(plain)[0]
    return added / JACKKNIFE_REPEATS * len(b.probe) * pairs


def measure_torch_cka(b: Bench) -> dict[str, Any]:
    """torch-cka on this round's rows of the layer grid, extrapolated to the full grid.

    The rows: `timing.round_sample` (by default every row once over the rounds, a strided third of them a round
    with 3 rounds; `torch_cka_rows` a round on request). torch-cka's pair loop costs the same for every row (each
    row recomputes all L column Grams and three n x n x n HSIC products per pair), so
    full = fixed + (time(rows) - fixed) * L / rows, with `fixed` what a call costs with no rows: its two
    forward passes, keeping every column layer's activation, timed on a copy of the model (its hooks cannot
    be removed, so the copies are kept apart). (Timing the forward passes alone, without keeping the
    activations, overstated torch-cka's time by a quarter on the CPU and by half on an H200.)
    """
    import copy
    import warnings

    from torch_cka import CKA as TorchCKA

    warnings.filterwarnings("ignore")
    torch = b.torch
    n_peer = len(b.peer_names)
    rows = round_sample(n_peer, b.cfg["torch_cka_rows"], b.cfg["round"], b.cfg["rounds"])
    loader = b.loader(b.probe)
    device = str(b.device)

    def time_without_rows() -> tuple[float, float | None]:
        """A torch-cka call with no rows and every column layer, on a copy (its hooks cannot be removed)."""
        bare = copy.deepcopy(b.model)
        bare_cka = TorchCKA(bare, bare, model1_name="a", model2_name="b", model1_layers=[],
                            model2_layers=b.peer_names, device=device)

        def run_bare() -> None:
            with torch.no_grad(), b.autocast():
                bare_cka.compare(loader)

        seconds, _ = b.timed(run_bare)
        return seconds, b.cpu_seconds

    fixed_seconds = fixed_cpu = None
    if len(rows) < n_peer:
        fixed_seconds, fixed_cpu = time_without_rows()

    cka = TorchCKA(b.model, b.model, model1_name="a", model2_name="b",
                   model1_layers=[b.peer_names[i] for i in rows], model2_layers=b.peer_names, device=device)

    error = None

    def run():
        nonlocal error
        with torch.no_grad(), b.autocast():
            try:
                cka.compare(loader)
            except AssertionError as exc:  # its NaN check, once every pair is done: the time counts in full
                error = f"AssertionError after the whole computation: {exc}"
        return cka.hsic_matrix  # the CKA matrix, NaNs included, either way

    seconds, matrix = b.timed(run)
    matrix = matrix.float().cpu().tolist()
    full, full_cpu = seconds, b.cpu_seconds
    if fixed_seconds is not None:
        full = fixed_seconds + (seconds - fixed_seconds) * n_peer / len(rows)
        full_cpu = fixed_cpu + (b.cpu_seconds - fixed_cpu) * n_peer / len(rows)
    return {"seconds": full, "cpu_seconds": full_cpu, "seconds_measured": seconds,
            "fixed_seconds": fixed_seconds, "rows": rows,
            "cka": matrix, "error": error}


def measure_pytorch_cka(b: Bench) -> dict[str, Any]:
    """pytorch-cka, one call: `compute_cka(model, model, loader, layers=...)` (its same-model path)."""
    from cka import compute_cka

    loader = b.loader(b.probe)

    def run():
        with b.autocast():
            return compute_cka(b.model, b.model, loader, layers=b.peer_names, device=b.device, progress=False)[0]

    seconds, result = b.timed(run, warmup=1)
    return {"seconds": seconds, "cka": result.float().cpu().tolist(), "dtype": str(result.dtype).replace("torch.", "")}


def epoch_pairs() -> list[tuple[int, int]]:
    return [(i, j) for i in range(CHECKPOINTS) for j in range(i + 1, CHECKPOINTS)]


def round_epoch_pairs(cfg: dict[str, Any]) -> list[tuple[int, int]]:
    """The epoch pairs pytorch-cka's workload times in this round (`timing.round_sample`: by default every pair
    once over the rounds; `pytorch_cka_epoch_pairs` a round on request)."""
    pairs = epoch_pairs()
    return [pairs[k] for k in round_sample(len(pairs), cfg["pytorch_cka_epoch_pairs"], cfg["round"], cfg["rounds"])]


def measure_rayrs_cross_epoch(b: Bench) -> dict[str, Any]:
    """Every epoch pair, every layer pair: each checkpoint's Grams once per minibatch, one GEMM per pair, and
    every value's jackknife standard error, as a cross_epoch job computes them."""
    from rayrs.similarity import MinibatchCKA, layer_grams
    from rayrs.similarity.cka import JACKKNIFE_GROUPS

    models = b.checkpoints()
    b.sync()
    pairs = epoch_pairs()
    L = len(b.layers)
    group_of = b.group_of(JACKKNIFE_GROUPS)

    def run():
        ckas = {pair: MinibatchCKA(L, L, device=b.device, groups=JACKKNIFE_GROUPS) for pair in pairs}
        for x, groups in zip(b.probe, group_of):
            with b.autocast():
                grams = [layer_grams(model, b.layers, x) for model in models]
            for i, j in pairs:
                ckas[(i, j)].update(grams[i], grams[j], groups)
            del grams
        return {pair: (cka.compute(), cka.std_error()) for pair, cka in ckas.items()}

    seconds, outcome = b.timed(run)
    cpu = b.cpu_seconds
    result = {pair: values for pair, (values, _) in outcome.items()}
    outcome = None
    checked = round_epoch_pairs(b.cfg)  # the pairs pytorch-cka times in this round
    grid = b.peer_index
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "jackknife_seconds": jackknife_seconds(b, same=False, pairs=len(pairs)),
        "pairs": len(pairs),
        "checked": {f"{i},{j}": result[(i, j)][grid][:, grid].cpu().tolist() for i, j in checked},
        "mean_diagonal": {f"{i},{j}": float(result[(i, j)].diagonal().mean()) for i, j in pairs},
    }


def measure_pytorch_cka_cross_epoch(b: Bench) -> dict[str, Any]:
    """The same workload with pytorch-cka: one `compute_cka(ckpt_i, ckpt_j, loader)` per epoch pair.

    Each round times its sample of epoch pairs (`round_epoch_pairs`) and scales the time by the pair count
    (every call does the same work: two forward passes and 2L Grams per minibatch).
    """
    from cka import compute_cka

    models = b.checkpoints()
    b.sync()
    loader = b.loader(b.probe)
    pairs = round_epoch_pairs(b.cfg)

    def run():
        out = {}
        for i, j in pairs:
            with b.autocast():
                out[(i, j)] = compute_cka(models[i], models[j], loader, layers=b.peer_names, device=b.device,
                                          progress=False)[0]
        return out

    seconds, result = b.timed(run)
    total = len(epoch_pairs())
    return {
        "seconds": seconds * total / len(pairs),
        "cpu_seconds": b.cpu_seconds * total / len(pairs),
        "seconds_measured": seconds,
        "pairs_timed": len(pairs),
        "pairs": total,
        "checked": {f"{i},{j}": m.float().cpu().tolist() for (i, j), m in result.items()},
    }


def measure_reference(b: Bench) -> dict[str, Any]:
    """float64 ground truth: minibatch CKA with HSIC written out term by term, from float64 Grams.

    Unbiased (Song et al. 2012, eq. 5), with K~ = K with a zeroed diagonal:
        HSIC_1(K, L) = [tr(K~ L~) + (1'K~1)(1'L~1)/((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)),
    computed for all layer pairs at once as tr(K~ L~) = <K~, L~>_F and 1'K~L~1 = (K~1).(L~1) (Grams are
    symmetric). Biased (Gretton et al. 2005): HSIC_0(K, L) = tr(K H L H) / (n-1)^2 = <HKH, HLH>_F / (n-1)^2.
    Minibatch CKA (Nguyen et al. 2021): HSIC summed over minibatches, then sum_ab / sqrt(sum_aa sum_bb).
    Activations come from a float64 copy of the model; with --bf16 they are the bf16-autocast forward's own
    outputs, upcast to float64, so the figure measures CKA arithmetic rather than bf16 forward error. The
    forward runs channels-last like rayrs's: in bf16 another layout's kernels round differently (~1e-4 in CKA).
    """
    import copy

    from rayrs.similarity.grams import channels_last

    torch = b.torch
    f64 = torch.float64
    L, n = len(b.layers), b.n
    if b.cfg["bf16"]:
        model, cast = b.model, (lambda x: x)
    else:
        model, cast = copy.deepcopy(b.model).double(), (lambda x: x.double())
    grams = torch.empty(L, n, n, dtype=f64, device=b.device)

    def gram(slot: int, output) -> None:
        features = output.detach().reshape(n, -1).to(f64)
        torch.mm(features, features.T, out=grams[slot])

    handles = hook_layers(model, b.layers, gram)
    unbiased = torch.zeros(L, L, dtype=f64, device=b.device)
    biased = torch.zeros(L, L, dtype=f64, device=b.device)
    # The peers' own HSIC code run on these float64 Grams (peer layers only; torch-cka on the first 8 pairs of
    # its first row only, its pair loop costs n^3 products per pair): shows whether a peer's error is its
    # estimator or its float32 arithmetic.
    from types import SimpleNamespace

    from cka.hsic import hsic_cross
    from torch_cka import CKA as TorchCKA

    peer = torch.tensor(b.peer_index, device=b.device)
    pytorch_cka_hsic = torch.zeros(len(peer), len(peer), dtype=f64, device=b.device)
    check_columns = min(8, len(peer))
    torch_cka_hsic = torch.zeros(check_columns, 3, dtype=f64)  # row 0: (K0, Lj), (K0, K0), (Lj, Lj)
    torch_cka_self = SimpleNamespace(device=b.device)
    start = time.perf_counter()
    for x in b.probe:
        with torch.no_grad(), b.autocast():
            model(channels_last(cast(x)))
        peer_grams = grams[peer]
        pytorch_cka_hsic += hsic_cross(peer_grams, peer_grams)
        k0 = peer_grams[0].clone()
        k0.fill_diagonal_(0.0)
        previous_default = torch.get_default_dtype()
        torch.set_default_dtype(f64)  # torch-cka builds its ones vector in the default dtype
        try:
            k0_self = TorchCKA._HSIC(torch_cka_self, k0, k0)
            for j in range(check_columns):
                lj = peer_grams[j].clone()
                lj.fill_diagonal_(0.0)
                torch_cka_hsic[j] += torch.tensor([TorchCKA._HSIC(torch_cka_self, k0, lj), k0_self,
                                                   TorchCKA._HSIC(torch_cka_self, lj, lj)], dtype=f64)
        finally:
            torch.set_default_dtype(previous_default)
        del peer_grams, k0, lj
        tilde = grams.clone()
        tilde.diagonal(dim1=-2, dim2=-1).zero_()
        row_sums = tilde.sum(dim=-1)  # (L, n) = K~ 1
        totals = row_sums.sum(dim=-1)  # (L,) = 1' K~ 1
        flat = tilde.reshape(L, n * n)
        trace = flat @ flat.T
        unbiased += (trace + torch.outer(totals, totals) / ((n - 1) * (n - 2))
                     - 2.0 / (n - 2) * (row_sums @ row_sums.T)) / (n * (n - 3))
        del tilde, flat
        centred = grams - grams.mean(dim=-1, keepdim=True) - grams.mean(dim=-2, keepdim=True)
        centred += grams.mean(dim=(-2, -1), keepdim=True)
        flat = centred.reshape(L, n * n)
        biased += (flat @ flat.T) / (n - 1) ** 2
        del centred, flat
    b.sync()
    seconds = time.perf_counter() - start
    for handle in handles:
        handle.remove()

    def cka(hsic):
        diag = hsic.diagonal()
        return (hsic / torch.sqrt(torch.outer(diag, diag))).cpu().tolist()

    torch_cka_row = torch_cka_hsic[:, 0] / (torch_cka_hsic[:, 1].sqrt() * torch_cka_hsic[:, 2].sqrt())
    return {"seconds": seconds, "cka": cka(unbiased), "cka_biased": cka(biased),
            "pytorch_cka_code_float64": cka(pytorch_cka_hsic), "torch_cka_code_float64_row0": torch_cka_row.tolist()}


def measure_profile(b: Bench) -> dict[str, Any]:
    """Where rayrs's time goes: the forward pass alone, forward + a bare X X^T per layer (the float32 floor:
    no centring, no U-centring, no HSIC), the pieces of one rayrs Gram on the widest layer, and one
    `MinibatchCKA.update` with and without the jackknife (same Grams both sides, as cross_layer; two models'
    Grams, as cross_epoch), each timed alone after one untimed call.
    """
    torch = b.torch
    from rayrs.similarity import MinibatchCKA
    from rayrs.similarity.cka import (
        JACKKNIFE_GROUPS,
        Int8Scratch,
        _takes_int8_route,
        centered_gram,
        centered_gram_float32,
        exact_float32,
        flatten_examples,
        u_center,
    )
    from rayrs.similarity.grams import channels_last

    def forward() -> None:  # in the channels-last layout rayrs's probing forward pass uses
        with torch.no_grad(), b.autocast():
            for x in b.probe:
                b.model(channels_last(x))

    t_forward, _ = b.timed(forward, warmup=1)

    grams = torch.empty(len(b.layers), b.n, b.n, dtype=torch.float32, device=b.device)

    def raw(slot: int, output) -> None:
        features = flatten_examples(output.detach()).float()
        with exact_float32(b.device):
            torch.mm(features, features.T, out=grams[slot])

    handles = hook_layers(b.model, b.layers, raw)
    t_raw_gram, _ = b.timed(forward, warmup=1)
    cpu_raw_gram = b.cpu_seconds
    for handle in handles:
        handle.remove()
    grams = None  # free the (L, n, n) buffer before the micro-timings

    widest: dict[str, Any] = {}

    def keep(slot: int, output) -> None:
        size = output[0].numel()
        if size > widest.get("size", -1):
            widest.update(size=size, slot=slot, act=output.detach().clone())

    handles = hook_layers(b.model, b.layers, keep)
    with torch.no_grad(), b.autocast():
        b.model(channels_last(b.probe[0]))
    for handle in handles:
        handle.remove()
    act = widest.pop("act")

    def raw_one():
        f = flatten_examples(act).float()
        with exact_float32(b.device):
            return f @ f.T

    def centre_only():
        f = flatten_examples(act).float()
        f = f - f[:1]
        f -= f.mean(dim=0, keepdim=True)
        return f

    scratch = Int8Scratch()  # as GramRecorder keeps one
    t_raw, _ = b.timed(raw_one, warmup=1)
    t_centre, _ = b.timed(centre_only, warmup=1)
    t_float32_route, _ = b.timed(lambda: centered_gram_float32(flatten_examples(act)), warmup=1)
    t_centred_gram, gram = b.timed(lambda: centered_gram(act, scratch), warmup=1)
    t_u, _ = b.timed(lambda: u_center(gram), warmup=1)
    route = "int8" if _takes_int8_route(flatten_examples(act)) else "float32"
    act = gram = None  # freed before the (L, n, n) stacks below
    L = len(b.layers)
    stack = torch.randn(L, b.n, b.n, device=b.device)
    other = torch.randn(L, b.n, b.n, device=b.device)
    group_of = b.group_of(JACKKNIFE_GROUPS)[0]

    def update(grams_b, groups: int):
        MinibatchCKA(L, L, device=b.device, groups=groups).update(stack, grams_b, group_of if groups else None)

    def gemm_only():
        flat = stack.reshape(L, -1)
        with exact_float32(b.device):
            return flat @ flat.T

    t_update, _ = b.timed(lambda: update(stack, 0), warmup=1)
    t_update_jackknife, _ = b.timed(lambda: update(stack, JACKKNIFE_GROUPS), warmup=1)
    t_update_other, _ = b.timed(lambda: update(other, 0), warmup=1)
    t_update_other_jackknife, _ = b.timed(lambda: update(other, JACKKNIFE_GROUPS), warmup=1)
    t_gemm, _ = b.timed(gemm_only, warmup=1)
    return {
        "seconds": t_raw_gram,
        "cpu_seconds": cpu_raw_gram,
        "forward": t_forward,
        "raw_gram": t_raw_gram,
        "widest_layer": b.layers[widest["slot"]].name,
        "features": int(widest["size"]),
        "widest_raw_gram": t_raw,
        "widest_centre_features": t_centre,
        "widest_centered_gram": t_centred_gram,
        "widest_route": route,
        "widest_float32_route": t_float32_route,
        "widest_u_center": t_u,
        "hsic_update_same": t_update,
        "hsic_update_same_jackknife": t_update_jackknife,
        "hsic_update_two_models": t_update_other,
        "hsic_update_two_models_jackknife": t_update_other_jackknife,
        "hsic_gemm": t_gemm,
        "jackknife_groups": JACKKNIFE_GROUPS,
    }


MEASUREMENTS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "profile": measure_profile,
    "floor": measure_floor,
    "rayrs": measure_rayrs,
    "pytorch_cka": measure_pytorch_cka,
    "torch_cka": measure_torch_cka,
    "rayrs_cross_epoch": measure_rayrs_cross_epoch,
    "pytorch_cka_cross_epoch": measure_pytorch_cka_cross_epoch,
    "reference": measure_reference,
}
WORKLOADS = {"rayrs_cross_epoch", "pytorch_cka_cross_epoch"}
PEERS = {"pytorch_cka", "torch_cka", "pytorch_cka_cross_epoch"}  # they keep every layer's activation


def _mem_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _rss_mb_now() -> float | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _child(name: str, cfg: dict[str, Any]) -> None:
    """Run one measurement and print its result as one marked JSON line on stdout."""
    import torch

    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch; run with --device cpu")
    if cfg["device"] == "cpu":  # every contender gets the malloc setting rayrs's CPU workers use
        from rayrs.similarity.grams import reuse_freed_memory

        reuse_freed_memory()
    workload = name in WORKLOADS
    bench = Bench(cfg, n=cfg["workload_n"] if workload else cfg["n"],
                  batches=cfg["workload_batches"] if workload else cfg["batches"])
    if name in PEERS and (too_big := bench.peer_fits()) is not None:
        print(RESULT_MARK + json.dumps({"error": too_big}), flush=True)
        return
    bench.warm_up()
    setup_rss = _rss_mb_now()
    result = MEASUREMENTS[name](bench)
    result.setdefault("cpu_seconds", bench.cpu_seconds)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB
    result["setup_rss_mb"] = setup_rss
    if bench.device.type == "cuda":
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated(bench.device) / 2**20
    result["layers"] = len(bench.layers)
    result["layer_names"] = [layer.name for layer in bench.layers]
    result["peer_index"] = bench.peer_index
    result["n"] = bench.n
    result["minibatches"] = len(bench.probe)
    print(RESULT_MARK + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Parent side: run the children one at a time, compare, print. Never imports torch (its own RSS stays small,
# and a child's ru_maxrss starts from its parent's at exec).
# ---------------------------------------------------------------------------------------------------------------


def run_child(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--measure", name, "--config", json.dumps(cfg)],
        capture_output=True, text=True, env=env,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
    return {"error": f"exit {proc.returncode}: {tail}"}


def max_abs_diff(a: list[list[float]], b: list[list[float]]) -> float:
    """Largest |a - b| over entries where both are finite (nan if none)."""
    diffs = [abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb) if math.isfinite(x) and math.isfinite(y)]
    return max(diffs) if diffs else math.nan


def bad_values(m: list[list[float]], tol: float = 1e-6) -> dict[str, int]:
    flat = [x for row in m for x in row]
    return {"nan": sum(not math.isfinite(x) for x in flat),
            "outside_0_1": sum(math.isfinite(x) and (x < -tol or x > 1 + tol) for x in flat)}


def sub_grid(m: list[list[float]], rows: list[int], cols: list[int]) -> list[list[float]]:
    return [[m[i][j] for j in cols] for i in rows]


def fmt(x: float | None, spec: str = ".3g") -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


# The order of a round (the next round runs it reversed, `timing.round_order`). Neighbours run back to back, so
# the sides of time_over_forward_gram (floor, rayrs), speedup_vs_pytorch_cka (rayrs, pytorch_cka) and
# speedup_vs_pytorch_cka_cross_epoch are measured next to each other in every round. rayrs has three partners
# and a line gives it two neighbours: torch_cka is one apart, behind pytorch_cka (a ~10-30 s child), which
# matters least for the contender that itself runs for minutes, so its load is averaged over a longer stretch
# anyway. profile (the stage-by-stage split) sits next to floor.
ROUND_ORDER = ["profile", "floor", "rayrs", "pytorch_cka", "torch_cka", "pytorch_cka_cross_epoch", "rayrs_cross_epoch"]
# Headline ratios, each a median over the rounds of a ratio of two figures of the same round (`round_figures`).
RATIOS = {
    "speedup_vs_torch_cka": Ratio("torch_cka", "rayrs"),
    "time_over_forward_gram": Ratio("rayrs", "floor"),
    "time_over_forward_gram_in_run": Ratio("rayrs.in_run", "rayrs.grams"),
    "time_over_forward_gram_without_jackknife": Ratio("rayrs.without_jackknife", "floor"),
    "jackknife_share_of_rayrs_time": Ratio("rayrs.jackknife", "rayrs"),
    "jackknife_share_of_rayrs_cross_epoch_time": Ratio("rayrs_cross_epoch.jackknife", "rayrs_cross_epoch"),
    "time_over_forward_raw_gram": Ratio("rayrs", "profile.raw_gram"),
    "forward_share_of_rayrs_time": Ratio("profile.forward", "rayrs"),
    "speedup_vs_pytorch_cka": Ratio("pytorch_cka", "rayrs"),
    "speedup_vs_pytorch_cka_cross_epoch": Ratio("pytorch_cka_cross_epoch", "rayrs_cross_epoch"),
    "peak_rss_ratio_vs_pytorch_cka": Ratio("rayrs.rss", "pytorch_cka.rss"),
}
CPU_RATIOS = {  # the same ratios from CPU seconds (all threads): less moved by other processes' load
    key: Ratio(RATIOS[key].numerator + ".cpu", RATIOS[key].denominator + ".cpu")
    for key in ("speedup_vs_torch_cka", "time_over_forward_gram", "speedup_vs_pytorch_cka",
                "speedup_vs_pytorch_cka_cross_epoch")
}
PROFILE_FIGURES = ["forward", "raw_gram", "widest_raw_gram", "widest_centre_features", "widest_centered_gram",
                   "widest_float32_route", "widest_u_center", "hsic_update_same", "hsic_update_same_jackknife",
                   "hsic_update_two_models", "hsic_update_two_models_jackknife", "hsic_gemm"]


def round_figures(res: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """One round's figures, flat: `name` wall seconds, `name.cpu` CPU seconds, `name.rss` peak RSS (MB),
    `name.cuda` peak CUDA memory (MB), `profile.*` the profile's pieces, `rayrs.*` the split of rayrs's own run."""
    figures: dict[str, float | None] = {}
    for name, r in res.items():
        figures[name] = r.get("seconds")
        figures[f"{name}.cpu"] = r.get("cpu_seconds")
        figures[f"{name}.rss"] = r.get("peak_rss_mb")
        figures[f"{name}.cuda"] = r.get("peak_cuda_mb")
    prof = res.get("profile", {})
    figures.update({f"profile.{key}": prof.get(key) for key in PROFILE_FIGURES if key in prof})
    for name in ("rayrs", "rayrs_cross_epoch"):  # what the jackknife adds to the run (`jackknife_seconds`)
        jackknife = res.get(name, {}).get("jackknife_seconds")
        if jackknife is not None and figures.get(name) is not None:
            figures[f"{name}.jackknife"] = jackknife
            figures[f"{name}.without_jackknife"] = figures[name] - jackknife
    parts = res.get("rayrs", {}).get("parts")
    if parts:
        figures.update({f"rayrs.{key}": value for key, value in parts.items()})
        figures["rayrs.in_run"] = sum(parts.values())
    return figures


def summarise(cfg: dict[str, Any], rounds: list[dict[str, dict[str, Any]]], ref: dict[str, Any],
              wall: float) -> dict[str, Any]:
    """Print the table, the accuracy and the goals; return the final JSON object."""
    per_round = [round_figures(res) for res in rounds]
    figures = figure_spreads(per_round)
    values, spreads = headlines(per_round, RATIOS)
    cpu_values, cpu_spreads = headlines(per_round, CPU_RATIOS)
    names = [name for name in ROUND_ORDER if any(name in res for res in rounds)]
    ok = {name: [res[name] for res in rounds if name in res and "seconds" in res[name]] for name in names}
    first = {name: (ok[name][0] if ok[name] else {}) for name in names}  # deterministic outputs: any round's
    every = [r for res in rounds for r in res.values()] + ([ref] if ref else [])
    layers = next((r["layers"] for r in every if "layers" in r), None)
    peer_index = next((r["peer_index"] for r in every if "peer_index" in r), None)
    layer_names = next((r["layer_names"] for r in every if "layer_names" in r), [])
    R = len(rounds)

    notes = {
        "profile": "forward + bare float32 X X^T per layer",
        "floor": "forward + layer_grams (centre, Gram, U-centre)",
        "rayrs": "layer_grams + MinibatchCKA with jackknife, all L x L pairs",
        "pytorch_cka": "compute_cka(model, model), one call",
        "torch_cka": "CKA(model, model).compare, pair loop",
        "rayrs_cross_epoch": f"{CHECKPOINTS} ckpts, {CHECKPOINTS * (CHECKPOINTS - 1) // 2} epoch pairs, jackknife",
        "pytorch_cka_cross_epoch": "one compute_cka per epoch pair",
    }
    tc_rounds = ok.get("torch_cka", [])
    if tc_rounds and tc_rounds[0].get("fixed_seconds") is not None:
        timed_rows = sorted({row for r in tc_rounds for row in r["rows"]})
        measured = figure_spreads([{"m": r["seconds_measured"], "f": r["fixed_seconds"]} for r in tc_rounds])
        notes["torch_cka"] += (f"; TIMED ON {len(tc_rounds[0]['rows'])} OF {len(peer_index)} ROWS A ROUND "
                               f"({len(timed_rows)} rows over the rounds; {fmt(measured['m']['median'])} s, "
                               f"{fmt(measured['f']['median'])} s of it with no rows), scaled by pairs")
    pe_rounds = ok.get("pytorch_cka_cross_epoch", [])
    if pe_rounds and pe_rounds[0]["pairs_timed"] < pe_rounds[0]["pairs"]:
        covered = sum(r["pairs_timed"] for r in pe_rounds)
        measured = figure_spreads([{"m": r["seconds_measured"]} for r in pe_rounds])["m"]
        notes["pytorch_cka_cross_epoch"] += (f"; TIMED ON {pe_rounds[0]['pairs_timed']} OF {pe_rounds[0]['pairs']} "
                                             f"PAIRS A ROUND ({covered} over the rounds; "
                                             f"{fmt(measured['median'])} s), scaled")
    cuda = cfg["device"] == "cuda"
    print(f"\nmedians over {R} rounds, [min-max] of the wall time ({ORDER_NOTE}: {', '.join(names)})")
    header = (f"{'measurement':<25} {'n':>5} {'time_s':>9} {'[min-max]':>17} {'cpu_s':>8} {'peak_rss_MB':>11} "
              f"{'setup_MB':>9}")
    header += f" {'peak_cuda_MB':>12}" if cuda else ""
    print(header + "  note")

    def row(name: str, n: Any, time_s: dict[str, Any] | None, cpu: Any, rss: Any, setup: Any, cuda_mb: Any) -> str:
        span = f"[{fmt(time_s['min'], '.3f')}-{fmt(time_s['max'], '.3f')}]" if time_s else ""
        line = (f"{name:<25} {n:>5} {fmt(time_s and time_s['median'], '.3f'):>9} {span:>17} {fmt(cpu, '.1f'):>8} "
                f"{fmt(rss, '.0f'):>11} {fmt(setup, '.0f'):>9}")
        return line + (f" {fmt(cuda_mb, '.0f'):>12}" if cuda else "")

    def median(key: str) -> float | None:
        return figures[key]["median"] if figures.get(key) else None

    for name in names:
        errors = [res[name]["error"] for res in rounds if name in res and "seconds" not in res[name]]
        if not ok[name]:
            print(f"{name:<25} FAILED: {errors[0] if errors else 'not run'}")
            continue
        if name == "profile":
            print(row("forward", first[name].get("n", ""), figures.get("profile.forward"), None, None, None, None)
                  + "  forward pass alone, no hooks (same process as profile)")
        peer_error = next((r["error"] for r in ok[name] if r.get("error")), None)
        print(row(name, first[name].get("n", ""), figures.get(name), median(f"{name}.cpu"), median(f"{name}.rss"),
                  figure_spreads([{"s": r.get("setup_rss_mb")} for r in ok[name]])["s"]["median"]
                  if first[name].get("setup_rss_mb") is not None else None, median(f"{name}.cuda"))
              + "  " + notes.get(name, "") + (f" [error: {peer_error}]" if peer_error else "")
              + (f" [{len(errors)} round(s) FAILED: {errors[0]}]" if errors else ""))
    if ref.get("seconds") is not None:
        print(row("reference", ref.get("n", ""), {"median": ref["seconds"], "min": ref["seconds"],
                                                  "max": ref["seconds"]},
                  ref.get("cpu_seconds"), ref.get("peak_rss_mb"), ref.get("setup_rss_mb"), ref.get("peak_cuda_mb"))
              + "  float64, explicit HSIC (run once, after the rounds: an accuracy check, not a contender)")
    elif ref:
        print(f"{'reference':<25} FAILED: {ref.get('error')}")

    print("  time_s: wall seconds of one timed call (minibatches summed), median over the rounds; cpu_s: CPU seconds "
          "of all the process's threads in that call (well below threads x time_s: other processes held the "
          "cores); peak_rss_MB: ru_maxrss of the measurement's own process; setup_MB: its RSS before the "
          "measurement (torch, model, probe)")

    # Where rayrs's time goes (differences of the staged measurements above, medians over the rounds).
    f, g, fl, ry = median("profile.forward"), median("profile.raw_gram"), median("floor"), median("rayrs")
    if None not in (f, g, fl, ry):
        print(f"\nrayrs time, stage by stage (separate processes, medians): forward {f:.3f} s | + bare float32 X X^T "
              f"{g - f:+.3f} s | rayrs's centred, U-centred Grams in hooks instead {fl - g:+.3f} s | + HSIC with "
              f"jackknife (MinibatchCKA) {ry - fl:+.3f} s = {ry:.3f} s")
    if figures.get("rayrs.grams"):
        print(f"  inside the rayrs run itself: layer_grams {median('rayrs.grams'):.3f} s + MinibatchCKA.update "
              f"{median('rayrs.hsic'):.3f} s + compute and std_error {median('rayrs.finish'):.4f} s (ratio "
              f"{describe(spreads['time_over_forward_gram_in_run'], '.3f')}, free of run-to-run noise)")
    prof = first.get("profile", {})
    if "widest_layer" in prof:
        print(f"  widest layer {prof['widest_layer']} ({prof['features']} features x n = {cfg['n']}): bare float32 "
              f"X X^T {median('profile.widest_raw_gram'):.4f} s; rayrs's centred_gram ({prof['widest_route']} route) "
              f"{median('profile.widest_centered_gram'):.4f} s; its float32 route "
              f"{median('profile.widest_float32_route'):.4f} s, of which centring the features "
              f"{median('profile.widest_centre_features'):.4f} s; u_center {median('profile.widest_u_center'):.4f} s")
        print(f"  one MinibatchCKA.update({layers} layers, same Grams both sides) {median('profile.hsic_update_same'):.4f} s: "
              f"the L x L GEMM {median('profile.hsic_gemm'):.4f} s (the self terms are its diagonal); with the "
              f"jackknife ({prof.get('jackknife_groups')} groups) {median('profile.hsic_update_same_jackknife'):.4f} s; two models' "
              f"Grams (cross_epoch) {median('profile.hsic_update_two_models'):.4f} s, with the jackknife "
              f"{median('profile.hsic_update_two_models_jackknife'):.4f} s")
    if figures.get("rayrs.jackknife"):
        print(f"  the jackknife (every value's standard error) adds {describe(figures['rayrs.jackknife'], '.3f')} s to "
              f"a rayrs run, {describe(spreads['jackknife_share_of_rayrs_time'], '.3f')} of its time; without it "
              f"time_over_forward_gram would read {describe(spreads['time_over_forward_gram_without_jackknife'], '.3f')}")
    if figures.get("rayrs_cross_epoch.jackknife"):
        print(f"  ... and {describe(figures['rayrs_cross_epoch.jackknife'], '.3f')} s to the cross_epoch workload, "
              f"{describe(spreads['jackknife_share_of_rayrs_cross_epoch_time'], '.3f')} of its time")

    # Accuracy against the float64 reference (deterministic outputs: taken from any round, peers' from every round).
    acc: dict[str, Any] = {}
    peer_diff: dict[str, Any] = {}
    peer_bad: dict[str, Any] = {}
    if "cka" in ref:
        ref_u, ref_b = ref["cka"], ref["cka_biased"]
        print(f"\naccuracy vs the float64 reference (unbiased HSIC, Song et al. 2012), on {layers} layers:")
        print(f"  reference itself: {bad_values(ref_u)['outside_0_1']} values below 0 or above 1 "
              f"(the unbiased estimate may dip below 0 for unrelated layers)")
        if "cka" in first.get("rayrs", {}):
            ry_res = first["rayrs"]
            acc["rayrs"] = max_abs_diff(ry_res["cka"], ref_u)
            print(f"  rayrs        max |diff| {acc['rayrs']:.2e} over all {layers}x{layers} pairs; "
                  f"{bad_values(ry_res['cka'])}; jackknife standard error median {ry_res['std_error_median']:.1e}, "
                  f"max {ry_res['std_error_max']:.1e}")
        tc_with = [r for r in tc_rounds if r.get("cka") is not None]
        if tc_with:
            diffs, bad_total, rows_seen = [], 0, set()
            for r in tc_with:
                grid = sub_grid(ref_u, [peer_index[i] for i in r["rows"]], peer_index)
                diffs.append(max_abs_diff(r["cka"], grid))
                bad = bad_values(r["cka"])
                bad_total += bad["nan"] + bad["outside_0_1"]
                rows_seen.update(r["rows"])
            finite = [d for d in diffs if math.isfinite(d)]
            peer_diff["torch_cka"] = max(finite) if finite else math.nan
            peer_bad["torch_cka"] = bad_total
            print(f"  torch-cka    max |diff| {peer_diff['torch_cka']:.2e} vs unbiased (its estimator: Song et al. "
                  f"eq. 5, uncentred features) on the {len(rows_seen)}x{len(peer_index)} pairs timed over the rounds; "
                  f"{bad_total} values NaN or outside [0, 1] (summed over the rounds)")
        elif "torch_cka" in names:
            peer_diff["torch_cka"], peer_bad["torch_cka"] = None, None
            print(f"  torch-cka    no matrix: {next((r.get('error') for r in tc_rounds), 'failed')}")
        pc = first.get("pytorch_cka", {})
        if "cka" in pc:
            grid_u = sub_grid(ref_u, peer_index, peer_index)
            grid_b = sub_grid(ref_b, peer_index, peer_index)
            peer_diff["pytorch_cka"] = max_abs_diff(pc["cka"], grid_u)
            vs_biased = max_abs_diff(pc["cka"], grid_b)
            clamped = [[min(max(x, 0.0), 1.0) for x in row_] for row_ in grid_u]
            vs_clamped = max_abs_diff(pc["cka"], clamped)
            bad = bad_values(pc["cka"])
            peer_bad["pytorch_cka"] = bad["nan"] + bad["outside_0_1"]
            print(f"  pytorch-cka  max |diff| {peer_diff['pytorch_cka']:.2e} vs unbiased (the estimator its hsic() "
                  f"implements), {vs_clamped:.2e} vs unbiased clamped to [0, 1] as it clamps, {vs_biased:.2e} vs "
                  f"biased HSIC; {bad} (clamped, so never outside [0, 1]); {pc.get('dtype')} output")
            acc["pytorch_cka_vs_biased"] = vs_biased
        if "pytorch_cka_code_float64" in ref:
            own_p = max_abs_diff(ref["pytorch_cka_code_float64"], sub_grid(ref_u, peer_index, peer_index))
            row0 = ref["torch_cka_code_float64_row0"]
            own_t = max_abs_diff([row0], sub_grid(ref_u, peer_index[:1], peer_index[: len(row0)]))
            acc["peer_code_in_float64"] = {"pytorch_cka": own_p, "torch_cka_row0": own_t}
            print(f"  the peers' own HSIC code fed the float64 Grams: pytorch-cka {own_p:.1e}, torch-cka "
                  f"(first 8 pairs) "
                  f"{own_t:.1e} from the unbiased reference: both implement the unbiased estimator, so their "
                  "errors above come from float32 arithmetic on uncentred Grams, not from the estimator")
        if layers is not None and len(peer_index) != layers:
            print(f"  peers see {len(peer_index)} layers (one per module, its last call); rayrs sees {layers}")
        else:
            print(f"  peers were given the same {layers} layers (module paths: {layer_names[0]} ... {layer_names[-1]})")
    cross_diffs, checked_pairs = [], 0
    for res in rounds:  # each round's pytorch-cka epoch pairs against rayrs's values for the same pairs
        re, pe_ = res.get("rayrs_cross_epoch", {}), res.get("pytorch_cka_cross_epoch", {})
        if "checked" in re and "checked" in pe_:
            def clamp(m):
                return [[min(max(x, 0.0), 1.0) for x in row_] for row_ in m]

            cross_diffs += [max_abs_diff(clamp(re["checked"][k]), pe_["checked"][k]) for k in pe_["checked"]]
            checked_pairs += len(pe_["checked"])
    cross_diff = max(cross_diffs) if cross_diffs else None
    if cross_diff is not None:
        print(f"  cross_epoch: pytorch-cka vs rayrs (clamped to [0, 1] as pytorch-cka clamps) max |diff| "
              f"{cross_diff:.2e} on {checked_pairs} epoch pairs over the rounds, n = {cfg['workload_n']}")
    md = first.get("rayrs_cross_epoch", {}).get("mean_diagonal")
    if md:
        print("  cross_epoch mean same-layer CKA, epoch 0 vs 1..9: "
              + " ".join(f"{md[f'0,{j}']:.3f}" for j in range(1, CHECKPOINTS)))

    summary: dict[str, Any] = {
        **values,
        "max_abs_diff_vs_reference": acc.get("rayrs"),
        "peer_max_abs_diff": peer_diff,
        "peer_nan": peer_bad,
        "peer_code_in_float64_max_abs_diff": acc.get("peer_code_in_float64"),
        "spread": spreads,
        "cpu_time_ratios": cpu_values,
        "cpu_time_ratios_spread": cpu_spreads,
    }
    if cuda:
        cuda_values, cuda_spreads = headlines(per_round, {"peak_cuda_ratio_vs_pytorch_cka":
                                                          Ratio("rayrs.cuda", "pytorch_cka.cuda")})
        summary.update(cuda_values)
        summary["spread"].update(cuda_spreads)
    print(f"\ngoals (median of the per-round paired ratios [min-max over the {R} rounds]):")
    for key, (goal, sense) in GOALS.items():
        value = summary.get(key)
        met = None if value is None else (value >= goal if sense == "ge" else value <= goal)
        verdict = {None: "not measured", True: "met", False: "MISSED"}[met]
        s = spreads.get(key)
        if s is not None:
            inside = [s["min"], s["max"]]
            rounds_met = sum(x >= goal if sense == "ge" else x <= goal for x in inside)
            verdict += (" in every round" if rounds_met in (0, 2) else
                        " by the median, not in every round" if met else " by the median, met in some rounds")
        shown = describe(s, ".4g") if s is not None else fmt(value, ".4g")
        by_cpu = cpu_spreads.get(key)
        by_cpu = f"  (from CPU seconds: {describe(by_cpu, '.4g')})" if by_cpu is not None and not cuda else ""
        sign = ">=" if sense == "ge" else "<="
        print(f"  {key:<36} {shown:>34}  goal {sign} {goal:g}  {verdict}{by_cpu}")

    def group(suffix: str) -> dict[str, Any]:
        return {name: figures.get(f"{name}{suffix}") for name in names}

    summary.update(
        cross_epoch_max_abs_diff_rayrs_vs_pytorch_cka=cross_diff,
        seconds=group(""),
        cpu_seconds=group(".cpu"),
        peak_rss_mb=group(".rss"),
        profile={key: figures[f"profile.{key}"] for key in PROFILE_FIGURES if f"profile.{key}" in figures},
        jackknife_seconds={name: figures.get(f"{name}.jackknife") for name in ("rayrs", "rayrs_cross_epoch")},
        rayrs_parts={key: figures[f"rayrs.{key}"] for key in ("grams", "hsic", "finish", "in_run")
                     if f"rayrs.{key}" in figures},
        reference_seconds_once=ref.get("seconds"),
        rounds=R,
        order=f"{ORDER_NOTE}: {', '.join(names)}",
        device=cfg["device"],
        arch=f"{cfg['arch']}-{cfg['depth']}-{cfg['width']}" if cfg["arch"] == "wrn" else cfg["arch"],
        layers=layers,
        peer_layers=len(peer_index) if peer_index else None,
        n=cfg["n"],
        minibatches=cfg["batches"],
        workload_n=cfg["workload_n"],
        bf16=cfg["bf16"],
        quick=cfg["quick"],
        torch_cka_rows_timed_per_round=len(tc_rounds[0]["rows"]) if tc_rounds else None,
        pytorch_cka_epoch_pairs_timed_per_round=pe_rounds[0]["pairs_timed"] if pe_rounds else None,
        wall_seconds=wall,
        machine=machine(),
    )
    if cuda:
        summary["peak_cuda_mb"] = group(".cuda")
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--arch", default="wrn", help="a rayrs.models.MODELS name (default wrn)")
    p.add_argument("--model", choices=list(MODEL_CASES), default=None,
                   help="a large model at 224 px instead of --arch: " + "; ".join(
                       f"{name}: {case['arch']} ({', '.join(case['layers'])})" for name, case in MODEL_CASES.items()))
    p.add_argument("--depth", type=int, default=None, help="default 16 for wrn")
    p.add_argument("--width", type=int, default=None, help="default 2 for wrn")
    p.add_argument("--n", type=int, default=None, help="examples per minibatch (paper: 1024; 256 with --model)")
    p.add_argument("--batches", type=int, default=None, help="minibatches of n (default 2; 1 with --quick)")
    p.add_argument("--bf16", action="store_true", help="forward under bf16 autocast (rayrs Grams stay float32)")
    p.add_argument("--quick", action="store_true",
                   help=f"one minibatch, workload at n = {QUICK_WORKLOAD_N}, torch-cka timed on "
                        f"{QUICK_TORCH_CKA_ROWS} rows a round, pytorch-cka's workload on "
                        f"{QUICK_PYTORCH_CKA_EPOCH_PAIRS} epoch pairs a round (both scaled by pair count)")
    p.add_argument("--rounds", type=int, default=MIN_ROUNDS,
                   help=f"rounds of interleaved measurements (default and minimum {MIN_ROUNDS})")
    p.add_argument("--torch-cka-rows", type=int, default=None,
                   help=f"time torch-cka on this many rows of the layer grid a round (default: every row once over "
                        f"the rounds; {QUICK_TORCH_CKA_ROWS} quick)")
    p.add_argument("--pytorch-cka-epoch-pairs", type=int, default=None,
                   help=f"time pytorch-cka's workload on this many epoch pairs a round (default: all 45 once over "
                        f"the rounds; {QUICK_PYTORCH_CKA_EPOCH_PAIRS} quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="+", choices=list(MEASUREMENTS), metavar="NAME",
                   help="run only these measurements: " + ", ".join(MEASUREMENTS))
    p.add_argument("--json", metavar="PATH", help="also write the final JSON object to PATH")
    p.add_argument("--measure", choices=list(MEASUREMENTS), help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    case = MODEL_CASES.get(args.model, {})
    arch = case.get("arch", args.arch)
    n = args.n if args.n is not None else case.get("n", 1024)
    wrn = arch == "wrn"
    depth = args.depth if args.depth is not None else (16 if wrn else None)
    width = args.width if args.width is not None else (2 if wrn else None)
    batches = args.batches if args.batches is not None else (1 if args.quick else 2)
    rows_wanted = args.torch_cka_rows
    if rows_wanted is None and args.quick:
        rows_wanted = QUICK_TORCH_CKA_ROWS
    return {
        "device": args.device, "arch": arch, "depth": depth, "width": width, "n": n, "batches": batches,
        "image_size": case.get("image_size"), "layers": case.get("layers"), "model": args.model,
        "bf16": args.bf16, "quick": args.quick, "seed": args.seed,
        "rounds": args.rounds,
        "round": 0,  # set for each child: which round it belongs to (torch-cka's rows, pytorch-cka's pairs)
        "workload_n": min(n, QUICK_WORKLOAD_N) if args.quick else n,
        "workload_batches": batches,
        "torch_cka_rows": rows_wanted,  # per round; None: every row once over the rounds
        "pytorch_cka_epoch_pairs": (args.pytorch_cka_epoch_pairs if args.pytorch_cka_epoch_pairs is not None
                                    else (QUICK_PYTORCH_CKA_EPOCH_PAIRS if args.quick else None)),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.measure:
        _child(args.measure, json.loads(args.config))
        return
    check_rounds(args.rounds)
    cfg = resolve_config(args)
    if cfg["n"] < 4:
        raise SystemExit(f"--n {cfg['n']}: the unbiased HSIC needs minibatches of at least 4 examples (paper: 1024)")
    started = time.perf_counter()
    # A large model's cross_epoch workloads (10 checkpoints) run only when --only names them.
    skipped = WORKLOADS if args.model and not args.only else set()
    order = [name for name in ROUND_ORDER if (not args.only or name in args.only) and name not in skipped]
    with_reference = not args.only or "reference" in args.only
    R = cfg["rounds"]
    print(f"benchmarks/cka.py: {cfg['arch']} depth={cfg['depth']} width={cfg['width']} on {cfg['device']}, "
          f"{cfg['image_size'] or 32} px, layers {', '.join(cfg['layers'] or ['conv', 'bn', 'act', 'pool', 'linear'])}, "
          f"n={cfg['n']} x {cfg['batches']} minibatch(es), workload n={cfg['workload_n']}, bf16={cfg['bf16']}, "
          f"quick={cfg['quick']}; {R} rounds of {', '.join(order)} ({ORDER_NOTE}), one process each; "
          f"{machine()['cpu']}, load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    if cfg["bf16"]:
        print("  --bf16: every contender's forward (and the peers' Grams, which they form in the forward's dtype) "
              "runs under bf16 autocast; rayrs forms its Grams in float32", flush=True)
    if "torch_cka" in order:
        per = cfg["torch_cka_rows"]
        print(f"  torch-cka: timing {'a strided 1/%d of the rows' % R if per is None else f'{per} rows'} of the "
              "layer grid a round, scaled by the number of pairs", flush=True)
    if "pytorch_cka_cross_epoch" in order:
        per = cfg["pytorch_cka_epoch_pairs"]
        print(f"  pytorch-cka cross_epoch: timing {'a strided 1/%d' % R if per is None else per} of the "
              f"{len(epoch_pairs())} epoch pairs a round, scaled by the number of pairs", flush=True)

    def contender(name: str) -> Callable[[int], dict[str, Any]]:
        def run(round_index: int) -> dict[str, Any]:
            t0 = time.perf_counter()
            result = run_child(name, dict(cfg, round=round_index))
            result["child_wall"] = time.perf_counter() - t0
            return result

        return run

    def progress(r: int, position: int, name: str, result: dict[str, Any]) -> None:
        ok = "seconds" in result and result["seconds"] is not None
        status = f"{result['seconds']:.3f} s" if ok else f"FAILED {result.get('error')}"
        print(f"[round {r + 1}/{R}, {position + 1}/{len(order)}] {name:<24} {status}  "
              f"(child wall {result['child_wall']:.1f} s)", flush=True)
        if r == 0 and position == 0 and not ok:  # round 1 starts with rayrs alone: a set-up error, not a peer's
            raise SystemExit(f"benchmarks/cka.py: {name} failed, the rest would too: {result.get('error')}")

    rounds = run_rounds({name: contender(name) for name in order}, R, on_result=progress)
    ref: dict[str, Any] = {}
    if with_reference:
        ref = contender("reference")(0)
        status = f"{ref['seconds']:.3f} s" if "seconds" in ref else f"FAILED {ref.get('error')}"
        print(f"[once] reference                {status}  (child wall {ref['child_wall']:.1f} s)", flush=True)
    summary = summarise(cfg, rounds, ref, time.perf_counter() - started)
    print(f"\ntotal wall time {summary['wall_seconds']:.1f} s; load average now {os.getloadavg()[0]:.2f} on "
          f"{os.cpu_count()} CPUs (load slows the two sides of a paired ratio alike only as far as it is steady "
          "over their back-to-back measurements: see the spread)")
    emit(summary, args.json)


if __name__ == "__main__":
    # Run as a script, this file's folder heads sys.path and this file would shadow pytorch-cka's `cka` module.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    main()
