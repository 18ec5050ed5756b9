"""What one CKA-guided freezing check costs against an epoch's training, one thread (issue 17's "under 3%").

Two measurements:

    uv run python benchmarks/freeze_check_cost.py digits --methods pgd,trades --rounds 7
    uv run python benchmarks/freeze_check_cost.py cifar --methods pgd,trades --images 128

digits: the real training set (1347 images), WRN-10-1 as in `guided_freezing.py`. Each round trains one epoch
(`rayrs.train.train_epoch`, timed) and then runs the check (`GuidedFreezing.after_epoch`, its recorded
``freeze_check_seconds``) once per variant, in alternating order (A B, then B A): the adversarial probe on the
whole default probe (67 images, the check before the cut) and on the default ``adversarial_probe`` (its first 33).
Same process, same model, same load; the share is the median over rounds of check / that round's epoch.

cifar: WRN-16-4 at 32 x 32 on ``--images`` synthetic CIFAR-shaped images (seeded uint8 noise: the cost of a
convolution does not depend on the pixels). Training's per-image cost is one epoch over them (best of
``--repeats``), scaled to CIFAR-10's 50,000; the check's parts are timed on a 256-image probe (CIFAR-10's
default): the benign Grams on 256, the method's attack and the adversarial Grams on ``adversarial_probe`` images
(default 128). The shares for another count follow by proportion (per-image costs). Nothing here is a trial:
no Ray, no checkpoint.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from rayrs.config import AutoFreezeConfig, TrialConfig
from rayrs.data import ImageDataset, to_float
from rayrs.freezing import GuidedFreezing, block_layers, default_adversarial_probe, paired_cka, probe_indices
from rayrs.similarity.grams import layer_grams
from rayrs.train import (build_for, epoch_generator, freeze_probe_attack, load_trial_data, make_attack,
                         train_epoch)

CIFAR_TRAIN = 50_000
CPU = torch.device("cpu")


def config(dataset: str, method: str) -> TrialConfig:
    """The trial both measurements train: guided_freezing.py's on digits, a CIFAR-10 WRN-16-4 otherwise."""
    robust = {} if method == "standard" else {"eps": 0.1 if dataset == "digits" else 8 / 255, "attack": {"steps": 3}}
    model, batch, lr = ({"arch": "wrn", "depth": 10, "width": 1}, 64, 0.05) if dataset == "digits" else \
        ({"arch": "wrn", "depth": 16, "width": 4}, 128, 0.1)
    return TrialConfig.model_validate({"data": {"dataset": dataset}, "model": model, "train": {
        "method": method, "epochs": 10, "batch_size": batch, "lr": lr, "seed": 0, **robust}})


def timed_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: ImageDataset, cfg: TrialConfig,
                epoch: int) -> float:
    generator = epoch_generator(0, epoch, CPU)
    started = time.perf_counter()
    train_epoch(model, optimizer, data, cfg, epoch, make_attack(cfg, "train", generator), generator)
    return time.perf_counter() - started


def digits(method: str, rounds: int) -> dict:
    cfg = config("digits", method)
    data = load_trial_data(cfg, CPU)
    model = build_for(cfg, data, CPU)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.train.lr, momentum=0.9, weight_decay=5e-4)
    attack = (lambda: freeze_probe_attack(cfg, CPU)) if cfg.train.robust else None
    default = GuidedFreezing(AutoFreezeConfig(), model, data.train_images, data.train_labels, 0, 10, attack)
    probe = default.images.shape[0]
    variants = {f"adversarial on all {probe}": GuidedFreezing(AutoFreezeConfig(adversarial_probe=probe), model,
                                                               data.train_images, data.train_labels, 0, 10, attack),
                f"adversarial on {default.adversarial_count} (default)": default}
    timed_epoch(model, optimizer, data, cfg, 1)  # untimed: lazy initialisation
    shares: dict[str, list[float]] = {name: [] for name in variants}
    epochs = []
    for r in range(rounds):
        epochs.append(timed_epoch(model, optimizer, data, cfg, r + 2))
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            # epoch 10 of 10: no decision is taken, only the Grams and the CKA (the check's whole cost).
            seconds = variants[name].after_epoch(10)[0]["freeze_check_seconds"]
            shares[name].append(seconds / epochs[-1])
        print(f"{method} round {r}: epoch {epochs[-1]:.2f} s, " +
              ", ".join(f"{name} {100 * s[-1]:.2f}%" for name, s in shares.items()), flush=True)
    return {"dataset": "digits", "method": method, "probe": probe, "rounds": rounds,
            "epoch_train_s_median": statistics.median(epochs),
            "check_share_median": {name: statistics.median(s) for name, s in shares.items()},
            "check_share_min": {name: min(s) for name, s in shares.items()}}


def cifar(method: str, images: int, repeats: int, probe: int, adversarial: int) -> dict:
    cfg = config("cifar10", method)
    generator = torch.Generator().manual_seed(0)
    count = max(images, probe)
    pixels = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (count,), generator=generator)
    data = ImageDataset(name="cifar10", train_images=pixels[:images], train_labels=labels[:images],
                        test_images=pixels[:16], test_labels=labels[:16], classes=tuple(str(i) for i in range(10)))
    model = build_for(cfg, data, CPU)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.train.lr, momentum=0.9)
    warm = ImageDataset(name="cifar10", train_images=pixels[:16], train_labels=labels[:16],
                        test_images=pixels[:16], test_labels=labels[:16], classes=data.classes)
    timed_epoch(model, optimizer, warm, cfg, 1)  # untimed: lazy initialisation
    train_s = min(timed_epoch(model, optimizer, data, cfg, r + 2) for r in range(repeats)) * CIFAR_TRAIN / images
    chosen = probe_indices(0, probe, count)
    benign, targets = to_float(pixels[chosen]), labels[chosen]
    blocks, _ = block_layers(model, benign[:2])
    parts: dict[str, list[float]] = {"benign_grams": [], "attack": [], "adversarial_grams": [], "cka": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        grams = layer_grams(model, blocks, benign)
        t1 = time.perf_counter()
        parts["benign_grams"].append(t1 - t0)
        if cfg.train.robust:
            model.eval()
            perturbed = freeze_probe_attack(cfg, CPU)(model, benign[:adversarial], targets[:adversarial])
            t2 = time.perf_counter()
            layer_grams(model, blocks, perturbed)
            parts["attack"].append(t2 - t1)
            parts["adversarial_grams"].append(time.perf_counter() - t2)
        t3 = time.perf_counter()
        paired_cka(grams, grams)
        parts["cka"].append((time.perf_counter() - t3) * (2 if cfg.train.robust else 1))
    best = {name: min(times) if times else 0.0 for name, times in parts.items()}
    check = sum(best.values())
    # The check before the cut attacked the whole probe: the attack and adversarial Grams scale per image.
    whole = check + (best["attack"] + best["adversarial_grams"]) * (probe / adversarial - 1) if cfg.train.robust else check
    return {"dataset": "cifar10 (synthetic, WRN-16-4)", "method": method, "measured_images": images,
            "scaled_to": CIFAR_TRAIN, "epoch_train_s": train_s, "probe": probe,
            "adversarial_probe": adversarial if cfg.train.robust else None, "check_s": check, "share": check / train_s,
            "share_adversarial_on_whole_probe": whole / train_s, **{name: round(v, 4) for name, v in best.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=["digits", "cifar"])
    parser.add_argument("--methods", default="standard,pgd,trades")
    parser.add_argument("--rounds", type=int, default=7, help="digits: epoch + check rounds")
    parser.add_argument("--images", type=int, default=128, help="cifar: synthetic training images timed")
    parser.add_argument("--repeats", type=int, default=2, help="cifar: best of")
    parser.add_argument("--probe", type=int, default=256, help="cifar: probe images")
    parser.add_argument("--adversarial-probe", type=int, default=None, help="cifar: default half the probe")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as a trial with cpus_per_trial 1 runs (rayrs.train.cpu_threads)
    for method in args.methods.split(","):
        if args.dataset == "digits":
            row = digits(method, args.rounds)
        else:
            row = cifar(method, args.images, args.repeats, args.probe,
                        args.adversarial_probe or default_adversarial_probe(args.probe))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
