"""CKA-guided freezing (issue 17): a trial watches its residual blocks converge and stops updating them.

The paper ends (§7, "Staggered freezing of layers during training") by proposing to use CKA during training:
early layers converge within a few epochs (its Fig 6), so they could be frozen; its App. D.5 freezes by hand at
a fixed epoch (``train.freeze: {through, from_epoch}``). With ``train.freeze: {auto: {...}}`` the trial decides:

- After each epoch, each residual block's output (a ``block`` layer, `rayrs.models`) on a fixed probe of
  ``probe`` TRAINING images (chosen by the trial's seed, never augmented) becomes a U-centred (n, n) Gram
  (`rayrs.similarity.grams.GramRecorder`, the comparison engine's). For robust methods the first
  ``adversarial_probe`` of those images (default half, `default_adversarial_probe`) are also attacked on the
  current model by the trial's own training attack (`rayrs.train.freeze_probe_attack`: PGD-k for PGD-AT, the KL
  attack for TRADES, the single FGSM step for fast AT), giving a second, (a, a) Gram per block.
- Each Gram is compared with the previous epoch's, kept in memory (n^2 floats per block and probe, never an
  activation): linear CKA with the unbiased HSIC estimator, as `rayrs.similarity.cka` computes it. An epoch
  counts as stable for a block when its benign CKA is >= ``threshold`` and (robust methods) its adversarial CKA
  >= ``adversarial_threshold``.
- A block's streak counts the consecutive stable epochs. The longest prefix of blocks
  whose streaks reached ``patience`` is frozen from the next epoch on (its weights and BatchNorm statistics,
  with everything that runs before it, exactly as static freezing), and never unfrozen. The first score is
  after epoch 2 (against epoch 1): a block never freezes before epoch ``patience + 2``. No decision is taken
  after the last epoch.

Defaults, from measurement (digits, WRN-10-1, 10 epochs; `benchmarks/guided_freezing.py` and its README):

- ``threshold`` 0.995: a block that still learns moves to CKA 0.85-0.99 between epochs; >= 0.995 comes once it
  has settled (standard training: after the first learning-rate drop).
- ``adversarial_threshold`` 0.99, apart from the benign one. The adversarial probe is attacked from the same
  random start after every epoch (`probe_generator`): with a fresh start each epoch, two starts on one
  UNCHANGED model already gave adversarial CKA 0.986-0.995 (PGD-3), so PGD-AT could never reach 0.995 and froze
  nothing. With one start an unchanged model scores 1, yet the attack, recrafted on each epoch's model, still
  lags: when the benign CKA of PGD-AT's blocks was >= 0.9998 (epochs 8-10), the adversarial one was 0.991-0.997.
  0.99 is the level of the attack's own randomness: an adversarial change smaller than a re-draw of the attack's
  start does not hold freezing back, a larger one does (epochs 5-6: benign 0.995, adversarial 0.91-0.95).
- ``patience`` 2: one quiet epoch does not freeze a block.
- ``adversarial_probe`` half the probe, at least 32 (digits: 33 of 67): the attack is most of a robust check's
  cost. Halving it took the check on digits from 4.7% to 2.2% (PGD-AT) and 3.7% to 2.3% (TRADES) of the
  training time (benchmark, 3 seeds; side by side in one process: `benchmarks/freeze_check_cost.py`). The price
  is noise: on the same weights (epochs 7-9 of PGD-AT and TRADES, 3 seeds, 3 blocks) the adversarial CKA of the
  first 33 images differs from that of all 67 by +0.003 on average (SD 0.004, at most 0.013), against a
  threshold 0.01 below 1, so a decision near it moves by an epoch, here both ways: PGD-AT froze blocks 1-2 from
  epoch 10 in seeds 0 and 2 before, blocks 1-3 from epoch 10 in seed 2 after; TRADES froze nothing before,
  blocks 1-3 from epoch 10 (seed 0) and 1-2 from epoch 9 (seed 2) after; final clean and robust accuracies
  stayed within a point of the unfrozen trials' (`benchmarks/README.md`). ``adversarial_probe`` = ``probe``
  restores the check before.
- ``probe`` 256 images, at most 1/20 of the training set (`default_probe_size`; digits: 67). The CKA's sampling
  noise at 64 images, near the threshold, is a standard deviation of 0.0001-0.001 over random probes (digits,
  standard training, epochs 6-9), a tenth of the step between two epochs' CKA as a block settles: a decision
  moves by at most an epoch.

Cost. Where a check's time goes (digits, 256 images, PGD-3, one thread): the attack on the probe 77%, the two
Gram passes 22%, the CKA under 1%; standard training has only the benign pass. The check costs about what
training on the probe costs, so its share is ~ probe / training-set size: on digits (1347 images) 10-16% of an
epoch's training time at 256 images, 6-7% at 128, 1.7-3.4% at 64 (standard / PGD-AT / TRADES, measured under
heavy load); on CIFAR-sized inputs (WRN-16-4, 32 x 32, 50,000 images, per-image training costs measured on
128-256 synthetic images and scaled; `benchmarks/freeze_check_cost.py`) 0.15% at 256 images for standard
training, and with half of them attacked 0.16% for PGD-AT, 0.27% for TRADES (0.28% and 0.48% with all 256
attacked). Hence the default probe; at it (67 images) the benchmark measured 2.7% (standard), 3.7% (TRADES) and
4.7% (PGD-AT) of digits' training time with every probe image attacked, over the goal of 3% for robust methods;
hence the default ``adversarial_probe`` (half), which brings them to 2.2-2.9% (idle: 2.9% PGD-AT, 2.3% TRADES;
2.5% standard).

Resume. The decision state (streaks, frozen count, the epoch each block froze, the CKA trace) is in each
epoch's ``meta.json`` under ``freezing``; the previous epoch's Grams are recomputed from its checkpoint, the
weights a resumed trial starts from anyway. Why recompute and not store: it is one probe pass (a few percent of
an epoch, once per resume), adds no file to the checkpoint layout, and the Grams are a deterministic function
of the saved float32 weights, the seed-fixed probe and a seed-fixed attack generator, so on the same device
type and thread count (`rayrs.train.cpu_threads`) the resumed trial sees bit-for-bit the Grams the
uninterrupted one had. (A GPU that picked a different convolution algorithm after a restart could change the
last bits of a Gram, and so of the next CKA: a threshold decision would flip only if that CKA sat within ~1e-7
of the threshold.)

Cost. Frozen parameters have ``requires_grad`` off, so autograd records nothing for the frozen prefix when its
input needs no gradient: standard training, and the final update of PGD-AT and TRADES (the adversarial images
come detached), run the prefix forward only, keep none of its activations for backward, and the backward pass
stops at the frozen boundary. The attack steps of adversarial training still backpropagate through the prefix
to reach the input: there only the prefix's weight-gradient products are saved, which the attacks already skip
(`rayrs.attacks.base`). ``benchmarks/guided_freezing.py`` measures what that is worth per method.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from rayrs.config import AutoFreezeConfig
from rayrs.data import to_float
from rayrs.models import ALL_LAYER_TYPES, BLOCK, Layer, comparable_layers, forward_once
from rayrs.similarity.grams import layer_grams

Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]  # (model, images, labels) -> adversarial
PROBE_SEED_OFFSET = 7_919  # the probe's images: a stream of its own, apart from the data order's
DEFAULT_PROBE = 256  # probe images when the training set is large (`default_probe_size`)


def probe_indices(seed: int, size: int, population: int) -> torch.Tensor:
    """The ``size`` training-set indices of a trial's probe: fixed by its seed, (size,) int64 on the CPU."""
    order = torch.randperm(population, generator=torch.Generator().manual_seed(seed + PROBE_SEED_OFFSET))
    return order[: min(size, population)]


def probe_generator(seed: int, device: torch.device) -> torch.Generator:
    """The random starts of the adversarial probe: the SAME after every epoch, apart from the training streams
    (`rayrs.train.epoch_generator`, ``seed * 100_003 + epoch`` with epoch <= 10_000).

    Why the same: two random starts on one unchanged model already give adversarial representations whose CKA
    is only 0.986-0.995 (PGD-3 on digits, measured), so with a fresh start each epoch the adversarial CKA could
    never pass a threshold of 0.995, whatever the model did. With one start, an unchanged model scores exactly 1."""
    return torch.Generator(device=device).manual_seed(seed * 100_003 + 50_000)


def default_probe_size(population: int) -> int:
    """``probe`` when unset: 256 images ("a few hundred", the issue's), at most 1/20 of the training set, at least 32.

    Why: the check costs about what training on the probe costs (a forward pass for standard training; the
    attack for robust methods, which is most of an epoch's work), so a probe of 1/20 of the data keeps it near
    3% of an epoch on a small dataset (digits: 67 of 1347 images), and 256 of CIFAR-10's 50,000 costs ~0.2%."""
    return max(min(DEFAULT_PROBE, population // 20), min(32, population))


def default_adversarial_probe(probe: int) -> int:
    """``adversarial_probe`` when unset: how many of the probe's ``probe`` images a robust method also attacks.
    Half of them, at least 32 (all of them when the probe is smaller): digits' 67 -> 33, a 256-image probe -> 128.

    Why: the attack is most of a robust check's cost (PGD-3: 77% at 256 images) and it costs what the training
    attack costs per image, so halving the attacked images about halves the check (digits: PGD-AT 4.7% -> 2.2%,
    TRADES 3.7% -> 2.3% of the training time; `benchmarks/README.md`). The adversarial CKA is held to 0.99, the
    level of a re-drawn attack start (0.986-0.995); half the images move it by ~0.004 (SD, measured on the same
    weights), so a decision near the threshold can move by an epoch (module doc). The benign probe, held to
    0.995, keeps every image."""
    return min(probe, max(probe // 2, 32))


def paired_cka(now: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """Linear CKA of each layer with itself at two times: (L,) float64, NaN for a layer constant on the probe.

    now, before: (L, n, n) U-centred Grams (`rayrs.similarity.cka.u_center`) of the same n examples.
    HSIC_1(K, L) = <U(K), U(L)>_F / (n(n-3)) (Song et al. 2012, eq. 5); the factor cancels in
    CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) (Kornblith et al. 2019), so only inner products remain.
    """
    a, b = now.flatten(1).double(), before.flatten(1).double()
    return (a * b).sum(1) / torch.sqrt((a * a).sum(1) * (b * b).sum(1))


def block_layers(model: nn.Module, example: torch.Tensor) -> tuple[list[Layer], list[list[nn.Module]]]:
    """The model's residual blocks in execution order (renumbered 0..B-1, as `GramRecorder` wants them) and,
    for each k, the modules that freezing the first k + 1 blocks stops: every compared module that runs up to
    the end of block k (the stem included), and the block itself.

    example: (n, C, H, W) float on the model's device, n >= 1.
    """
    layers = comparable_layers(model, example, ALL_LAYER_TYPES)
    modules = dict(model.named_modules())
    blocks, prefixes = [], []
    for layer in layers:
        if layer.type != BLOCK:
            continue
        blocks.append(dataclasses.replace(layer, index=len(blocks)))
        upto = layers[: layer.index + 1]
        prefixes.append(list({id(m): m for m in (modules[item.module_name] for item in upto)}.values()))
    return blocks, prefixes


def weighted_macs(model: nn.Module, example: torch.Tensor) -> dict[int, float]:
    """Multiply-accumulates per example of each convolution and linear layer of ``model`` (by ``id``), counted on
    one eval-mode forward pass of ``example`` (n, C, H, W): output elements x the weights each one reads (a
    convolution's in_channels/groups x kh x kw, a linear layer's in_features). A layer's weight gradient costs
    as many multiply-accumulates as its forward pass, so these weigh what freezing it saves."""
    counts: dict[int, float] = {}

    def count(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        counts[id(module)] = counts.get(id(module), 0.0) + output.numel() / output.shape[0] * module.weight[0].numel()

    forward_once(model, example, {m: count for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)})
    return counts


def prefix_macs_share(model: nn.Module, prefixes: list[list[nn.Module]], example: torch.Tensor) -> list[float]:
    """For each k, the share of the model's per-example multiply-accumulates (convolutions and linear layers)
    in the modules that freezing the first k + 1 blocks stops (`block_layers`' prefixes): (B,) floats in [0, 1]."""
    counts = weighted_macs(model, example)
    total = sum(counts.values())
    shares = []
    for modules in prefixes:
        inside = {id(sub) for module in modules for sub in module.modules()}
        shares.append(sum(macs for key, macs in counts.items() if key in inside) / total)
    return shares


class GuidedFreezing:
    """The decision state of one trial's CKA-guided freezing, and the per-epoch check (see the module doc).

    model: the trial's (uncompiled) model. train_images: (N, C, H, W) uint8 and train_labels (N,) on the
    model's device. probe_attack: () -> the trial's training attack for the adversarial probe, with the same
    random starts at every call (`probe_generator`), or None for standard training (benign probe only).
    """

    def __init__(self, settings: AutoFreezeConfig, model: nn.Module, train_images: torch.Tensor,
                 train_labels: torch.Tensor, seed: int, epochs: int, probe_attack: Callable[[], Attack] | None) -> None:
        self.settings, self.model, self.epochs, self.probe_attack = settings, model, epochs, probe_attack
        population = train_images.shape[0]
        size = settings.probe if settings.probe is not None else default_probe_size(population)
        chosen = probe_indices(seed, size, population).to(train_images.device)
        self.images, self.labels = to_float(train_images[chosen]), train_labels[chosen]
        wanted = settings.adversarial_probe or default_adversarial_probe(self.images.shape[0])
        self.adversarial_count = min(wanted, self.images.shape[0])  # the first ones of the probe are attacked
        self.blocks, self._prefixes = block_layers(model, self.images[:2])
        self.prefix_share = prefix_macs_share(model, self._prefixes, self.images[:2])
        count = len(self.blocks)
        self.streak = [0] * count
        self.frozen = 0  # the first `frozen` blocks are frozen (with the stem)
        self.frozen_from: list[int | None] = [None] * count  # the first epoch each block trained frozen
        self._previous: dict[str, torch.Tensor] | None = None  # probe -> (B, n, n) Grams of the last epoch

    @property
    def probes(self) -> tuple[str, ...]:
        return ("benign", "adversarial") if self.probe_attack is not None else ("benign",)

    def threshold(self, probe: str) -> float:
        """The CKA a block must reach on ``probe`` ("benign" or "adversarial") for an epoch to count as stable."""
        settings = self.settings
        if probe == "adversarial" and settings.adversarial_threshold is not None:
            return settings.adversarial_threshold
        return settings.threshold

    def frozen_modules(self) -> list[nn.Module]:
        """The modules to keep frozen this epoch (empty before the first block freezes)."""
        return self._prefixes[self.frozen - 1] if self.frozen else []

    def resume(self, epoch: int, meta: dict[str, Any]) -> None:
        """Continue after ``epoch``, whose checkpoint (already in ``model``) wrote ``meta``: reload the decision
        state from its ``freezing`` record and recompute that epoch's Grams from the restored weights."""
        record = meta.get("freezing")
        if not isinstance(record, dict) or record.get("blocks") != [block.name for block in self.blocks]:
            raise ValueError(f"epoch {epoch}'s meta.json has no freezing record for blocks {[b.name for b in self.blocks]}")
        self.streak = list(record["streak"])
        self.frozen = int(record["frozen_blocks"])
        self.frozen_from = list(record["frozen_from"])
        self._previous = self._grams()

    def after_epoch(self, epoch: int) -> tuple[dict[str, float], dict[str, Any]]:
        """The check after training ``epoch``: (metrics to add, the ``freezing`` record for meta.json).

        Updates the streaks and, before the last epoch, the frozen prefix for the next epoch. The metrics are
        ``frozen_blocks`` (blocks frozen DURING this epoch), ``freeze_check_seconds`` (this check's time) and
        ``frozen_macs_share`` (the frozen modules' share of the model's multiply-accumulates during this epoch:
        the share of the epoch's weight-gradient work skipped, `prefix_macs_share`).
        """
        started = time.perf_counter()
        trained_frozen = self.frozen
        grams = self._grams()
        cka = {probe: [math.nan] * len(self.blocks) for probe in self.probes}
        if self._previous is not None:
            for probe in self.probes:
                cka[probe] = paired_cka(grams[probe], self._previous[probe]).tolist()
            for b in range(len(self.blocks)):
                # NaN (a block constant on the probe) compares False: never stable.
                stable = all(cka[probe][b] >= self.threshold(probe) for probe in self.probes)
                self.streak[b] = self.streak[b] + 1 if stable else 0
        self._previous = grams
        if epoch < self.epochs:
            stable = next((b for b, streak in enumerate(self.streak) if streak < self.settings.patience), len(self.blocks))
            for b in range(self.frozen, stable):  # never unfrozen: only a longer prefix moves the boundary
                self.frozen_from[b] = epoch + 1
            self.frozen = max(self.frozen, stable)
        record = {
            "blocks": [block.name for block in self.blocks],
            **{f"cka_{probe}": [None if math.isnan(v) else v for v in cka[probe]] for probe in self.probes},
            "streak": list(self.streak),
            "frozen_blocks": self.frozen,  # after this epoch's decision: frozen from the next epoch on
            "frozen_from": list(self.frozen_from),
            "threshold": self.settings.threshold,
            **({"adversarial_threshold": self.threshold("adversarial")} if "adversarial" in self.probes else {}),
            "patience": self.settings.patience,
            "probe": int(self.images.shape[0]),
            **({"adversarial_probe": self.adversarial_count} if "adversarial" in self.probes else {}),
            "prefix_macs_share": [round(share, 6) for share in self.prefix_share],
        }
        metrics = {"frozen_blocks": trained_frozen, "freeze_check_seconds": time.perf_counter() - started,
                   "frozen_macs_share": self.prefix_share[trained_frozen - 1] if trained_frozen else 0.0}
        return metrics, record

    def _grams(self) -> dict[str, torch.Tensor]:
        """probe -> U-centred float32 Grams of every block of the current model (eval mode, fp32): "benign"
        (B, n, n) on the whole probe, "adversarial" (B, a, a) on its first a = ``adversarial_count`` images."""
        grams = {"benign": layer_grams(self.model, self.blocks, self.images)}
        if self.probe_attack is not None:
            count = self.adversarial_count
            # Attacked in eval mode whatever the attack's bn_eval: the check must not move a running statistic.
            modes = {module: module.training for module in self.model.modules()}
            self.model.eval()
            try:
                adversarial = self.probe_attack()(self.model, self.images[:count], self.labels[:count])
            finally:
                for module, training in modes.items():
                    module.training = training
            grams["adversarial"] = layer_grams(self.model, self.blocks, adversarial)
        return grams
