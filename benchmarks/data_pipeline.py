"""One epoch of Imagenette's training-data preparation: the padded crop rayrs used, against RandomResizedCrop.

Before this change rayrs stored every Imagenette image resized to 224 x 224 and trained on a 28-pixel zero-
padded random crop + flip (`rayrs.data.PaddedCrop`, one gather). Now it trains on the paper's RandomResizedCrop
+ flip (`rayrs.data.RandomResizedCrop`): crop boxes drawn by torchvision's rule, each crop resampled from the
whole stored image (an `ImageCanvas`, 320 x 480 at 224 px) with PIL's bilinear filter as two batched matrix
products. For scale, one ResNet-18 forward + backward pass on one minibatch (the cheapest training step; PGD-10
adds ten more of them).

Timed in ROUNDS (`benchmarks/timing.py`): each round augments every minibatch of the same epoch order once with
each transform, then runs the training step, in that order and reversed every other round, so each ratio's two
sides run back to back. The images are random pixels (the work does not depend on what they show) in the shapes
of imagenette2-320's files, seeded: 70% 320 x 426 (4:3), 15% 320 x 480 (3:2), 10% portrait 426 x 320, 5% square
320 x 320. ``--images`` fewer than Imagenette's 9469 times that many and scales the epoch to 9469 images (the
work per minibatch does not depend on how many images are stored); ``--load-root`` loads a real tree instead
and also reports what loading costs. The last line printed is one JSON object; its headline keys are medians
over the rounds of per-round (paired) ratios, with their min-max under "spread":

    rrc_over_padded       one epoch of RandomResizedCrop / one epoch of the padded crop
    rrc_over_train_step   one minibatch of RandomResizedCrop / one ResNet-18 forward + backward of it

and the images kept (``stored_before_gib``: the 224-pixel training split; ``stored_after_gib``: plus the canvas).

    uv run python benchmarks/data_pipeline.py --images 1280                       # CPU, 3 rounds: ~10 minutes on 2 cores
    uv run python benchmarks/data_pipeline.py --device cuda --rounds 5            # GPU: all 9469 images
    uv run python benchmarks/data_pipeline.py --load-root data/imagenette2-320    # real files: load, then the rounds
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from pathlib import Path

import torch

from rayrs.data import ImageCanvas, ImageDataset, PaddedCrop, RandomResizedCrop, canvas_shape, load_dataset

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

IMAGENETTE_TRAIN = 9469
SHAPES = [((320, 426), 0.70), ((320, 480), 0.15), ((426, 320), 0.10), ((320, 320), 0.05)]  # (height, width), share


def synthetic_imagenette(n: int, size: int, device: torch.device) -> ImageDataset:
    """`n` training images stored both ways: ``(n, 3, size, size)`` (what the padded crop reads) and a canvas."""
    generator = torch.Generator().manual_seed(0)
    short, long = canvas_shape(size)
    shares = torch.tensor([share for _, share in SHAPES])
    kinds = torch.multinomial(shares, n, replacement=True, generator=generator)
    sources = torch.tensor([SHAPES[k][0] for k in kinds.tolist()])  # (n, 2) height, width of the files
    scale = short / sources.min(dim=1).values.double()  # the canvas's Resize(short, max_size=long)
    scale = torch.minimum(scale, long / sources.max(dim=1).values.double())
    sizes = (sources * scale[:, None]).floor().long()
    canvas = ImageCanvas(
        pixels=torch.randint(0, 256, (n, 3, short, long), dtype=torch.uint8, generator=generator).to(device),
        sizes=sizes.to(device),
        source_sizes=sources.to(device),
        transposed=(sizes[:, 0] > sizes[:, 1]).to(device),
    )
    return ImageDataset(
        name="imagenette",
        train_images=torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator).to(device),
        train_labels=torch.zeros(n, dtype=torch.int64, device=device),
        test_images=torch.zeros(1, 3, size, size, dtype=torch.uint8, device=device),
        test_labels=torch.zeros(1, dtype=torch.int64, device=device),
        classes=tuple(str(c) for c in range(10)),
        train_canvas=canvas,
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def epoch_seconds(augmentation, data: ImageDataset, batches: list[torch.Tensor], device: torch.device) -> float:
    """Seconds to augment every minibatch of one epoch (the epoch's generator, as `train_epoch` makes it)."""
    generator = torch.Generator(device=device).manual_seed(1)

    def run() -> None:
        for batch in batches:
            augmentation(data, batch, generator)

    seconds, _ = stopwatch(run, lambda: synchronize(device))
    return seconds


def train_step(batch: torch.Tensor, device: torch.device):
    """One ResNet-18 forward + backward on `batch` (fp32 on a CPU; bf16 autocast and channels_last on CUDA, as
    rayrs trains); returns a function of no arguments that runs it and returns its seconds."""
    from rayrs.models import build_model

    model = build_model("resnet18", num_classes=10).to(device).train()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    labels = torch.zeros(batch.shape[0], dtype=torch.int64, device=device)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = torch.nn.functional.cross_entropy(model(batch), labels)
        loss.backward()
        model.zero_grad(set_to_none=True)

    return lambda: stopwatch(step, lambda: synchronize(device))[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=IMAGENETTE_TRAIN, help="stored images (epoch scaled to 9469)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS, help=f"rounds of interleaved timings (at least {MIN_ROUNDS})")
    parser.add_argument("--no-step", action="store_true", help="skip the ResNet-18 forward + backward")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--load-root", help="an Imagenette tree: time load_dataset on it and augment its images")
    parser.add_argument("--json", metavar="PATH", help="also write the final JSON object to PATH")
    args = parser.parse_args()
    check_rounds(args.rounds)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    load = {}
    if args.load_root:  # real files: what loading costs (decoding both views), then their epoch
        started = time.perf_counter()
        data = load_dataset("imagenette", root=args.load_root, image_size=args.size, device=device)
        held = sum(t.numel() for t in (data.train_images, data.test_images, data.train_canvas.pixels))
        load = {"load_s": time.perf_counter() - started, "held_gb": held / 1e9,
                "load_peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}  # KiB on Linux
        args.images = data.train_images.shape[0]
    else:
        data = synthetic_imagenette(args.images, args.size, device)
    order = torch.randperm(args.images, generator=torch.Generator().manual_seed(2)).to(device)
    batches = [b for b in order.split(args.batch) if b.numel() > 1]
    scale = IMAGENETTE_TRAIN / args.images  # same minibatch work, the full epoch's count of minibatches
    full_epoch_batches = math.ceil(IMAGENETTE_TRAIN / args.batch)
    padded, rrc = PaddedCrop(padding=28, flip=True), RandomResizedCrop()
    for augmentation in (padded, rrc):  # warm-up, untimed: allocator, kernels, caches
        epoch_seconds(augmentation, data, batches[:2], device)
    contenders = {  # listed in the order a round runs them; the next round runs them in reverse
        "padded_crop_epoch_s": lambda r: scale * epoch_seconds(padded, data, batches, device),
        "random_resized_crop_epoch_s": lambda r: scale * epoch_seconds(rrc, data, batches, device),
    }
    if not args.no_step:
        step = train_step(rrc(data, batches[0], torch.Generator(device=device).manual_seed(3)), device)
        step()  # warm-up
        contenders["train_step_s"] = lambda r: step()
    short, long = canvas_shape(args.size)
    print(f"device {device}, {args.images} images (epoch scaled to {IMAGENETTE_TRAIN}), batch {args.batch}, "
          f"{args.size} px, canvas {short} x {long}, {torch.get_num_threads()} CPU threads; {args.rounds} rounds of "
          f"{', '.join(contenders)} ({ORDER_NOTE})", flush=True)
    per_round = run_rounds(contenders, args.rounds, on_result=lambda r, k, name, value: print(
        f"  round {r + 1}/{args.rounds} {name:<28} {value:10.2f} s", flush=True))
    for figures in per_round:
        figures["random_resized_crop_batch_s"] = figures["random_resized_crop_epoch_s"] / full_epoch_batches
        figures["padded_crop_batch_s"] = figures["padded_crop_epoch_s"] / full_epoch_batches
    figures = figure_spreads(per_round)
    ratios = {"rrc_over_padded": Ratio("random_resized_crop_epoch_s", "padded_crop_epoch_s")}
    if not args.no_step:
        ratios["rrc_over_train_step"] = Ratio("random_resized_crop_batch_s", "train_step_s")
    values, spreads = headlines(per_round, ratios)
    stored_before = data.train_images.numel() * scale
    stored_after = stored_before + data.train_canvas.pixels.numel() * scale

    print(f"\nmedian [min-max, rounds] over {args.rounds} rounds; ratios are medians of each round's own ratio:")
    print(f"  padded crop, one epoch          {describe(figures['padded_crop_epoch_s'], '.2f')} s "
          f"({describe(figures['padded_crop_batch_s'], '.3f')} s a minibatch)")
    print(f"  RandomResizedCrop, one epoch    {describe(figures['random_resized_crop_epoch_s'], '.2f')} s "
          f"({describe(figures['random_resized_crop_batch_s'], '.3f')} s a minibatch)")
    print(f"  rrc_over_padded                 {describe(spreads['rrc_over_padded'], '.3f')}")
    if not args.no_step:
        print(f"  ResNet-18 forward + backward    {describe(figures['train_step_s'], '.2f')} s a minibatch")
        print(f"  rrc_over_train_step             {describe(spreads['rrc_over_train_step'], '.4f')}")
    print(f"  stored: {stored_before / 2**30:.2f} GiB before (the {args.size}-pixel training split), "
          f"{stored_after / 2**30:.2f} GiB after (+ the canvas)")
    if load:
        print(f"  load_dataset({args.load_root}): {load['load_s']:.0f} s, {load['held_gb']:.2f} GB of images held "
              f"(train, test, canvas), peak RSS {load['load_peak_rss_gb']:.2f} GB while loading")
    result = {
        **values,
        **{name: figures[name]["median"] for name in figures},
        "stored_before_gib": round(stored_before / 2**30, 3),
        "stored_after_gib": round(stored_after / 2**30, 3),
        **load,
        "spread": spreads,
        "figures": figures,
        "rounds": args.rounds,
        "order": f"{ORDER_NOTE}: {', '.join(contenders)}",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "images": args.images,
        "threads": torch.get_num_threads(),
        "machine": machine(),
    }
    emit(result, args.json)


if __name__ == "__main__":
    main()
