"""CKA-guided freezing against no freezing and the paper's static freezing: time saved, accuracy kept (issue 17).

Same data, same seeds, same initialisation: for each training method and seed, three trials run back to back
in alternating order (`benchmarks/timing.py`: A B C, then C B A, ...), so a burst of load on the shared machine
falls on every contender alike:

    unfrozen   no freezing
    guided     train.freeze.auto at the defaults (or --threshold / --adversarial-threshold / --patience / --probe)
    static     the paper's App. D.5 form: every layer through block1 frozen from a fixed epoch (--static-epoch,
               default 20% of training + 1, as block1 from epoch 20 of a 100-epoch run)

Per trial it measures the seconds spent in `rayrs.train.train_epoch` (training only: the per-epoch evaluation
and the freezing check are not in it), the guided check's seconds (``freeze_check_seconds``) as a share of the
trial's training seconds, the epoch each block froze, and the final model's clean and robust accuracy on the
whole digits test set (450 images) under the trial's evaluation attack, with Wilson 95% intervals over the
seeds' pooled test predictions (3 x 450 trials of a coin: the interval of the mean accuracy across seeds is
wider, the per-seed values are printed too). ``saved`` is the median over seeds of 1 - (training seconds of the
contender / of the unfrozen trial with the same seed): a paired ratio, as timing.py's headlines are.

    uv run python benchmarks/guided_freezing.py                    # digits, standard + PGD-AT + TRADES, 3 seeds
    uv run python benchmarks/guided_freezing.py --methods pgd --epochs 10   # one method (run methods in parallel)

The last line printed is one JSON object (also written to --out); the markdown table before it goes into
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import rayrs.train as training
from rayrs import checkpoint
from rayrs.config import TrialConfig, TrialSpec
from rayrs.storage import Storage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from timing import ORDER_NOTE, emit, machine, round_order  # noqa: E402 (a sibling file, not a package)

Z95 = 1.959963984540054


def wilson(successes: int, trials: int) -> tuple[float, float]:
    """Wilson score 95% interval of a binomial proportion (Wilson 1927)."""
    if trials == 0:
        return math.nan, math.nan
    p = successes / trials
    centre = (p + Z95**2 / (2 * trials)) / (1 + Z95**2 / trials)
    half = Z95 * math.sqrt(p * (1 - p) / trials + Z95**2 / (4 * trials**2)) / (1 + Z95**2 / trials)
    return centre - half, centre + half


class TrainingClock:
    """Times every call of `rayrs.train.train_epoch` (patched on the module, where `train_trial` looks it up)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._original = training.train_epoch

    def __enter__(self) -> TrainingClock:
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return self._original(*args, **kwargs)
            finally:
                self.seconds.append(time.perf_counter() - started)

        training.train_epoch = timed
        return self

    def __exit__(self, *exc: object) -> None:
        training.train_epoch = self._original


def trial_config(args: argparse.Namespace, method: str, seed: int, mode: str) -> TrialConfig:
    guided = {"threshold": args.threshold, "adversarial_threshold": args.adversarial_threshold, "patience": args.patience,
              "probe": args.probe, "adversarial_probe": args.adversarial_probe}
    freeze = {"unfrozen": None, "guided": {"auto": {k: v for k, v in guided.items() if v is not None}},
              "static": {"through": "block1", "from_epoch": args.static_epoch or args.epochs // 5 + 1}}[mode]
    robust = {} if method == "standard" else {"eps": args.eps, "attack": {"steps": args.train_steps}}
    return TrialConfig.model_validate({
        "data": {"dataset": "digits"},
        "model": {"arch": "wrn", "depth": 10, "width": args.width},
        "train": {"method": method, "epochs": args.epochs, "batch_size": 64, "lr": 0.05, "seed": seed,
                  "freeze": freeze, **robust},
        # Per-epoch evaluation kept tiny (it is not what is compared); the final evaluation below is the whole test set.
        "eval": {"eps": args.eps, "train_subset": 16, "test_subset": 16, "attack": {"steps": 1}},
    })


def final_accuracy(spec: TrialSpec, storage: Storage, steps: int) -> tuple[int, int, int]:
    """(clean correct, robust correct, examples) of the last checkpoint on the whole test set, PGD-``steps``."""
    config = spec.config.model_copy(update={"eval": spec.config.eval.model_copy(
        update={"attack": spec.config.eval.attack.model_copy(update={"steps": steps})})})
    data = training.load_trial_data(config, "cpu")
    model = training.build_for(config, data, "cpu")
    model.load_state_dict(checkpoint.load_weights(storage, spec.name, config.train.epochs))
    attack = training.make_attack(config, "eval", torch.Generator().manual_seed(12345))
    scores = training.evaluate(model, data.test_images, data.test_labels, attack, 256, "fp32")
    n = data.test_images.shape[0]
    return round(scores["clean_acc"] * n), round(scores["robust_acc"] * n), n


def run_trial(args: argparse.Namespace, method: str, seed: int, mode: str, root: Path) -> dict:
    spec = TrialSpec(name=f"{method}-{mode}-seed{seed}", experiment="guided_freezing",
                     config=trial_config(args, method, seed, mode), axes={})
    storage = Storage(root)
    started = time.perf_counter()
    with TrainingClock() as clock:
        history = training.train_trial(spec, storage, "cpu", threads=args.threads)
    wall = time.perf_counter() - started
    clean, robust, n = final_accuracy(spec, storage, args.eval_steps)
    record = {"method": method, "seed": seed, "mode": mode, "train_seconds": sum(clock.seconds), "wall_seconds": wall,
              "epoch_train_seconds": clock.seconds, "clean_correct": clean, "robust_correct": robust, "n": n}
    if mode == "guided":
        # The per-block probe CKA trace of every epoch, benign and (robust methods) adversarial: what decided.
        trace = [checkpoint.read_meta(storage, spec.name, e)["freezing"] for e in range(1, args.epochs + 1)]
        record.update(check_seconds=sum(m["freeze_check_seconds"] for m in history), frozen_from=trace[-1]["frozen_from"],
                      blocks=trace[-1]["blocks"], cka_benign=[t["cka_benign"] for t in trace],
                      cka_adversarial=[t.get("cka_adversarial") for t in trace],
                      macs_share=[m.get("frozen_macs_share") for m in history])
    return record


def summarise(records: list[dict], method: str, mode: str) -> dict:
    mine = [r for r in records if r["method"] == method and r["mode"] == mode]
    base = {r["seed"]: r for r in records if r["method"] == method and r["mode"] == "unfrozen"}
    saved = [1 - r["train_seconds"] / base[r["seed"]]["train_seconds"] for r in mine if r["seed"] in base] or [math.nan]
    n = sum(r["n"] for r in mine)
    clean, robust = sum(r["clean_correct"] for r in mine), sum(r["robust_correct"] for r in mine)
    out = {
        "method": method, "mode": mode, "seeds": len(mine),
        "train_seconds": statistics.median(r["train_seconds"] for r in mine),
        "saved": {"median": statistics.median(saved), "min": min(saved), "max": max(saved)},
        "clean_acc": clean / n, "clean_wilson95": wilson(clean, n), "robust_acc": robust / n, "robust_wilson95": wilson(robust, n),
        "clean_per_seed": [r["clean_correct"] / r["n"] for r in mine], "robust_per_seed": [r["robust_correct"] / r["n"] for r in mine],
    }
    if mode == "guided":
        out["check_share"] = statistics.median(r["check_seconds"] / r["train_seconds"] for r in mine)
        out["frozen_from"] = [r["frozen_from"] for r in mine]
    return out


def table(rows: list[dict], args: argparse.Namespace) -> str:
    static_epoch = args.static_epoch or args.epochs // 5 + 1
    lines = [
        "| method | freezing | training s (median) | saved vs unfrozen, median [min-max] | check, % of training | "
        "blocks frozen from epoch (per seed) | clean acc [Wilson 95%] | robust acc [Wilson 95%] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        mode = {"static": f"static (block1 from {static_epoch})", "guided": "CKA-guided"}.get(row["mode"], row["mode"])
        saved = "—" if row["mode"] == "unfrozen" else (
            f"{100 * row['saved']['median']:.0f}% [{100 * row['saved']['min']:.0f}-{100 * row['saved']['max']:.0f}%]")
        check = f"{100 * row['check_share']:.1f}%" if "check_share" in row else "—"
        frozen = " / ".join(",".join("-" if e is None else str(e) for e in seed) for seed in row["frozen_from"]) \
            if "frozen_from" in row else "—"
        acc = {kind: f"{row[kind + '_acc']:.3f} [{row[kind + '_wilson95'][0]:.3f}, {row[kind + '_wilson95'][1]:.3f}]"
               for kind in ("clean", "robust")}
        lines.append(f"| {row['method']} | {mode} | {row['train_seconds']:.1f} | {saved} | {check} | {frozen} | "
                     f"{acc['clean']} | {acc['robust']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="standard,pgd,trades")
    parser.add_argument("--modes", default="unfrozen,guided,static", help="a subset, e.g. guided (no 'saved' then)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--width", type=int, default=1)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--eval-steps", type=int, default=10)
    parser.add_argument("--threshold", type=float, default=None)
    parser.add_argument("--adversarial-threshold", type=float, default=None)
    parser.add_argument("--patience", type=int, default=None)
    parser.add_argument("--probe", type=int, default=None)
    parser.add_argument("--adversarial-probe", type=int, default=None)
    parser.add_argument("--static-epoch", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    methods, modes = args.methods.split(","), args.modes.split(",")
    records = []
    with tempfile.TemporaryDirectory(prefix="guided_freezing_") as root:
        # One untimed epoch first: the first trial of a process pays for lazy initialisation (kernels, caches).
        warm = argparse.Namespace(**{**vars(args), "epochs": 1})
        training.train_trial(TrialSpec(name="warm-up", experiment="guided_freezing", axes={},
                                       config=trial_config(warm, methods[0], 0, "unfrozen")), Storage(root), "cpu",
                             threads=args.threads)
        for method in methods:
            for seed in range(args.seeds):
                for mode in round_order(modes, seed):
                    record = run_trial(args, method, seed, mode, Path(root))
                    records.append(record)
                    print(f"{method} seed {seed} {mode}: train {record['train_seconds']:.1f} s, "
                          f"clean {record['clean_correct']}/{record['n']}, robust {record['robust_correct']}/{record['n']}"
                          + (f", frozen from {record['frozen_from']}" if mode == "guided" else ""), flush=True)
    rows = [summarise(records, method, mode) for method in methods for mode in modes]
    print(table(rows, args))
    emit({"benchmark": "guided_freezing", "args": vars(args), "order": ORDER_NOTE, "machine": machine(),
          "rows": rows, "trials": records}, args.out)


if __name__ == "__main__":
    main()
