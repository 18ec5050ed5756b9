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

from rayrs.augment import padded_crop, random_resized_crop_boxes, resized_crops
from rayrs.data import DATASETS, ImageDataset, PaddedCrop, RandomResizedCrop, load_dataset, to_float
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
    assert list(DATASETS) == ["digits", "cifar10", "imagenette", "imagewoof", "image_folder"]
    for key, info in DATASETS.items():
        assert info.name == key
        assert info.description and "\n" not in info.description
        assert info.source and info.default_image_size > 0
    assert not DATASETS["digits"].needs_root
    assert all(DATASETS[n].needs_root for n in ("cifar10", "imagenette", "imagewoof", "image_folder"))


def test_each_dataset_trains_with_the_papers_augmentation() -> None:
    # The paper's data.py: CIFAR-10 RandomCrop(32, padding=4) (zero fill) + RandomHorizontalFlip();
    # Imagenette / Imagewoof RandomResizedCrop(size) with torchvision's defaults + RandomHorizontalFlip().
    assert DATASETS["cifar10"].augmentation == PaddedCrop(padding=4, flip=True)
    assert DATASETS["imagenette"].augmentation == RandomResizedCrop(scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip=True)
    assert DATASETS["imagewoof"].augmentation == DATASETS["imagenette"].augmentation
    assert DATASETS["digits"].augmentation == PaddedCrop(padding=2, flip=False)  # a mirrored digit is another symbol


def test_unknown_dataset_lists_the_valid_names() -> None:
    with pytest.raises(UserError) as err:
        load_dataset("mnist")
    assert_one_line_error(err, "'mnist'", "digits, cifar10, imagenette, imagewoof")


@pytest.mark.parametrize("name", ["cifar10", "imagenette", "imagewoof", "image_folder"])
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
# imagenette / imagewoof as the paper's code prepares them: test Resize(int(1.14 s)) + CenterCrop(s),
# training RandomResizedCrop(s) + flip from the whole images kept in a canvas


def photo(index: int = 0) -> Image.Image:
    """A real photograph (427 x 640 RGB) that ships with scikit-learn: 0 is china.jpg, 1 is flower.jpg."""
    from sklearn.datasets import load_sample_images

    return Image.fromarray(load_sample_images().images[index])


def write_tree(root: Path, images: dict[str, Image.Image]) -> list[Path]:
    """Save each image as a JPEG at ``root/train/<path>`` and ``root/val/<path>``; returns the train files in
    ImageFolder's order (class folders sorted, then file names)."""
    for split in ("train", "val"):
        for path, image in images.items():
            (root / split / path).parent.mkdir(parents=True, exist_ok=True)
            image.save(root / split / path, format="JPEG", quality=90)
    return sorted(root / "train" / path for path in images)


def decoded(path: Path) -> Image.Image:
    """The file as torchvision's ImageFolder decodes it (its default loader: PIL, converted to RGB)."""
    with Image.open(path) as image:
        return image.convert("RGB")


def as_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) uint8 of a PIL RGB image."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


@pytest.mark.parametrize("size", [224, 100])  # int(1.14 * 100) is 113 in floating point, as in the reference
def test_imagenette_test_split_is_the_papers_resize_and_centre_crop(tmp_path: Path, size: int) -> None:
    from torchvision import transforms

    files = write_tree(tmp_path, {
        "n01440764/landscape.JPEG": photo(0),
        "n01440764/portrait.JPEG": photo(1).transpose(Image.Transpose.TRANSPOSE),
        "n02102040/small_grey.JPEG": photo(1).resize((90, 70)).convert("L"),
    })
    # The paper's code's test transform, written as it writes it (torchvision's v1 API on PIL images).
    reference = transforms.Compose([transforms.Resize(int(1.14 * size)), transforms.CenterCrop(size), transforms.PILToTensor()])
    ds = load_dataset("imagenette", root=tmp_path, image_size=size)
    for i, path in enumerate(files):
        expected = reference(decoded(path))
        # The same PIL operations on the same decoded file: equal to the last bit, no tolerance.
        assert torch.equal(ds.test_images[i], expected), path.name
        assert torch.equal(ds.train_images[i], expected), path.name  # evaluation on the training split sees the same


def test_imagenette_canvas_holds_each_training_image_whole(tmp_path: Path) -> None:
    from torchvision.transforms.v2 import functional as TF

    files = write_tree(tmp_path, {
        "a/landscape.JPEG": photo(0).resize((480, 320)),  # imagenette2-320's shape: kept as decoded
        "a/portrait.JPEG": photo(1).resize((320, 480)),  # kept as decoded, stored transposed
        "b/square.JPEG": photo(0).resize((400, 400)),  # short side resized to 320
        "b/wide.JPEG": photo(1).resize((800, 320)),  # wider than 3:2: long side shrunk to the canvas's 480
    })
    ds = load_dataset("imagenette", root=tmp_path, image_size=224)
    canvas = ds.train_canvas
    assert canvas is not None and canvas.pixels.shape == (4, 3, 320, 480)
    for i, path in enumerate(files):
        source = decoded(path)
        expected = as_tensor(TF.resize(source, [320], max_size=480))  # torchvision's Resize(320, max_size=480)
        height, width = expected.shape[1:]
        assert canvas.sizes[i].tolist() == [height, width]
        assert canvas.source_sizes[i].tolist() == [source.height, source.width]
        assert bool(canvas.transposed[i]) == (height > width)
        stored = canvas.pixels[i].mT if canvas.transposed[i] else canvas.pixels[i]  # image orientation
        assert torch.equal(stored[:, :height, :width], expected), path.name
        if path.name in ("landscape.JPEG", "portrait.JPEG"):
            assert torch.equal(expected, as_tensor(source))  # the decoded file itself: no resampling at all
        # Edge padding: right of the image its last column, below it its last row.
        rows, cols = (width, height) if canvas.transposed[i] else (height, width)
        pixels = canvas.pixels[i]
        assert torch.equal(pixels[:, :rows, cols:], pixels[:, :rows, cols - 1 : cols].expand(-1, -1, 480 - cols))
        assert torch.equal(pixels[:, rows:, :], pixels[:, rows - 1 : rows, :].expand(-1, 320 - rows, -1))
    assert canvas.sizes.tolist()[2:] == [[320, 320], [192, 480]]


def test_imagenette_training_crops_are_torchvisions_random_resized_crop_and_flip(tmp_path: Path) -> None:
    import torchvision.transforms.functional as TF

    files = write_tree(tmp_path, {
        "a/landscape.JPEG": photo(0).resize((480, 320)),
        "b/portrait.JPEG": photo(1).resize((320, 480)),
    })
    ds = load_dataset("imagenette", root=tmp_path, image_size=224)
    indices = torch.arange(2).repeat(24)
    generator = generator_on("cpu", 5)
    # RandomResizedCrop draws the boxes, then the mirror coins: a copy of the generator replays its draws.
    replay = torch.Generator().set_state(generator.get_state())
    out = DATASETS["imagenette"].augmentation(ds, indices, generator)
    boxes = random_resized_crop_boxes(ds.train_canvas.source_sizes[indices], generator=replay)
    mirror = torch.rand(len(indices), generator=replay) < 0.5
    assert out.shape == (48, 3, 224, 224) and out.dtype == torch.float32
    assert 0 < int(mirror.sum()) < 48 and len({tuple(box) for box in boxes.tolist()}) == 48

    sources = [decoded(path) for path in files]
    for k, (index, box) in enumerate(zip(indices.tolist(), boxes.tolist(), strict=True)):
        # The paper's transform on the file: F.resized_crop (PIL crop, then PIL's bilinear resize), then hflip.
        crop = TF.resized_crop(sources[index], *box, [224, 224])
        expected = as_tensor(TF.hflip(crop) if mirror[k] else crop).float() / 255
        # PIL rounds to uint8 after each of its two passes (at most 1/2 each); these crops are not rounded.
        assert (out[k] - expected).abs().max() <= 1.001 / 255, (k, box, bool(mirror[k]))


# ---------------------------------------------------------------------------------------------------------
# to_float and padded_crop (CIFAR-10, digits)


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
def test_padded_crop_keeps_shape_dtype_and_device(device: str) -> None:
    images = distinct_images(16, device=device)
    out = padded_crop(images, generator=generator_on(device, 0), padding=2, flip=True)
    assert out.shape == images.shape and out.dtype == images.dtype and out.device == images.device


def test_padded_crop_without_padding_or_flip_is_the_identity() -> None:
    images = distinct_images(8)
    assert torch.equal(padded_crop(images, generator=generator_on("cpu", 0), padding=0, flip=False), images)


@pytest.mark.parametrize("device", DEVICES)
def test_padded_crop_is_a_per_image_shifted_and_maybe_mirrored_copy(device: str) -> None:
    padding = 2
    images = distinct_images(64, device=device)
    out = padded_crop(images, generator=generator_on(device, 1), padding=padding, flip=True)
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


def test_padded_crop_flips_about_half_of_the_images() -> None:
    images = distinct_images(1000, channels=1, size=4)
    out = padded_crop(images, generator=generator_on("cpu", 2), padding=0, flip=True)
    mirrored = (out == images.flip(-1)).flatten(1).all(dim=1)
    unchanged = (out == images).flatten(1).all(dim=1)
    assert bool((mirrored ^ unchanged).all())  # every image is one or the other
    assert 430 <= int(mirrored.sum()) <= 570  # Binomial(1000, 1/2): mean 500, sd 16


def test_padded_crop_is_reproducible_from_the_generator_seed() -> None:
    images = distinct_images(32)
    first = padded_crop(images, generator=generator_on("cpu", 3), padding=4, flip=True)
    second = padded_crop(images, generator=generator_on("cpu", 3), padding=4, flip=True)
    other = padded_crop(images, generator=generator_on("cpu", 4), padding=4, flip=True)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


# ---------------------------------------------------------------------------------------------------------
# random_resized_crop_boxes, resized_crops and RandomResizedCrop (Imagenette, Imagewoof)


def torchvision_boxes(height: int, width: int, count: int, seed: int) -> torch.Tensor:
    """(count, 4) boxes from torchvision's own ``RandomResizedCrop.get_params`` (torch's global generator)."""
    from torchvision.transforms import RandomResizedCrop as TorchvisionRandomResizedCrop

    image = Image.new("RGB", (width, height))
    torch.manual_seed(seed)
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    return torch.tensor([TorchvisionRandomResizedCrop.get_params(image, scale, ratio) for _ in range(count)])


def box_statistics(boxes: torch.Tensor, height: int, width: int) -> dict[str, np.ndarray]:
    """Area fraction, log aspect ratio and relative centre of (top, left, h, w) boxes in a height x width image."""
    top, left, h, w = boxes.double().unbind(1)
    return {
        "area": (h * w / (height * width)).numpy(),
        "log_aspect": torch.log(w / h).numpy(),
        "centre_y": ((top + h / 2) / height).numpy(),
        "centre_x": ((left + w / 2) / width).numpy(),
    }


# landscape and portrait as imagenette2-320 stores them, a square, and a strip where many tries fail and
# the centre-crop fallback takes a share of the boxes
@pytest.mark.parametrize(("height", "width"), [(320, 480), (480, 320), (300, 300), (60, 500)])
def test_crop_boxes_follow_torchvisions_random_resized_crop_distribution(height: int, width: int) -> None:
    from scipy.stats import ks_2samp

    n = 10_000
    ours = random_resized_crop_boxes(torch.tensor([[height, width]] * n), generator=generator_on("cpu", 0))
    theirs = torchvision_boxes(height, width, n, seed=0)
    top, left, h, w = ours.unbind(1)
    assert bool(((top >= 0) & (left >= 0) & (h >= 1) & (w >= 1) & (top + h <= height) & (left + w <= width)).all())
    # Every placement is reachable: boxes touch all four edges of the image.
    assert int(top.min()) == 0 and int(left.min()) == 0
    assert int((top + h).max()) == height and int((left + w).max()) == width
    ours_stats, theirs_stats = box_statistics(ours, height, width), box_statistics(theirs, height, width)
    for name in ours_stats:
        # Two-sample Kolmogorov-Smirnov between samples of one distribution: P(D > d) <= 2 exp(-2 d^2 nm / (n + m))
        # = 2 exp(-2 * 0.05^2 * 5000) = 3e-11 at d = 0.05, so no seed crosses the bound (ours read 0.010-0.019).
        # A wrong rule moves D past it: one try instead of ten 0.14-0.36 in every image; three tries 0.26 in
        # the strip, where the fallback then takes more of the boxes.
        statistic = ks_2samp(ours_stats[name], theirs_stats[name]).statistic
        assert statistic < 0.05, (name, statistic)


@pytest.mark.parametrize(("height", "width"), [(10, 1000), (1000, 10)])
def test_crop_boxes_fall_back_to_torchvisions_centre_crop(height: int, width: int) -> None:
    # No try fits in a 10-pixel strip (the smallest crop, 8% of the area at a ratio within 3/4..4/3, has sides
    # of 24 pixels or more), so every box is the fallback: the centre crop with the ratio clamped to 4/3.
    ours = random_resized_crop_boxes(torch.tensor([[height, width]] * 200), generator=generator_on("cpu", 1))
    (expected,) = torchvision_boxes(height, width, 1, seed=0).tolist()
    assert all(box == expected for box in ours.tolist())
    assert expected == ([0, 493, 10, 13] if height == 10 else [493, 0, 13, 10])  # the clamped-ratio centre crop


def ramp_dataset(orientations: list[str], size: int = 16) -> ImageDataset:
    """One image per orientation ("landscape" 40x60 or "portrait" 60x40), whose value grows with its column:
    pixel (y, x) = 4 x + 10. Canvas (40, 60), portrait images stored transposed, the rest of each canvas 255."""
    from rayrs.data import ImageCanvas

    n = len(orientations)
    pixels = torch.full((n, 3, 40, 60), 255, dtype=torch.uint8)
    sizes, transposed = [], []
    for i, orientation in enumerate(orientations):
        height, width = (40, 60) if orientation == "landscape" else (60, 40)
        image = (torch.arange(width) * 4 + 10).expand(3, height, width).to(torch.uint8)
        stored = image.mT if orientation == "portrait" else image
        pixels[i, :, : stored.shape[1], : stored.shape[2]] = stored
        sizes.append([height, width])
        transposed.append(orientation == "portrait")
    canvas = ImageCanvas(
        pixels=pixels,
        sizes=torch.tensor(sizes),
        source_sizes=torch.tensor(sizes) * 5,  # as if stored at 1/5 of the file's size
        transposed=torch.tensor(transposed),
    )
    return ImageDataset(
        name="ramps",
        train_images=torch.zeros(n, 3, size, size, dtype=torch.uint8),
        train_labels=torch.zeros(n, dtype=torch.int64),
        test_images=torch.zeros(1, 3, size, size, dtype=torch.uint8),
        test_labels=torch.zeros(1, dtype=torch.int64),
        classes=("ramp",),
        train_canvas=canvas,
    )


@pytest.mark.parametrize("device", DEVICES)
def test_random_resized_crops_come_from_inside_each_image_and_flip_fairly(device: str) -> None:
    data = ramp_dataset(["landscape", "portrait"])
    data = ImageDataset(**{**data.__dict__, "train_images": data.train_images.to(device),
                           "train_labels": data.train_labels.to(device), "test_images": data.test_images.to(device),
                           "test_labels": data.test_labels.to(device), "train_canvas": data.train_canvas.to(device)})
    indices = torch.arange(2, device=device).repeat(2000)
    out = RandomResizedCrop()(data, indices, generator_on(device, 7)).cpu()
    assert out.shape == (4000, 3, 16, 16)
    # Inside: every value is one of the ramp's (10..246, never the canvas's 255 around the image).
    assert float(out.max()) <= 246 / 255 + 1e-6 and float(out.min()) >= 10 / 255 - 1e-6
    # Crops keep the image's orientation: constant down each column, monotone along each row.
    assert torch.allclose(out, out[:, :, :1, :].expand_as(out), atol=1e-5)
    row = out[:, 0, 0, :]
    steps = row.diff(dim=1)
    increasing, decreasing = (steps >= -1e-6).all(dim=1), (steps <= 1e-6).all(dim=1)
    mirrored = decreasing & ~increasing
    assert bool((increasing ^ decreasing).all())  # each crop is exactly one of the two
    for orientation in (0, 1):  # landscape, portrait (stored transposed): the flip acts on the image's x
        share = int(mirrored[orientation::2].sum())
        assert 800 <= share <= 1200, share  # Binomial(2000, 1/2): mean 1000, sd 22; 9 sd either side


def test_random_resized_crops_are_reproducible_from_the_generator_state() -> None:
    data = ramp_dataset(["landscape", "portrait", "landscape"])
    indices = torch.tensor([0, 1, 2, 1])
    first = RandomResizedCrop()(data, indices, generator_on("cpu", 3))
    second = RandomResizedCrop()(data, indices, generator_on("cpu", 3))
    other = RandomResizedCrop()(data, indices, generator_on("cpu", 4))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_resized_crops_of_a_stored_copy_show_the_files_crop() -> None:
    # A copy stored at 1/2 and at 3/4 of the file's size: boxes drawn on the file, scaled onto the copy, cover
    # the same part of the scene. On smooth content (nothing for the smaller copy to lose) the crops match
    # torchvision's on the file within 1/255 on average; boxes left unscaled miss by 35/255 or more.
    import torchvision.transforms.functional as TF
    from torchvision.transforms.v2 import functional as TF2

    y, x = np.mgrid[0:427, 0:640]
    smooth = np.stack([128 + 100 * np.sin(2 * np.pi * x / 160) * np.cos(2 * np.pi * y / 120),
                       128 + 100 * np.cos(2 * np.pi * (x + y) / 200), 40 + 200 * x / 640], axis=-1)
    source = Image.fromarray(smooth.round().astype(np.uint8))
    boxes = random_resized_crop_boxes(torch.tensor([[427, 640]] * 40), generator=generator_on("cpu", 2))
    for short in (320, 213):
        stored = as_tensor(TF2.resize(source, [short]))
        factors = torch.tensor([stored.shape[1] / 427, stored.shape[2] / 640]).double().repeat(2)
        out = resized_crops(stored.expand(40, -1, -1, -1), boxes * factors, 64)
        for k, box in enumerate(boxes.tolist()):
            expected = as_tensor(TF.resized_crop(source, *box, [64, 64])).float() / 255
            assert (out[k] - expected).abs().mean() < 1 / 255, (short, box)


def test_an_imagenette_trial_resumed_after_a_crash_ends_where_an_uninterrupted_one_does(tmp_path: Path) -> None:
    # The crops are drawn from the epoch's generator: a resumed trial sees the same ones.
    from rayrs.checkpoint import load_weights
    from rayrs.config import TrialConfig, TrialSpec
    from rayrs.storage import Storage
    from rayrs.train import train_trial

    write_image_folders(tmp_path / "data")
    config = TrialConfig.model_validate({
        "data": {"dataset": "imagenette", "root": str(tmp_path / "data"), "image_size": 16},
        "model": {"arch": "wrn", "depth": 10, "width": 1},
        "train": {"method": "standard", "eps": 0, "epochs": 2, "batch_size": 4},
        "eval": {"eps": 0.01, "train_subset": 4, "test_subset": 2, "attack": {"steps": 1}},
    })
    spec = TrialSpec(name="t", experiment="test", config=config, axes={})
    whole, interrupted = Storage(tmp_path / "whole"), Storage(tmp_path / "interrupted")
    train_trial(spec, whole, "cpu")
    write_json = interrupted.write_json

    def dies_committing_epoch_2(rel, obj):
        if rel == "trials/t/epoch_0002/meta.json":
            raise KeyboardInterrupt  # died before committing (epoch 1's optimiser state is deleted only after)
        write_json(rel, obj)

    interrupted.write_json = dies_committing_epoch_2
    with pytest.raises(KeyboardInterrupt):
        train_trial(spec, interrupted, "cpu")
    assert [m["epoch"] for m in train_trial(spec, Storage(tmp_path / "interrupted"), "cpu")] == [2]
    expected, got = load_weights(whole, "t", 2), load_weights(interrupted, "t", 2)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
