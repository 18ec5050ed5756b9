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


ALIAS_BOMB = "".join(  # 10^6 values once expanded, 300 bytes on disk
    f"{name}: &{name} [{', '.join([f'*{previous}'] * 10)}]\n" for previous, name in zip("abcdef", "bcdefg")
).replace("b: &b [*a", "a: &a [0.1]\nb: &b [*a") + "grid: {train.lr: *g}\n"
MILLION_TRIALS = "grid: {seed: %s, train.lr: %s, epochs: %s}\n" % (
    list(range(100)), [round(0.001 * i, 3) for i in range(1, 101)], list(range(1, 101))
)

BAD_FILES = {
    "unknown top-level key": ("epochz: 3\n", "unknown key 'epochz'"),
    "an unknown key '['": ("'[': 1\n", "sweep.yaml: unknown key '[' (allowed: name, results"),
    "an unknown key that looks like a type": ("train: {'list[int]': 2}\n", "train: unknown key 'list[int]' (allowed: method"),
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
    "unknown normalisation": ("model: {arch: resnet18, normalize: cifar}\n", "model.normalize: unknown normalize 'cifar'; choose one of: none, imagenet"),
    "normalisation on a WRN": ("model: {normalize: imagenet}\n", "model: normalize 'imagenet' is not available for wrn"),
    "bad experiment name": ("name: 'my sweep!'\n", "name: String should match pattern"),
    "top level not a mapping": ("- a\n- b\n", "expected a mapping of settings at the top level, got list"),
    "unreadable YAML": ("train: {eps: [0.1\n", "not valid YAML (line 2)"),
    "a control character": ("\x1f", "not valid YAML: unacceptable character #x001f: special characters are not allowed"),
    # Numbers are finite and never booleans; eps lies in its threat model's range (issue 12, item 11).
    "eps past the l_inf range": ("train: {eps: 300}\n", "train.eps: 300 is outside linf's range [0, 1] for digits at 16 px"),
    "eps on the 0-255 scale": ("train: {eps: 8}\n", "outside linf's range [0, 1] for digits at 16 px (eps is the max per-pixel change on the [0, 1] scale); for 8 on the 0-255 scale write 8/255"),
    "eval eps past the range": ("eval: {eps: 2}\n", "eval.eps: 2 is outside linf's range [0, 1]"),
    "l2 eps past the diameter": ("train: {threat_model: l2, eps: 17}\n", "train.eps: 17 is outside l2's range [0, 16] for digits at 16 px"),
    "infinite eps": ("train: {eps: .inf}\n", "train.eps: give a finite number, got inf"),
    "infinite lr": ("train: {lr: .inf}\n", "train.lr: give a finite number, got inf"),
    "nan momentum": ("train: {momentum: .nan}\n", "train.momentum: give a finite number, got nan"),
    "overflowing fraction": ("train: {lr: 1e300/1e-300}\n", "train.lr: give a finite number, got inf"),
    "boolean epochs": ("train: {epochs: true}\n", "train.epochs: give a number, got true"),
    "boolean eps": ("train: {eps: false}\n", "train.eps: give a number, got false"),
    "boolean on a grid axis": ("grid: {seed: [0, true]}\n", "grid point seed=True: train.seed: give a number, got true"),
    "boolean epoch to compare": ("compare: [{kind: cross_layer, epochs: [true]}]\n", "compare.0.cross_layer.epochs.0: give a number, got true"),
    "absurd depth": ("model: {depth: 1000000}\n", "model.depth: Input should be less than or equal to 202"),
    "seed past 32 bits": ("train: {seed: 1099511627776}\n", "train.seed: Input should be less than or equal to 4294967295"),
    # Layer names are checked on the meta device before anything is written (item 12).
    "freezing an unknown layer": ("train: {epochs: 2, freeze: {through: stage9, from_epoch: 1}}\n",
                                  "train.freeze.through: no layer name starts with 'stage9'; layers start with: conv1, block1, block2, block3"),
    "freezing an unknown layer on a grid axis": (
        "train: {epochs: 2}\ngrid: {train.freeze.through: [block1, blok2], train.freeze.from_epoch: [1]}\n",
        "grid point train.freeze.through=blok2, train.freeze.from_epoch=1: train.freeze.through: no layer name starts with 'blok2'"),
    # Size limits, checked before anything is expanded (item 9).
    "a million trials": (MILLION_TRIALS, "grid: 1000000 trials (seed 100 x train.lr 100 x epochs 100) is more than "
                         "max_trials (1000); shrink the grid, or set `max_trials: 1000000` at the top of the sweep file"),
    "a list of grids past the limit": ("grid: [{seed: %s}, {seed: [7], eps: [0, 0.1]}]\nmax_trials: 10\n" % list(range(9)),
                                       "grid: 11 trials (seed 9 + seed 1 x eps 2) is more than max_trials (10)"),
    "too many comparison jobs": ("grid: {seed: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}\nmax_jobs: 50\ncompare: [{kind: cross_layer}, {kind: transfer}]\n",
                                 "compare: 210 comparison jobs by compare.1 (transfer) is more than max_jobs (50); compare fewer trials"),
    "an epoch listed twice": ("train: {epochs: 3}\ncompare: [{kind: cross_layer, epochs: [1, 2, 1]}]\n",
                              "compare.0.cross_layer.epochs: list each epoch once, got [1, 2, 1]"),
    "absurd epochs": ("train: {epochs: 100000000}\n", "train.epochs: Input should be less than or equal to 10000"),
    "a YAML alias bomb": (ALIAS_BOMB, "its YAML aliases expand to more than 100000 values"),
    "a YAML alias inside itself": ("grid: &g {seed: [0, *g]}\n", "a YAML alias refers to a value that contains it"),
    "YAML nested too deeply": ("grid: {seed: " + "[" * 5000 + "]" * 5000 + "}\n", "not valid YAML: nested too deeply"),
    "a huge file": ("# padding\n" * 200_000, "larger than 1 MiB; a sweep file is a few lines of YAML"),
    "an overlong experiment name": ("name: " + "x" * 101 + "\n", "name: String should have at most 100 characters"),
    # CKA-guided freezing (issue 17): one form or the other, and a patience that fits the epochs.
    "both forms of freezing": ("train: {epochs: 5, freeze: {through: block1, from_epoch: 2, auto: {}}}\n",
                               "train.freeze: give either auto (CKA-guided) or through + from_epoch (a fixed epoch), not both; remove through and from_epoch"),
    "half a static freeze": ("train: {epochs: 5, freeze: {through: block1}}\n",
                             "train.freeze: from_epoch is missing: give through + from_epoch, or auto: {} for CKA-guided freezing"),
    "a patience past the epochs": ("train: {epochs: 4, freeze: {auto: {patience: 3}}}\n",
                                   "train.freeze.auto.patience: 3 epochs of stable CKA cannot fit in 4 epochs"),
    "a threshold below -1": ("train: {epochs: 5, freeze: {auto: {threshold: -2}}}\n",
                             "train.freeze.auto.threshold: Input should be greater than or equal to -1"),
    "a probe too small for the unbiased HSIC": ("train: {epochs: 5, freeze: {auto: {probe: 3}}}\n",
                                                "train.freeze.auto.probe: Input should be greater than or equal to 4"),
    "a misspelt auto setting": ("train: {epochs: 5, freeze: {auto: {treshold: 0.9}}}\n", "train.freeze.auto: unknown key 'treshold'"),
    "freezing after the last epoch": ("train: {epochs: 2, freeze: {through: block1, from_epoch: 3}}\n",
                                      "train.freeze.from_epoch: 3 is past the last epoch (2), so nothing would be frozen"),
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


# The upper end of each threat model's eps range on CIFAR-10 (C x H x W = 3 x 32 x 32 = 3072 values), worked out
# by hand from each unit: linf changes a pixel by at most 1 on [0, 1]; l2 spans the diameter of [0, 1]^3072;
# JPEG's variable is at most 2 on each of at most 3072 coefficients; Gabor's amplitude is on the 0-255 scale;
# Snow past 16 turns a half-intensity flake's streak white.
CIFAR_EPS_TOP = {"linf": 1.0, "l2": 3072**0.5, "jpeg": 2 * 3072**0.5, "gabor": 255.0, "snow": 16.0}


@pytest.mark.parametrize("threat_model", list(CIFAR_EPS_TOP))
def test_each_threat_model_states_its_eps_range_and_the_paper_eps_is_inside(tmp_path, threat_model):
    from rayrs.attacks import THREAT_MODELS, default_eps

    top = CIFAR_EPS_TOP[threat_model]
    assert THREAT_MODELS[threat_model].eps_range(3 * 32 * 32) == pytest.approx((0.0, top))
    assert 0 < default_eps(threat_model, "cifar10") <= top
    text = f"data: {{dataset: cifar10, root: data}}\ntrain: {{threat_model: {threat_model}, eps: EPS}}\n"
    (trial,) = expand(load_experiment(write(tmp_path, text.replace("EPS", repr(top)), "ok.yaml")))
    assert trial.config.train.eps == pytest.approx(top)
    with pytest.raises(SweepFileError, match=rf"train.eps: .* is outside {threat_model}'s range \[0, "):
        load_experiment(write(tmp_path, text.replace("EPS", repr(top * 1.01)), "past.yaml"))


def test_a_missing_sweep_file(tmp_path):
    with pytest.raises(SweepFileError, match="no such sweep file"):
        load_experiment(tmp_path / "nope.yaml")


def test_a_folder_given_as_the_sweep_file_is_named_as_a_folder(tmp_path):
    (tmp_path / "mine.yaml").write_text("train: {epochs: 1}\n")
    with pytest.raises(SweepFileError) as caught:
        load_experiment(tmp_path)
    assert str(caught.value) == f"{tmp_path} is a folder, not a sweep file; give one YAML file, e.g. {tmp_path / 'mine.yaml'}"


@pytest.mark.parametrize("path", sorted((REPO / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_jobs_are_counted_before_planning_exactly_as_planned(path):
    from rayrs.config import _job_count
    from rayrs.similarity.jobs import plan_jobs

    experiment = load_experiment(path)
    trials = expand(experiment)
    assert sum(_job_count(comparison, trials) for comparison in experiment.compare) == len(plan_jobs(experiment, trials))


def test_max_trials_can_be_raised_in_the_sweep_file(tmp_path):
    grid = "grid: {seed: [0, 1, 2], eps: [0.05, 0.1]}\n"
    with pytest.raises(SweepFileError, match=r"grid: 6 trials \(seed 3 x eps 2\) is more than max_trials \(5\)"):
        load_experiment(write(tmp_path, grid + "max_trials: 5\n"))
    assert len(expand(load_experiment(write(tmp_path, grid + "max_trials: 6\n")))) == 6


@pytest.mark.timeout(300)  # the old code expanded both: minutes and gigabytes
@pytest.mark.parametrize("case", ["a million trials", "a YAML alias bomb"])
def test_huge_sweep_files_are_refused_before_anything_is_expanded(tmp_path, case):
    import time
    import tracemalloc

    load_experiment(REPO / "sweeps" / "quickstart.yaml")  # the default WRN built once: not what is timed here
    path = write(tmp_path, BAD_FILES[case][0])
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(SweepFileError):
        load_experiment(path)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # Refusing costs what validating a small sweep costs (milliseconds of CPU; 10 s leaves room for a loaded
    # 2-core machine), where expanding 10^6 trials or 10^6 aliased values took minutes and gigabytes.
    assert seconds < 10 and peak < 50 * 2**20, (seconds, peak)


def test_model_normalize_at_its_default_leaves_the_fingerprint_as_it_was():
    # The fingerprint hashes the config without data.root; model.normalize came later and is left out at its
    # default, so every trial run before it keeps its fingerprint (and its checkpoints).
    import hashlib
    import json

    from rayrs.config import TrialConfig

    for model in ({"arch": "wrn"}, {"arch": "resnet18"}):
        config = TrialConfig.model_validate({"model": model})
        before = config.model_dump(mode="json", exclude={"data": {"root"}})
        del before["model"]["normalize"]
        del before["checkpoint"]  # came later still; out of the fingerprint at float32 weights (the default)
        assert config.fingerprint() == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:12]
    plain = TrialConfig.model_validate({"model": {"arch": "resnet18"}})
    normalised = TrialConfig.model_validate({"model": {"arch": "resnet18", "normalize": "imagenet"}})
    assert normalised.fingerprint() != plain.fingerprint()


def test_guided_freezing_is_part_of_the_fingerprint_and_a_static_freeze_keeps_its_own():
    # train.freeze.auto came after static freezing: a static freeze hashes as it did before (no `auto: null`),
    # and each auto setting makes a different trial (its checkpoints differ).
    import hashlib
    import json

    from rayrs.config import TrialConfig

    static = TrialConfig.model_validate({"train": {"epochs": 5, "freeze": {"through": "block1", "from_epoch": 2}}})
    before = static.model_dump(mode="json", exclude={"data": {"root"}, "model": {"normalize"}, "checkpoint": True})
    del before["train"]["freeze"]["auto"]
    assert static.fingerprint() == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:12]
    autos = [TrialConfig.model_validate({"train": {"epochs": 5, "freeze": {"auto": auto}}})
             for auto in ({}, {"threshold": 0.9}, {"adversarial_threshold": 0.995}, {"patience": 3}, {"probe": 128},
                          {"adversarial_probe": 64})]
    assert len({config.fingerprint() for config in autos + [static]}) == 7
    assert autos[0].train.freeze.auto.model_dump() == {"threshold": 0.995, "adversarial_threshold": 0.99, "patience": 2,
                                                       "probe": None, "adversarial_probe": None}
