"""Dataset registry, loaders on tiny files in the real on-disk formats, and batched augmentation."""

from __future__ import annotations

import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rayrs.data import DATASETS, ImageDataset, augment, load_dataset, to_float
from rayrs.errors import UserError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def assert_one_line_error(err: pytest.ExceptionInfo[UserError], *parts: str) -> str:
    """The UserError's message is a single line containing every one of `parts`; returns it."""
    message = str(err.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return message


# ---------------------------------------------------------------------------------------------------------
# Registry


def test_registry_entries_are_complete_and_one_line() -> None:
    assert list(DATASETS) == ["digits", "cifar10", "imagenette", "imagewoof"]
    for key, info in DATASETS.items():
        assert info.name == key
        assert info.description and "\n" not in info.description
        assert info.source and info.default_image_size > 0 and info.crop_padding >= 0
    assert not DATASETS["digits"].flip and not DATASETS["digits"].needs_root
    assert all(DATASETS[n].flip and DATASETS[n].needs_root for n in ("cifar10", "imagenette", "imagewoof"))


def test_unknown_dataset_lists_the_valid_names() -> None:
    with pytest.raises(UserError) as err:
        load_dataset("mnist")
    assert_one_line_error(err, "'mnist'", "digits, cifar10, imagenette, imagewoof")


@pytest.mark.parametrize("name", ["cifar10", "imagenette", "imagewoof"])
def test_dataset_needing_a_root_says_so(name: str) -> None:
    with pytest.raises(UserError) as err:
        load_dataset(name)
    assert_one_line_error(err, name, "no data root", DATASETS[name].source)


def test_bad_image_size_is_a_user_error() -> None:
    with pytest.raises(UserError) as err:
        load_dataset("digits", image_size=0)
    assert_one_line_error(err, "image_size", "0")


# ---------------------------------------------------------------------------------------------------------
# digits (real data shipped with scikit-learn)


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return load_dataset("digits")


def test_digits_shapes_split_and_classes(digits: ImageDataset) -> None:
    # 1797 images, 25% held out: 1347 train, 450 test; upsampled to the default 16x16, one channel.
    assert digits.train_images.shape == (1347, 1, 16, 16)
    assert digits.test_images.shape == (450, 1, 16, 16)
    assert digits.train_images.dtype == digits.test_images.dtype == torch.uint8
    assert digits.train_labels.dtype == digits.test_labels.dtype == torch.int64
    assert digits.train_labels.shape == (1347,) and digits.test_labels.shape == (450,)
    assert digits.classes == tuple("0123456789")
    assert (digits.num_classes, digits.in_channels, digits.image_size) == (10, 1, 16)
    assert digits.train_images.device.type == "cpu"


def test_digits_split_is_stratified(digits: ImageDataset) -> None:
    train_counts = torch.bincount(digits.train_labels, minlength=10).double()
    test_counts = torch.bincount(digits.test_labels, minlength=10).double()
    # Each class's share of the test set matches its share of the training set, to within one example.
    expected_test = train_counts * len(digits.test_labels) / len(digits.train_labels)
    assert (test_counts - expected_test).abs().max() <= 1.0


def test_digits_pixels_span_the_uint8_range(digits: ImageDataset) -> None:
    assert digits.train_images.min() == 0 and digits.train_images.max() == 255
    assert digits.test_images.min() == 0 and digits.test_images.max() == 255


def test_digits_load_is_deterministic_and_fast(digits: ImageDataset) -> None:
    start = time.perf_counter()
    again = load_dataset("digits")
    elapsed = time.perf_counter() - start
    assert torch.equal(again.train_images, digits.train_images)
    assert torch.equal(again.test_labels, digits.test_labels)
    assert elapsed < 1.0, f"loading digits took {elapsed:.2f}s; the quickstart needs it well under a second"


def test_digits_at_native_size_are_the_scaled_source_pixels(digits: ImageDataset) -> None:
    from sklearn.datasets import load_digits

    native = load_dataset("digits", image_size=8)
    assert native.train_images.shape == (1347, 1, 8, 8)
    assert torch.equal(native.train_labels, digits.train_labels)
    # Without resampling every pixel is round(v / 16 * 255) of a source value v in 0..16, and the set of
    # stored images is exactly the source images (in some order).
    allowed = torch.tensor([round(v / 16 * 255) for v in range(17)], dtype=torch.uint8)
    assert torch.isin(native.train_images, allowed).all()
    source = torch.from_numpy(load_digits().images).mul(255 / 16).round().to(torch.uint8)
    stored = torch.cat([native.train_images, native.test_images])[:, 0]
    assert sorted(map(bytes, source.numpy())) == sorted(map(bytes, stored.numpy()))


def test_digits_image_size_is_respected() -> None:
    big = load_dataset("digits", image_size=32)
    assert big.train_images.shape == (1347, 1, 32, 32) and big.image_size == 32


@pytest.mark.parametrize("device", DEVICES)
def test_digits_load_onto_the_requested_device(device: str) -> None:
    ds = load_dataset("digits", device=device)
    for tensor in (ds.train_images, ds.train_labels, ds.test_images, ds.test_labels):
        assert tensor.device.type == device


# ---------------------------------------------------------------------------------------------------------
# cifar10 (tiny files in the real python-batch format)


class _Py2Str(bytes):
    """A Python 2 ``str``: CIFAR-10's batches were pickled by Python 2, so their keys and names are byte strings."""


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler: its dispatch table can be extended
    """Pickles `_Py2Str` with the opcodes Python 2 used for ``str`` (loaded as bytes or latin-1 text)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: _Py2Str) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + bytes(obj))
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + bytes(obj))
        self.memoize(obj)

    dispatch[_Py2Str] = save_py2_str


def _write_py2_pickle(path: Path, obj: dict) -> None:
    with path.open("wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(root: Path, per_batch: int = 2, test: int = 3, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Write a tiny ``root/cifar-10-batches-py`` in the official format.

    Each batch is a dict with ``data`` (N, 3072) uint8 (1024 red, then green, then blue values, each a
    row-major 32x32 plane), ``labels`` (list of int), ``batch_label`` and ``filenames``; ``batches.meta``
    holds ``label_names``. Returns train data, train labels, test data, test labels.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    splits = [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test)]
    written: dict[str, tuple[np.ndarray, list[int]]] = {}
    for name, n in splits:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        batch = {
            _Py2Str(b"batch_label"): _Py2Str(f"{name} of 6".encode()),
            _Py2Str(b"labels"): labels,
            _Py2Str(b"data"): data,
            _Py2Str(b"filenames"): [_Py2Str(f"img_{name}_{i}.png".encode()) for i in range(n)],
        }
        _write_py2_pickle(folder / name, batch)
        written[name] = (data, labels)
    meta = {
        _Py2Str(b"num_cases_per_batch"): per_batch,
        _Py2Str(b"label_names"): [_Py2Str(c.encode()) for c in CIFAR_CLASSES],
        _Py2Str(b"num_vis"): 3072,
    }
    _write_py2_pickle(folder / "batches.meta", meta)
    train = [written[f"data_batch_{i}"] for i in range(1, 6)]
    return (
        np.concatenate([d for d, _ in train]),
        np.array([y for _, labels in train for y in labels]),
        written["test_batch"][0],
        np.array(written["test_batch"][1]),
    )


def test_tiny_cifar10_files_read_like_the_official_ones(tmp_path: Path) -> None:
    # The recipe on the CIFAR-10 page, unpickle(..., encoding="bytes"), sees b'data' and b'labels'.
    write_cifar10(tmp_path)
    with (tmp_path / "cifar-10-batches-py" / "data_batch_1").open("rb") as f:
        batch = pickle.load(f, encoding="bytes")
    assert set(batch) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (2, 3072)


def test_cifar10_pixels_and_labels_round_trip(tmp_path: Path) -> None:
    train_data, train_labels, test_data, test_labels = write_cifar10(tmp_path)
    ds = load_dataset("cifar10", root=tmp_path)

    assert ds.train_images.shape == (10, 3, 32, 32) and ds.test_images.shape == (3, 3, 32, 32)
    assert ds.train_images.dtype == torch.uint8 and ds.train_labels.dtype == torch.int64
    assert ds.classes == tuple(CIFAR_CLASSES)
    assert (ds.num_classes, ds.in_channels, ds.image_size) == (10, 3, 32)
    assert ds.train_labels.tolist() == train_labels.tolist()
    assert ds.test_labels.tolist() == test_labels.tolist()
    # A known pixel: image 7 (batch 4, row 1), green channel, y=5, x=30 sits at 1024 + 5 * 32 + 30 in its row.
    assert ds.train_images[7, 1, 5, 30] == train_data[7, 1024 + 5 * 32 + 30]
    # And every pixel: the row is three row-major 32x32 planes, R then G then B.
    assert torch.equal(ds.train_images, torch.from_numpy(train_data.reshape(-1, 3, 32, 32)))
    assert torch.equal(ds.test_images, torch.from_numpy(test_data.reshape(-1, 3, 32, 32)))


def test_cifar10_root_may_be_the_batches_folder_itself(tmp_path: Path) -> None:
    train_data, *_ = write_cifar10(tmp_path)
    ds = load_dataset("cifar10", root=tmp_path / "cifar-10-batches-py")
    assert torch.equal(ds.train_images, torch.from_numpy(train_data.reshape(-1, 3, 32, 32)))


def test_cifar10_resizes_to_the_requested_size(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    # Make test image 0 one flat colour: resizing must keep it exactly.
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    with path.open("rb") as f:
        batch = pickle.load(f, encoding="bytes")
    flat = np.repeat(np.array([10, 128, 250], dtype=np.uint8), 1024)
    batch[b"data"][0] = flat
    _write_py2_pickle(path, {_Py2Str(k): v for k, v in batch.items()})

    ds = load_dataset("cifar10", root=tmp_path, image_size=16)
    assert ds.train_images.shape == (10, 3, 16, 16) and ds.test_images.shape == (3, 3, 16, 16)
    assert ds.image_size == 16
    assert ds.test_images[0, :, :, :].flatten(1).tolist() == [[10] * 256, [128] * 256, [250] * 256]


def test_cifar10_missing_files_name_the_path_and_the_source(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        load_dataset("cifar10", root=tmp_path)
    assert_one_line_error(
        err,
        f"no CIFAR-10 python batches at {tmp_path / 'cifar-10-batches-py'}",
        "data_batch_1..5",
        "test_batch",
        "cifar-10-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar.html",
        f"extract it into {tmp_path}",
    )


def test_cifar10_partial_download_names_the_missing_files(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(UserError) as err:
        load_dataset("cifar10", root=tmp_path)
    assert_one_line_error(err, "missing test_batch", str(tmp_path / "cifar-10-batches-py"))


def test_cifar10_corrupted_batch_is_a_user_error(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(UserError) as err:
        load_dataset("cifar10", root=tmp_path)
    assert_one_line_error(err, "could not read", "corrupted", "cifar-10-python.tar.gz")


# ---------------------------------------------------------------------------------------------------------
# imagenette / imagewoof (tiny folder trees of real JPEG files)

RED, GREEN, BLUE = (220, 20, 20), (20, 200, 20), (20, 20, 220)


def save_jpeg(path: Path, size: tuple[int, int], colour: tuple[int, int, int], mode: str = "RGB") -> None:
    """A flat-coloured JPEG of (width, height) `size`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour)
    (image.convert("L") if mode == "L" else image).save(path, format="JPEG", quality=95)


def write_image_folders(root: Path) -> None:
    """train/ with 2 tench and 3 springer images (mixed sizes, one greyscale), val/ with one of each."""
    tench, springer = "n01440764", "n02102040"
    save_jpeg(root / "train" / tench / "a.JPEG", (40, 30), RED)
    save_jpeg(root / "train" / tench / "b.JPEG", (30, 50), RED)
    save_jpeg(root / "train" / springer / "a.JPEG", (64, 64), BLUE)
    save_jpeg(root / "train" / springer / "b.JPEG", (50, 40), BLUE)
    save_jpeg(root / "train" / springer / "c.JPEG", (36, 36), (128, 128, 128), mode="L")
    # A wide image: green outer thirds, red middle. Resizing the short side and centre-cropping keeps only
    # the red middle; squashing the whole image to a square would keep the green.
    wide = Image.new("RGB", (72, 24), GREEN)
    wide.paste(Image.new("RGB", (24, 24), RED), (24, 0))
    (root / "val" / tench).mkdir(parents=True)
    wide.save(root / "val" / tench / "wide.JPEG", format="JPEG", quality=95)
    save_jpeg(root / "val" / springer / "a.JPEG", (28, 28), BLUE)


def mean_colour(image: torch.Tensor) -> list[float]:
    """Per-channel mean of a (3, H, W) uint8 image."""
    return image.float().mean(dim=(1, 2)).tolist()


def assert_colour(image: torch.Tensor, colour: tuple[int, int, int], tolerance: float = 12.0) -> None:
    assert np.allclose(mean_colour(image), colour, atol=tolerance), (mean_colour(image), colour)


def test_imagenette_tree_loads_with_labels_in_folder_order(tmp_path: Path) -> None:
    write_image_folders(tmp_path)
    ds = load_dataset("imagenette", root=tmp_path, image_size=24)

    assert ds.train_images.shape == (5, 3, 24, 24) and ds.test_images.shape == (2, 3, 24, 24)
    assert ds.train_images.dtype == torch.uint8
    assert ds.train_labels.tolist() == [0, 0, 1, 1, 1] and ds.test_labels.tolist() == [0, 1]
    assert ds.classes == ("tench", "English springer")  # known wnids get their ImageNet names
    assert (ds.num_classes, ds.in_channels, ds.image_size) == (2, 3, 24)
    for image in ds.train_images[:2]:
        assert_colour(image, RED)
    for image in ds.train_images[2:4]:
        assert_colour(image, BLUE)
    assert_colour(ds.train_images[4], (128, 128, 128))  # greyscale JPEG comes out as 3 equal channels
    assert_colour(ds.test_images[0], RED)  # centre crop of the wide image
    assert_colour(ds.test_images[1], BLUE)


def test_imagewoof_uses_folder_names_for_unknown_classes(tmp_path: Path) -> None:
    for split in ("train", "val"):
        save_jpeg(tmp_path / split / "b_class" / "x.jpg", (20, 20), BLUE)
        save_jpeg(tmp_path / split / "a_class" / "x.jpg", (20, 20), RED)
    ds = load_dataset("imagewoof", root=tmp_path, image_size=8)
    assert ds.classes == ("a_class", "b_class")  # sorted folder order, as labels are numbered
    assert ds.train_labels.tolist() == [0, 1]
    assert ds.train_images.shape == (2, 3, 8, 8)
    assert_colour(ds.train_images[0], RED)


def test_imagenette_missing_root_names_the_path_and_the_source(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError) as err:
        load_dataset("imagenette", root=missing)
    assert_one_line_error(
        err,
        f"no folder {missing}",
        "train/<wnid>/*.JPEG",
        "imagenette2-320.tgz",
        "https://github.com/fastai/imagenette",
    )


def test_imagenette_empty_folder_names_the_missing_splits(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        load_dataset("imagenette", root=tmp_path)
    assert_one_line_error(err, f"no train/ and val/ in {tmp_path}", "https://github.com/fastai/imagenette")


def test_imagenette_finds_the_archives_folder_inside_a_data_root(tmp_path: Path) -> None:
    write_image_folders(tmp_path / "imagenette2-160")  # data/ holding the extracted archive, as for CIFAR-10
    data = load_dataset("imagenette", root=tmp_path, image_size=16)
    assert data.train_images.shape[0] > 0 and data.test_images.shape[0] > 0


def test_imagenette_points_at_an_unusual_folder_inside_root(tmp_path: Path) -> None:
    write_image_folders(tmp_path / "my-copy")
    with pytest.raises(UserError) as err:
        load_dataset("imagenette", root=tmp_path)
    assert_one_line_error(err, f"did you mean {tmp_path / 'my-copy'}?")


def test_imagenette_class_folder_without_images_is_a_user_error(tmp_path: Path) -> None:
    write_image_folders(tmp_path)
    (tmp_path / "val" / "n03000684").mkdir()
    with pytest.raises(UserError) as err:
        load_dataset("imagenette", root=tmp_path)
    assert_one_line_error(err, f"no images at {tmp_path / 'val'}", "n03000684")


def test_imagenette_split_folders_without_classes_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(UserError) as err:
        load_dataset("imagenette", root=tmp_path)
    assert_one_line_error(err, f"no images at {tmp_path / 'train'}", "train/<wnid>/*.JPEG")


# ---------------------------------------------------------------------------------------------------------
# to_float and augment


def test_to_float_scales_to_unit_interval() -> None:
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3)
    out = to_float(images)
    assert out.dtype == torch.float32 and out.shape == images.shape
    assert torch.allclose(out.flatten(), torch.tensor([0.0, 0.2, 1.0]))


def distinct_images(batch: int, channels: int = 3, size: int = 8, device: str = "cpu") -> torch.Tensor:
    """Float images whose pixels are all distinct and positive, so any shift or mirror is recognisable."""
    values = torch.randperm(batch * channels * size * size, generator=torch.Generator().manual_seed(0)) + 1.0
    return values.view(batch, channels, size, size).to(device)


def slow_crop(image: torch.Tensor, dy: int, dx: int, padding: int, mirror: bool) -> torch.Tensor:
    """Reference for one (C, H, W) image: zero-pad by `padding`, take the window at (dy, dx), maybe mirror."""
    c, h, w = image.shape
    padded = torch.zeros(c, h + 2 * padding, w + 2 * padding, dtype=image.dtype, device=image.device)
    padded[:, padding : padding + h, padding : padding + w] = image
    window = padded[:, dy : dy + h, dx : dx + w]
    return window.flip(-1) if mirror else window


def generator_on(device: str, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


@pytest.mark.parametrize("device", DEVICES)
def test_augment_keeps_shape_dtype_and_device(device: str) -> None:
    images = distinct_images(16, device=device)
    out = augment(images, generator=generator_on(device, 0), crop_padding=2, flip=True)
    assert out.shape == images.shape and out.dtype == images.dtype and out.device == images.device


def test_augment_without_padding_or_flip_is_the_identity() -> None:
    images = distinct_images(8)
    assert torch.equal(augment(images, generator=generator_on("cpu", 0), crop_padding=0, flip=False), images)


@pytest.mark.parametrize("device", DEVICES)
def test_augment_is_a_per_image_shifted_and_maybe_mirrored_copy(device: str) -> None:
    padding = 2
    images = distinct_images(64, device=device)
    out = augment(images, generator=generator_on(device, 1), crop_padding=padding, flip=True)
    found = []
    for image, result in zip(images, out, strict=True):
        matches = [
            (dy, dx, mirror)
            for dy in range(2 * padding + 1)
            for dx in range(2 * padding + 1)
            for mirror in (False, True)
            if torch.equal(slow_crop(image, dy, dx, padding, mirror), result)
        ]
        assert len(matches) == 1, "each output must be exactly one crop of its own input"
        found.append(matches[0])
    # Offsets are drawn per image, covering the whole range, and both orientations occur.
    assert {dy for dy, _, _ in found} == set(range(2 * padding + 1))
    assert {dx for _, dx, _ in found} == set(range(2 * padding + 1))
    assert {mirror for _, _, mirror in found} == {False, True}


def test_augment_flips_about_half_of_the_images() -> None:
    images = distinct_images(1000, channels=1, size=4)
    out = augment(images, generator=generator_on("cpu", 2), crop_padding=0, flip=True)
    mirrored = (out == images.flip(-1)).flatten(1).all(dim=1)
    unchanged = (out == images).flatten(1).all(dim=1)
    assert bool((mirrored ^ unchanged).all())  # every image is one or the other
    assert 430 <= int(mirrored.sum()) <= 570  # Binomial(1000, 1/2): mean 500, sd 16


def test_augment_is_reproducible_from_the_generator_seed() -> None:
    images = distinct_images(32)
    first = augment(images, generator=generator_on("cpu", 3), crop_padding=4, flip=True)
    second = augment(images, generator=generator_on("cpu", 3), crop_padding=4, flip=True)
    other = augment(images, generator=generator_on("cpu", 4), crop_padding=4, flip=True)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
