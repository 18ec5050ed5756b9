"""rayrs's all-pairs linear CKA against the public CKA libraries, side by side in one run.

Usage (from the repository root):
    uv run --group bench python benchmarks/cka.py --quick                  # < 10 min on 2 CPU cores
    uv run --group bench python benchmarks/cka.py                          # WRN-16-2, n = 1024, CPU
    uv run --group bench python benchmarks/cka.py --device cuda --depth 28 --width 10 [--bf16]

What is measured (same model, same probe inputs, same device; every measurement runs in its own subprocess,
started as `benchmarks/cka.py --measure NAME --config JSON`, so its peak memory is its own):

  profile              the forward pass alone; forward + a bare float32 X X^T per layer (no centring, no
                       HSIC: the float32 floor); the pieces of one rayrs Gram and of one MinibatchCKA.update
  floor                forward + rayrs's Grams: `layer_grams` (centring, Gram, U-centring in hooks), no HSIC
  rayrs                `layer_grams` + `MinibatchCKA.update(g, g)` + `compute`: the cross_layer CKA
  pytorch_cka          pytorch-cka `compute_cka(model, model, loader)`: vectorised, keeps every activation
  torch_cka            torch-cka `CKA(model, model).compare(loader)`: a loop over layer pairs
  reference            float64 activations, float64 Grams and the unbiased HSIC written out term by term
                       (Song et al. 2012, eq. 5), the biased HSIC (Gretton et al. 2005) for contrast, and each
                       peer's own HSIC code fed the float64 Grams
  rayrs_cross_epoch    10 checkpoints, every epoch pair i < j, every layer pair: Grams once per checkpoint
                       per minibatch, then one `MinibatchCKA.update(grams_i, grams_j)` per epoch pair
  pytorch_cka_cross_epoch   the same workload, one `compute_cka(ckpt_i, ckpt_j, loader)` per epoch pair

On a CPU every measurement's process first runs `rayrs.similarity.grams.reuse_freed_memory` (glibc keeps
freed memory for reuse instead of unmapping it), as rayrs's own CPU workers do, so the allocator is not what
separates the contenders.

The model is a seeded random-init network in eval mode; the probe is seeded uniform [0, 1] pixels (n, 3, 32, 32).
Checkpoints for the cross_epoch workload are a seeded random walk from that model: checkpoint e adds e steps of
Gaussian noise, each step 5% of every weight tensor's standard deviation, so nearby epochs are similar.

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

RESULT_MARK = "@@cka-bench-result "
CHECKPOINTS = 10
CHECKPOINT_STEP = 0.05  # each random-walk step: this fraction of a weight tensor's std
QUICK_TORCH_CKA_ROWS = 2
QUICK_WORKLOAD_N = 512
QUICK_PYTORCH_CKA_EPOCH_PAIRS = 3
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

        from rayrs.models import build_model, comparable_layers

        self.cfg = cfg
        self.torch = torch
        self.device = torch.device(cfg["device"])
        torch.manual_seed(cfg["seed"])
        self.model = build_model(
            cfg["arch"], num_classes=10, in_channels=3, depth=cfg["depth"], width=cfg["width"]
        ).to(self.device).eval()
        generator = torch.Generator().manual_seed(cfg["seed"] + 1)
        probe = torch.rand(cfg["batches"] * cfg["n"], 3, 32, 32, generator=generator)  # same pixels for any n
        # Every contender gets these same tensors, as a data loader gives them (N, C, H, W). rayrs's probing
        # forward pass turns them channels-last itself (`rayrs.similarity.grams.channels_last`), part of its
        # method; the peers' hooks flatten with reshape, which would copy a channels-last activation.
        self.probe = [x.to(self.device) for x in probe[: n * batches].split(n)]
        self.n = n
        self.layers = comparable_layers(self.model, self.probe[0][:1])
        last_call: dict[str, Any] = {}
        for layer in self.layers:
            last_call[layer.module_name] = layer  # dict keeps first-seen order, value = last call
        self.peer_layers = list(last_call.values())
        self.peer_names = [layer.module_name for layer in self.peer_layers]
        self.peer_index = [layer.index for layer in self.peer_layers]
        self.cpu_seconds: float | None = None  # CPU time (all threads) of the best call of the last `timed`

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

    def timed(self, fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
        """Best wall time of `repeats` calls of fn (device synchronised), and the last call's result."""
        best, result = math.inf, None
        for _ in range(repeats):
            result = None  # free the previous result before the next call, so peaks do not stack
            self.sync()
            start, cpu_start = time.perf_counter(), time.process_time()
            result = fn()
            self.sync()
            elapsed = time.perf_counter() - start
            if elapsed < best:
                best, self.cpu_seconds = elapsed, time.process_time() - cpu_start
        return best, result

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

    seconds, _ = b.timed(run, b.cfg["repeats"])
    return {"seconds": seconds}


def measure_rayrs(b: Bench) -> dict[str, Any]:
    """The cross_layer comparison: `layer_grams` once per minibatch, all L x L pairs in one GEMM."""
    from rayrs.similarity import MinibatchCKA, layer_grams

    parts = {"grams": 0.0, "hsic": 0.0}

    def run():
        cka = MinibatchCKA(len(b.layers), len(b.layers), device=b.device)
        for x in b.probe:
            start = time.perf_counter()
            with b.autocast():
                grams = layer_grams(b.model, b.layers, x)
            b.sync()
            middle = time.perf_counter()
            cka.update(grams, grams)
            b.sync()
            parts["grams"] += middle - start
            parts["hsic"] += time.perf_counter() - middle
        return cka.compute()

    parts_best = {"grams": math.inf, "hsic": math.inf}
    seconds, cpu, result = math.inf, None, None
    for _ in range(b.cfg["repeats"]):
        parts.update(grams=0.0, hsic=0.0)
        result = None
        elapsed, result = b.timed(run, 1)
        if elapsed < seconds:
            seconds, cpu, parts_best = elapsed, b.cpu_seconds, dict(parts)
    return {"seconds": seconds, "cpu_seconds": cpu, "cka": result.cpu().tolist(), "parts": parts_best}


def measure_torch_cka(b: Bench) -> dict[str, Any]:
    """torch-cka on `rows` rows of the layer grid (all rows unless told), extrapolated to the full grid.

    torch-cka's pair loop costs the same for every row (each row recomputes all L column Grams), so
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
    wanted = b.cfg["torch_cka_rows"]
    rows = list(range(n_peer))
    if wanted is not None and wanted < n_peer:  # evenly spread rows, first and last included
        rows = sorted({round(i * (n_peer - 1) / max(wanted - 1, 1)) for i in range(wanted)})
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

        seconds, _ = b.timed(run_bare, 1)
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

    seconds, matrix = b.timed(run, 1)
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

    seconds, result = b.timed(run, b.cfg["repeats"])
    return {"seconds": seconds, "cka": result.float().cpu().tolist(), "dtype": str(result.dtype).replace("torch.", "")}


def epoch_pairs() -> list[tuple[int, int]]:
    return [(i, j) for i in range(CHECKPOINTS) for j in range(i + 1, CHECKPOINTS)]


def sampled_epoch_pairs(count: int | None) -> list[tuple[int, int]]:
    """`count` epoch pairs spread evenly over all of them (all when count is None)."""
    pairs = epoch_pairs()
    if count is None or count >= len(pairs):
        return pairs
    step = (len(pairs) - 1) / max(count - 1, 1)
    return [pairs[round(k * step)] for k in range(count)]


def measure_rayrs_cross_epoch(b: Bench) -> dict[str, Any]:
    """Every epoch pair, every layer pair: each checkpoint's Grams once per minibatch, one GEMM per pair."""
    from rayrs.similarity import MinibatchCKA, layer_grams

    models = b.checkpoints()
    b.sync()
    pairs = epoch_pairs()
    L = len(b.layers)

    def run():
        ckas = {pair: MinibatchCKA(L, L, device=b.device) for pair in pairs}
        for x in b.probe:
            with b.autocast():
                grams = [layer_grams(model, b.layers, x) for model in models]
            for i, j in pairs:
                ckas[(i, j)].update(grams[i], grams[j])
            del grams
        return {pair: cka.compute() for pair, cka in ckas.items()}

    seconds, result = b.timed(run, 1)
    checked = sampled_epoch_pairs(b.cfg["pytorch_cka_epoch_pairs"])
    grid = b.peer_index
    return {
        "seconds": seconds,
        "pairs": len(pairs),
        "checked": {f"{i},{j}": result[(i, j)][grid][:, grid].cpu().tolist() for i, j in checked},
        "mean_diagonal": {f"{i},{j}": float(result[(i, j)].diagonal().mean()) for i, j in pairs},
    }


def measure_pytorch_cka_cross_epoch(b: Bench) -> dict[str, Any]:
    """The same workload with pytorch-cka: one `compute_cka(ckpt_i, ckpt_j, loader)` per epoch pair.

    With --quick only a spread sample of epoch pairs is timed and the time scaled by the pair count (every
    call does the same work: two forward passes and 2L Grams per minibatch).
    """
    from cka import compute_cka

    models = b.checkpoints()
    b.sync()
    loader = b.loader(b.probe)
    pairs = sampled_epoch_pairs(b.cfg["pytorch_cka_epoch_pairs"])

    def run():
        out = {}
        for i, j in pairs:
            with b.autocast():
                out[(i, j)] = compute_cka(models[i], models[j], loader, layers=b.peer_names, device=b.device,
                                          progress=False)[0]
        return out

    seconds, result = b.timed(run, 1)
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
    no centring, no U-centring, no HSIC), and the pieces of one rayrs Gram on the widest layer, timed alone.
    """
    torch = b.torch
    from rayrs.similarity import MinibatchCKA
    from rayrs.similarity.cka import (
        Int8Scratch,
        _takes_int8_route,
        centered_gram,
        centered_gram_float32,
        exact_float32,
        flatten_examples,
        u_center,
    )
    from rayrs.similarity.grams import channels_last

    repeats = b.cfg["repeats"]

    def forward() -> None:  # in the channels-last layout rayrs's probing forward pass uses
        with torch.no_grad(), b.autocast():
            for x in b.probe:
                b.model(channels_last(x))

    t_forward, _ = b.timed(forward, repeats)

    grams = torch.empty(len(b.layers), b.n, b.n, dtype=torch.float32, device=b.device)

    def raw(slot: int, output) -> None:
        features = flatten_examples(output.detach()).float()
        with exact_float32(b.device):
            torch.mm(features, features.T, out=grams[slot])

    handles = hook_layers(b.model, b.layers, raw)
    t_raw_gram, _ = b.timed(forward, repeats)
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
    micro = max(repeats, 2)

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
    t_raw, _ = b.timed(raw_one, micro)
    t_centre, _ = b.timed(centre_only, micro)
    t_float32_route, _ = b.timed(lambda: centered_gram_float32(flatten_examples(act)), micro)
    t_centred_gram, gram = b.timed(lambda: centered_gram(act, scratch), micro)
    t_u, _ = b.timed(lambda: u_center(gram), micro)
    L = len(b.layers)
    stack = torch.randn(L, b.n, b.n, device=b.device)

    def update_same():
        MinibatchCKA(L, L, device=b.device).update(stack, stack)

    def gemm_only():
        flat = stack.reshape(L, -1)
        with exact_float32(b.device):
            return flat @ flat.T

    t_update, _ = b.timed(update_same, micro)
    t_gemm, _ = b.timed(gemm_only, micro)
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
        "widest_route": "int8" if _takes_int8_route(flatten_examples(act)) else "float32",
        "widest_float32_route": t_float32_route,
        "widest_u_center": t_u,
        "hsic_update_same": t_update,
        "hsic_gemm": t_gemm,
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


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return None
    return a / b


def fmt(x: float | None, spec: str = ".3g") -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def summarise(cfg: dict[str, Any], res: dict[str, dict[str, Any]], wall: float) -> dict[str, Any]:
    """Print the table, the accuracy and the goals; return the final JSON object."""
    sec = {name: r.get("seconds") for name, r in res.items()}
    rss = {name: r.get("peak_rss_mb") for name, r in res.items()}
    ref = res.get("reference", {})
    layers = next((r["layers"] for r in res.values() if "layers" in r), None)
    peer_index = next((r["peer_index"] for r in res.values() if "peer_index" in r), None)
    names = next((r["layer_names"] for r in res.values() if "layer_names" in r), [])

    notes = {
        "profile": "forward + bare float32 X X^T per layer",
        "floor": "forward + layer_grams (centre, Gram, U-centre)",
        "rayrs": "layer_grams + MinibatchCKA, all L x L pairs",
        "pytorch_cka": "compute_cka(model, model), one call",
        "torch_cka": "CKA(model, model).compare, pair loop",
        "rayrs_cross_epoch": f"{CHECKPOINTS} ckpts, {CHECKPOINTS * (CHECKPOINTS - 1) // 2} epoch pairs",
        "pytorch_cka_cross_epoch": "one compute_cka per epoch pair",
        "reference": "float64, explicit HSIC (not a contender)",
    }
    tc = res.get("torch_cka", {})
    if tc.get("fixed_seconds") is not None:
        notes["torch_cka"] += (f"; TIMED ON {len(tc['rows'])} OF {len(peer_index)} ROWS "
                               f"({fmt(tc['seconds_measured'])} s, {fmt(tc['fixed_seconds'])} s of it with no "
                               "rows), scaled by pairs")
    pe = res.get("pytorch_cka_cross_epoch", {})
    if pe.get("pairs_timed") and pe["pairs_timed"] < pe["pairs"]:
        notes["pytorch_cka_cross_epoch"] += (f"; TIMED ON {pe['pairs_timed']} OF {pe['pairs']} PAIRS "
                                             f"({fmt(pe['seconds_measured'])} s), scaled")
    cuda = cfg["device"] == "cuda"
    print()
    header = f"{'measurement':<25} {'n':>5} {'time_s':>9} {'cpu_s':>8} {'peak_rss_MB':>11} {'setup_MB':>9}"
    header += f" {'peak_cuda_MB':>12}" if cuda else ""
    print(header + "  note")
    for name, r in res.items():
        if "seconds" not in r:
            print(f"{name:<25} FAILED: {r['error']}")
            continue
        if name == "profile":
            print(f"{'forward':<25} {r.get('n', ''):>5} {fmt(r.get('forward'), '.3f'):>9} {'':>8} "
                  f"{'(same process)':>21}"
                  "  forward pass alone, no hooks")
        line = (f"{name:<25} {r.get('n', ''):>5} {fmt(r.get('seconds'), '.3f'):>9}"
                f" {fmt(r.get('cpu_seconds'), '.1f'):>8}"
                f" {fmt(r.get('peak_rss_mb'), '.0f'):>11}"
                f" {fmt(r.get('setup_rss_mb'), '.0f'):>9}")
        line += f" {fmt(r.get('peak_cuda_mb'), '.0f'):>12}" if cuda else ""
        print(line + "  " + notes.get(name, "") + (f" [error: {r['error']}]" if r.get("error") else ""))

    print("  time_s: wall seconds, best of the repeats (minibatches summed); cpu_s: CPU seconds of all the process's "
          "threads in that call (cpu_s well below threads x time_s means other processes held the cores); "
          "peak_rss_MB: ru_maxrss of the measurement's own process; setup_MB: its RSS before the measurement "
          "(torch, model, probe)")

    # Where rayrs's time goes (differences of the staged measurements above).
    prof = res.get("profile", {})
    f, g, fl, ry = prof.get("forward"), prof.get("raw_gram"), sec.get("floor"), sec.get("rayrs")
    parts = res.get("rayrs", {}).get("parts", {})
    if None not in (f, g, fl, ry):
        print(f"\nrayrs time, stage by stage (separate processes): forward {f:.3f} s | + bare float32 X X^T "
              f"{g - f:+.3f} s | rayrs's centred, U-centred Grams in hooks instead {fl - g:+.3f} s | + HSIC "
              f"(MinibatchCKA) {ry - fl:+.3f} s = {ry:.3f} s")
    if parts:
        print(f"  inside the rayrs run itself: layer_grams {parts['grams']:.3f} s + MinibatchCKA.update "
              f"{parts['hsic']:.3f} s (ratio {(parts['grams'] + parts['hsic']) / parts['grams']:.3f}, free of "
              "run-to-run noise)")
    if "widest_layer" in prof:
        print(f"  widest layer {prof['widest_layer']} ({prof['features']} features x n = {cfg['n']}): bare float32 "
              f"X X^T {prof['widest_raw_gram']:.4f} s; rayrs's centred_gram ({prof['widest_route']} route) "
              f"{prof['widest_centered_gram']:.4f} s; its float32 route {prof['widest_float32_route']:.4f} s, of "
              f"which centring the features {prof['widest_centre_features']:.4f} s; u_center "
              f"{prof['widest_u_center']:.4f} s")
        print(f"  one MinibatchCKA.update({layers} layers, same Grams both sides) {prof['hsic_update_same']:.4f} s: "
              f"the L x L GEMM {prof['hsic_gemm']:.4f} s (the self terms are its diagonal)")

    # Accuracy against the float64 reference.
    acc: dict[str, Any] = {}
    peer_diff: dict[str, Any] = {}
    peer_bad: dict[str, Any] = {}
    if "cka" in ref:
        ref_u, ref_b = ref["cka"], ref["cka_biased"]
        print(f"\naccuracy vs the float64 reference (unbiased HSIC, Song et al. 2012), on {layers} layers:")
        print(f"  reference itself: {bad_values(ref_u)['outside_0_1']} values below 0 or above 1 "
              f"(the unbiased estimate may dip below 0 for unrelated layers)")
        if "cka" in res.get("rayrs", {}):
            acc["rayrs"] = max_abs_diff(res["rayrs"]["cka"], ref_u)
            print(f"  rayrs        max |diff| {acc['rayrs']:.2e} over all {layers}x{layers} pairs; "
                  f"{bad_values(res['rayrs']['cka'])}")
        if res.get("torch_cka", {}).get("cka") is not None:
            rows = tc["rows"]
            grid = sub_grid(ref_u, [peer_index[i] for i in rows], peer_index)
            peer_diff["torch_cka"] = max_abs_diff(tc["cka"], grid)
            bad = bad_values(tc["cka"])
            peer_bad["torch_cka"] = bad["nan"] + bad["outside_0_1"]
            print(f"  torch-cka    max |diff| {peer_diff['torch_cka']:.2e} vs unbiased (its estimator: Song et al. "
                  f"eq. 5, uncentred features) on {len(rows)}x{len(peer_index)} pairs; {bad}")
        elif "torch_cka" in res:
            peer_diff["torch_cka"], peer_bad["torch_cka"] = None, None
            print(f"  torch-cka    no matrix: {tc.get('error')}")
        pc = res.get("pytorch_cka", {})
        if "cka" in pc:
            grid_u = sub_grid(ref_u, peer_index, peer_index)
            grid_b = sub_grid(ref_b, peer_index, peer_index)
            peer_diff["pytorch_cka"] = max_abs_diff(pc["cka"], grid_u)
            vs_biased = max_abs_diff(pc["cka"], grid_b)
            clamped = [[min(max(x, 0.0), 1.0) for x in row] for row in grid_u]
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
            print(f"  peers were given the same {layers} layers (module paths: {names[0]} ... {names[-1]})")
    re, pe_ = res.get("rayrs_cross_epoch", {}), res.get("pytorch_cka_cross_epoch", {})
    cross_diff = None
    if "checked" in re and "checked" in pe_:
        def clamp(m):
            return [[min(max(x, 0.0), 1.0) for x in row] for row in m]

        cross_diff = max(max_abs_diff(clamp(re["checked"][k]), pe_["checked"][k]) for k in pe_["checked"])
        print(f"  cross_epoch: pytorch-cka vs rayrs (clamped to [0, 1] as pytorch-cka clamps) max |diff| "
              f"{cross_diff:.2e} on {len(pe_['checked'])} epoch pairs, n = {re.get('n')}")
    if "mean_diagonal" in re:
        md = re["mean_diagonal"]
        print("  cross_epoch mean same-layer CKA, epoch 0 vs 1..9: "
              + " ".join(f"{md[f'0,{j}']:.3f}" for j in range(1, CHECKPOINTS)))

    summary = {
        "speedup_vs_torch_cka": ratio(sec.get("torch_cka"), sec.get("rayrs")),
        "time_over_forward_gram": ratio(sec.get("rayrs"), sec.get("floor")),
        "time_over_forward_gram_in_run": (parts["grams"] + parts["hsic"]) / parts["grams"] if parts else None,
        "time_over_forward_raw_gram": ratio(sec.get("rayrs"), prof.get("raw_gram")),
        "forward_share_of_rayrs_time": ratio(prof.get("forward"), sec.get("rayrs")),
        "speedup_vs_pytorch_cka": ratio(sec.get("pytorch_cka"), sec.get("rayrs")),
        "speedup_vs_pytorch_cka_cross_epoch": ratio(sec.get("pytorch_cka_cross_epoch"), sec.get("rayrs_cross_epoch")),
        "peak_rss_ratio_vs_pytorch_cka": ratio(rss.get("rayrs"), rss.get("pytorch_cka")),
        "max_abs_diff_vs_reference": acc.get("rayrs"),
        "peer_max_abs_diff": peer_diff,
        "peer_nan": peer_bad,
        "peer_code_in_float64_max_abs_diff": acc.get("peer_code_in_float64"),
    }
    cpu = {name: r.get("cpu_seconds") for name, r in res.items()}
    summary["cpu_time_ratios"] = {  # the same ratios from CPU seconds: less moved by other processes' load
        "speedup_vs_torch_cka": ratio(cpu.get("torch_cka"), cpu.get("rayrs")),
        "time_over_forward_gram": ratio(cpu.get("rayrs"), cpu.get("floor")),
        "speedup_vs_pytorch_cka": ratio(cpu.get("pytorch_cka"), cpu.get("rayrs")),
        "speedup_vs_pytorch_cka_cross_epoch": ratio(cpu.get("pytorch_cka_cross_epoch"), cpu.get("rayrs_cross_epoch")),
    }
    if cuda:
        summary["peak_cuda_ratio_vs_pytorch_cka"] = ratio(res.get("rayrs", {}).get("peak_cuda_mb"),
                                                          res.get("pytorch_cka", {}).get("peak_cuda_mb"))
    print("\ngoals:")
    for key, (goal, sense) in GOALS.items():
        value = summary.get(key)
        met = None if value is None else (value >= goal if sense == "ge" else value <= goal)
        verdict = {None: "not measured", True: "met", False: "MISSED"}[met]
        by_cpu = summary["cpu_time_ratios"].get(key)
        by_cpu = f"  (from CPU seconds: {fmt(by_cpu, '.4g')})" if by_cpu is not None and not cuda else ""
        sign = ">=" if sense == "ge" else "<="
        print(f"  {key:<38} {fmt(value, '.4g'):>10}  goal {sign} {goal:g}  {verdict}{by_cpu}")
    summary.update(
        cross_epoch_max_abs_diff_rayrs_vs_pytorch_cka=cross_diff,
        seconds={k: v for k, v in sec.items()},
        cpu_seconds={k: r.get("cpu_seconds") for k, r in res.items()},
        peak_rss_mb={k: v for k, v in rss.items()},
        device=cfg["device"],
        arch=f"{cfg['arch']}-{cfg['depth']}-{cfg['width']}" if cfg["arch"] == "wrn" else cfg["arch"],
        layers=layers,
        peer_layers=len(peer_index) if peer_index else None,
        n=cfg["n"],
        minibatches=cfg["batches"],
        workload_n=cfg["workload_n"],
        bf16=cfg["bf16"],
        quick=cfg["quick"],
        torch_cka_rows_timed=len(tc["rows"]) if "rows" in tc else None,
        pytorch_cka_epoch_pairs_timed=pe.get("pairs_timed"),
        wall_seconds=wall,
    )
    if cuda:
        summary["peak_cuda_mb"] = {k: r.get("peak_cuda_mb") for k, r in res.items()}
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--arch", default="wrn", help="a rayrs.models.MODELS name (default wrn)")
    p.add_argument("--depth", type=int, default=None, help="default 16 for wrn")
    p.add_argument("--width", type=int, default=None, help="default 2 for wrn")
    p.add_argument("--n", type=int, default=1024, help="examples per minibatch (paper: 1024)")
    p.add_argument("--batches", type=int, default=None, help="minibatches of n (default 2; 1 with --quick)")
    p.add_argument("--bf16", action="store_true", help="forward under bf16 autocast (rayrs Grams stay float32)")
    p.add_argument("--quick", action="store_true",
                   help=f"one minibatch, workload at n = {QUICK_WORKLOAD_N}, torch-cka timed on "
                        f"{QUICK_TORCH_CKA_ROWS} rows, pytorch-cka workload on {QUICK_PYTORCH_CKA_EPOCH_PAIRS} "
                        "epoch pairs (both scaled by pair count), best of 2 for the one-call timings")
    p.add_argument("--repeats", type=int, default=None, help="best of R for the one-call timings (default 3; 2 quick)")
    p.add_argument("--torch-cka-rows", type=int, default=None,
                   help=f"time torch-cka on this many rows of the layer grid (default all; "
                        f"{QUICK_TORCH_CKA_ROWS} quick)")
    p.add_argument("--pytorch-cka-epoch-pairs", type=int, default=None,
                   help=f"time pytorch-cka's workload on this many epoch pairs (default all 45; "
                        f"{QUICK_PYTORCH_CKA_EPOCH_PAIRS} quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="+", choices=list(MEASUREMENTS), metavar="NAME",
                   help="run only these measurements: " + ", ".join(MEASUREMENTS))
    p.add_argument("--measure", choices=list(MEASUREMENTS), help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    wrn = args.arch == "wrn"
    depth = args.depth if args.depth is not None else (16 if wrn else None)
    width = args.width if args.width is not None else (2 if wrn else None)
    batches = args.batches if args.batches is not None else (1 if args.quick else 2)
    rows_wanted = args.torch_cka_rows
    if rows_wanted is None and args.quick:
        rows_wanted = QUICK_TORCH_CKA_ROWS
    return {
        "device": args.device, "arch": args.arch, "depth": depth, "width": width, "n": args.n, "batches": batches,
        "bf16": args.bf16, "quick": args.quick, "seed": args.seed,
        # Best of 2 even when quick: single runs of the one-call timings move by 10% on a shared 2-core machine.
        "repeats": args.repeats if args.repeats is not None else (2 if args.quick else 3),
        "workload_n": min(args.n, QUICK_WORKLOAD_N) if args.quick else args.n,
        "workload_batches": batches,
        "torch_cka_rows": rows_wanted,  # None: every row
        "pytorch_cka_epoch_pairs": (args.pytorch_cka_epoch_pairs if args.pytorch_cka_epoch_pairs is not None
                                    else (QUICK_PYTORCH_CKA_EPOCH_PAIRS if args.quick else None)),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.measure:
        _child(args.measure, json.loads(args.config))
        return
    if args.n < 4:
        raise SystemExit(f"--n {args.n}: the unbiased HSIC needs minibatches of at least 4 examples (paper: 1024)")
    cfg = resolve_config(args)
    started = time.perf_counter()
    order = ["profile", "floor", "rayrs", "pytorch_cka", "reference", "torch_cka", "rayrs_cross_epoch",
             "pytorch_cka_cross_epoch"]
    if args.only:
        order = [name for name in order if name in args.only]
    print(f"benchmarks/cka.py: {cfg['arch']} depth={cfg['depth']} width={cfg['width']} on {cfg['device']}, "
          f"n={cfg['n']} x {cfg['batches']} minibatch(es), workload n={cfg['workload_n']}, bf16={cfg['bf16']}, "
          f"quick={cfg['quick']}, best of {cfg['repeats']} for one-call timings; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    if cfg["bf16"]:
        print("  --bf16: every contender's forward (and the peers' Grams, which they form in the forward's dtype) "
              "runs under bf16 autocast; rayrs forms its Grams in float32", flush=True)
    results: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(order, 1):
        if name == "torch_cka" and cfg["torch_cka_rows"] is not None:
            print(f"  torch-cka: timing {cfg['torch_cka_rows']} rows of the layer grid only (evenly spread), "
                  "scaled by the number of pairs", flush=True)
        if name == "pytorch_cka_cross_epoch" and cfg["pytorch_cka_epoch_pairs"] is not None:
            print(f"  pytorch-cka cross_epoch: timing {cfg['pytorch_cka_epoch_pairs']} of "
                  f"{len(epoch_pairs())} epoch pairs, scaled by the number of pairs", flush=True)
        t0 = time.perf_counter()
        results[name] = run_child(name, cfg)
        r = results[name]
        status = f"{r['seconds']:.3f} s" if "seconds" in r and r["seconds"] is not None else f"FAILED {r.get('error')}"
        print(f"[{k}/{len(order)}] {name:<24} {status}  (child wall {time.perf_counter() - t0:.1f} s)", flush=True)
        if k == 1 and "seconds" not in r:  # the first measurement is rayrs alone: a set-up error, not a peer's
            raise SystemExit(f"benchmarks/cka.py: {name} failed, the rest would too: {r.get('error')}")
    summary = summarise(cfg, results, time.perf_counter() - started)
    print(f"\ntotal wall time {summary['wall_seconds']:.1f} s; load average now {os.getloadavg()[0]:.2f} on "
          f"{os.cpu_count()} CPUs (other processes' load slows every measurement alike, but not evenly)")
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    # Run as a script, this file's folder heads sys.path and this file would shadow pytorch-cka's `cka` module.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    main()
