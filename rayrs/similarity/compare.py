"""`rayrs.compare`: one comparison of two models (or one model's layers) on images, in a notebook, without Ray.

The same engine as a sweep's jobs: each layer's U-centred Gram formed in a forward hook (`GramRecorder`, never
keeping the activations), all layer pairs' unbiased HSIC accumulated over minibatches in one GEMM with the
delete-a-group jackknife (`MinibatchCKA`), the same minibatch order (`probe_batches`), and the same rows
(`rayrs.similarity.rows`), returned as a Polars frame with the columns of the similarity Parquet files.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import polars as pl
import torch
from torch import nn

from rayrs.data import to_float
from rayrs.models import BLOCK, PAPER_LAYER_TYPES, Layer, check_layer_spec, comparable_layers
from rayrs.schema import SECONDS_FIELD
from rayrs.similarity.cka import JACKKNIFE_GROUPS, MinibatchCKA
from rayrs.similarity.grams import GramRecorder, channels_last
from rayrs.similarity.plan import ModelRef, SimilarityJob
from rayrs.similarity.probes import BENIGN
from rayrs.similarity.rows import Estimate, similarity_table
from rayrs.similarity.run import probe_batches

KINDS = ("cross_model", "cross_layer")


def compare(
    model_a: nn.Module,
    model_b: nn.Module | None,
    images: torch.Tensor,
    layers: str | Iterable[str] = PAPER_LAYER_TYPES,
    kind: str = "cross_model",
    batch_size: int = 1024,
    passes: int = 1,
    names: tuple[str, str] = ("a", "b"),
) -> pl.DataFrame:
    """Minibatch linear CKA (unbiased HSIC, Nguyen et al. 2021; the paper's Section 2) between every layer of
    ``model_a`` and every layer of ``model_b`` on ``images``; one row per layer pair.

    model_a, model_b: networks taking ``images`` as they are (normalisation, if any, inside them); run in eval
        mode, without gradients, on their own devices, and left in the mode they came in. For ``kind=
        "cross_layer"`` (one model's layers against each other) ``model_b`` is None or ``model_a``.
    images: (n, C, H, W) float in [0, 1], or uint8 in 0..255; n >= 4 (CKA's unbiased HSIC needs 4 examples
        a minibatch). The same images, in the same order, go through both models.
    layers: the compared layer types, some of `rayrs.models.ALL_LAYER_TYPES` (``"block"`` for residual block
        outputs: a ResNet's, a timm ViT's transformer blocks, a ConvNeXt's blocks), and/or modules by name,
        ``"name:<glob>"`` (``"name:norm"``; `rayrs.models.name_pattern`); default the paper's conv, bn, act,
        pool and linear.
    batch_size, passes: the minibatch size and the number of passes over ``images``, each pass in its own
        seeded order (the paper: 1024 and 3); with one minibatch of every image, the value is full-batch
        unbiased CKA.
    names: the ``model_a`` / ``model_b`` column values.

    Returns the columns of the similarity Parquet files (`rayrs.schema.SIMILARITY_SCHEMA`, ``std_error``,
    ``jackknife``, ``seconds``); ``epoch_*`` are 0 and ``probe_*`` ``benign``.
    """
    if kind not in KINDS:
        raise ValueError(f"compare: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "cross_layer":
        if model_b is not None and model_b is not model_a:
            raise ValueError("compare: cross_layer compares one model's layers; pass model_b=None")
        model_b, names = model_a, (names[0], names[0])
    elif model_b is None:
        raise ValueError("compare: cross_model needs model_b")
    if images.ndim != 4 or images.shape[0] < 4:
        raise ValueError(f"compare: images must be (n, C, H, W) with n >= 4, got {tuple(images.shape)}")
    inputs = to_float(images) if images.dtype == torch.uint8 else images.float()
    try:
        types = check_layer_spec([layers] if isinstance(layers, str) else layers)
    except ValueError as err:
        raise ValueError(f"compare: {err}") from None
    if BLOCK in types:
        import rayrs.resnets  # noqa: F401  (registers torchvision's BasicBlock and Bottleneck as blocks)
    started = time.perf_counter()
    modes = {module: module.training for model in (model_a, model_b) for module in model.modules()}
    try:
        model_a.eval()
        model_b.eval()
        layers_a = comparable_layers(model_a, inputs[:2].to(_device(model_a)), types)
        layers_b = layers_a if model_b is model_a else comparable_layers(model_b, inputs[:2].to(_device(model_b)), types)
        cka = MinibatchCKA(len(layers_a), len(layers_b), device=_device(model_a), groups=JACKKNIFE_GROUPS)
        for _, batch in probe_batches(inputs.shape[0], batch_size, passes):
            group_of = batch % JACKKNIFE_GROUPS
            grams_a = _grams(model_a, layers_a, inputs[batch])
            grams_b = grams_a if model_b is model_a else _grams(model_b, layers_b, inputs[batch])
            cka.update(grams_a, grams_b.to(grams_a.device), group_of.to(grams_a.device))
        values, replicates = cka.compute(), cka.jackknife()
    finally:
        for module, training in modes.items():
            module.training = training
    a, b = ModelRef(names[0], 0, ""), ModelRef(names[1], 0, "")
    job = SimilarityJob(kind, a, b, inputs.shape[0], batch_size, passes, BENIGN, BENIGN, layer_types=types)
    table = similarity_table(job, layers_a, layers_b, Estimate(values.cpu().numpy(), replicates.cpu().numpy()),
                             inputs.shape[0], passes)
    seconds = time.perf_counter() - started
    return pl.from_arrow(table).with_columns(pl.lit(seconds, pl.Float64).alias(SECONDS_FIELD.name))


def _device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _grams(model: nn.Module, layers: list[Layer], images: torch.Tensor) -> torch.Tensor:
    """(L, b, b) float32 U-centred Grams of ``layers`` on one minibatch (the activations are never kept)."""
    with torch.no_grad(), GramRecorder(model, layers) as recorder:
        model(channels_last(images.to(_device(model))))
        return recorder.take()


__all__ = ["compare"]
