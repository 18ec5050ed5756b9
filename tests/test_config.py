"""Sweep files: what a valid one expands to, and the one-line error a person gets for a bad one."""

from pathlib import Path

import pytest

from rayrs.config import SweepFileError, expand, load_experiment, trial_name

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_quickstart_expands_to_standard_and_two_robust_trials():
    experiment = load_experiment(REPO / "sweeps" / "quickstart.yaml")
    trials = expand(experiment)
    assert [t.name for t in trials] == ["eps0", "eps0.05", "eps0.15"]
    assert [t.config.train.method for t in trials] == ["standard", "pgd", "pgd"]
    assert [t.config.train.eps for t in trials] == [0.0, 0.05, 0.15]
    assert all(t.config.eval_eps == 0.1 for t in trials)
    assert len({t.fingerprint for t in trials}) == 3


def test_fractions_and_grid_product(tmp_path):
    path = write(
        tmp_path,
        """
name: width_eps
train: {eps: 8/255, epochs: 2}
grid: {eps: [0, 2/255, 8/255], width: [1, 2, 5, 10], seed: [0, 1, 2]}
""",
    )
    trials = expand(load_experiment(path))
    assert len(trials) == 3 * 4 * 3
    first_robust = next(t for t in trials if t.config.train.eps > 0)
    assert first_robust.config.train.eps == pytest.approx(2 / 255)
    assert first_robust.name == "width1-eps2_255-seed0"  # canonical axis order: model before train (trial_name)
    assert trial_name({"method": "trades", "seed": 1}) == "trades-seed1"


def test_a_list_of_grids_is_the_union_of_their_products(tmp_path):
    path = write(
        tmp_path,
        """
name: methods
grid:
  - {method: [standard]}
  - {method: [pgd], eps: [2/255, 8/255]}
""",
    )
    names = [t.name for t in expand(load_experiment(path))]
    assert names == ["standard", "pgd-eps2_255", "pgd-eps8_255"]


def test_eval_eps_of_a_standard_trial_is_the_papers_eps_for_its_dataset(tmp_path):
    path = write(tmp_path, "name: s\ntrain: {method: standard}\n")
    (trial,) = expand(load_experiment(path))
    assert trial.config.train.eps == 0 and trial.config.eval_eps == 0.1  # digits' l_inf default


def test_the_sweep_name_defaults_to_the_file_name(tmp_path):
    path = write(tmp_path, "train: {epochs: 1}\n", name="my_sweep.yaml")
    assert load_experiment(path).name == "my_sweep"


BAD_FILES = {
    "unknown top-level key": ("epochz: 3\n", "unknown key 'epochz'"),
    "unknown nested key": ("train: {lr_rate: 0.1}\n", "train: unknown key 'lr_rate' (allowed: method, threat_model, eps"),
    "unknown dataset": ("data: {dataset: mnist}\n", "data.dataset: unknown dataset 'mnist'; choose one of: digits, cifar10, imagenette, imagewoof"),
    "unknown model": ("model: {arch: vgg16}\n", "model.arch: unknown model 'vgg16'; choose one of: wrn, resnet18"),
    "unknown method": ("train: {method: free}\n", "train.method: unknown training method 'free'; choose one of: standard, pgd, trades, fast"),
    "unknown threat model": ("train: {threat_model: fog}\n", "train.threat_model: unknown threat model 'fog'; choose one of: linf, l2"),
    "negative eps": ("train: {eps: -0.1}\n", "train.eps: Input should be greater than or equal to 0"),
    "eps not a number": ("train: {eps: big}\n", "train.eps: Input should be a valid number, unable to parse string as a number, got 'big'"),
    "division by zero": ("train: {eps: 8/0}\n", "train.eps: '8/0' divides by zero"),
    "wrong type": ("train: {epochs: many}\n", "train.epochs: Input should be a valid integer, unable to parse string as an integer, got 'many'"),
    "unknown schedule": ("train: {schedule: step}\n", "train.schedule: Input should be 'piecewise', 'cosine', 'cyclic' or 'constant'"),
    "grid axis not a list": ("grid: {eps: 0.1}\n", "grid.eps: Input should be a valid list, got 0.1"),
    "unknown grid axis": ("grid: {colour: [1]}\n", "grid axis 'colour' is not a trial field; use one of: arch, dataset, depth"),
    "empty grid axis": ("grid: {eps: []}\n", "axis 'eps' has no values; give at least one"),
    "empty grid list": ("grid: []\n", "an empty list of grids gives no trials"),
    "bad value on a grid axis": ("grid: {eps: [0.1, -1]}\n", "grid point eps=-1: train.eps: Input should be greater than or equal to 0"),
    "bad name on a grid axis": ("grid: {dataset: [digits, svhn]}\n", "grid point dataset=svhn: data.dataset: unknown dataset 'svhn'"),
    "duplicate trials": ("grid: {method: [standard, pgd], eps: [0]}\n", "trials 'standard' and 'pgd' are identical"),
    "unknown comparison": ("compare: [{kind: cross_galaxy}]\n", "unknown comparison kind 'cross_galaxy'; choose one of: cross_layer"),
    "comparison without a kind": ("compare: [{epochs: final}]\n", "compare.0: a comparison needs a `kind:`, one of: cross_layer, cross_model"),
    "comparison past the last epoch": ("train: {epochs: 3}\ncompare: [{kind: cross_layer, epochs: [5]}]\n", "cross_layer epoch 5 is past trial 'trial''s 3 epochs"),
    "bad WRN depth": ("model: {arch: wrn, depth: 27}\n", "model: depth 27 is not valid for wrn: use depth = 6n + 4"),
    "width on a ResNet": ("model: {arch: resnet18, width: 4}\n", "model: "),
    "bad experiment name": ("name: 'my sweep!'\n", "name: String should match pattern"),
    "top level not a mapping": ("- a\n- b\n", "expected a mapping of settings at the top level, got list"),
    "unreadable YAML": ("train: {eps: [0.1\n", "not valid YAML (line 2)"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_sweep_file_gets_one_line_naming_file_and_field(tmp_path, case):
    text, expected = BAD_FILES[case]
    path = write(tmp_path, text)
    with pytest.raises(SweepFileError) as caught:
        load_experiment(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


def test_a_missing_sweep_file(tmp_path):
    with pytest.raises(SweepFileError, match="no such sweep file"):
        load_experiment(tmp_path / "nope.yaml")
