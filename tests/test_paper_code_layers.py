"""The compared layers against those the paper's code records, and what each of its rows really holds.

``tests/fixtures/paper_code/layer_listing.json`` comes from running the reference's
``utils/features.py: register_hooks`` (``make_layer_listing.py`` beside it says how): for its WRN-28-1 and
torchvision's ResNet-18, every key its ``"all"`` hooks record, in order, with the module outputs the recorded
value equals; and what it records for the stages named as ``cka.py --model0_layers module.block1 ...`` would.
These tests pin where rayrs's listing (`rayrs.models.comparable_layers`) agrees with it and where it departs.
"""

import json
import re

import polars as pl
import pytest
import torch

from analysis.dynamics import stage_outputs
from paper_golden import FIXTURES
from rayrs.models import ALL_LAYER_TYPES, build_model, comparable_layers

LISTING = json.loads((FIXTURES / "layer_listing.json").read_text())
TYPES = {"Conv2d": "conv", "BatchNorm2d": "bn", "ReLU": "act", "AvgPool2d": "pool", "AdaptiveAvgPool2d": "pool",
         "Linear": "linear"}  # fmt: skip


def wrn_name(reference: str) -> str:
    """A module of the reference's WRN by rayrs's name: its groups hold the blocks in ``.layer``, the shortcut
    is ``convShortcut``, the head's ``bn1`` / ``avgpool`` are ``bn`` / ``pool``."""
    name = re.sub(r"^(block\d)\.layer\b", r"\1", reference).replace("convShortcut", "shortcut")
    return {"bn1": "bn", "avgpool": "pool"}.get(name, name)


def rayrs_layers(arch: str, types=None, **size) -> list:
    with torch.device("meta"):
        model = build_model(arch, num_classes=10, **size)
        example = torch.empty(1, 3, 32, 32)
        return comparable_layers(model, example) if types is None else comparable_layers(model, example, types)


def test_wrn_layers_are_the_papers_in_its_order_under_rayrs_names():
    reference = LISTING["wrn_28_1"]["all"]
    ours = rayrs_layers("wrn", depth=28, width=1)
    assert [(wrn_name(row["name"]), TYPES[row["type"]]) for row in reference] == [(l.name, l.type) for l in ours]
    assert len(ours) == 79


def test_the_papers_batch_norm_rows_hold_post_relu_values_unless_pooled():
    # Its ReLUs are in place and it stores a view of each output, so a BatchNorm row ends up holding the
    # ReLU's output (rayrs records the BatchNorm's own output: tests/test_grams.py); with `pool` the pooled
    # copy is taken at once, so it holds the BatchNorm output after all. A ResNet's shortcut BatchNorm
    # (downsample.1), which no ReLU follows, holds its own output either way.
    for model in ("wrn_28_1", "resnet18"):
        for row in LISTING[model]["all"]:
            if row["type"] == "BatchNorm2d":
                assert row["holds_pooled"][0] == row["name"]
                if row["name"].endswith("downsample.1"):
                    assert row["holds"][0] == row["name"]
                else:
                    assert row["name"] not in row["holds"] and any("relu" in held for held in row["holds"])
            elif row["type"] in ("Conv2d", "Linear"):
                assert row["holds"][0] == row["name"]
    wrn = {row["name"]: row["holds"] for row in LISTING["wrn_28_1"]["all"]}
    assert wrn["block1.layer.0.bn1"] == ["block1.layer.0.relu1"] and wrn["bn1"] == ["relu"]


def test_resnet18_rayrs_adds_the_max_pool_and_each_second_relu_call_the_paper_keeps_once():
    reference = LISTING["resnet18"]["all"]
    ours = rayrs_layers("resnet18")
    # The reference hooks no MaxPool2d; a module called twice (BasicBlock.relu) is one key in its dict,
    # placed at the first call and holding the last call's output: the block output, after the addition.
    extra = [l.name for l in ours if l.name == "maxpool" or l.call > 0]
    assert extra == ["maxpool"] + [f"layer{s}.{b}.relu#1" for s in (1, 2, 3, 4) for b in (0, 1)]
    assert [(row["name"], TYPES[row["type"]]) for row in reference] == [(l.name, l.type) for l in ours
                                                                         if l.name not in extra]
    rows = {row["name"]: row["holds"] for row in reference}
    assert rows["layer1.0.relu"] == ["layer1.0.relu#1", "layer1.0"]  # not the ReLU after bn1 that its place says
    assert rows["layer1.0.bn2"] == ["layer1.0.relu#1", "layer1.0"]  # in-place `out += identity`, then ReLU
    assert rows["bn1"] == ["relu"]  # the stem's BatchNorm, post-ReLU


@pytest.mark.parametrize(("model", "arch", "size"), [("wrn_28_1", "wrn", {"depth": 28, "width": 1}),
                                                      ("resnet18", "resnet18", {})])
def test_fig6_block_outputs_are_the_tensors_the_paper_code_records_for_a_stage(model, arch, size):
    # `cka.py --model0_layers module.block1` hooks the whole group: it records the output of the group's last
    # residual block, after the addition (for torchvision's blocks, after the ReLU that follows it).
    recorded = {row["name"]: row["holds"] for row in LISTING[model]["stages"]}
    every = rayrs_layers(arch, ALL_LAYER_TYPES, **size)
    rows = pl.DataFrame(
        {"model_a": ["m"] * len(every), "layer_a": [l.index for l in every], "name_a": [l.name for l in every],
         "type_a": [l.type for l in every]}  # fmt: skip
    )
    drawn = dict(stage_outputs(rows).select("block_a", "name_a").iter_rows())  # what Fig 6 plots per stage
    assert list(drawn) == list(recorded)
    for stage, holds in recorded.items():
        assert drawn[stage] in {wrn_name(held) for held in holds}  # rayrs's name of the very tensor recorded
    assert drawn == ({"block1": "block1.3", "block2": "block2.3", "block3": "block3.3"} if arch == "wrn" else
                     {f"layer{s}": f"layer{s}.1" for s in (1, 2, 3, 4)})
