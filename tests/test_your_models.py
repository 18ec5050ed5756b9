"""A sweep file's `models:` (issue 16): networks rayrs did not train, from weights files in each format, compared
through Ray into the same Parquet as trials, against an independent float64 CKA; refused at the door when wrong."""

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import torchvision
from safetensors.torch import load_file, save_file
from test_compare import _activations, _hsic
from test_data import write_cifar10
from test_weights import _RunsCode
from typer.testing import CliRunner

from rayrs.cli import app
from rayrs.config import Experiment, expand, load_experiment, model_entries
from rayrs.data import load_test_split, to_float
from rayrs.models import build_model
from rayrs.similarity.jobs import plan_jobs
from rayrs.similarity.probes import AdversarialProbe, craft

PROBE = 24  # CIFAR-10-sized test images written by the test; one minibatch of all of them: full-batch CKA
TYPES = (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.ReLU, torch.nn.MaxPool2d, torch.nn.AdaptiveAvgPool2d,
         torch.nn.Linear)  # rayrs's paper types (conv, bn, act, pool, linear) as torch modules, for the reference


def _resnet18(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.resnet18(num_classes=10).eval()


def _wrn(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("wrn", num_classes=10, depth=10, width=1).eval()


SWEEP = """
data: {{dataset: cifar10, root: {root}}}
eval: {{attack: {{steps: 2}}}}
models:
  - {{name: rn18_st, arch: "torchvision:resnet18", weights: {dir}/rn18.safetensors}}
  - {{name: rn18_pt, arch: "torchvision:resnet18", weights: {dir}/rn18.pt}}
  - {{name: wrn_rb, arch: wrn, depth: 10, width: 1, weights: {dir}/robustbench.pt, threat_model: linf, eps: 8/255}}
  - name: wrn_epochs
    arch: wrn
    depth: 10
    width: 1
    weights: {{1: {dir}/wrn_e1.safetensors, 3: {dir}/wrn_e3.safetensors}}
compare:
  - {{kind: cross_layer, trials: [wrn_rb]}}
  - {{kind: cross_model, pairs: [[rn18_st, rn18_pt]]}}
  - {{kind: benign_vs_adversarial, trials: [wrn_rb]}}
  - {{kind: transfer, models: [wrn_rb, wrn_epochs]}}
  - {{kind: cross_epoch, trials: [wrn_epochs], layer_types: [conv, bn, act, pool, linear]}}
cka: {{probe_size: {probe}, batch_size: {probe}, passes: 1}}
"""


def _write_weights(folder: Path) -> None:
    """Each format a user brings: safetensors and a torch.save'd state dict of a torchvision ResNet-18, a
    RobustBench-style WRN dict (nested under ``state_dict``, DataParallel's ``module.`` prefixes), and a WRN's
    weights at two epochs."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_resnet18(1).state_dict(), folder / "rn18.safetensors")
    torch.save(_resnet18(2).state_dict(), folder / "rn18.pt")
    nested = {f"module.{name}": tensor for name, tensor in _wrn(3).state_dict().items()}
    torch.save({"state_dict": nested, "epoch": 100, "best_acc": 0.5}, folder / "robustbench.pt")
    save_file(_wrn(4).state_dict(), folder / "wrn_e1.safetensors")
    save_file(_wrn(5).state_dict(), folder / "wrn_e3.safetensors")


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    """Weights, a CIFAR-10 test split alone (the training batches removed: comparing needs none) and the sweep."""
    data = tmp_path / "data"
    write_cifar10(data, per_batch=2, test=PROBE)
    for batch in range(1, 6):
        (data / "cifar-10-batches-py" / f"data_batch_{batch}").unlink()
    _write_weights(tmp_path / "weights")
    sweep = tmp_path / "your_models.yaml"
    sweep.write_text(SWEEP.format(root=data, dir=tmp_path / "weights", probe=PROBE))
    return sweep, tmp_path / "results"


@pytest.fixture(scope="module")
def swept(ray_session, tmp_path_factory):
    """The sweep above run through Ray once (the report is drawn by analyze, below): ``(sweep file, experiment folder, images)``."""
    tmp_path = tmp_path_factory.mktemp("your_models")
    sweep, results = _setup(tmp_path)
    outcome = CliRunner().invoke(app, ["sweep", str(sweep), "--results", str(results), "--no-report"])
    assert outcome.exit_code == 0, outcome.output
    images = to_float(load_test_split("cifar10", root=tmp_path / "data").test_images)
    return sweep, results / "your_models", images


def _reference(xs: dict[str, torch.Tensor], ys: dict[str, torch.Tensor]) -> dict[tuple[str, str], float]:
    """Full-batch unbiased linear CKA of every (x layer, y layer) in float64 (test_compare's term-by-term HSIC),
    each layer's Gram formed once: ``xs``, ``ys`` name -> (n, features) activations of the same n inputs."""
    grams_x = {name: x @ x.T for name, x in xs.items()}
    grams_y = {name: y @ y.T for name, y in ys.items()}
    self_x = {name: _hsic(k, k) for name, k in grams_x.items()}
    self_y = {name: _hsic(l, l) for name, l in grams_y.items()}
    return {(a, b): (_hsic(k, l) / (self_x[a] * self_y[b]).sqrt()).item()
            for a, k in grams_x.items() for b, l in grams_y.items()}


def _rows(folder: Path, kind: str) -> pl.DataFrame:
    return pl.read_parquet(folder / "similarity" / kind / "*.parquet")


def _close_to_reference(rows: pl.DataFrame, reference: dict) -> None:
    got = {(r["name_a"], r["name_b"]): r["value"] for r in rows.iter_rows(named=True)}
    assert got.keys() == reference.keys()
    # float32 Grams against float64 activations: the values agree to ~1e-6; 1e-4 is far above that rounding
    # and far below any difference between layers.
    assert max(abs(got[key] - reference[key]) for key in reference) < 1e-4


def test_models_in_two_formats_compared_through_ray_are_full_batch_cka(swept) -> None:
    _, folder, images = swept
    rows = _rows(folder, "cross_model").filter(measure="cka")
    assert set(rows["model_a"]) == {"rn18_st"} and set(rows["model_b"]) == {"rn18_pt"}
    assert set(rows["epoch_a"]) == {1} and set(rows["n_examples"]) == {PROBE}
    reference = _reference(_activations(_resnet18(1), images, TYPES), _activations(_resnet18(2), images, TYPES))
    assert len(reference) > 50 * 50  # every conv, bn, relu call, pool and the fc of ResNet-18
    _close_to_reference(rows, reference)


def test_a_robustbench_style_checkpoint_is_the_saved_network(swept) -> None:
    _, folder, images = swept
    rows = _rows(folder, "cross_layer").filter(measure="cka")
    assert set(rows["model_a"]) == {"wrn_rb"}
    activations = _activations(_wrn(3), images, TYPES)
    _close_to_reference(rows, _reference(activations, activations))


def test_adversarial_probes_are_crafted_on_the_entry_with_its_threat_model_and_eps(swept) -> None:
    _, folder, images = swept
    spec = next(s for s in model_entries(load_experiment(swept[0])) if s.name == "wrn_rb")
    probe = AdversarialProbe.of("wrn_rb", 1, spec.config, PROBE)
    file = load_file(folder / "probes" / f"{probe.id}.safetensors")
    stored, images = file["images"], images[file["indices"]]  # the probe's order
    assert probe.id == f"adversarial:wrn_rb@1:linf:{8 / 255:g}:2"
    # The same attack, run here on the saved network with one thread as in the sweep's Ray task: the sweep's
    # probe is exactly it.
    data = load_test_split("cifar10", root=json.loads((folder / "sweep.json").read_text())["data"]["root"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        crafted = craft(probe, _wrn(3), spec.config, data)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(stored, crafted, rtol=0, atol=0)
    assert 0 < (stored - images).abs().max() <= 8 / 255 + 1e-6
    rows = _rows(folder, "benign_vs_adversarial").filter(measure="cka")
    assert set(rows["probe_b"]) == {probe.id}
    model = _wrn(3)
    _close_to_reference(rows, _reference(_activations(model, images, TYPES), _activations(model, stored, TYPES)))


def test_transfer_and_cross_epoch_run_on_entries(swept) -> None:
    _, folder, images = swept
    accuracy = _rows(folder, "transfer").filter(measure="transfer_accuracy")
    assert accuracy.select("model_a", "model_b").sort("model_a", "model_b").rows() == [
        ("wrn_epochs", "wrn_epochs"), ("wrn_epochs", "wrn_rb"), ("wrn_rb", "wrn_epochs"), ("wrn_rb", "wrn_rb")]
    labels = load_test_split("cifar10", root=json.loads((folder / "sweep.json").read_text())["data"]["root"]).test_labels
    probe = AdversarialProbe.of("wrn_rb", 1, next(s for s in model_entries(load_experiment(swept[0]))
                                                  if s.name == "wrn_rb").config, PROBE)
    file = load_file(folder / "probes" / f"{probe.id}.safetensors")
    with torch.no_grad():  # the target's accuracy on the source's adversarial probe, counted here
        expected = (_wrn(5)(file["images"]).argmax(1) == labels[file["indices"]]).double().mean().item()
    got = accuracy.filter(model_a="wrn_rb", model_b="wrn_epochs")["value"].item()
    assert got == pytest.approx(expected, abs=1e-12)

    epochs = _rows(folder, "cross_epoch").filter(measure="cka")
    assert set(epochs["epoch_a"]) | set(epochs["epoch_b"]) == {1, 3}  # the weights files' own epochs
    first, final = _activations(_wrn(4), images, TYPES), _activations(_wrn(5), images, TYPES)
    reference = _reference(first, final)
    got = {r["name_a"]: r["value"] for r in epochs.filter(epoch_a=1, epoch_b=3).iter_rows(named=True)}
    assert got.keys() == first.keys()
    assert max(abs(got[name] - reference[name, name]) for name in got) < 1e-4


def test_analyze_and_status_read_a_sweep_of_models_alone(swept, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # status's table and lines whole, as in a wide terminal
    sweep, folder, _ = swept
    out = tmp_path / "report"
    analyzed = CliRunner().invoke(app, ["analyze", str(folder), "--out", str(out)])
    assert analyzed.exit_code == 0, analyzed.output
    assert (out / "cross_layer.png").stat().st_size > 0
    # The heatmap's panel is the entry, labelled from its method and eps as a trial is (models.json).
    spec = json.dumps(json.loads((out / "cross_layer.vl.json").read_text()), ensure_ascii=False)
    assert "PGD-AT ε=8/255" in spec
    status = CliRunner().invoke(app, ["status", str(folder)])
    assert status.exit_code == 0, status.output
    jobs = len(plan_jobs(load_experiment(sweep), _specs_of(folder, sweep)))
    assert f"comparison jobs: {jobs}/{jobs} done" in status.output
    assert "wrn_epochs" in status.output and "given" in status.output


def _specs_of(folder: Path, sweep: Path) -> list:
    from rayrs.entries import stored_models
    from rayrs.storage import Storage

    return stored_models(Storage(folder), load_experiment(sweep))


def test_a_rerun_skips_finished_jobs_and_a_changed_weights_file_plans_new_ones(swept, tmp_path: Path) -> None:
    sweep, folder, _ = swept
    results = tmp_path / "results"
    shutil.copytree(folder, results / folder.name)
    copy = results / folder.name
    again = CliRunner().invoke(app, ["sweep", str(sweep), "--results", str(results), "--resume", "--local", "--no-report"])
    assert again.exit_code == 0, again.output
    assert "0 comparison jobs computed" in again.output
    before = {p.relative_to(copy) for p in (copy / "similarity").rglob("*.parquet")}
    (probe,) = (copy / "probes").glob("adversarial:wrn_rb@*")
    crafted = probe.read_bytes()
    weights = Path(load_experiment(sweep).models[2].weights)  # wrn_rb: other weights in the same file
    saved = weights.read_bytes()
    try:
        torch.save({"state_dict": _wrn(6).state_dict()}, weights)
        changed = CliRunner().invoke(app, ["sweep", str(sweep), "--results", str(results), "--resume", "--local",
                                           "--no-report"])
    finally:
        weights.write_bytes(saved)
    assert changed.exit_code == 0, changed.output
    # wrn_rb's jobs: cross_layer, benign_vs_adversarial, and transfer with it as source or target (CKA and accuracy).
    assert "8 comparison jobs computed (4 already done)" in changed.output
    after = {p.relative_to(copy) for p in (copy / "similarity").rglob("*.parquet")}
    assert len(after - before) == 8 and before <= after
    assert probe.read_bytes() != crafted  # crafted again on the new weights, not read from the cache


# -- at the door: one line, nothing run, nothing written --------------------------------------------------------
def _sweep_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = CliRunner().invoke(app, ["sweep", str(path), "--results", str(tmp_path / "results"), "--local"])
    assert result.exit_code == 1, result.output
    assert not (tmp_path / "results").exists()
    line = result.output.strip()
    assert "\n" not in line and "Traceback" not in line
    return line


def test_a_malicious_pickle_in_weights_is_refused_at_the_door_and_nothing_in_it_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    torch.save({"conv.weight": torch.zeros(1), "payload": _RunsCode(marker)}, tmp_path / "evil.pt")
    line = _sweep_error(tmp_path, f"models: [{{name: evil, arch: wrn, depth: 10, width: 1, weights: {tmp_path}/evil.pt}}]\n")
    assert "models.0 (evil): weights file" in line and "refused: reading it needs arbitrary unpickling" in line
    assert not marker.exists()


@pytest.mark.parametrize("entry, expected", [
    ("{name: m, arch: wrn, depth: 10, width: 1, weights: absent.safetensors}",
     "models.0 (m): weights file {cwd}/absent.safetensors does not exist"),
    ("{name: m, arch: 'nosuch:net', weights: w.pt}", "models.0: architecture 'nosuch:net': no module 'nosuch' to import; write torchvision:<name>, timm:<name>"),
    ("{name: m, arch: wrn, depth: 10, width: 2, weights: {tmp}/w.safetensors}",
     "models.0 (m): weights file {tmp}/w.safetensors does not fit the architecture"),
])
def test_a_wrong_entry_is_one_line_naming_it(tmp_path: Path, monkeypatch, entry: str, expected: str) -> None:
    monkeypatch.chdir(tmp_path)
    save_file(_wrn(0).state_dict(), tmp_path / "w.safetensors")  # a WRN-10-1's: not a WRN-10-2's
    line = _sweep_error(tmp_path, f"models: [{entry.replace('{tmp}', str(tmp_path))}]\n")
    assert expected.replace("{cwd}", str(tmp_path)).replace("{tmp}", str(tmp_path)) in line


def test_names_and_comparisons_are_checked_against_trials_and_models(tmp_path: Path) -> None:
    save_file(_wrn(0).state_dict(), tmp_path / "w.safetensors")
    model = f"{{name: seed0, arch: wrn, depth: 10, width: 1, weights: {tmp_path}/w.safetensors}}"
    line = _sweep_error(tmp_path, f"grid: {{seed: [0, 1]}}\nmodels: [{model}]\n")
    assert "models.0.name: 'seed0' is already the name of a trial of the grid ('seed0')" in line
    model = model.replace("seed0", "mine")
    line = _sweep_error(tmp_path, f"models: [{model}]\ncompare: [{{kind: cross_model, pairs: [[mine, yours]]}}]\n")
    assert "compare.0.cross_model.pairs: no trial or model named 'yours' in this sweep; its trials and models are: mine" in line
    line = _sweep_error(tmp_path, f"train: {{epochs: 2}}\nmodels: [{model}]\n")
    assert "has no grid, so its `train` section would train nothing" in line
    line = _sweep_error(tmp_path, "model: {arch: 'torchvision:resnet18'}\n")
    assert "model.arch: rayrs trains its own architectures" in line and "list it under `models:`" in line


def test_trials_and_models_mix_in_every_plan(tmp_path: Path) -> None:
    experiment = Experiment.model_validate({
        "name": "mixed", "grid": {"seed": [0]}, "train": {"epochs": 2},
        "models": [{"name": "mine", "arch": "wrn", "depth": 10, "width": 1, "weights": "w.safetensors", "eps": 0.1}],
        "compare": [{"kind": "cross_model"}, {"kind": "transfer"}],
    })
    trials = expand(experiment)
    assert [t.name for t in trials] == ["trial"]
    (entry,) = [spec.model_copy(update={"digest": "0" * 12}) for spec in model_entries(experiment)]
    jobs = plan_jobs(experiment, [*trials, entry])
    pairs = {(job.kind, job.a.trial, job.b.trial, job.measure) for job in jobs}
    assert ("cross_model", "trial", "mine", "cka") in pairs
    assert {("transfer", a, b, "transfer_accuracy") for a in ("trial", "mine") for b in ("trial", "mine")} <= pairs
    # A changed weights file is a new digest: new ids for every job of the entry, the trial's own unchanged.
    moved = plan_jobs(experiment, [*trials, entry.model_copy(update={"digest": "1" * 12})])
    changed = {job.id for job in jobs} ^ {job.id for job in moved}
    assert len(changed) == 2 * sum("mine" in (job.a.trial, job.b.trial) for job in jobs)


def test_dry_run_lists_the_models_and_their_jobs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    digits_wrn = build_model("wrn", num_classes=10, in_channels=1, depth=10, width=1)  # digits: one channel
    save_file(digits_wrn.state_dict(), tmp_path / "w.safetensors")
    path = tmp_path / "plan.yaml"
    path.write_text(f"models: [{{name: mine, arch: wrn, depth: 10, width: 1, weights: {{2: {tmp_path}/w.safetensors}}, "
                    f"eps: 0.1}}, {{name: later, arch: wrn, depth: 10, width: 1, weights: {tmp_path}/later.pt}}]\n"
                    "compare: [{kind: cross_layer, trials: [mine]}, {kind: benign_vs_adversarial, trials: [mine]}]\n")
    result = CliRunner().invoke(app, ["sweep", str(path), "--results", str(tmp_path / "results"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "2 given models" in result.output and "mine: wrn, pgd linf eps 0.1, epochs 2" in result.output
    assert f"weights not there yet (the sweep stops on them): {tmp_path}/later.pt" in result.output
    assert "2 comparison jobs:" in result.output and "cross_layer mine@2" in result.output
    assert not (tmp_path / "results").exists()


def test_a_wrn_28_10_dict_in_robustbench_layout_fits_rayrs_wrn_28_10() -> None:
    """The issue's WRN-28-10 in RobustBench's container layout (nested under state_dict, DataParallel's prefixes),
    checked for structure alone on the meta device (its 36.5M parameters are never allocated), under rayrs's
    names here; under RobustBench's / the paper's own names in the test below."""
    from rayrs.weights import _state_dict, load_weights_into

    with torch.device("meta"):
        saved = build_model("wrn", num_classes=10, depth=28, width=10)
        model = build_model("wrn", num_classes=10, depth=28, width=10)
    checkpoint = {"state_dict": {f"module.{name}": t for name, t in saved.state_dict().items()}, "epoch": 200}
    state = _state_dict(checkpoint, Path("Carmon2019Unlabeled.pt"))
    assert list(state) == list(model.state_dict()) and len(state) > 100  # 28 layers deep: 155 tensors
    load_weights_into(model, state, "Carmon2019Unlabeled.pt")  # raises on any missing, unexpected or reshaped tensor


@pytest.mark.parametrize("depth", [28, 34])
def test_a_full_size_wrn_under_the_papers_and_robustbenchs_names_fits_rayrs_wrn(depth: int) -> None:
    """Every tensor of the reference's WRN-28-10 / WRN-34-10 (names and shapes listed by running its
    models/wide_resnet.py: tests/fixtures/paper_code/make_wrn_keys.py), in RobustBench's container layout, maps
    onto rayrs's wrn of that size, shapes too, none left over (on the meta device: nothing allocated)."""
    from rayrs.weights import _state_dict, load_weights_into

    listing = json.loads((Path(__file__).parent / "fixtures" / "paper_code" / "wrn_paper_names.json").read_text())
    with torch.device("meta"):
        saved = {f"module.{name}": torch.empty(shape, dtype=torch.int64 if name.endswith("num_batches_tracked")
                                               else torch.float32)
                 for name, shape in listing[f"{depth}-10"].items()}
        model = build_model("wrn", num_classes=10, depth=depth, width=10)
    assert "block3.layer.0.convShortcut.weight" in listing[f"{depth}-10"]
    state = _state_dict({"state_dict": saved, "epoch": 200}, Path("Gowal2020Uncovering.pt"))
    load_weights_into(model, state, "Gowal2020Uncovering.pt")  # raises on any missing, unexpected or reshaped tensor
    assert len(state) == len(model.state_dict()) == (155 if depth == 28 else 191)


# -- a plain ImageFolder as probe data (and training data) ----------------------------------------------------------
CLASS_SIZES = {"zebra": [(30, 20), (21, 40)], "apple": [(24, 24)], "mole": [(40, 25), (19, 33), (26, 26)]}


def _write_image_folder(root: Path, seed: int = 0, fmt: str = "png") -> dict[Path, str]:
    """``root/<class>/<i>.<fmt>``: seeded random RGB images of the (width, height) in `CLASS_SIZES`; path -> class."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    written = {}
    for name, sizes in CLASS_SIZES.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, (width, height) in enumerate(sizes):
            path = root / name / f"{i}.{fmt}"
            Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
            written[path] = name
    return written


def _reference_view(path: Path, size: int) -> torch.Tensor:
    """PIL alone, written out: the short side bilinearly resized to int(1.14 size), then the centre size x size
    (torchvision's Resize + CenterCrop arithmetic, the paper's Imagenette test transform); (3, size, size) uint8."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    short = int(1.14 * size)
    width, height = image.size
    new = (short, int(short * height / width)) if width <= height else (int(short * width / height), short)
    image = image.resize(new, Image.BILINEAR)
    left, top = int(round((new[0] - size) / 2)), int(round((new[1] - size) / 2))
    pixels = np.asarray(image.crop((left, top, left + size, top + size)))
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)


def test_a_plain_image_folder_is_probe_data_with_classes_sorted_by_folder_name(tmp_path: Path) -> None:
    written = _write_image_folder(tmp_path / "mine")
    probe = load_test_split("image_folder", root=tmp_path / "mine", image_size=16)
    assert probe.classes == ("apple", "mole", "zebra")  # sorted folder names, as torchvision's ImageFolder
    # Within a class, files in sorted order too: the expected images in the loader's order.
    order = sorted(written, key=lambda path: (written[path], path.name))
    assert probe.test_labels.tolist() == [probe.classes.index(written[path]) for path in order]
    expected = torch.stack([_reference_view(path, 16) for path in order])
    assert torch.equal(probe.test_images, expected)


def test_an_image_folder_with_train_and_val_trains_as_imagenette_does(tmp_path: Path) -> None:
    from rayrs.data import DATASETS, load_dataset

    _write_image_folder(tmp_path / "mine" / "train", seed=1, fmt="jpg")
    _write_image_folder(tmp_path / "mine" / "val", seed=2)
    data = load_dataset("image_folder", root=tmp_path / "mine", image_size=16)
    assert data.classes == ("apple", "mole", "zebra") and data.train_images.shape == (6, 3, 16, 16)
    assert torch.equal(data.test_images, load_test_split("image_folder", root=tmp_path / "mine", image_size=16).test_images)
    batch = DATASETS["image_folder"].augmentation(data, torch.arange(6), torch.Generator().manual_seed(0))
    assert batch.shape == (6, 3, 16, 16) and 0 <= batch.min() and batch.max() <= 1
    assert DATASETS["image_folder"].class_count(tmp_path / "mine") == 3


@pytest.mark.parametrize("damage, expected", [
    ("absent", "image_folder: no folder {root}; set data.root to a folder of images laid out as <root>/<class>/<image>"),
    ("no_classes", "image_folder: no class folders in {root}; put each class's images in a folder of its own"),
    ("no_images", "image_folder: no images at {root} (Found no valid file for the classes mole."),
    ("unreadable", "image_folder: cannot read image {root}/zebra/1.png (cannot identify image file"),
    ("truncated", "image_folder: cannot read image {root}/apple/0.png ("),
    ("train_flat", "image_folder: training reads {root}/train/<class>/ and {root}/val/<class>/ (the test split), "
                   "found no val/ there; a flat <root>/<class>/ folder is probe data for comparisons (models:) only"),
])
def test_a_broken_image_folder_is_one_line_naming_the_path(tmp_path: Path, damage: str, expected: str) -> None:
    from rayrs.data import load_dataset
    from rayrs.errors import UserError

    root = tmp_path / "mine"
    if damage != "absent":
        root.mkdir()
    if damage == "no_classes":
        (root / "readme.txt").write_text("no class folders here")
    if damage in ("no_images", "unreadable", "truncated", "train_flat"):
        _write_image_folder(root)
    if damage == "no_images":
        for path in (root / "mole").iterdir():
            path.rename(path.with_suffix(".txt"))  # not an image extension: the class has no image files
    if damage == "unreadable":
        (root / "zebra" / "1.png").write_bytes(b"not an image at all")
    if damage == "truncated":
        data = (root / "apple" / "0.png").read_bytes()
        (root / "apple" / "0.png").write_bytes(data[: len(data) // 2])
    load = load_dataset if damage == "train_flat" else load_test_split
    with pytest.raises(UserError) as caught:
        load("image_folder", root=root, image_size=16)
    line = str(caught.value)
    assert "\n" not in line
    assert expected.format(root=root) in line


def test_a_sweep_of_models_compares_them_on_a_plain_image_folder(tmp_path: Path) -> None:
    """The probe of a `models:` sweep read from an image folder: the rows are CKA on exactly those images, and
    the entry's classifier width is the folder's class count (3), not a registry default."""
    _write_image_folder(tmp_path / "mine")
    torch.manual_seed(0)
    model = build_model("wrn", num_classes=3, depth=10, width=1).eval()
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    sweep = tmp_path / "folder.yaml"
    sweep.write_text(f"data: {{dataset: image_folder, root: {tmp_path / 'mine'}, image_size: 16}}\n"
                     f"models: [{{name: mine, arch: wrn, depth: 10, width: 1, weights: {tmp_path}/w.safetensors}}]\n"
                     "compare: [{kind: cross_layer, trials: [mine], layer_types: [conv, linear]},\n"
                     "          {kind: benign_vs_adversarial, trials: [mine], layer_types: [linear]}]\n"
                     "eval: {attack: {steps: 2}}\n"
                     "cka: {probe_size: 6, batch_size: 6, passes: 1}\n")
    result = CliRunner().invoke(app, ["sweep", str(sweep), "--results", str(tmp_path / "results"), "--local",
                                      "--no-report"])
    assert result.exit_code == 0, result.output
    rows = _rows(tmp_path / "results" / "folder", "cross_layer").filter(measure="cka")
    images = to_float(load_test_split("image_folder", root=tmp_path / "mine", image_size=16).test_images)
    activations = _activations(model, images, (torch.nn.Conv2d, torch.nn.Linear))
    _close_to_reference(rows, _reference(activations, activations))
    # A standard model's adversarial probe: attacked as the paper attacks its ImageNet subsets (l_inf 4/255).
    (adversarial,) = _rows(tmp_path / "results" / "folder", "benign_vs_adversarial").filter(measure="cka").rows(named=True)
    assert adversarial["probe_b"].endswith(f":linf:{4 / 255:.6g}:2")  # adversarial:<model>@<epoch>:<threat>:<eps>:<steps>


def test_a_weights_file_replaced_after_planning_fails_its_job_naming_the_file(tmp_path: Path) -> None:
    """Planning hashes each file; the task hashes the bytes it loads. A file swapped in between (the weights of
    another network of the same architecture, so it would load and compute silently) fails in one line."""
    from rayrs.entries import model_specs
    from rayrs.errors import UserError
    from rayrs.similarity.run import run_job
    from rayrs.storage import Storage

    torch.manual_seed(0)
    path = tmp_path / "w.safetensors"
    save_file(build_model("wrn", num_classes=10, in_channels=1, depth=10, width=1).state_dict(), path)
    experiment = Experiment.model_validate({
        "name": "swap", "models": [{"name": "mine", "arch": "wrn", "depth": 10, "width": 1, "weights": str(path)}],
        "compare": [{"kind": "cross_layer", "layer_types": ["linear"]}],
        "cka": {"probe_size": 8, "batch_size": 8, "passes": 1},
    })
    (spec,) = model_specs(experiment)
    (job,) = plan_jobs(experiment, [spec])
    torch.manual_seed(1)  # another network's weights, same names and shapes
    save_file(build_model("wrn", num_classes=10, in_channels=1, depth=10, width=1).state_dict(), path)
    storage = Storage(tmp_path / "results")
    with pytest.raises(UserError) as caught:
        run_job(job, {spec.name: spec.config}, storage, torch.device("cpu"), {spec.name: spec})
    line = str(caught.value)
    assert line.startswith(f"weights file {path} changed after the sweep was planned (SHA-256 ") and "\n" not in line
    assert not storage.exists(job.output)  # nothing computed under the planned job id
