"""Every Python block of the README's "Python" section, run as written against a real digits results tree.

The README speaks of the quickstart's results (``results/quickstart``, trials ``eps0`` and ``eps0.15``); the
tests' tree (`digits_results` in conftest.py) holds a standard and a PGD-AT eps=0.1 trial, ``standard`` and
``robust``. Each block runs with those three strings replaced, each replacement checked to happen, so a block
that drifts from the code (a renamed function, a changed argument, a column that no longer exists) fails here.
What each block computes is then checked against an independent reference.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rayrs.config import TrialConfig
from rayrs.models import PAPER_LAYER_TYPES, model_layers

README = Path(__file__).resolve().parents[1] / "README.md"
# README's names -> the test tree's: the quickstart's results folder and its standard and robust trials.
RENAMES = {'"results/quickstart"': '"results/digits"', '"eps0"': '"standard"', '"eps0.15"': '"robust"'}


def python_section_blocks() -> list[str]:
    """The fenced ``python`` blocks of the README's "## Python" section, in order."""
    text = README.read_text()
    section = text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def run_block(block: str) -> dict:
    """Run one README block (its names replaced by the test tree's) in a fresh namespace; returns the namespace."""
    for readme_name, ours in RENAMES.items():
        block = block.replace(readme_name, ours)
    namespace: dict = {}
    exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - the README's own code, the point of the test
    return namespace


@pytest.fixture(scope="module")
def readme_results(digits_results, tmp_path_factory):
    """The digits results tree at ``results/digits`` under a fresh working folder (the README's paths are relative)."""
    storage, specs = digits_results
    folder = tmp_path_factory.mktemp("readme")
    shutil.copytree(storage.local_path(), folder / "results" / "digits")
    return folder, specs


@pytest.fixture
def in_readme_folder(readme_results, monkeypatch):
    folder, specs = readme_results
    monkeypatch.chdir(folder)
    return folder / "results" / "digits", specs


def test_the_python_section_has_its_four_blocks_and_every_rename_applies():
    blocks = python_section_blocks()
    assert len(blocks) == 4
    for readme_name in RENAMES:
        assert any(readme_name in block for block in blocks), f"{readme_name} is no longer in the README's blocks"
    assert [("load_model" in b, "compare(" in b, "cka_matrix(" in b, "similarity_view(" in b) for b in blocks] == [
        (True, False, False, False),
        (True, True, False, False),
        (True, False, True, False),
        (False, False, False, True),
    ]


def test_the_load_model_block_gives_the_trained_model(in_readme_folder, capsys):
    results, _ = in_readme_folder
    namespace = run_block(python_section_blocks()[0])

    # The epoch-5 robust model classifies the 450 test digits as training measured it then (metrics.parquet's
    # test_clean_acc is over all 450: eval.test_subset). The same weights and images in eval mode give the same
    # predictions; one digit of slack for a logit tie broken otherwise by another batch size's rounding.
    metrics = pl.read_parquet(results / "metrics.parquet").filter(trial="robust", epoch=5)
    measured = metrics["test_clean_acc"].item()
    correct = (namespace["logits"].argmax(1) == namespace["digits"].test_labels).float().mean().item()
    assert namespace["logits"].shape == (450, 10)
    assert abs(correct - measured) <= 1 / 450 + 1e-9
    assert f"epoch 5: {correct:.1%} test accuracy" in capsys.readouterr().out


def test_the_compare_block_gives_one_row_per_layer_of_the_standard_model(in_readme_folder):
    results, specs = in_readme_folder
    namespace = run_block(python_section_blocks()[1])

    layers = model_layers(specs["standard"].config, PAPER_LAYER_TYPES)
    same_layer = namespace["same_layer"]
    assert same_layer["name_a"].to_list() == [layer.name for layer in layers]
    values = same_layer["value"].to_numpy()
    assert np.isfinite(values).all() and (values <= 1 + 1e-5).all()
    # The first conv sees the same pixels in both models, which start from the same initialisation (seed 0):
    # measured 0.99 there (0.77-0.99 over all layers), far above the 0.5 asserted.
    assert values[0] > 0.5


def test_the_cka_matrix_block_matches_an_independent_reference(in_readme_folder):
    from test_cka import cka_reference  # Song et al.'s unbiased HSIC, term by term in float64 NumPy

    namespace = run_block(python_section_blocks()[2])

    stages = namespace["stages"]
    assert [tuple(s.shape[:1]) for s in stages] == [(450,)] * 3
    expected = cka_reference(stages, stages)
    actual = namespace["cka_matrix"](stages, stages).numpy()
    np.testing.assert_allclose(actual, expected, atol=1e-5)
    np.testing.assert_allclose(np.diag(actual), 1.0, atol=1e-5)


def test_the_view_block_answers_block1_vs_head_as_a_hand_written_join_does(in_readme_folder):
    results, _ = in_readme_folder
    namespace = run_block(python_section_blocks()[3])
    answer = namespace["block1_vs_head"]

    # By hand, from the files alone: the cross_layer Parquet rows, each trial's trial.json, and the WRN's layer
    # listing, whose blocks are the stage prefix of the module path, "stem" before the first stage, "head" after.
    rows = pl.read_parquet(sorted((results / "similarity" / "cross_layer").glob("*.parquet"))).filter(measure="cka")
    expected = {}
    for trial in rows["model_a"].unique().to_list():
        record = json.loads((results / "trials" / trial / "trial.json").read_text())
        names = [layer.name for layer in model_layers(TrialConfig.model_validate(record["config"]), PAPER_LAYER_TYPES)]
        staged = [i for i, name in enumerate(names) if name.startswith("block")]
        block = {i: "stem" if i < staged[0] else "head" if i > staged[-1] else names[i].split(".")[0] for i in range(len(names))}
        mine = rows.filter(model_a=trial).to_dicts()
        values = [r["value"] for r in mine if block[r["layer_a"]] == "block1" and block[r["layer_b"]] == "head"]
        robust = record["method"] != "standard" and record["eps"] > 0
        expected[(robust, record["eps"])] = (float(np.mean(values)), len(values))

    got = {(r["robust_a"], r["eps_a"]): (r["mean_cka"], r["layer_pairs"]) for r in answer.to_dicts()}
    assert got.keys() == expected.keys() == {(False, 0.0), (True, 0.1)}
    for key, (mean, count) in expected.items():
        assert got[key][1] == count > 0
        assert got[key][0] == pytest.approx(mean, abs=1e-12)
    assert answer["eps_a"].to_list() == [0.0, 0.1]
