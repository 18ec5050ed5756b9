"""Trial names: made in one place, always a safe path component, the same from the sweep file and from sweep.json.

Issue 12, items 1 and 4: a grid value ``..`` named a trial ``..``, whose folder ``trials/..`` was the experiment
itself (``--redo ..`` deleted everything); and names followed the order the axes were written in, which
``sweep.json`` (keys sorted) does not keep, so `rayrs status` looked for other trials than the sweep trained.
"""

import json
import os
from pathlib import Path

import pytest

from rayrs import storage as layout
from rayrs.config import Experiment, SweepFileError, expand, load_experiment
from rayrs.errors import UserError
from rayrs.similarity.jobs import plan_jobs
from rayrs.storage import Storage

REPO = Path(__file__).resolve().parents[1]


def sweep(tmp_path: Path, grid: str, name: str = "names") -> Experiment:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\ndata: {{dataset: digits}}\ntrain: {{epochs: 1}}\ncompare: []\ngrid: {grid}\n")
    return load_experiment(path)


HOSTILE = ["..", ".", "a/b", "../../etc", "-rf", "x.tmp", "/abs", "x" * 300, "", "ok"]


def test_grid_values_that_are_path_parts_give_safe_distinct_names(tmp_path):
    # data.root is not even part of a trial's identity, yet it names the trials when it varies (the seeds keep
    # the trials apart, and name them too).
    experiment = sweep(tmp_path, json.dumps([{"data.root": [value], "seed": [i]} for i, value in enumerate(HOSTILE)]))
    names = [t.name for t in expand(experiment)]
    assert len(set(names)) == len(HOSTILE)
    experiment_root = tmp_path / "results" / "names"
    for name in names:
        assert name not in (".", "..") and "/" not in name and not name.startswith((".", "-")), name
        assert 0 < len(name) <= 100 and ".tmp-" not in name, name
        # Every file of the trial lands in its own folder under trials/, never above it.
        folder = os.path.normpath(experiment_root / layout.trial_dir(name))
        assert os.path.dirname(folder) == str(experiment_root / "trials"), name
        assert os.path.normpath(experiment_root / layout.weights(name, 1)).startswith(folder + os.sep)


def test_long_values_stay_apart_after_shortening(tmp_path):
    long_a, long_b = "a" * 150 + "1", "a" * 150 + "2"
    grids = [{"data.root": [long_a]}, {"data.root": [long_b], "seed": [1]}]
    names = [t.name for t in expand(sweep(tmp_path, json.dumps(grids)))]
    assert len(set(names)) == 2 and all(len(name) <= 100 for name in names)


@pytest.mark.parametrize(("values", "why"), [(["a/b", "a_b"], "a_b"), (["Data", "data"], "data")],
                         ids=["same after sanitising", "same without case"])
def test_values_that_meet_after_sanitising_are_refused_in_one_line(tmp_path, values, why):
    # lr 0.1 and 0.1000000001 are two trials whose lr reads "0.1" in a name: only data.root could tell them apart.
    grids = [{"data.root": [values[0]], "train.lr": [0.1]}, {"data.root": [values[1]], "train.lr": [0.1000000001]}]
    with pytest.raises(SweepFileError) as caught:
        sweep(tmp_path, json.dumps(grids))
    message = str(caught.value)
    assert "\n" not in message and "like an earlier one" in message and "make the grid values distinct" in message
    assert why in message.lower()


def test_a_delete_never_leaves_the_folder_it_means(tmp_path):
    root = tmp_path / "results" / "exp"
    storage = Storage(root)
    storage.write_json(layout.SWEEP_CONFIG, {"name": "exp"})
    storage.write_json("trials/a/trial.json", {"trial": "a"})
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "keep.txt").write_text("precious")
    os.symlink(tmp_path / "outside", root / "trials" / "link")
    os.symlink(root / "trials" / "a", root / "trials" / "alias")

    for rel in ("trials/..", "trials/../..", "", "/etc", "trials//a", "trials/./a", "trials/link", "trials/alias",
                "trials/link/keep.txt"):
        with pytest.raises(UserError) as caught:
            storage.delete_file(rel) if rel.endswith(".txt") else storage.delete_dir(rel)
        assert "\n" not in str(caught.value), rel
    assert (root / layout.SWEEP_CONFIG).exists() and (root / "trials" / "a" / "trial.json").exists()
    assert (tmp_path / "outside" / "keep.txt").read_text() == "precious"
    with pytest.raises(UserError, match="a symbolic link inside"):
        storage.write_bytes("trials/link/planted.txt", b"x")
    assert not (tmp_path / "outside" / "planted.txt").exists()
    with pytest.raises(UserError, match="not a trial name rayrs makes"):
        layout.trial_dir("..")

    storage.delete_dir("trials/a")  # the one it means, and only that
    assert not (root / "trials" / "a").exists() and (root / layout.SWEEP_CONFIG).exists()


def test_redo_of_a_dot_dot_name_is_refused_and_deletes_nothing(tmp_path):
    from typer.testing import CliRunner

    from rayrs.cli import app

    path = tmp_path / "dots.yaml"
    # A list of grids: data.root varies (".." or unset), so the first trial was named ".." exactly.
    path.write_text("name: dots\ndata: {dataset: digits}\ntrain: {epochs: 1}\ngrid: [{data.root: ['..']}, {seed: [1]}]\n")
    assert [t.name for t in expand(load_experiment(path))] == ["_.", "seed1"]
    root = tmp_path / "results" / "dots"
    Storage(root).write_json(layout.SWEEP_CONFIG, {"kept": True})
    result = CliRunner().invoke(app, ["sweep", str(path), "--results", str(tmp_path / "results"), "--redo", ".."])
    assert result.exit_code == 1 and "--redo ..: no such trial in dots" in result.stderr
    assert json.loads((root / layout.SWEEP_CONFIG).read_text()) == {"kept": True}


def from_sweep_json(experiment: Experiment) -> Experiment:
    """The experiment as `rayrs status` and `--resume` read it back: through sweep.json, keys sorted."""
    return Experiment.model_validate(json.loads(json.dumps(experiment.model_dump(mode="json"), sort_keys=True)))


def same_plan(experiment: Experiment) -> None:
    written, stored = expand(experiment), expand(from_sweep_json(experiment))
    assert [(t.name, t.fingerprint) for t in written] == [(t.name, t.fingerprint) for t in stored]
    assert [job.id for job in plan_jobs(experiment, written)] == [job.id for job in plan_jobs(experiment, stored)]


def test_the_freezing_sweep_names_its_trials_the_same_from_yaml_and_sweep_json():
    experiment = load_experiment(REPO / "sweeps" / "freezing.yaml")  # axes through, from_epoch: not sorted
    assert [t.name for t in expand(experiment)] == ["seed0", "block1-from_epoch20", "block2-from_epoch20"]
    same_plan(experiment)


def test_axes_in_any_order_give_the_same_trials_in_the_same_order(tmp_path):
    # seed before width and method: neither sorted nor in the order of the trial's fields.
    first = sweep(tmp_path, "{seed: [0, 1], width: [1, 2], method: [standard, pgd]}", name="a")
    second = sweep(tmp_path, "{method: [standard, pgd], seed: [0, 1], width: [1, 2]}", name="a")
    names = [t.name for t in expand(first)]
    assert names == [t.name for t in expand(second)]
    assert names[:3] == ["width1-standard-seed0", "width1-standard-seed1", "width1-pgd-seed0"]
    cross_model = first.model_copy(update={"compare": Experiment.model_validate({"name": "a", "compare": [
        {"kind": "cross_model"}]}).compare})
    same_plan(cross_model)  # cross_model's side a is the earlier trial: order matters to the job ids
