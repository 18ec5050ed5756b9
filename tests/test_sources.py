"""Model and probe sources: comparisons read the test split alone, and the same images as training's loader."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from test_data import write_cifar10, write_image_folders

from rayrs.config import TrialConfig, TrialSpec
from rayrs.data import load_dataset, load_test_split
from rayrs.errors import UserError
from rayrs.similarity.jobs import ModelRef, SimilarityJob, run_job
from rayrs.similarity.probes import AdversarialProbe
from rayrs.sources import ProbeSource, TrialModel
from rayrs.storage import Storage
from rayrs.train import train_trial


@pytest.mark.parametrize("name", ["digits", "cifar10", "imagenette"])
def test_the_test_split_alone_is_the_test_split_of_the_whole_dataset(tmp_path: Path, name: str) -> None:
    if name == "cifar10":
        write_cifar10(tmp_path, test=5)
    elif name == "imagenette":
        write_image_folders(tmp_path)
    root = None if name == "digits" else tmp_path
    size = 24 if name == "imagenette" else None
    whole = load_dataset(name, root=root, image_size=size)
    alone = load_test_split(name, root=root, image_size=size)
    assert torch.equal(alone.test_images, whole.test_images) and torch.equal(alone.test_labels, whole.test_labels)
    assert alone.classes == whole.classes and alone.num_classes == whole.num_classes


def test_the_test_split_needs_no_training_files(tmp_path: Path) -> None:
    write_cifar10(tmp_path, test=4)
    for batch in range(1, 6):
        (tmp_path / "cifar-10-batches-py" / f"data_batch_{batch}").unlink()
    with pytest.raises(UserError, match="missing data_batch_1"):
        load_dataset("cifar10", root=tmp_path)  # training still needs them, and says so in one line
    assert load_test_split("cifar10", root=tmp_path).test_images.shape == (4, 3, 32, 32)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(UserError, match=r"missing test_batch at .* \(expected test_batch and batches.meta\)"):
        load_test_split("cifar10", root=tmp_path)


def _cifar10_trial(root: Path) -> TrialSpec:
    config = TrialConfig.model_validate({
        "data": {"dataset": "cifar10", "root": str(root)},
        "model": {"arch": "wrn", "depth": 10, "width": 1},
        "train": {"method": "pgd", "eps": 0.03, "epochs": 1, "batch_size": 8, "attack": {"steps": 1}},
        "eval": {"eps": 0.03, "attack": {"steps": 2}, "train_subset": 8, "test_subset": 8},
    })
    return TrialSpec(name="tiny", experiment="test", config=config, axes={})


def _jobs(spec: TrialSpec, probe_size: int) -> list[SimilarityJob]:
    final = ModelRef(spec.name, spec.config.train.epochs, spec.fingerprint)
    adversarial = AdversarialProbe.of(spec.name, final.epoch, spec.config, probe_size).id
    return [
        SimilarityJob("cross_layer", final, final, probe_size, batch_size=8, passes=2),
        SimilarityJob("benign_vs_adversarial", final, final, probe_size, batch_size=8, passes=2, probe_b=adversarial),
    ]


def test_comparisons_of_a_trained_trial_run_without_its_training_files(tmp_path: Path) -> None:
    """Jobs read only the probe dataset's test split: with the training batches gone, the same jobs give the
    very same rows (and adversarial probes) as with them present."""
    data_root = tmp_path / "data"
    write_cifar10(data_root, per_batch=8, test=12)
    spec = _cifar10_trial(data_root)
    trained = Storage(tmp_path / "results")
    train_trial(spec, trained, "cpu")
    copy = Storage(tmp_path / "copy")  # the same checkpoint, without the probes the first run will cache
    for path in (tmp_path / "results").rglob("*"):
        if path.is_file():
            target = tmp_path / "copy" / path.relative_to(tmp_path / "results")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    configs = {spec.name: spec.config}
    jobs = _jobs(spec, probe_size=12)
    with_training_files = [run_job(job, configs, trained, "cpu") for job in jobs]
    for batch in range(1, 6):
        (data_root / "cifar-10-batches-py" / f"data_batch_{batch}").unlink()
    without = [run_job(job, configs, copy, "cpu") for job in jobs]
    assert without == with_training_files and all(rows > 0 for rows in without)
    for job in jobs:
        before, after = (pq.read_table(Path(s.root) / job.output).drop(["seconds"]) for s in (trained, copy))
        assert after.equals(before), job.describe()
    # The adversarial probe was crafted again on the copy (no cache there) and is bit-identical.
    probe = AdversarialProbe.of(spec.name, 1, spec.config, 12)
    crafted, cached = (load_file(tmp_path / folder / probe.path) for folder in ("copy", "results"))
    assert torch.equal(crafted["images"], cached["images"]) and torch.equal(crafted["indices"], cached["indices"])


def test_a_trial_model_source_is_the_checkpoint_in_eval_mode(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "data", per_batch=8, test=12)
    spec = _cifar10_trial(tmp_path / "data")
    storage = Storage(tmp_path / "results")
    (metrics,) = train_trial(spec, storage, "cpu")
    # The probe of 8 images is the evaluation's test subset of 8 (the same `fixed_subset`).
    probe = ProbeSource.of(spec.config, size=8, device="cpu")
    source = TrialModel(storage, spec.name, spec.config, probe.data)
    model = source.load(1)
    assert not model.training and source.normalize == "none"
    assert [layer.type for layer in source.layers(["conv", "linear"])] == ["conv"] * 9 + ["linear"]  # WRN-10-1: stem, 2 per block, 2 shortcuts
    with torch.no_grad():
        accuracy = (model(probe.benign(torch.arange(probe.count))).argmax(1) == probe.labels).double().mean().item()
    assert accuracy == pytest.approx(metrics["test_clean_acc"], abs=1e-9)
