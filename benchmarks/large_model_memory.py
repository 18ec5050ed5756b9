"""Peak memory and time of one large-model comparison on a CPU, Grams only (issue 16 item 2).

Usage (from the repository root; one run each, peak RSS from the kernel):
    /usr/bin/time -v uv run python benchmarks/large_model_memory.py resnet50 1024 256
    /usr/bin/time -v uv run python benchmarks/large_model_memory.py vit_s 1024 1024

Runs `rayrs.compare(model, None, images, kind="cross_layer", batch_size=BATCH)` on N seeded uint8 images of
224 px, the model at random init (`rayrs.sources.build_architecture`, ``torch.manual_seed(0)``), with
`rayrs.similarity.grams.reuse_freed_memory` on as in rayrs's CPU workers. Prints the layer and row counts,
the wall seconds, the peak RSS and the smallest diagonal value (1 for a layer against itself).
"""

import argparse
import resource
import time

import torch

import rayrs
from rayrs.similarity.grams import reuse_freed_memory
from rayrs.sources import build_architecture

# name: (architecture, compared layers)
CASES = {
    "resnet50": ("torchvision:resnet50", ["conv", "bn", "act", "pool", "linear"]),  # the paper's types: 158
    "vit_s": ("timm:vit_small_patch16_224", ["name:blocks.*"]),  # the transformer blocks' outputs: 12
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("case", choices=list(CASES))
    parser.add_argument("n", type=int, help="probe images (issue 16: 1024)")
    parser.add_argument("batch", type=int, help="minibatch size of the minibatch CKA")
    args = parser.parse_args()
    arch, layers = CASES[args.case]
    reuse_freed_memory()
    torch.manual_seed(0)
    model = build_architecture(arch, num_classes=1000, image_size=224).eval()
    images = torch.randint(0, 256, (args.n, 3, 224, 224), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    gib = 2**20  # ru_maxrss is in kB on Linux
    print(f"setup: rss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / gib:.2f} GiB, "
          f"threads {torch.get_num_threads()}", flush=True)
    started = time.perf_counter()
    rows = rayrs.compare(model, None, images, layers=layers, kind="cross_layer", batch_size=args.batch)
    seconds = time.perf_counter() - started
    diagonal = rows.filter(rows["layer_a"] == rows["layer_b"])["value"]
    print(f"{args.case} {arch} n={args.n} batch={args.batch}: {rows['layer_a'].n_unique()} layers, {rows.height} "
          f"rows, {seconds:.1f} s, peak rss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / gib:.2f} GiB, "
          f"diag min {diagonal.min():.6f}", flush=True)


if __name__ == "__main__":
    main()
