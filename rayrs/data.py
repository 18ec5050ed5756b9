"""Image datasets by name, held as uint8 tensors on one device, each with its training augmentation.

The registry `DATASETS` maps a name (what a sweep file says) to a `DatasetInfo`: a one-line description
for ``--help``, a loader, and the per-dataset facts the training loop needs (default image size, and the
training augmentation, an entry called on a minibatch's indices). `load_dataset` is the entry point of
training, `load_test_split` that of comparisons (the test split alone, without reading the training files)::

    ds = load_dataset("cifar10", root="~/data", device="cuda")
    x = DATASETS["cifar10"].augmentation(ds, idx, g)  # (B, 3, 32, 32) float in [0, 1], augmented on the device
    probe = load_test_split("cifar10", root="~/data").test_images  # the same as ds.test_images

Every loader returns the whole train and test split at once as ``(N, C, H, W)`` uint8 tensors on the
requested device: these datasets are small enough to keep on the accelerator for the whole run, so the
training loop never goes back to the disk or the CPU (airbench's habit), and augmentation is a few
batched tensor ops there (`rayrs.augment`).

Each dataset is prepared as the paper's code (inspire-group/robust_representation_similarity, ``data.py``)
prepares it:

- ``cifar10``: test images as they are; training: ``RandomCrop(32, padding=4)`` (zero padding) +
  ``RandomHorizontalFlip()`` (`PaddedCrop`).
- ``imagenette``, ``imagewoof``: test images ``Resize(int(1.14 * s)) + CenterCrop(s)`` (decoded once, by
  torchvision on PIL images, exactly the reference's transform); training: ``RandomResizedCrop(s) +
  RandomHorizontalFlip()`` (`RandomResizedCrop`), drawn per minibatch on the device from the training images
  stored once, whole, in an `ImageCanvas`.
- ``digits`` (not in the paper; the quickstart's data): the CIFAR-10 transform scaled to 16 pixels, no flip.
- ``image_folder`` (not in the paper; a user's own images): as Imagenette, with any classes.

Datasets are never downloaded: loaders read the standard on-disk formats and, when files are missing,
raise a one-line `UserError` saying which path was searched, what was expected and where to get it.

Why one module of ~1100 lines: each dataset's reader, its safety checks (the CIFAR-10 restricted unpickler) and
its one-line errors sit next to the registry entry that names them, so adding a dataset touches one file;
the batched transforms themselves live in `rayrs.augment`.

- ``digits``: scikit-learn's 8x8 handwritten digits (ships inside scikit-learn; the quickstart's data).
- ``cifar10``: the CIFAR-10 python batches (``cifar-10-batches-py``): pickles, read by `read_cifar10_batch`
  with an unpickler that admits nothing but data (a file that asks to run code is refused, and nothing runs).
- ``imagenette``, ``imagewoof``: fast.ai's ImageNet subsets as ``train/<wnid>/*.JPEG`` and
  ``val/<wnid>/*.JPEG`` folder trees, decoded by torchvision.
- ``image_folder``: any folder in torchvision's ImageFolder layout, ``root/<class>/<image>`` (the probe for
  comparisons) or ``root/train/<class>/`` + ``root/val/<class>/`` (to train too); classes are the class
  folders sorted by name, label i the i-th, as torchvision's ImageFolder numbers them.

torchvision and scikit-learn are imported inside the loaders that need them: each costs seconds to
import, and ``rayrs --help`` or the digits quickstart should not pay for the other datasets' readers.
"""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rayrs.augment import padded_crop, random_resized_crop_boxes, resized_crops
from rayrs.errors import UserError

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "ImageCanvas",
    "ImageDataset",
    "PaddedCrop",
    "RandomResizedCrop",
    "canvas_shape",
    "get_dataset_info",
    "TestSplit",
    "load_dataset",
    "load_test_split",
    "to_float",
]


# eq=False: the fields are tensors, whose `==` is elementwise, so a generated __eq__ would be meaningless.
@dataclass(frozen=True, eq=False)
class ImageCanvas:
    """Images of different shapes kept whole in one uint8 tensor, so that a crop may take any part of one.

    Image i, resized so that its short side is ``S`` unless its long side would then pass ``L`` (torchvision's
    ``Resize(S, max_size=L)``), lies at the top left of canvas i in landscape: a portrait image is stored
    transposed (``transposed[i]``), so one ``(S, L)`` canvas holds either orientation without the quarter of
    padding a square one would waste. The rest of the canvas repeats the image's last column, then its last row
    (edge padding), so a filter tap just past the border reads the border pixel rather than black.

    Attributes:
        pixels: ``(N, C, S, L)`` uint8.
        sizes: ``(N, 2)`` int64 ``(height, width)`` of each stored image in its own orientation; in the canvas
            it covers ``[:height, :width]``, or ``[:width, :height]`` where transposed.
        source_sizes: ``(N, 2)`` int64 ``(height, width)`` of the decoded file: crop boxes are drawn in these
            pixels, as torchvision draws them on the file, then scaled onto the stored copy.
        transposed: ``(N,)`` bool.
    """

    pixels: torch.Tensor
    sizes: torch.Tensor
    source_sizes: torch.Tensor
    transposed: torch.Tensor

    def __post_init__(self) -> None:
        n = self.pixels.shape[0]
        if self.pixels.dtype != torch.uint8 or self.pixels.ndim != 4 or self.pixels.shape[-2] > self.pixels.shape[-1]:
            raise ValueError(f"canvas pixels must be (N, C, S, L) uint8 with S <= L, got {tuple(self.pixels.shape)}")
        for field, shape, dtype in (("sizes", (n, 2), torch.int64), ("source_sizes", (n, 2), torch.int64),
                                    ("transposed", (n,), torch.bool)):
            tensor: torch.Tensor = getattr(self, field)
            if tensor.shape != shape or tensor.dtype != dtype or tensor.device != self.pixels.device:
                raise ValueError(f"canvas {field} must be {shape} {dtype} on {self.pixels.device}, got "
                                 f"{tuple(tensor.shape)} {tensor.dtype} on {tensor.device}")

    def to(self, device: torch.device) -> ImageCanvas:
        """The same canvas on `device`."""
        return ImageCanvas(*(getattr(self, f).to(device) for f in ("pixels", "sizes", "source_sizes", "transposed")))


# eq=False: the fields are tensors, whose `==` is elementwise, so a generated __eq__ would be meaningless.
@dataclass(frozen=True, eq=False)
class ImageDataset:
    """One dataset's train and test split, resident on one device.

    Attributes:
        name: registry name, e.g. ``"cifar10"``.
        train_images: ``(N, C, H, W)`` uint8 in 0..255, with ``H == W``: the training images prepared as the
            test images are (what evaluation on the training split and training without augmentation see).
        train_labels: ``(N,)`` int64 class indices into `classes`, same device.
        test_images: ``(M, C, H, W)`` uint8, same device.
        test_labels: ``(M,)`` int64, same device.
        classes: human-readable class names, index i names label i.
        train_canvas: the training images again, kept whole, for augmentations that crop from the whole image
            (`RandomResizedCrop`); None for datasets whose augmentation works on `train_images`.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    train_canvas: ImageCanvas | None = None

    def __post_init__(self) -> None:
        # A malformed dataset here is a bug in a loader (or a test), so it raises ValueError, not UserError.
        for split in ("train", "test"):
            images: torch.Tensor = getattr(self, f"{split}_images")
            labels: torch.Tensor = getattr(self, f"{split}_labels")
            if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != images.shape[-2]:
                raise ValueError(
                    f"{self.name}: {split}_images must be (N, C, H, H) uint8, got {tuple(images.shape)} {images.dtype}"
                )
            if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
                raise ValueError(
                    f"{self.name}: {split}_labels must be ({images.shape[0]},) int64, "
                    f"got {tuple(labels.shape)} {labels.dtype}"
                )
            if images.device != self.train_images.device or labels.device != self.train_images.device:
                raise ValueError(f"{self.name}: all tensors must be on one device")
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ValueError(f"{self.name}: train and test images differ in shape")
        canvas = self.train_canvas
        if canvas is not None and (
            canvas.pixels.shape[:2] != self.train_images.shape[:2] or canvas.pixels.device != self.train_images.device
        ):
            raise ValueError(
                f"{self.name}: train_canvas must hold the {self.train_images.shape[0]} training images with "
                f"{self.in_channels} channels on {self.train_images.device}, got {tuple(canvas.pixels.shape)}"
            )

    @property
    def num_classes(self) -> int:
        """Number of classes (the classifier's output width)."""
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        """Image channels C: 1 for digits, 3 for the colour datasets."""
        return self.train_images.shape[1]

    @property
    def image_size(self) -> int:
        """Side length H (= W) of the square images."""
        return self.train_images.shape[-1]


# eq=False: the fields are tensors, whose `==` is elementwise, so a generated __eq__ would be meaningless.
@dataclass(frozen=True, eq=False)
class TestSplit:
    """One dataset's test split alone, resident on one device: what probes and evaluation-only uses need.

    The fields are named as `ImageDataset`'s, so code that reads only the test split takes either. Loading it
    (`load_test_split`) never touches the training files: for Imagenette the training canvas alone is 4.4 GB.

    Attributes:
        name: registry name.
        test_images: ``(M, C, H, W)`` uint8 in 0..255, prepared exactly as `load_dataset` prepares them.
        test_labels: ``(M,)`` int64, same device.
        classes: human-readable class names, index i names label i.
    """

    name: str
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        images, labels = self.test_images, self.test_labels
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != images.shape[-2]:
            raise ValueError(f"{self.name}: test_images must be (N, C, H, H) uint8, got {tuple(images.shape)} {images.dtype}")
        if labels.dtype != torch.int64 or labels.shape != images.shape[:1] or labels.device != images.device:
            raise ValueError(f"{self.name}: test_labels must be ({images.shape[0]},) int64 on {images.device}")

    @classmethod
    def of(cls, data: ImageDataset) -> TestSplit:
        """The test split of a whole loaded dataset (the same tensors, not copies)."""
        return cls(data.name, data.test_images, data.test_labels, data.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.test_images.shape[1]

    @property
    def image_size(self) -> int:
        return self.test_images.shape[-1]


# A dataset's training augmentation: (dataset, minibatch indices (B,), generator) -> (B, C, s, s) float in [0, 1].
Augmentation = Callable[[ImageDataset, torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class DatasetInfo:
    """One registry entry: how to load a dataset and how to augment it.

    Attributes:
        name: registry key.
        description: one line, listed in ``rayrs sweep --help``.
        load: ``(root, image_size, device) -> ImageDataset``; `load_dataset` checks the arguments first.
        load_test: ``(root, image_size, device) -> TestSplit``, the test split alone, the same images as
            ``load``'s, read without the training files (`load_test_split`).
        default_image_size: side length used when a sweep does not set one.
        augmentation: the training transform of one minibatch (`PaddedCrop`, `RandomResizedCrop`), run on the
            data's device when ``train.augment`` is on; without it training sees `ImageDataset.train_images`.
        needs_root: whether the files must be found under a user-given folder.
        source: where a user gets the files (quoted in the "missing dataset" error).
        check: ``(root) -> None``, a cheap look for the files (no decoding) that raises the "missing dataset"
            `UserError`; the sweep runs it before any worker starts.
        train_examples: the size of the training split, for cost estimates (`rayrs sweep --dry-run`).
        channels: image channels C, known before anything is loaded (eps ranges, cost estimates).
    """

    name: str
    description: str
    load: Callable[[Path | None, int, torch.device], ImageDataset]
    load_test: Callable[[Path | None, int, torch.device], TestSplit]
    default_image_size: int
    augmentation: Augmentation
    needs_root: bool
    source: str
    check: Callable[[Path], object] = lambda root: None
    train_examples: int = 0  # size of the training split (for cost estimates before anything is loaded)
    channels: int = 3  # image channels C (for checks and cost estimates before anything is loaded)
    classes: int = 10  # label classes, known before anything is loaded (a model entry's default classifier width)
    # ``(root) -> None``: as ``check``, for the test split alone (a sweep that only compares models reads no more)
    check_test: Callable[[Path], object] = lambda root: None
    # ``(root) -> int``: the class count read from the files, for datasets whose classes are the user's
    # (image_folder); None: ``classes``
    count_classes: Callable[[Path], int] | None = None

    def class_count(self, root: str | Path | None) -> int:
        """Label classes before anything is decoded: ``classes``, or counted under ``root`` (~ expands)."""
        if self.count_classes is None or root is None:
            return self.classes
        return self.count_classes(Path(root).expanduser())


# ---------------------------------------------------------------------------------------------------------
# Batch preparation on the device: the registry's training augmentations


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images ``(B, C, H, W)`` in 0..255 -> float32 ``(B, C, H, W)`` in [0, 1], same device and layout."""
    if images.dtype != torch.uint8:
        raise TypeError(f"to_float expects uint8 images, got {images.dtype}")
    return images.float().div_(255.0)


@dataclass(frozen=True)
class PaddedCrop:
    """torchvision's ``RandomCrop(s, padding) + RandomHorizontalFlip()`` on `ImageDataset.train_images`.

    The paper's CIFAR-10 transform (padding 4, zero fill: torchvision's default ``padding_mode="constant"``),
    one batched gather (`rayrs.augment.padded_crop`). The padding is in pixels whatever the image size.
    """

    padding: int
    flip: bool  # whether a mirrored image keeps its label

    def __call__(self, data: ImageDataset, indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Minibatch `indices` ``(B,)``, augmented: ``(B, C, s, s)`` float in [0, 1] (channels_last)."""
        return padded_crop(to_float(data.train_images[indices]), generator=generator, padding=self.padding, flip=self.flip)


@dataclass(frozen=True)
class RandomResizedCrop:
    """torchvision's ``RandomResizedCrop(s) + RandomHorizontalFlip()``, drawn from `ImageDataset.train_canvas`.

    The paper's Imagenette / Imagewoof transform, for a whole minibatch at once on its device: boxes by
    torchvision's rule in the decoded file's pixels (`rayrs.augment.random_resized_crop_boxes`: area in
    `scale` of the image's, aspect ratio in `ratio`, 10 tries, then the centre-crop fallback), scaled onto the
    stored copy, resampled to ``s x s`` with PIL's bilinear filter (`rayrs.augment.resized_crops`), and
    mirrored with probability 1/2.

    Where it departs from torchvision's PIL transform, and why that is acceptable:

    - Pixels: PIL rounds to uint8 after each of its two resampling passes; here the crops stay float32, within
      1/255 of PIL's (tests/test_data.py): the size of PIL's own rounding, and what ToTensor's 1/255 steps are.
    - Source: the crop samples the canvas, which is the file itself where its short side is already the
      canvas's (imagenette2-320's files for 224-pixel training: the very pixels the reference crops) and a
      resized copy otherwise (the full-size archives, images wider than 3:2); the box is then scaled onto the
      copy and covers the same part of the scene (tests/test_data.py), from fewer pixels than the file has, so
      small crops of a large file come out a little softer than torchvision's.
    - Random stream: the same distribution of boxes and flips, drawn from the epoch's generator (every try up
      front, a fixed count per minibatch) rather than torch's global one.
    """

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True

    def __call__(self, data: ImageDataset, indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Minibatch `indices` ``(B,)``, augmented: ``(B, C, s, s)`` float in [0, 1], ``s = data.image_size``."""
        canvas = data.train_canvas
        if canvas is None:  # a registry entry paired with a loader that keeps no canvas: a bug, not a user error
            raise ValueError(f"{data.name}: RandomResizedCrop needs the dataset's train_canvas")
        source = canvas.source_sizes[indices]
        boxes = random_resized_crop_boxes(source, generator=generator, scale=self.scale, ratio=self.ratio)
        mirror = torch.rand(indices.shape[0], generator=generator, device=indices.device) < 0.5 if self.flip else None
        stored_per_source = (canvas.sizes[indices].double() / source).repeat(1, 2)  # (B, 4): y, x, y, x factors
        return resized_crops(
            canvas.pixels[indices],
            boxes * stored_per_source,
            data.image_size,
            transposed=canvas.transposed[indices],
            mirror=mirror,
        )


# ---------------------------------------------------------------------------------------------------------
# digits: scikit-learn's 8x8 handwritten digits


DIGITS_SOURCE = "ships inside scikit-learn (sklearn.datasets.load_digits); nothing to download"


def _load_digits(root: Path | None, image_size: int, device: torch.device) -> ImageDataset:
    """Load scikit-learn's digits: 1797 8x8 images (values 0..16), upsampled to ``image_size``.

    A fixed stratified split (25% test, ``random_state=0``) gives 1347 train and 450 test images. Pixels are
    scaled to [0, 1], bilinearly upsampled (so conv nets and 8x8-block attacks have room to work) and stored
    as ``round(255 x)``. `root` is ignored: the data ships inside scikit-learn.

    Returns:
        train ``(1347, 1, image_size, image_size)`` and test ``(450, 1, image_size, image_size)`` uint8.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div_(16.0).unsqueeze(1)  # (1797, 1, 8, 8) in [0, 1]
    labels = torch.from_numpy(digits.target).long()
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=0.25, stratify=labels.numpy(), random_state=0
    )

    def prepare(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != image_size:
            # Upsampling from 8x8: antialiasing would change nothing, and plain bilinear is what we promise.
            x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
        return (x * 255.0).round_().to(torch.uint8).to(device)

    return ImageDataset(
        name="digits",
        train_images=prepare(train_x),
        train_labels=train_y.to(device),
        test_images=prepare(test_x),
        test_labels=test_y.to(device),
        classes=tuple(str(d) for d in range(10)),
    )


# ---------------------------------------------------------------------------------------------------------
# cifar10: the CIFAR-10 python batches


CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
CIFAR10_SOURCE = "https://www.cs.toronto.edu/~kriz/cifar.html"


CIFAR10_TEST_FILES = ("test_batch", "batches.meta")


def _cifar10_folder(root: Path, files: tuple[str, ...] = CIFAR10_FILES) -> Path:
    """The ``cifar-10-batches-py`` folder for `root`: ``root/cifar-10-batches-py``, or `root` itself if it is one.

    Raises:
        UserError: if any of ``files`` is missing (every batch by default; `CIFAR10_TEST_FILES` for the test
            split alone).
    """
    if root.name == CIFAR10_FOLDER and not (root / CIFAR10_FOLDER).is_dir():
        root = root.parent  # the user pointed at the batches folder itself: accept it
    folder = root / CIFAR10_FOLDER
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        what = "no CIFAR-10 python batches" if len(missing) == len(files) else f"missing {', '.join(missing)}"
        expected = "data_batch_1..5, test_batch and batches.meta" if files == CIFAR10_FILES else " and ".join(files)
        raise UserError(
            f"cifar10: {what} at {folder} (expected {expected}); "
            f"download cifar-10-python.tar.gz from {CIFAR10_SOURCE} and extract it into {root}"
        )
    return folder


def _cifar10_split(folder: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Read one split from the batches in ``folder`` (`read_cifar10_batch`: nothing in them can run).

    Returns:
        images ``(N, 3, 32, 32)`` uint8 on the CPU, labels ``(N,)`` int64, and the class names.
    """
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    images, labels = [], []
    for name in names:
        path = folder / name
        batch = read_cifar10_batch(path)
        data, targets = batch.get("data"), batch.get("labels")
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
            what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise _corrupted(path, f"'data' should be (N, 3072) uint8, got {what}")
        if not (isinstance(targets, list) and len(targets) == len(data) and all(type(t) is int and 0 <= t < 10 for t in targets)):
            raise _corrupted(path, f"'labels' should be {len(data)} class indices 0..9")
        images.append(data.reshape(-1, 3, 32, 32))  # each row: 1024 red, 1024 green, 1024 blue values
        labels.extend(targets)
    meta_path = folder / "batches.meta"
    classes = read_cifar10_batch(meta_path).get("label_names")
    if not (isinstance(classes, list) and len(classes) == 10 and all(isinstance(c, str) for c in classes)):
        raise _corrupted(meta_path, "'label_names' should be the 10 class names")
    return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.int64), tuple(classes)


def _corrupted(path: Path, reason: str) -> UserError:
    return UserError(
        f"cifar10: could not read {path} ({reason}); it looks corrupted: "
        f"extract cifar-10-python.tar.gz from {CIFAR10_SOURCE} again"
    )


def read_cifar10_batch(path: Path) -> dict:
    """One CIFAR-10 python batch (a pickle), read without letting it run anything.

    The batches hold dicts, lists, strings (Python 2 ``str``, read as latin-1 text, as torchvision does), ints
    and numpy arrays. The unpickler admits no function or class at all except the names numpy's array pickles
    use (``_reconstruct``, ``ndarray``, ``dtype``, ``_frombuffer``, and ``_codecs.encode`` for bytes written by
    Python 3), and those are stand-ins that only record their arguments: the arrays are then built here from
    raw bytes and a plain numeric dtype (`_ArrayRecipe`). Anything else in the file is refused in one line,
    before it can run, and so is any value other than a dict, list, str, bytes, int or numeric array.

    Raises:
        UserError: the file is not a readable batch, or asks to run something.
    """
    try:
        with path.open("rb") as file:
            loaded = _CifarUnpickler(file, encoding="latin1").load()
    except _Refused as refusal:
        raise UserError(
            f"cifar10: refused to read {path}: it asks to run {refusal}, which a CIFAR-10 batch never does "
            f"(nothing was run); extract cifar-10-python.tar.gz from {CIFAR10_SOURCE} again"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            OverflowError, MemoryError, RecursionError) as error:
        raise _corrupted(path, " ".join(str(error).split()) or type(error).__name__) from None
    try:
        batch = _built(loaded)
    except (ValueError, TypeError) as error:
        raise _corrupted(path, " ".join(str(error).split())) from None
    if not isinstance(batch, dict):
        raise _corrupted(path, f"a pickled {type(batch).__name__}, not a dict")
    return batch


class _Refused(Exception):
    """A pickle asked for a global the CIFAR-10 reader does not admit (its message: ``module.name``)."""


class _DtypeRecipe:
    """Stands in for ``numpy.dtype(spec, align, copy)`` while unpickling; `dtype` builds the real one."""

    CODES = {f"{kind}{size}" for kind in "iu" for size in (1, 2, 4, 8)} | {"f2", "f4", "f8", "b1"}

    def __init__(self, spec: object = None, align: object = False, copy: object = True) -> None:
        self.spec, self.state = spec, None

    def __setstate__(self, state: object) -> None:
        self.state = state

    def dtype(self) -> np.dtype:
        spec = self.spec.decode("latin1") if isinstance(self.spec, bytes) else self.spec
        order = self.state[1] if isinstance(self.state, tuple) and len(self.state) == 8 else "|"
        plain = isinstance(self.state, tuple) and len(self.state) == 8 and self.state[2:5] == (None, None, None)
        if spec not in self.CODES or order not in ("|", "<", ">", "=") or not plain:
            raise ValueError(f"an array of dtype {spec!r} (state {self.state!r}), not plain numbers")
        return np.dtype(("|" if spec.endswith("1") else order) + spec)


class _ArrayRecipe:
    """Stands in for an ndarray while unpickling: records shape, dtype and raw bytes; `array` builds it."""

    def __init__(self, shape: object = (0,), dtype: object = None, buffer: object = None, order: object = "C") -> None:
        self.shape, self.dtype_recipe, self.raw, self.fortran = shape, dtype, buffer, order == "F"

    def __setstate__(self, state: object) -> None:
        if not (isinstance(state, tuple) and len(state) in (4, 5)):
            raise ValueError("an array whose pickled state is not (shape, dtype, fortran, data)")
        self.shape, self.dtype_recipe, self.fortran, self.raw = state[-4:]

    def array(self) -> np.ndarray:
        if not isinstance(self.dtype_recipe, _DtypeRecipe):
            raise ValueError("an array without a plain dtype")
        dtype = self.dtype_recipe.dtype()
        shape = self.shape
        if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
            raise ValueError(f"an array of shape {shape!r}")
        raw = self.raw.encode("latin1") if isinstance(self.raw, str) else self.raw  # a Python 2 str
        if not isinstance(raw, (bytes, bytearray, pickle.PickleBuffer)):
            raise ValueError(f"an array whose data is a {type(raw).__name__}, not bytes")
        flat = np.frombuffer(raw, dtype=dtype)
        if flat.size != math.prod(shape):
            raise ValueError(f"an array of shape {shape} with {flat.size} values")
        return flat.reshape(shape, order="F" if self.fortran else "C").copy()


def _reconstruct(subtype: object, shape: object, dtype: object) -> _ArrayRecipe:
    if subtype is not _ArrayRecipe:  # numpy.ndarray, as admitted by _CifarUnpickler
        raise ValueError("an array of a type other than numpy.ndarray")
    return _ArrayRecipe()


def _frombuffer(buffer: object, dtype: object, shape: object, order: object) -> _ArrayRecipe:
    return _ArrayRecipe(shape, dtype, buffer, order)


def _latin1_bytes(text: object, encoding: object = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ValueError("bytes written in an encoding other than latin-1")
    return text.encode("latin1")


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that resolves a global only to the stand-ins above; everything else raises `_Refused`."""

    ADMITTED = {
        **{(module, "_reconstruct"): _reconstruct for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
        **{(module, "_frombuffer"): _frombuffer for module in ("numpy.core.numeric", "numpy._core.numeric")},
        ("numpy", "ndarray"): _ArrayRecipe,
        ("numpy", "dtype"): _DtypeRecipe,
        ("_codecs", "encode"): _latin1_bytes,
    }

    def find_class(self, module: str, name: str) -> object:
        try:
            return self.ADMITTED[module, name]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None


def _built(value: object) -> object:
    """The unpickled value with its array recipes built; anything but dict, list, str, bytes, int is refused."""
    if isinstance(value, _ArrayRecipe):
        return value.array()
    if isinstance(value, dict):
        return {_built(key): _built(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_built(item) for item in value]
    if type(value) in (str, bytes, int):
        return value
    raise ValueError(f"it holds a {type(value).__name__}, which a CIFAR-10 batch never does")


def _load_cifar10(root: Path | None, image_size: int, device: torch.device) -> ImageDataset:
    """Load CIFAR-10 from ``root/cifar-10-batches-py``: 50000 train and 10000 test ``(3, 32, 32)`` images.

    Images are moved to `device` first and resized there (antialiased bilinear) when `image_size` is not 32.
    """
    from torchvision.transforms.v2.functional import resize

    assert root is not None  # load_dataset guarantees it (needs_root)
    folder = _cifar10_folder(root)
    train_x, train_y, classes = _cifar10_split(folder, train=True)
    test_x, test_y, _ = _cifar10_split(folder, train=False)
    return ImageDataset(
        name="cifar10",
        train_images=resize(train_x.to(device), [image_size, image_size], antialias=True),
        train_labels=train_y.to(device),
        test_images=resize(test_x.to(device), [image_size, image_size], antialias=True),
        test_labels=test_y.to(device),
        classes=classes,
    )


def _load_cifar10_test(root: Path | None, image_size: int, device: torch.device) -> TestSplit:
    """CIFAR-10's 10000 test images alone (``test_batch``), prepared as `_load_cifar10` prepares them."""
    from torchvision.transforms.v2.functional import resize

    assert root is not None  # load_test_split guarantees it (needs_root)
    test_x, test_y, classes = _cifar10_split(_cifar10_folder(root, CIFAR10_TEST_FILES), train=False)
    return TestSplit("cifar10", resize(test_x.to(device), [image_size, image_size], antialias=True),
                     test_y.to(device), classes)


# ---------------------------------------------------------------------------------------------------------
# imagenette / imagewoof: fast.ai's ImageNet subsets as folder trees

IMAGENETTE_SOURCE = "https://github.com/fastai/imagenette"

# WordNet ids (the folder names) -> ImageNet class names, as listed by fast.ai.
IMAGENETTE_CLASSES = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888605": "parachute",
}
IMAGEWOOF_CLASSES = {
    "n02086240": "Shih-Tzu",
    "n02087394": "Rhodesian ridgeback",
    "n02088364": "beagle",
    "n02089973": "English foxhound",
    "n02093754": "Border terrier",
    "n02096294": "Australian terrier",
    "n02099601": "golden retriever",
    "n02105641": "Old English sheepdog",
    "n02111889": "Samoyed",
    "n02115641": "dingo",
}

_FOLDER_LAYOUT = "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG"


def _folder_hint(name: str, root: Path) -> str:
    """The end of a missing-files message: which archive to get, and a guess if `root` holds the extracted tree."""
    nested = sorted(p.name for p in root.iterdir() if (p / "train").is_dir()) if root.is_dir() else []
    guess = f" (did you mean {root / nested[0]}?)" if nested else ""
    return (
        f"download {name}2-320.tgz (or {name}2.tgz, {name}2-160.tgz) from {IMAGENETTE_SOURCE}, extract it "
        f"and pass the extracted folder, the one holding train/ and val/{guess}"
    )


# The paper's code evaluates on Resize(int(1.14 * s)) + CenterCrop(s): 255 then 224 for 224-pixel images.
TEST_RESIZE = 1.14
# The training canvas: short side 320 for 224-pixel training, scaled with the image size. 320 is
# imagenette2-320's own short side, so for those files the canvas holds the decoded file itself and the
# crops sample the very pixels the reference's RandomResizedCrop samples; the long side holds 3:2 images
# (most of ImageNet's are 4:3 or 3:2) whole, and wider ones are shrunk to fit it.
CANVAS_SHORT_AT_224 = 320
CANVAS_ASPECT = 3 / 2


def canvas_shape(image_size: int) -> tuple[int, int]:
    """``(S, L)``: short and long side of the training canvas for `image_size`-pixel training.

    At 224: (320, 480), 3 x 320 x 480 bytes = 461 KB per image, 4.4 GB for Imagenette's 9469.
    """
    short = round(image_size * CANVAS_SHORT_AT_224 / 224)
    return short, max(round(short * CANVAS_ASPECT), short + 1)  # torchvision's max_size must exceed the size


@dataclass(frozen=True)
class _TestView:
    """The reference's test transform of one PIL image: ``Resize(int(1.14 s)) + CenterCrop(s)``.

    A picklable callable (DataLoader workers receive it). Returns a 1-tuple, ``(3, s, s)`` uint8, so that
    `_decode_folder` treats every transform alike.
    """

    size: int

    def __call__(self, image: Any) -> tuple[torch.Tensor]:
        from torchvision.transforms.v2 import functional as TF

        resized = TF.resize(image, [int(TEST_RESIZE * self.size)])  # PIL's bilinear filter, as the reference
        return (TF.pil_to_tensor(TF.center_crop(resized, [self.size])),)


@dataclass(frozen=True)
class _TrainViews:
    """A training image, decoded once, in both forms kept: the test view and its `ImageCanvas` entry.

    Returns ``(test view (3, s, s), canvas (3, S, L), stored (height, width), file (height, width),
    transposed)`` for one PIL image; see `ImageCanvas` for the canvas layout.
    """

    size: int

    def __call__(self, image: Any) -> tuple[torch.Tensor, ...]:
        from torchvision.transforms.v2 import functional as TF

        (test_view,) = _TestView(self.size)(image)
        short, long = canvas_shape(self.size)
        stored = TF.pil_to_tensor(TF.resize(image, [short], max_size=long))  # (3, h, w)
        height, width = stored.shape[1:]
        transposed = height > width
        if transposed:
            stored = stored.mT
        rows, cols = stored.shape[1:]
        canvas = torch.empty((stored.shape[0], short, long), dtype=torch.uint8)
        canvas[:, :rows, :cols] = stored
        canvas[:, :rows, cols:] = stored[:, :, cols - 1 :]  # edge padding: the last column, then the last row
        canvas[:, rows:, :] = canvas[:, rows - 1 : rows, :]
        return (
            test_view,
            canvas,
            torch.tensor([height, width]),
            torch.tensor([image.height, image.width]),
            torch.tensor(transposed),
        )


@dataclass(frozen=True)
class _Unreadable:
    """An image file PIL could not decode (its path and PIL's reason), passed back in place of its views."""

    path: str
    reason: str


@dataclass(frozen=True)
class _DecodeFile:
    """Open one image file as torchvision's ImageFolder does (PIL, converted to RGB) and apply `transform`.

    A picklable loader (DataLoader workers receive it). A file PIL cannot decode becomes an `_Unreadable`
    rather than an exception: an exception raised in a worker reaches the main process as a multi-line
    traceback, and the user needs one line naming the file (`_decode_folder` raises it).
    """

    transform: Callable[[Any], tuple[torch.Tensor, ...]]

    def __call__(self, path: str) -> tuple[torch.Tensor, ...] | _Unreadable:
        from PIL import Image

        try:
            with open(path, "rb") as file:
                image = Image.open(file)
                image = image.convert("RGB")  # decodes the whole file: a truncated one fails here
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            return _Unreadable(path, " ".join(str(err).split()) or type(err).__name__)
        return self.transform(image)


def _collate_views(samples: list[tuple[Any, int]]) -> Any:
    """torch's default collation of ``(views, label)`` samples, or the batch's first `_Unreadable` file."""
    from torch.utils.data import default_collate

    for views, _ in samples:
        if isinstance(views, _Unreadable):
            return views
    return default_collate(samples)


def _decode_folder(
    name: str, folder: Path, transform: Callable[[Any], tuple[torch.Tensor, ...]], way_out: str
) -> tuple[list[torch.Tensor], torch.Tensor, list[str]]:
    """Decode every image under ``folder/<class>/`` with torchvision's ImageFolder (RGB), through `transform`.

    `transform` maps one PIL image to a tuple of tensors (`_TestView`, `_TrainViews`); each is stacked over the
    images into one tensor allocated once (no concatenation: the canvas alone is 4.4 GB for Imagenette).
    `way_out`: the end of the one-line error for a folder without class folders or images (what was expected).

    Returns:
        one ``(N, ...)`` tensor per transform output on the CPU, labels ``(N,)`` int64 (class folders in
        sorted order, as ImageFolder numbers them), and the class folder names.

    Raises:
        UserError: no class folders, a class folder without image files (naming it), or a file PIL cannot
            decode (naming it).
    """
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    try:
        dataset = ImageFolder(str(folder), loader=_DecodeFile(transform))
    except FileNotFoundError as err:  # no class folders, or a class folder without images
        reason = " ".join(str(err).split())
        raise UserError(f"{name}: no images at {folder} ({reason}); {way_out}") from err
    # JPEG decoding dominates; worker processes decode in parallel. Below a few hundred images starting
    # the workers costs more than it saves.
    workers = min(8, os.cpu_count() or 1) if len(dataset) >= 512 else 0
    loader = DataLoader(dataset, batch_size=128, shuffle=False, num_workers=workers, collate_fn=_collate_views)
    outputs: list[torch.Tensor] = []
    labels = torch.empty(len(dataset), dtype=torch.int64)
    done = 0
    for batch in loader:
        if isinstance(batch, _Unreadable):
            raise UserError(f"{name}: cannot read image {batch.path} ({batch.reason}); "
                            "replace or remove the file (any format PIL reads: JPEG, PNG, ...)")
        views, batch_labels = batch
        if not outputs:
            outputs = [torch.empty((len(dataset), *view.shape[1:]), dtype=view.dtype) for view in views]
        for output, view in zip(outputs, views, strict=True):
            output[done : done + len(batch_labels)] = view
        labels[done : done + len(batch_labels)] = batch_labels
        done += len(batch_labels)
    return outputs, labels, list(dataset.classes)


def _image_folder_root(root: Path, *, name: str, splits: tuple[str, ...] = ("train", "val")) -> Path:
    """The folder holding ``train/`` and ``val/``: ``root`` itself, or the archive's folder inside it.

    fast.ai's archives extract to ``imagenette2-320/`` (or ``imagenette2/``, ``imagenette2-160/``), so one data
    folder can hold every dataset: ``root`` = data/ finds data/imagenette2-320/ as it finds
    data/cifar-10-batches-py/. ``splits``: the folders that must be there (``("val",)`` for the test split
    alone). Raises a `UserError` naming what is missing otherwise.
    """
    for candidate in (root, *(root / f"{name}2{suffix}" for suffix in ("-320", "", "-160"))):
        if all((candidate / split).is_dir() for split in splits):
            return candidate
    missing = " and ".join(f"{split}/" for split in splits if not (root / split).is_dir())
    what = f"no folder {root}" if not root.is_dir() else f"no {missing} in {root}"
    raise UserError(f"{name}: {what} (expected {_FOLDER_LAYOUT}); {_folder_hint(name, root)}")


def _load_image_folders(
    root: Path | None, image_size: int, device: torch.device, *, name: str, class_names: dict[str, str]
) -> ImageDataset:
    """Load an Imagenette-style tree ``root/{train,val}/<wnid>/*.JPEG`` (val is the test split).

    As the paper's code prepares them: test images (and `ImageDataset.train_images`) ``Resize(int(1.14 *
    image_size)) + CenterCrop(image_size)``; the training images also whole in an `ImageCanvas` of
    `canvas_shape` for `RandomResizedCrop`. Class names are the readable ImageNet names of known wnids, else
    the folder names.
    """
    assert root is not None  # load_dataset guarantees it (needs_root)
    root = _image_folder_root(root, name=name)
    return _decode_splits(
        name, root, image_size, device, class_names, way_out=f"expected {_FOLDER_LAYOUT}; {_folder_hint(name, root)}",
        mismatch_fix=f"re-extract the archive from {IMAGENETTE_SOURCE}",
    )


def _decode_splits(
    name: str, root: Path, image_size: int, device: torch.device, class_names: dict[str, str], *, way_out: str,
    mismatch_fix: str,
) -> ImageDataset:
    """``root/train/<class>/`` and ``root/val/<class>/`` decoded as `_load_image_folders` describes (val is the
    test split); `way_out` and `mismatch_fix` end the one-line errors (no images; different class folders)."""
    train_views, train_y, train_classes = _decode_folder(name, root / "train", _TrainViews(image_size), way_out)
    (test_x,), test_y, test_classes = _decode_folder(name, root / "val", _TestView(image_size), way_out)
    if train_classes != test_classes:
        raise UserError(
            f"{name}: train/ and val/ under {root} hold different class folders "
            f"({len(train_classes)} vs {len(test_classes)}); {mismatch_fix}"
        )
    train_x, *canvas = train_views
    return ImageDataset(
        name=name,
        train_images=train_x.to(device),
        train_labels=train_y.to(device),
        test_images=test_x.to(device),
        test_labels=test_y.to(device),
        classes=tuple(class_names.get(folder, folder) for folder in train_classes),
        train_canvas=ImageCanvas(*canvas).to(device),
    )


def _load_image_folder_test(
    root: Path | None, image_size: int, device: torch.device, *, name: str, class_names: dict[str, str]
) -> TestSplit:
    """The ``val/`` tree alone (the test split), prepared as `_load_image_folders` prepares it; ``train/``
    is neither decoded nor required."""
    assert root is not None  # load_test_split guarantees it (needs_root)
    root = _image_folder_root(root, name=name, splits=("val",))
    way_out = f"expected {_FOLDER_LAYOUT}; {_folder_hint(name, root)}"
    (test_x,), test_y, test_classes = _decode_folder(name, root / "val", _TestView(image_size), way_out)
    return TestSplit(name, test_x.to(device), test_y.to(device), tuple(class_names.get(w, w) for w in test_classes))


# ---------------------------------------------------------------------------------------------------------
# image_folder: the user's own images in torchvision's ImageFolder layout

IMAGE_FOLDER_LAYOUT = "<root>/<class>/<image> or <root>/train/<class>/ and <root>/val/<class>/"
_IMAGE_FOLDER_NAME = "image_folder"


def _class_folders(folder: Path) -> list[str]:
    """The class folders of `folder`, sorted by name: ImageFolder's classes and label order (label i is the
    i-th name); hidden folders count, as they do for ImageFolder. torchvision's `find_classes` rule, without
    importing torchvision (seconds) where a sweep is only checked or planned."""
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


def _plain_test_folder(root: Path) -> Path:
    """The folder of class folders a plain image folder's test split (the probe) is read from: ``root/val/``
    where there is one (the split layout), else ``root`` itself (every image is a probe image).

    Raises:
        UserError: no folder ``root``, or no class folders in it.
    """
    if not root.is_dir():
        raise UserError(f"{_IMAGE_FOLDER_NAME}: no folder {root}; set data.root to a folder of images laid out as "
                        f"{IMAGE_FOLDER_LAYOUT}")
    folder = root / "val" if (root / "val").is_dir() else root
    if not _class_folders(folder):
        raise UserError(f"{_IMAGE_FOLDER_NAME}: no class folders in {folder}; put each class's images in a "
                        f"folder of its own ({IMAGE_FOLDER_LAYOUT})")
    return folder


def _plain_split_root(root: Path) -> Path:
    """``root``, checked to hold both ``train/`` and ``val/`` of class folders (what training reads).

    Raises:
        UserError: a missing folder, or a flat ``root/<class>/`` tree, which is probe data for comparisons only.
    """
    if _plain_test_folder(root) == root or not (root / "train").is_dir():
        raise UserError(f"{_IMAGE_FOLDER_NAME}: training reads {root / 'train'}/<class>/ and {root / 'val'}/<class>/ "
                        f"(the test split), found no {'val' if not (root / 'val').is_dir() else 'train'}/ there; a "
                        "flat <root>/<class>/ folder is probe data for comparisons (models:) only")
    if not _class_folders(root / "train"):
        raise UserError(f"{_IMAGE_FOLDER_NAME}: no class folders in {root / 'train'}; put each class's images in a "
                        f"folder of its own ({IMAGE_FOLDER_LAYOUT})")
    return root


def _count_plain_classes(root: Path) -> int:
    """How many classes a plain image folder has (its test split's class folders), read without decoding."""
    return len(_class_folders(_plain_test_folder(root)))


_PLAIN_WAY_OUT = (f"expected {IMAGE_FOLDER_LAYOUT}, each class folder holding image files "
                  "(.jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp)")


def _load_plain_folders(root: Path | None, image_size: int, device: torch.device) -> ImageDataset:
    """Load ``root/{train,val}/<class>/<image>`` as Imagenette is loaded (`_load_image_folders`: the same
    test transform, `ImageCanvas` and `RandomResizedCrop`), any number of classes, named by their folders."""
    assert root is not None  # load_dataset guarantees it (needs_root)
    root = _plain_split_root(root)
    return _decode_splits(_IMAGE_FOLDER_NAME, root, image_size, device, {}, way_out=_PLAIN_WAY_OUT,
                          mismatch_fix="give train/ and val/ the same class folders")


def _load_plain_folder_test(root: Path | None, image_size: int, device: torch.device) -> TestSplit:
    """The test split of a plain image folder: ``root/val/<class>/`` or, without ``val/``, ``root/<class>/``,
    prepared as Imagenette's test images are (``Resize(int(1.14 s)) + CenterCrop(s)``)."""
    assert root is not None  # load_test_split guarantees it (needs_root)
    folder = _plain_test_folder(root)
    (test_x,), test_y, classes = _decode_folder(_IMAGE_FOLDER_NAME, folder, _TestView(image_size), _PLAIN_WAY_OUT)
    return TestSplit(_IMAGE_FOLDER_NAME, test_x.to(device), test_y.to(device), tuple(classes))


def _load_digits_test(root: Path | None, image_size: int, device: torch.device) -> TestSplit:
    # The split is drawn over all 1797 images, so the test images come from the whole load (a few ms).
    return TestSplit.of(_load_digits(root, image_size, device))


# ---------------------------------------------------------------------------------------------------------
# The registry

# Imagenette/Imagewoof default to 224 pixels: the paper trains standard ImageNet ResNets on them, whose
# stem and stride schedule are built for 224 inputs (a 7x7 final feature map); layer-wise CKA is then
# measured on the representations those networks were designed to produce. A sweep can set 160 to save
# compute (and to match the imagenette2-160 files).
DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            name="digits",
            train_examples=1347,
            channels=1,
            description="handwritten digits, 8x8 upsampled to 16x16; ships with scikit-learn (the quickstart's data)",
            load=_load_digits,
            load_test=_load_digits_test,
            default_image_size=16,
            # 1/8 of the side, as for CIFAR-10; a mirrored digit is another symbol (or none)
            augmentation=PaddedCrop(padding=2, flip=False),
            needs_root=False,
            source=DIGITS_SOURCE,
        ),
        DatasetInfo(
            name="cifar10",
            train_examples=50000,
            description="CIFAR-10, 32x32 colour images in 10 classes; reads cifar-10-batches-py in the data root",
            load=_load_cifar10,
            load_test=_load_cifar10_test,
            default_image_size=32,
            augmentation=PaddedCrop(padding=4, flip=True),  # the paper's code: RandomCrop(32, padding=4) + flip
            needs_root=True,
            source=f"{CIFAR10_SOURCE} (cifar-10-python.tar.gz)",
            check=_cifar10_folder,
            check_test=partial(_cifar10_folder, files=CIFAR10_TEST_FILES),
        ),
        DatasetInfo(
            name="imagenette",
            train_examples=9469,
            description="Imagenette, 10 easy ImageNet classes at 224x224; reads the train/ and val/ folder tree",
            load=partial(_load_image_folders, name="imagenette", class_names=IMAGENETTE_CLASSES),
            load_test=partial(_load_image_folder_test, name="imagenette", class_names=IMAGENETTE_CLASSES),
            default_image_size=224,
            augmentation=RandomResizedCrop(),  # the paper's code: RandomResizedCrop(224) + flip
            needs_root=True,
            source=f"{IMAGENETTE_SOURCE} (imagenette2-320.tgz)",
            check=partial(_image_folder_root, name="imagenette"),
            check_test=partial(_image_folder_root, name="imagenette", splits=("val",)),
        ),
        DatasetInfo(
            name="imagewoof",
            train_examples=9025,
            description="Imagewoof, 10 ImageNet dog breeds at 224x224; reads the train/ and val/ folder tree",
            load=partial(_load_image_folders, name="imagewoof", class_names=IMAGEWOOF_CLASSES),
            load_test=partial(_load_image_folder_test, name="imagewoof", class_names=IMAGEWOOF_CLASSES),
            default_image_size=224,
            augmentation=RandomResizedCrop(),
            needs_root=True,
            source=f"{IMAGENETTE_SOURCE} (imagewoof2-320.tgz)",
            check=partial(_image_folder_root, name="imagewoof"),
            check_test=partial(_image_folder_root, name="imagewoof", splits=("val",)),
        ),
        DatasetInfo(
            name=_IMAGE_FOLDER_NAME,
            description="your own images, any classes, at 224x224 (as Imagenette): <root>/<class>/<image>, or "
            "train/ and val/ of those to train; classes sorted by folder name",
            load=_load_plain_folders,
            load_test=_load_plain_folder_test,
            default_image_size=224,
            augmentation=RandomResizedCrop(),  # as Imagenette: the paper's transform for ImageNet-like images
            needs_root=True,
            source=f"your own images ({IMAGE_FOLDER_LAYOUT}, torchvision's ImageFolder layout)",
            check=_plain_split_root,
            check_test=_plain_test_folder,
            count_classes=_count_plain_classes,
        ),
    )
}


def get_dataset_info(name: str) -> DatasetInfo:
    """The registry entry for `name`.

    Raises:
        UserError: for an unknown name, listing the valid ones.
    """
    try:
        return DATASETS[name]
    except KeyError:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}") from None


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    image_size: int | None = None,
    device: torch.device | str = "cpu",
) -> ImageDataset:
    """Load dataset `name` whole onto `device`.

    Args:
        name: a key of `DATASETS`.
        root: folder holding the dataset's files (ignored by datasets that ship with a package); ``~`` expands.
        image_size: side length of the square images; the dataset's default when None.
        device: where the tensors live for the rest of the run.

    Returns:
        The dataset, images ``(N, C, image_size, image_size)`` uint8 and labels ``(N,)`` int64 on `device`.

    Raises:
        UserError: unknown name, bad image size, missing root or missing/corrupted files.
    """
    info, path, size = _checked(name, root, image_size)
    return info.load(path, size, torch.device(device))


def load_test_split(
    name: str,
    *,
    root: str | Path | None = None,
    image_size: int | None = None,
    device: torch.device | str = "cpu",
) -> TestSplit:
    """Load the test split of dataset `name` alone onto `device`: the same images as `load_dataset`'s
    ``test_images``, without reading (or needing) the training files. Arguments and errors as `load_dataset`."""
    info, path, size = _checked(name, root, image_size)
    return info.load_test(path, size, torch.device(device))


def _checked(name: str, root: str | Path | None, image_size: int | None) -> tuple[DatasetInfo, Path | None, int]:
    """The registry entry, the expanded root and the image size, after the checks every loader shares."""
    info = get_dataset_info(name)
    size = info.default_image_size if image_size is None else image_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise UserError(f"{name}: image_size must be a positive integer, got {size!r}")
    if info.needs_root and root is None:
        raise UserError(f"{name}: no data root given; point it at the folder holding the files from {info.source}")
    return info, None if root is None else Path(root).expanduser(), size


def check_dataset(name: str, root: str | Path | None, test_only: bool = False) -> None:
    """Raise the one-line "missing dataset" `UserError` if `name`'s files are not under `root` (reads nothing);
    ``test_only``: the test split's files alone (what comparisons read)."""
    info = get_dataset_info(name)
    if not info.needs_root:
        return
    if root is None:
        raise UserError(f"{name}: no data root given (data.root); point it at the folder holding the files from {info.source}")
    (info.check_test if test_only else info.check)(Path(root).expanduser())
