"""Tiny datasets written in the exact on-disk layouts users have (as each dataset's publishers distribute it).

Each writer builds a miniature copy of a real dataset's folder, with seeded content, and returns
what it wrote, so a test can compare what a loader reads against what is on disk. Images are
returned as uint8 ``(N, H, W, 3)`` (HWC, like the ``-C`` arrays) in the order the loaders of
``ensembles.data.datasets`` promise: classes in sorted order, then files sorted by name; labels as int64.

Other test files import these: ``from disk_layouts import write_cifar10, ...``.

Corrupted images encode where they came from, so a wrong slice is caught: in an array ``-C``
dataset pixel ``[0, 0]`` of every image holds ``(10 * (corruption_position + 1) + severity,
row within the severity, 255 - severity)``; in the JPEG ``-C`` dataset every image is a flat colour
``(40 * severity, 30 + 60 * corruption_position, 20 + 40 * class)``, which survives JPEG to within
a few grey levels.
"""
from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR_SIZE = 32
TINY_IMAGENET_SIZE = 64
# Real WordNet ids from TinyImageNet; written to wnids.txt in this (unsorted) order, as the real
# file is unsorted, so a test can check that class indices follow the sorted order.
TINY_IMAGENET_WNIDS = ("n02124075", "n01443537", "n04067472")


@dataclass(frozen=True)
class ArraySplits:
    """A dataset whose train and test images were written as arrays (CIFAR pickles)."""

    folder: Path
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]


@dataclass(frozen=True)
class CorruptedArrays:
    """An array ``-C`` folder: ``<corruption>.npy`` of 5 severities stacked, and ``labels.npy``."""

    folder: Path
    images: dict[str, np.ndarray]
    labels: np.ndarray
    rows_per_severity: int

    def severity_rows(self, severity: int) -> slice:
        """Rows ``[(s - 1) n, s n)`` hold severity ``s``."""
        return slice((severity - 1) * self.rows_per_severity, severity * self.rows_per_severity)


@dataclass(frozen=True)
class ImageSplits:
    """Image files per split: ``images[split]`` (N, H, W, 3) uint8 as intended before encoding,
    ``labels[split]`` (N,), ``files[split]`` the paths in loader order."""

    folder: Path
    classes: tuple[str, ...]
    images: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    files: dict[str, list[Path]] = field(default_factory=dict)


def _random_images(rng: np.random.Generator, count: int, size: int = CIFAR_SIZE) -> np.ndarray:
    return rng.integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)


class _Python2Pickler(pickle._Pickler):
    """Pickles ``bytes`` as Python 2 ``str`` (the BINSTRING opcodes), as the real CIFAR files were
    written by Python 2: Python 3 reads those strings back as bytes with ``encoding="bytes"`` (the
    CIFAR page's recipe: ``b'data'``) and as str with ``encoding="latin1"`` (torchvision's reader)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_python2_string(self, text: bytes) -> None:
        if len(text) < 256:
            self.write(pickle.SHORT_BINSTRING + struct.pack("<B", len(text)) + text)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(text)) + text)
        self.memoize(text)

    dispatch[bytes] = save_python2_string


def _pickle(path: Path, content: dict) -> None:
    with open(path, "wb") as stream:
        _Python2Pickler(stream, protocol=2).dump(content)


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """(n, 32, 32, 3) HWC -> (n, 3072), each row the red plane, then green, then blue (the real files)."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))


def write_cifar10(root, n_train: int = 40, n_test: int = 10, seed: int = 0) -> ArraySplits:
    """``<root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` as torchvision has it:
    pickled dicts with bytes keys, ``b'data'`` uint8 (n, 3072), ``b'labels'`` a list of ints; the
    training rows are dealt across the five batches in order."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_images, test_images = _random_images(rng, n_train), _random_images(rng, n_test)
    train_labels = rng.integers(0, 10, n_train).astype(np.int64)
    test_labels = rng.integers(0, 10, n_test).astype(np.int64)
    for number, rows in enumerate(np.array_split(np.arange(n_train), 5), start=1):
        _pickle(folder / f"data_batch_{number}", {
            b"batch_label": f"training batch {number} of 5".encode(),
            b"labels": [int(label) for label in train_labels[rows]],
            b"data": _cifar_rows(train_images[rows]),
            b"filenames": [f"train_{row}.png".encode() for row in rows],
        })
    _pickle(folder / "test_batch", {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": [int(label) for label in test_labels],
        b"data": _cifar_rows(test_images),
        b"filenames": [f"test_{row}.png".encode() for row in range(n_test)],
    })
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    _pickle(folder / "batches.meta", {
        b"num_cases_per_batch": 10000,
        b"label_names": [name.encode() for name in classes],
        b"num_vis": 3072,
    })
    return ArraySplits(folder, train_images, train_labels, test_images, test_labels, classes)


def write_cifar100(root, n_train: int = 40, n_test: int = 10, seed: int = 1) -> ArraySplits:
    """``<root>/cifar-100-python/{train, test, meta}``: bytes keys, ``b'data'`` uint8 (n, 3072),
    ``b'fine_labels'`` (the 100 classes) and ``b'coarse_labels'`` (20 superclasses)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for part, count in (("train", n_train), ("test", n_test)):
        images = _random_images(rng, count)
        labels = rng.integers(0, 100, count).astype(np.int64)
        _pickle(folder / part, {
            b"filenames": [f"{part}_{row}.png".encode() for row in range(count)],
            b"batch_label": f"{part} batch".encode(),
            b"fine_labels": [int(label) for label in labels],
            b"coarse_labels": [int(label) // 5 for label in labels],
            b"data": _cifar_rows(images),
        })
        written[part] = (images, labels)
    classes = tuple(f"class_{number:02d}" for number in range(100))
    _pickle(folder / "meta", {
        b"fine_label_names": [name.encode() for name in classes],
        b"coarse_label_names": [f"superclass_{number:02d}".encode() for number in range(20)],
    })
    return ArraySplits(folder, *written["train"], *written["test"], classes)


def write_cifar_c(root, folder: str = "CIFAR-10-C", corruptions=("gaussian_noise", "fog"),
                  n_per_severity: int = 4, num_classes: int = 10, image_size: int = CIFAR_SIZE,
                  seed: int = 2) -> CorruptedArrays:
    """``<root>/<folder>/<corruption>.npy`` uint8 (5 n, H, W, 3), severity s in rows
    ``[(s - 1) n, s n)``, and ``labels.npy`` (5 n,) int64, as Hendrycks & Dietterich ship them.

    Pixel ``[0, 0]`` of each image is ``(10 (position + 1) + severity, row within severity,
    255 - severity)``; the rest is random. The labels repeat the same n labels for each severity,
    as in the real files.
    """
    rng = np.random.default_rng(seed)
    directory = Path(root) / folder
    directory.mkdir(parents=True, exist_ok=True)
    labels = np.tile(rng.integers(0, num_classes, n_per_severity), 5).astype(np.int64)
    np.save(directory / "labels.npy", labels)
    images = {}
    for position, corruption in enumerate(corruptions):
        stack = _random_images(rng, 5 * n_per_severity, image_size)
        severity = np.repeat(np.arange(1, 6), n_per_severity)
        stack[:, 0, 0, 0] = 10 * (position + 1) + severity
        stack[:, 0, 0, 1] = np.tile(np.arange(n_per_severity), 5)
        stack[:, 0, 0, 2] = 255 - severity
        np.save(directory / f"{corruption}.npy", stack)
        images[corruption] = stack
    return CorruptedArrays(directory, images, labels, n_per_severity)


def _flat(colour, size: int = TINY_IMAGENET_SIZE) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour, dtype=np.uint8), (size, size, 3)).copy()


def _save_jpeg(path: Path, image: np.ndarray, grey: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(np.ascontiguousarray(image[..., 0]) if grey else image)
    picture.save(path, format="JPEG", quality=95)


def write_tinyimagenet(root, wnids=TINY_IMAGENET_WNIDS[:2], n_train_per_class: int = 5,
                       n_val: int = 4) -> ImageSplits:
    """``<root>/tiny-imagenet-200/{wnids.txt, train/<wnid>/images/<wnid>_<k>.JPEG,
    train/<wnid>/<wnid>_boxes.txt, val/images/val_<j>.JPEG, val/val_annotations.txt}``, 64x64 JPEG.

    Images are flat colours, distinct per image, so they survive JPEG within a few grey levels:
    train ``(10 + 10 k, 40 + 50 class, 128)``, val ``(10 + 10 j, 40 + 50 class, 60)``, where
    ``class`` is the position of the wnid in sorted order. The first training image is written as
    a greyscale JPEG (TinyImageNet has some), intended ``(v, v, v)``. ``images['val']`` is the
    official val folder, in annotation-file order (val_0, val_1, ...).
    """
    if n_train_per_class > 24 or len(wnids) > 4:
        raise ValueError("the colour code allows at most 24 images per class and 4 classes")
    folder = Path(root) / "tiny-imagenet-200"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("".join(f"{wnid}\n" for wnid in wnids))
    classes = tuple(sorted(wnids))
    written = ImageSplits(folder, classes)
    train = []
    for wnid in wnids:
        label = classes.index(wnid)
        boxes = []
        for k in range(n_train_per_class):
            grey = label == 0 and k == 0
            image = _flat((90, 90, 90) if grey else (10 + 10 * k, 40 + 50 * label, 128))
            path = folder / "train" / wnid / "images" / f"{wnid}_{k}.JPEG"
            _save_jpeg(path, image, grey=grey)
            boxes.append(f"{path.name}\t0\t0\t63\t63\n")
            train.append((label, path.name, path, image))
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))
    train.sort(key=lambda entry: (entry[0], entry[1]))
    written.images["train"] = np.stack([entry[3] for entry in train])
    written.labels["train"] = np.array([entry[0] for entry in train], dtype=np.int64)
    written.files["train"] = [entry[2] for entry in train]
    annotations, images, labels, files = [], [], [], []
    for j in range(n_val):
        label = j % len(classes)
        image = _flat((10 + 10 * j, 40 + 50 * label, 60))
        path = folder / "val" / "images" / f"val_{j}.JPEG"
        _save_jpeg(path, image)
        annotations.append(f"{path.name}\t{classes[label]}\t0\t0\t63\t63\n")
        images.append(image), labels.append(label), files.append(path)
    (folder / "val" / "val_annotations.txt").write_text("".join(annotations))
    written.images["val"] = np.stack(images)
    written.labels["val"] = np.array(labels, dtype=np.int64)
    written.files["val"] = files
    return written


def write_tinyimagenet_c(root, wnids=TINY_IMAGENET_WNIDS[:2], corruptions=("gaussian_noise", "fog"),
                         n_per_class: int = 2) -> dict[tuple[str, int], ImageSplits]:
    """``<root>/Tiny-ImageNet-C/<corruption>/<severity 1..5>/<wnid>/val_<j>.JPEG``, 64x64.

    Every image is the flat colour ``(40 severity, 30 + 60 position, 20 + 40 class)`` (class = the
    wnid's position in sorted order). Returns, per ``(corruption, severity)``, an
    :class:`ImageSplits` whose ``"test"`` entry holds the intended images in loader order.
    """
    folder = Path(root) / "Tiny-ImageNet-C"
    classes = tuple(sorted(wnids))
    written = {}
    for position, corruption in enumerate(corruptions):
        for severity in range(1, 6):
            part = ImageSplits(folder / corruption / str(severity), classes)
            images, labels, files = [], [], []
            for label, wnid in enumerate(classes):
                for j in range(n_per_class):
                    image = _flat((40 * severity, 30 + 60 * position, 20 + 40 * label))
                    path = part.folder / wnid / f"val_{label * n_per_class + j}.JPEG"
                    _save_jpeg(path, image)
                    images.append(image), labels.append(label), files.append(path)
            part.images["test"] = np.stack(images)
            part.labels["test"] = np.array(labels, dtype=np.int64)
            part.files["test"] = files
            written[corruption, severity] = part
    return written


def write_image_folder(path, classes=("cat", "dog"), n_per_class: int = 5, split_layout: bool = False,
                       splits=("train", "val", "test"), height: int = 12, width: int = 10,
                       seed: int = 3) -> ImageSplits:
    """A user's own ImageFolder tree of lossless PNGs (random RGB, so comparisons are exact).

    ``split_layout=False``: ``<path>/<class>/img_<k>.png`` (one tree, ``images['all']``).
    ``split_layout=True``: ``<path>/<split>/<class>/img_<k>.png`` for each of ``splits``.
    """
    rng = np.random.default_rng(seed)
    folder = Path(path)
    written = ImageSplits(folder, tuple(sorted(classes)))
    for split in (splits if split_layout else ("all",)):
        base = folder / split if split_layout else folder
        images, labels, files = [], [], []
        for label, name in enumerate(written.classes):
            for k in range(n_per_class):
                image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
                file = base / name / f"img_{k:03d}.png"
                file.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(file, format="PNG")
                images.append(image), labels.append(label), files.append(file)
        written.images[split] = np.stack(images)
        written.labels[split] = np.array(labels, dtype=np.int64)
        written.files[split] = files
    return written
