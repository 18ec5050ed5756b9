"""One epoch of Imagenette's training-data preparation: the padded crop rayrs used, against RandomResizedCrop.

Before this change rayrs stored every Imagenette image resized to 224 x 224 and trained on a 28-pixel zero-
padded random crop + flip (`rayrs.data.PaddedCrop`, one gather). Now it trains on the paper's RandomResizedCrop
+ flip (`rayrs.data.RandomResizedCrop`): crop boxes drawn by torchvision's rule, each crop resampled from the
whole stored image (an `ImageCanvas`, 320 x 480 at 224 px) with PIL's bilinear filter as two batched matrix
products. Both are timed on the same minibatches of the same epoch order, in one run, alternating A B A B ...
so the load of a shared machine falls on both alike; each repeat is one full pass over the minibatches.

The images are random pixels (the work does not depend on what they show) in the shapes of imagenette2-320's
files, seeded: 70% 320 x 426 (4:3), 15% 320 x 480 (3:2), 10% portrait 426 x 320, 5% square 320 x 320.
``--images`` fewer than Imagenette's 9469 times that many and scales the epoch's time to 9469 images (the
work per minibatch does not depend on how many images are stored). For scale, one ResNet-18 forward + backward
pass on one minibatch is timed too (the cheapest training step; PGD-10 adds ten more of them).

The last line printed is one JSON object: ``rrc_over_padded`` (the epoch's data preparation after / before,
median of the repeats), each arm's median and min-max seconds per epoch, the stored tensors' bytes, and
``rrc_over_train_step`` (one minibatch of RandomResizedCrop over one ResNet-18 forward + backward).

    uv run python benchmarks/data_pipeline.py --images 1280 --repeats 3      # CPU: ~10 minutes on 2 busy cores
    uv run python benchmarks/data_pipeline.py --device cuda                  # GPU: all 9469 images, 5 repeats
    uv run python benchmarks/data_pipeline.py --load-root data/imagenette2-320   # real files: load, then the epoch
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import time

import torch

from rayrs.data import ImageCanvas, ImageDataset, PaddedCrop, RandomResizedCrop, canvas_shape, load_dataset

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
    synchronize(device)
    started = time.perf_counter()
    for batch in batches:
        augmentation(data, batch, generator)
    synchronize(device)
    return time.perf_counter() - started


def train_step_seconds(batch: torch.Tensor, device: torch.device, repeats: int) -> float:
    """Median seconds of one ResNet-18 forward + backward on `batch` (as rayrs trains it on this device)."""
    from rayrs.models import build_model

    model = build_model("resnet18", num_classes=10).to(device).train()
    labels = torch.zeros(batch.shape[0], dtype=torch.int64, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        synchronize(device)
        started = time.perf_counter()
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(batch), labels)
        loss.backward()
        model.zero_grad(set_to_none=True)
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=IMAGENETTE_TRAIN, help="stored images (epoch scaled to 9469)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="epochs timed per arm, alternating (>= 3)")
    parser.add_argument("--step-repeats", type=int, default=2, help="ResNet-18 steps timed (0: skip)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--load-root", help="an Imagenette tree: time load_dataset on it and augment its images")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]

    if args.load_root:  # real files: what loading costs (decoding both views), then their epoch
        started = time.perf_counter()
        data = load_dataset("imagenette", root=args.load_root, image_size=args.size, device=device)
        load_s = time.perf_counter() - started
        args.images = data.train_images.shape[0]
    else:
        data = synthetic_imagenette(args.images, args.size, device)
    order = torch.randperm(args.images, generator=torch.Generator().manual_seed(2)).to(device)
    batches = [b for b in order.split(args.batch) if b.numel() > 1]
    arms = {"padded_crop": PaddedCrop(padding=28, flip=True), "random_resized_crop": RandomResizedCrop()}
    for augmentation in arms.values():  # warm-up: allocator, kernels, caches
        epoch_seconds(augmentation, data, batches[:2], device)
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.repeats):
        for name, augmentation in arms.items():
            times[name].append(epoch_seconds(augmentation, data, batches, device))
    scale = IMAGENETTE_TRAIN / args.images  # same minibatch work, the full epoch's count of minibatches
    epochs = {name: [t * scale for t in ts] for name, ts in times.items()}
    median = {name: statistics.median(ts) for name, ts in epochs.items()}
    per_batch = {name: median[name] / math.ceil(IMAGENETTE_TRAIN / args.batch) for name in arms}
    stored = {
        "train_images": data.train_images.numel() * scale,
        "canvas": data.train_canvas.pixels.numel() * scale,
    }
    short, long = canvas_shape(args.size)

    print(f"device {device}, {args.images} images (epoch scaled to {IMAGENETTE_TRAIN}), batch {args.batch}, "
          f"{args.size} px, canvas {short} x {long}, {args.repeats} alternating repeats, "
          f"{torch.get_num_threads()} CPU threads, load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
    for name in arms:
        low, high = min(epochs[name]), max(epochs[name])
        print(f"  {name:20s} epoch {median[name]:8.2f} s (min {low:.2f}, max {high:.2f})   "
              f"{per_batch[name] * 1e3:8.1f} ms a minibatch")
    ratio = median["random_resized_crop"] / median["padded_crop"]
    print(f"  random_resized_crop / padded_crop = {ratio:.2f}")
    print(f"  stored: train_images {stored['train_images'] / 2**30:.2f} GiB (before: all of it), "
          f"+ canvas {stored['canvas'] / 2**30:.2f} GiB (after)")
    result = {
        "rrc_over_padded": round(ratio, 3),
        **{f"{name}_epoch_s": round(median[name], 3) for name in arms},
        **{f"{name}_epoch_s_min_max": [round(min(epochs[name]), 3), round(max(epochs[name]), 3)] for name in arms},
        **{f"{name}_batch_ms": round(per_batch[name] * 1e3, 2) for name in arms},
        "stored_before_gib": round(stored["train_images"] / 2**30, 3),
        "stored_after_gib": round((stored["train_images"] + stored["canvas"]) / 2**30, 3),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "images": args.images,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
    }
    if args.step_repeats:
        batch = RandomResizedCrop()(data, batches[0], torch.Generator(device=device).manual_seed(3))
        step = train_step_seconds(batch, device, args.step_repeats)
        print(f"  ResNet-18 forward + backward, one minibatch: {step * 1e3:.1f} ms; "
              f"RandomResizedCrop of one minibatch = {per_batch['random_resized_crop'] / step:.3f} of it")
        result.update({"train_step_ms": round(step * 1e3, 1),
                       "rrc_over_train_step": round(per_batch["random_resized_crop"] / step, 4)})
    if args.load_root:
        held = sum(t.numel() for t in (data.train_images, data.test_images, data.train_canvas.pixels))
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
        print(f"  load_dataset({args.load_root}): {load_s:.0f} s, {held / 1e9:.2f} GB of images held "
              f"(train, test, canvas), peak RSS {peak_rss / 1e9:.2f} GB")
        result.update({"load_s": round(load_s, 1), "held_gb": round(held / 1e9, 2), "peak_rss_gb": round(peak_rss / 1e9, 2)})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
