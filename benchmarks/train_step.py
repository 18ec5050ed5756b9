"""What one adversarial-training step costs in rayrs, next to a clean step and next to the usual naive loop.

A PGD-k training step costs k attack steps and one training step. rayrs's attack step asks only for the input
gradient (parameters frozen, `torch.autograd.grad` on the perturbation), so the backward pass skips every
weight-gradient product; data stays on the device and is augmented there; on CUDA the model runs in
channels_last with bf16 autocast (and optionally `torch.compile`). The naive loop is the one most robust-
training code is written as: a DataLoader over CPU tensors, `.to(device)` every step, `loss.backward()` to get
the input gradient (computing and discarding weight gradients), fp32, no compile.

Everything is measured in one run, on the same model initialisation and the same batches, in ROUNDS
(`benchmarks/timing.py`): each round times k + 1 rayrs clean steps (their mean is the round's clean step, so
both sides of `at_step_over_limit` cover the same stretch of time), one rayrs PGD-k step, one naive PGD-k step
and one quickstart epoch, in that order and reversed every other round, so each ratio's two steps run back to
back. The last line printed is one JSON object; its headline keys are medians over the rounds of per-round
(paired) ratios, with their min-max under "spread":

    at_step_over_limit   PGD-k step time / ((k + 1) x clean step time)   goal <= 0.8 on CPU
    speedup_vs_naive     naive PGD-k step time / rayrs PGD-k step time   goal >= 1.3 on CPU, >= 2 on GPU
    epoch_s              one epoch of the quickstart's PGD-AT trial (digits, WRN-10-2), this device (median)

    uv run python benchmarks/train_step.py --quick                     # CPU, 3 rounds: about 2 minutes on 2 cores
    uv run python benchmarks/train_step.py --device cuda --depth 28 --width 10 --batch 256 --full-epoch --compile
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from rayrs.augment import padded_crop
from rayrs.config import TrialConfig, load_experiment
from rayrs.cost import ATTACK_STEP_FORWARDS, TRAIN_STEP_FORWARDS, forward_flops
from rayrs.data import load_dataset, to_float
from rayrs.methods import METHODS
from rayrs.models import build_model
from rayrs.train import build_for, epoch_generator, make_attack, train_epoch, train_step

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from timing import (  # noqa: E402 (a sibling file, not a package)
    MIN_ROUNDS,
    ORDER_NOTE,
    Ratio,
    check_rounds,
    describe,
    emit,
    figure_spreads,
    headlines,
    machine,
    run_rounds,
    stopwatch,
)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def fresh_model(args, device: torch.device, channels_last: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(args.arch, num_classes=10, in_channels=3, depth=args.depth, width=args.width).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


def rayrs_steps(args, device, images_u8, labels, method_name: str) -> Callable[[int], None]:
    """rayrs's own step (`rayrs.train.train_step`) on device-resident uint8 data, augmented on the device."""
    config = TrialConfig.model_validate({
        "data": {"dataset": "cifar10"},
        "train": {"method": method_name, "eps": 8 / 255, "attack": {"steps": args.k}},
    })
    model = fresh_model(args, device, channels_last=device.type == "cuda")
    runner = torch.compile(model) if args.compile else model
    optimizer = sgd(model)
    generator = torch.Generator(device=device).manual_seed(0)
    attack = make_attack(config, "train", generator)
    method = METHODS[method_name]
    batches = images_u8.shape[0] // args.batch

    def step(i: int) -> None:
        index = slice((i % batches) * args.batch, (i % batches + 1) * args.batch)
        images = padded_crop(to_float(images_u8[index]), generator=generator, padding=4, flip=True)
        train_step(runner, optimizer, images, labels[index], method, attack, config.train)

    return step


def naive_steps(args, device, images_u8, labels) -> Callable[[int], None]:
    """The usual loop: CPU DataLoader, per-step copy, loss.backward() for the input gradient, fp32."""
    model = fresh_model(args, device, channels_last=False)
    optimizer = sgd(model)
    dataset = TensorDataset(to_float(images_u8.cpu()), labels.cpu())
    loader = iter(())
    eps, step_size = 8 / 255, 2 / 255

    def step(i: int) -> None:
        nonlocal loader
        try:
            images, targets = next(loader)
        except StopIteration:
            loader = iter(DataLoader(dataset, batch_size=args.batch, shuffle=True, drop_last=True))
            images, targets = next(loader)
        images, targets = images.to(device), targets.to(device)
        model.eval()
        delta = torch.empty_like(images).uniform_(-eps, eps)
        for _ in range(args.k):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model(images + delta), targets)
            loss.backward()  # also fills every parameter's .grad, thrown away below
            delta = (delta + step_size * delta.grad.sign()).clamp(-eps, eps)
            delta = ((images + delta).clamp(0, 1) - images).detach()
        model.train()
        optimizer.zero_grad()
        F.cross_entropy(model(images + delta), targets).backward()
        optimizer.step()

    return step


def quickstart_epoch_seconds(device: torch.device) -> float:
    """One epoch of the quickstart's strongest PGD-AT trial, through `rayrs.train.train_epoch`."""
    from rayrs.config import expand

    trial = expand(load_experiment(REPO / "sweeps" / "quickstart.yaml"))[-1]
    data = load_dataset("digits", device=device)
    model = build_for(trial.config, data, device)
    optimizer = sgd(model)
    generator = epoch_generator(0, 1, device)
    attack = make_attack(trial.config, "train", generator)
    started = time.perf_counter()
    train_epoch(model, optimizer, data, trial.config, 1, attack, generator)
    synchronize(device)
    return time.perf_counter() - started


def full_epoch(args, device, step: Callable[[int], None]) -> tuple[float, float]:
    """Seconds and peak GPU memory (GiB) of one CIFAR-10-sized epoch (50,000 examples) of ``step``."""
    batches = 50_000 // args.batch
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    synchronize(device)
    started = time.perf_counter()
    for i in range(batches):
        step(i)
    synchronize(device)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return time.perf_counter() - started, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", default="wrn")
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--width", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--k", type=int, default=10, help="PGD steps per training step")
    parser.add_argument("--rounds", type=int, default=None,
                        help=f"rounds of interleaved timings (default 10; {MIN_ROUNDS} with --quick; at least {MIN_ROUNDS})")
    parser.add_argument("--quick", action="store_true", help=f"{MIN_ROUNDS} rounds, one warm-up step (CPU: about 2 minutes)")
    parser.add_argument("--compile", action="store_true", help="torch.compile rayrs's model")
    parser.add_argument("--full-epoch", action="store_true",
                        help=f"also time one 50,000-example PGD-k epoch ({MIN_ROUNDS} times)")
    parser.add_argument("--json", metavar="PATH", help="also write the final JSON object to PATH")
    args = parser.parse_args()
    device = torch.device(args.device)
    rounds = args.rounds if args.rounds is not None else (MIN_ROUNDS if args.quick else 10)
    check_rounds(rounds)
    warmup = 1 if args.quick else (3 if args.compile else 2)

    generator = torch.Generator().manual_seed(0)
    pool = 8 * args.batch
    images_u8 = torch.randint(0, 256, (pool, 3, 32, 32), dtype=torch.uint8, generator=generator).to(device)
    labels = torch.randint(0, 10, (pool,), generator=generator).to(device)

    steps = {
        "clean": rayrs_steps(args, device, images_u8, labels, "standard"),
        "pgd": rayrs_steps(args, device, images_u8, labels, "pgd"),
        "naive": naive_steps(args, device, images_u8, labels),
    }
    calls = dict.fromkeys(steps, 0)  # each contender walks through its batches in order

    def run_steps(name: str, count: int) -> float:
        """Mean seconds of `count` consecutive steps of contender `name`."""
        def run() -> None:
            for _ in range(count):
                steps[name](calls[name])
                calls[name] += 1

        seconds, _ = stopwatch(run, lambda: synchronize(device))
        return seconds / count

    for name in steps:  # warm-up, untimed: first-call set-up (and compilation) is not a step's cost
        run_steps(name, warmup)

    model = f"{args.arch}-{args.depth}-{args.width}"
    # What the GPU-hour estimate of `rayrs sweep --dry-run` needs: sustained FLOP/s of a real PGD-k step.
    flops = forward_flops(args.arch, args.depth, args.width, 3, 32, 10) * args.batch * (args.k * ATTACK_STEP_FORWARDS + TRAIN_STEP_FORWARDS)
    contenders = {  # listed in the order a round runs them; the next round runs them in reverse
        # k + 1 clean steps a round: the clean side of at_step_over_limit covers the PGD step's stretch of time.
        "clean_step_ms": lambda r: 1e3 * run_steps("clean", args.k + 1),
        "pgd_step_ms": lambda r: 1e3 * run_steps("pgd", 1),
        "naive_step_ms": lambda r: 1e3 * run_steps("naive", 1),
        "epoch_s": lambda r: quickstart_epoch_seconds(device),
    }
    print(f"device {device}, {model}, batch {args.batch}, PGD-{args.k}, compile {args.compile}; {rounds} rounds of "
          f"{', '.join(contenders)} ({ORDER_NOTE}), after {warmup} warm-up step(s) each", flush=True)
    per_round = run_rounds(contenders, rounds, on_result=lambda r, k, name, value: print(
        f"  round {r + 1}/{rounds} {name:<14} {value:10.2f}", flush=True))
    for figures in per_round:
        figures["sustained_tflops"] = flops / (figures["pgd_step_ms"] / 1e3) / 1e12
    figures = figure_spreads(per_round)
    ratios = {
        "at_step_over_limit": Ratio("pgd_step_ms", "clean_step_ms", scale=1 / (args.k + 1)),
        "speedup_vs_naive": Ratio("naive_step_ms", "pgd_step_ms"),
    }
    values, spreads = headlines(per_round, ratios)
    print(f"\nmedian [min-max, rounds] over {rounds} rounds; ratios are medians of each round's own ratio:")
    print(f"  rayrs clean step        {describe(figures['clean_step_ms'], '.1f')} ms (mean of {args.k + 1} steps a round)")
    print(f"  rayrs PGD-{args.k} step       {describe(figures['pgd_step_ms'], '.1f')} ms")
    print(f"  naive PGD-{args.k} step       {describe(figures['naive_step_ms'], '.1f')} ms")
    print(f"  at_step_over_limit      {describe(spreads['at_step_over_limit'], '.3f')}   PGD-{args.k} step / "
          f"({args.k + 1} clean steps), goal <= 0.8 on CPU")
    print(f"  speedup_vs_naive        {describe(spreads['speedup_vs_naive'], '.3f')}   naive / rayrs PGD-{args.k} step, "
          "goal >= 1.3 CPU, >= 2 GPU")
    print(f"  quickstart PGD-AT epoch {describe(figures['epoch_s'], '.2f')} s (digits, WRN-10-2)")
    print(f"  sustained               {describe(figures['sustained_tflops'], '.3g')} TFLOP/s in the PGD-{args.k} step "
          "(use as --gpu-tflops)")
    result = {
        **values,
        **{name: figures[name]["median"] for name in ("epoch_s", "clean_step_ms", "pgd_step_ms", "naive_step_ms",
                                                      "sustained_tflops")},
        "spread": spreads,
        "figures": figures,
        "rounds": rounds,
        "order": f"{ORDER_NOTE}: {', '.join(contenders)}",
        "warmup_steps": warmup,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "model": model,
        "batch": args.batch,
        "k": args.k,
        "compile": args.compile,
        "quick": args.quick,
        "machine": machine(),
    }
    if args.full_epoch:
        epochs = [full_epoch(args, device, steps["pgd"]) for _ in range(MIN_ROUNDS)]
        seconds = figure_spreads([{"pgd_epoch_s": s} for s, _ in epochs])["pgd_epoch_s"]
        peak = max(p for _, p in epochs)
        print(f"  full PGD-{args.k} epoch       {describe(seconds, '.1f')} s    peak memory {peak:.1f} GiB (50,000 examples)")
        result.update({"pgd_epoch_s": seconds["median"], "pgd_epoch_peak_gib": round(peak, 2)})
        result["figures"]["pgd_epoch_s"] = seconds
    emit(result, args.json)


if __name__ == "__main__":
    main()
