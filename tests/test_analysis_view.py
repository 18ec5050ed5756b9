"""`similarity_view`: the similarity rows with each layer's block and each model's training, and
`rayrs.load_model`, a trial's checkpoint in one call. Checked against what the files say, read independently:
``trial.json`` for the training, the model's layer listing for the blocks.
"""

from __future__ import annotations

import json
import shutil

import polars as pl
import pytest
from typer.testing import CliRunner

import rayrs
import synthetic
from rayrs.cli import app
from rayrs.config import TrialConfig
from rayrs.errors import UserError
from rayrs.models import ALL_LAYER_TYPES, PAPER_LAYER_TYPES, layer_types, model_layers
from rayrs.storage import Storage


def blocks_by_hand(names: list[str]) -> list[str]:
    """A WRN's blocks from its layer names in execution order: the stage of ``blockK.*``; before the first
    stage "stem", after the last "head" (written here from the network's layout, not with `block_of`)."""
    staged = [i for i, name in enumerate(names) if name.startswith("block")]
    return ["stem" if i < staged[0] else "head" if i > staged[-1] else name.split(".")[0] for i, name in enumerate(names)]


def test_the_view_of_a_real_run_carries_each_models_training_and_each_layers_block(digits_results):
    storage, specs = digits_results
    view = rayrs.similarity_view(storage.local_path())  # a folder path, as a user gives it

    assert view.height == pl.read_parquet(storage.local_path("similarity/**/*.parquet")).height
    for name in specs:
        record = json.loads(storage.local_path(f"trials/{name}/trial.json").read_text())
        for side in "ab":
            rows = view.filter(pl.col(f"model_{side}") == name)
            assert rows.height > 0
            for column in ("method", "threat_model", "eps", "arch", "depth", "width", "seed", "dataset"):
                assert rows[f"{column}_{side}"].unique().to_list() == [record[column]], (name, column)
            assert rows[f"robust_{side}"].unique().to_list() == [record["method"] != "standard" and record["eps"] > 0]

    # Blocks, job by job: cross_layer lists the paper's layer types, cross_epoch adds each residual block's
    # output, so the same layer index is another layer in each, and its block is that layer's.
    for kind, types in (("cross_layer", PAPER_LAYER_TYPES), ("cross_epoch", ALL_LAYER_TYPES)):
        rows = view.filter(kind=kind, model_a="robust")
        config = TrialConfig.model_validate(json.loads(storage.local_path("trials/robust/trial.json").read_text())["config"])
        names = [layer.name for layer in model_layers(config, layer_types(list(types)))]
        expected = dict(enumerate(blocks_by_hand(names)))
        listed = rows.select("layer_a", "name_a", "block_a").unique().sort("layer_a")
        assert listed["name_a"].to_list() == names, kind
        assert listed["block_a"].to_list() == [expected[i] for i in listed["layer_a"]], kind
        assert set(listed["block_a"]) == {"stem", "block1", "block2", "block3", "head"}
    # The transfer accuracy rows' "output" is not a layer: no block.
    output = view.filter(measure="transfer_accuracy")
    assert output.height > 0 and output["block_a"].is_null().all() and output["block_b"].is_null().all()


def test_blocks_are_found_within_each_job_where_layer_indices_disagree(tmp_path):
    # The synthetic tree's cross_epoch jobs list block outputs among the layers, its cross_layer jobs do not, and
    # both kinds name their jobs by trial: layer 8 is the block1.0 output in one and block2.0.bn1 in the other.
    # A block per layer index across the rows (what a figure's `with_blocks` does within its own rows), or per
    # job id alone, would give one of them the other's block.
    results = synthetic.write_results(tmp_path / "results", kinds=["cross_layer", "cross_epoch"])
    view = rayrs.similarity_view(results)

    for kind in ("cross_layer", "cross_epoch"):
        for job, rows in view.filter(kind=kind).group_by("job"):
            layers = rows.select("layer_a", "name_a", "block_a").unique().sort("layer_a")
            assert layers["block_a"].to_list() == blocks_by_hand(layers["name_a"].to_list()), (kind, job)
    same_index = view.filter(pl.col("layer_a") == 8).group_by("kind").agg(pl.col("name_a", "block_a").unique())
    assert {r["kind"]: (r["name_a"], r["block_a"]) for r in same_index.to_dicts()} == {
        "cross_epoch": (["block1.0"], ["block1"]),
        "cross_layer": (["block2.0.bn1"], ["block2"]),
    }


def test_a_folder_without_results_is_one_line():
    with pytest.raises(UserError, match=r"no metrics.parquet or sweep.json here; point at an experiment's results"):
        rayrs.similarity_view("/nonexistent/results/quickstart")


def test_analyze_writes_the_view_beside_the_report_and_not_into_the_results(digits_results, tmp_path):
    storage, _ = digits_results
    results = shutil.copytree(storage.local_path(), tmp_path / "results")
    before = sorted(p.relative_to(results) for p in results.rglob("*"))

    outcome = CliRunner().invoke(app, ["analyze", str(results), "--out", str(tmp_path / "report"), "--format", "parquet"],
                                 terminal_width=400)

    assert outcome.exit_code == 0, outcome.output
    written = pl.read_parquet(tmp_path / "report" / "similarity_view.parquet")
    expected = rayrs.similarity_view(Storage(results))
    assert written.columns == expected.columns and written.height == expected.height
    assert written.sort(["job", "layer_a", "layer_b", "epoch_b"]).equals(expected.sort(["job", "layer_a", "layer_b", "epoch_b"]))
    assert sorted(p.relative_to(results) for p in results.rglob("*")) == before


def test_load_model_refuses_a_trial_or_epoch_that_is_not_there_naming_what_is(digits_results):
    storage, _ = digits_results
    with pytest.raises(UserError, match=r"no trial 'robustt'; its trials: robust, standard$"):
        rayrs.load_model(storage.local_path(), "robustt")
    with pytest.raises(UserError, match=r"no checkpoint of epoch 7; its finished epochs: 1-6$"):
        rayrs.load_model(storage.local_path(), "robust", epoch=7)


def test_load_model_defaults_to_the_last_epoch(digits_results):
    storage, _ = digits_results
    import torch

    from rayrs import checkpoint

    model = rayrs.load_model(storage.local_path(), "robust")
    last = checkpoint.load_weights(storage, "robust", 6)
    assert not model.training
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in last.items())
