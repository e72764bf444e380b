"""Image datasets as users have them on disk, with fixed train/val/test splits and fast batches.

Datasets, in the layouts their publishers distribute:

- ``cifar10``, ``cifar100`` (Krizhevsky, 2009): torchvision's python-pickle folders. ``test`` is the
  test batch; ``val`` is a fixed 10% of the 50k training images (5k) and ``train`` the other 45k,
  the 45k/5k model-selection split of SharpBalance (Lu et al., 2024, App. D.3).
- ``tinyimagenet`` (Le & Yang, 2015): ``tiny-imagenet-200``. ``test`` is the official val folder
  (10k, labels from ``val/val_annotations.txt``), ``val`` a fixed 10% of the 100k training images.
  Class ``k`` is the ``k``-th wnid in sorted order, as torchvision's ImageFolder numbers them.
- ``digits``: scikit-learn's bundled ``load_digits`` (1797 images of 8x8, grey levels 0..16),
  upscaled bilinearly to 32x32, scaled to 0..255 and replicated to 3 channels, cut 60/20/20.
  It ships with scikit-learn, so it needs no files: the real-data smoke test.
- ``folder:<path>``: a user's own ImageFolder tree. With ``<path>/train`` it is read as
  ``<path>/{train, val, test}/<class>/...`` (without ``val``, a fixed 10% of train); otherwise
  ``<path>/<class>/...`` is one tree cut 80/10/10. All images must share one size.

Every fixed cut is a permutation of ``range(N)`` by NumPy's ``default_rng(SPLIT_SEED)``; the
first 10% (or 10% + 10%) go to val (and test), the rest to train, each part kept in file order.
The same files give the same split on every call and machine.

Corrupted datasets (Hendrycks & Dietterich, 2019) are read by :func:`load_corrupted`:
``<root>/CIFAR-10-C/<corruption>.npy`` (uint8 ``(N, H, W, 3)``, severity ``s`` in the ``s``-th fifth
of the rows) with ``labels.npy``, memory-mapped; ``<root>/Tiny-ImageNet-C/<corruption>/<s>/<wnid>/``.

An :class:`ImageDataset` keeps images compactly, as uint8 ``(N, H, W, 3)`` arrays (memory-mapped for
``-C``) or as file paths decoded on demand; it yields float32 CHW tensors in ``[0, 1]``, normalized
``(x - mean) / std`` with the dataset's channel statistics. :func:`batches` assembles a whole batch
at once (one gather, vectorized crop and flip) and is the path the library uses; ``__getitem__``
keeps DataLoader compatibility and gives the same tensors.
"""
from __future__ import annotations

import hashlib
import os
import pickle
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ensembles.runs.files import file_digest
from landscape.checks import positive_int
from landscape.errors import InputError

SPLITS = ("train", "val", "test")
KNOWN_DATASETS = ("cifar10", "cifar100", "tinyimagenet", "digits", "folder:<path>")
# Seed of every fixed cut (train/val, and train/val/test for digits and single folder trees).
SPLIT_SEED = 0
VALIDATION_FRACTION = 0.1
# Standard CIFAR/TinyImageNet training augmentation: zero-pad 4, random crop back, flip with p = 1/2.
CROP_PADDING = 4
#: Training augmentations: ``crop-flip`` is the CIFAR/TinyImageNet standard above; ``crop`` the same
#: shifts without the mirror (a mirrored digit is another glyph, or none); ``none`` leaves images as stored.
AUGMENTATIONS = ("none", "crop", "crop-flip")
# Per dataset when not chosen. digits: an 8x8 glyph upscaled 4x, where a 4-pixel crop moves it by a whole
# source pixel and a flip changes what digit it is; it trains best without augmentation (measured: the
# quickstart's members reach 65-76% with crop-flip, 91-94% without; see ensembles/studies/quickstart.py).
_DEFAULT_AUGMENTATION = {"digits": "none"}

STANDARD_CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
SEVERITIES = (1, 2, 3, 4, 5)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})

# Channel means and standard deviations over all pixels of each training set (the values in common use).
_NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tinyimagenet": ((0.480, 0.448, 0.397), (0.276, 0.269, 0.282)),
    # Computed once, offline, over all pixels of digits' train split as built below (float64);
    # the three channels are copies of one grey image. tests/ensembles/data/test_datasets.py recomputes them.
    "digits": ((0.3048, 0.3048, 0.3048), (0.3234, 0.3234, 0.3234)),
    # A user's own photos: ImageNet's statistics, the usual stand-in for natural images.
    "folder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

_CLEAN_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "tinyimagenet": "tiny-imagenet-200"}
_CORRUPTED_FOLDERS = {"cifar10": "CIFAR-10-C", "cifar100": "CIFAR-100-C", "tinyimagenet": "Tiny-ImageNet-C",
                      "digits": "digits-C"}
_IMAGE_SIZES = {"cifar10": (32, 32), "cifar100": (32, 32), "tinyimagenet": (64, 64), "digits": (32, 32)}
_ALIASES = {"cifar10": "cifar10", "cifar100": "cifar100", "tinyimagenet": "tinyimagenet",
            "tinyimgnet": "tinyimagenet", "digits": "digits"}
# Where each dataset comes from, for the one-line error of a missing one (ensembles.studies.evaluation too).
WHERE_TO_GET = {
    "cifar10": "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html",
    "cifar100": "download cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html",
    "tinyimagenet": "download http://cs231n.stanford.edu/tiny-imagenet-200.zip",
    "cifar10-c": "download CIFAR-10-C.tar from https://zenodo.org/record/2535967",
    "cifar100-c": "download CIFAR-100-C.tar from https://zenodo.org/record/3555552",
    "tinyimagenet-c": "download Tiny-ImageNet-C.tar from https://zenodo.org/record/2536630",
    "digits-c": "write it with ensembles.data.corruptions",
    "folder-c": "write it with ensembles.data.corruptions",
}
_PASS_ROOT = "and pass --data-path (or set SHARPDIV_DATA)"


# --------------------------------------------------------------------------------------------
# Names, roots and constants


def parse_name(name: str) -> tuple[str, Path | None, bool]:
    """``(kind, folder path or None, corrupted)`` for a dataset name such as ``cifar10``,
    ``CIFAR-10-C``, ``tiny_imgnet`` or ``folder:~/photos``."""
    if not isinstance(name, str):
        raise InputError(f"dataset name must be a string, got {name!r}; known: {', '.join(KNOWN_DATASETS)}")
    if name.startswith("folder:"):
        # Always the clean tree's path: its -C folder is found by corrupted_folder().
        text = name[len("folder:"):]
        if not text:
            raise InputError("folder: needs a path, e.g. folder:/data/my_images")
        return "folder", Path(text).expanduser(), False
    key = name.strip().lower().replace("-", "").replace("_", "")
    corrupted = key.endswith("c") and key[:-1] in _ALIASES
    key = key[:-1] if corrupted else key
    if key not in _ALIASES:
        raise InputError(f"unknown dataset {name!r}; known: {', '.join(KNOWN_DATASETS)} "
                         "(and their corrupted versions, e.g. cifar10-c)")
    return _ALIASES[key], None, corrupted


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The folder holding the datasets: ``root``, else ``$SHARPDIV_DATA``, else ``~/.cache/sharpdiv/data``."""
    if root is not None:
        return Path(root).expanduser()
    environment = os.environ.get("SHARPDIV_DATA")
    return Path(environment).expanduser() if environment else Path.home() / ".cache" / "sharpdiv" / "data"


def _locate(root, folder_name: str) -> Path:
    """``<root>/<folder_name>``; a root that already is that folder is taken as it is."""
    base = data_root(root)
    return base if base.name == folder_name and base.is_dir() else base / folder_name


def normalization(name: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """``(mean, std)`` per channel of the dataset's training images; a ``-C`` dataset uses its clean one's."""
    kind, _, _ = parse_name(name)
    return _NORMALIZATION[kind]


# --------------------------------------------------------------------------------------------
# Fixed splits


def fixed_split(count: int, held_out: Sequence[float], seed: int = SPLIT_SEED) -> list[np.ndarray]:
    """Cut ``range(count)`` into a remainder and held-out parts of the given fractions.

    The positions are permuted by ``np.random.default_rng(seed)``; the first ``round(f_1 count)``
    form part 1, the next ``round(f_2 count)`` part 2, and so on; the rest is the remainder.
    Returns ``[remainder, part_1, part_2, ...]``, each sorted (file order).
    """
    sizes = [int(round(fraction * count)) for fraction in held_out]
    permutation = np.random.default_rng(seed).permutation(count)
    bounds = np.cumsum(sizes)
    held = np.split(permutation[:bounds[-1]], bounds[:-1])
    return [np.sort(part) for part in (permutation[bounds[-1]:], *held)]


def _cut(count: int, held_out: Sequence[float], where: str) -> list[np.ndarray]:
    parts = fixed_split(count, held_out)
    if any(len(part) == 0 for part in parts):
        shares = " / ".join(f"{round(100 * f)}%" for f in held_out)
        raise InputError(f"{where} has {count} images, too few to cut train / {shares} from them; "
                         "add images (at least 10 per split cut)")
    return parts


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return split


# --------------------------------------------------------------------------------------------
# Image storage: uint8 arrays or files, gathered as uint8 (B, 3, H, W)


class _ArrayImages:
    """uint8 ``(N, H, W, 3)`` rows, in memory or memory-mapped; a gather reads only its rows."""

    def __init__(self, array: np.ndarray):
        self.array = array
        self.size = tuple(array.shape[1:3])

    def __len__(self) -> int:
        return len(self.array)

    def gather(self, indices: np.ndarray) -> torch.Tensor:
        first = int(indices[0]) if len(indices) else 0
        # A run of consecutive rows (unshuffled batches) is one slice: a single read of a memmap.
        consecutive = len(indices) > 0 and int(indices[-1]) - first == len(indices) - 1 and (
            len(indices) == 1 or bool(np.all(np.diff(indices) == 1)))
        rows = self.array[first:first + len(indices)] if consecutive else self.array[indices]
        # channels first while still uint8: a quarter of the bytes of doing it in float32
        return torch.from_numpy(np.array(rows.transpose(0, 3, 1, 2), order="C"))

    def __getstate__(self):
        # A memmap would pickle as all its bytes (DataLoader workers under "spawn"); send where it lives.
        if isinstance(self.array, np.memmap) and self.array.filename is not None:
            return {"memmap": (self.array.filename, self.array.offset, self.array.shape)}
        return {"array": self.array}

    def __setstate__(self, state):
        if "memmap" in state:
            filename, offset, shape = state["memmap"]
            state = {"array": np.memmap(filename, dtype=np.uint8, mode="r", offset=offset, shape=shape)}
        self.__init__(state["array"])


class _ImageFiles:
    """Image files decoded on demand (TinyImageNet's 100k JPEGs are never all in memory)."""

    def __init__(self, paths: Sequence[str], size: tuple[int, int]):
        self.paths = list(paths)
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def decode(self, path: str) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(path) as picture:
                pixels = np.asarray(picture.convert("RGB"))
        except (OSError, ValueError) as error:
            raise InputError(f"cannot read image {path}: {error}; replace or remove the file") from error
        if pixels.shape[:2] != self.size:
            raise InputError(f"image {path} is {pixels.shape[0]}x{pixels.shape[1]} but this dataset's images are "
                             f"{self.size[0]}x{self.size[1]}; resize all images of a dataset to one size")
        return pixels

    def gather(self, indices: np.ndarray) -> torch.Tensor:
        height, width = self.size
        batch = np.empty((len(indices), height, width, 3), dtype=np.uint8)
        for slot, index in enumerate(indices):  # decoding is per file; the rest is per batch
            batch[slot] = self.decode(self.paths[index])
        return torch.from_numpy(np.array(batch.transpose(0, 3, 1, 2), order="C"))


def _image_size_of(path: str) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as picture:  # reads the header only
            width, height = picture.size
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read image {path}: {error}; replace or remove the file") from error
    return height, width


# --------------------------------------------------------------------------------------------
# Augmentation


def default_augmentation(name: str) -> str:
    """The training augmentation of dataset ``name`` when none is chosen: ``none`` for digits,
    ``crop-flip`` (CIFAR's padded crop and mirror) for CIFAR, TinyImageNet and image folders."""
    kind, _, _ = parse_name(name)
    return _DEFAULT_AUGMENTATION.get(kind, "crop-flip")


def check_augmentation(augmentation) -> str:
    """``augmentation`` as one of :data:`AUGMENTATIONS` (``True``/``False`` mean crop-flip/none, the old
    spelling), else an InputError."""
    if augmentation is True or augmentation is False:
        return "crop-flip" if augmentation else "none"
    if augmentation not in AUGMENTATIONS:
        raise InputError(f"unknown augmentation {augmentation!r}; choose one of {', '.join(AUGMENTATIONS)}")
    return augmentation


def random_crop_and_flip(images: torch.Tensor, padding: int = CROP_PADDING,
                         generator: torch.Generator | None = None, flip: bool = True) -> torch.Tensor:
    """The standard training augmentation for a batch ``(B, C, H, W)``, vectorized.

    Each image is zero-padded by ``padding`` on every side and cropped back to ``H x W`` at an
    offset drawn uniformly from ``{0, ..., 2 padding}^2``, then mirrored left-right with probability
    1/2 (torchvision's ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip()``). Both draws are
    made on the CPU from ``generator`` (a CPU ``torch.Generator``; torch's global RNG when None), the
    offsets first, then the flips, so a seeded generator fixes them on any device. The flip is
    folded into the column index, so the whole batch is one gather. ``flip=False`` draws and
    applies the crops only.
    """
    count, channels, height, width = images.shape
    device = images.device
    offsets = torch.randint(0, 2 * padding + 1, (count, 2), generator=generator).to(device)
    flips = (torch.rand(count, generator=generator) < 0.5).to(device) if flip \
        else torch.zeros(count, dtype=torch.bool, device=device)
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = offsets[:, :1] + torch.arange(height, device=device)  # (B, H) rows of the padded image
    columns = offsets[:, 1:] + torch.arange(width, device=device)  # (B, W)
    columns = torch.where(flips[:, None], columns.flip(1), columns)
    # Output pixel (i, j) of image b is padded pixel (rows[b, i], columns[b, j]), in every channel.
    source = (rows[:, :, None] * (width + 2 * padding) + columns[:, None, :]).reshape(count, 1, height * width)
    cropped = padded.flatten(2).gather(2, source.expand(-1, channels, -1))
    return cropped.view(count, channels, height, width)


# --------------------------------------------------------------------------------------------
# The dataset


class ImageDataset(Dataset):
    """Images with integer labels; ``dataset[i]`` is ``(x, y)``, x float32 ``(3, H, W)``, y an int.

    ``x = (u / 255 - mean) / std`` per channel for the stored uint8 image ``u`` (without the
    normalization when ``normalize=False``), after the training augmentation ``augment`` (one of
    :data:`AUGMENTATIONS`; ``True`` is ``crop-flip``, ``False`` ``none``) by :func:`random_crop_and_flip`.

    Build it with :func:`load_dataset` or :func:`load_corrupted`, or directly from ``images``: a
    uint8 ``(N, H, W, 3)`` array (a memmap stays one) or a list of image file paths.

    Attributes: ``name``, ``split``, ``num_classes``, ``classes``, ``mean``, ``std`` (3-tuples),
    ``targets`` (int64 ``(N,)``), ``image_size`` ``(H, W)``, ``augmentation`` (its name), ``augment``
    (whether it changes images), ``normalize``,
    ``corruption`` and ``severity`` (None unless corrupted), ``array`` (the uint8 array, or None)
    and ``paths`` (the files, or None).
    """

    def __init__(self, images, targets, *, name: str, split: str, num_classes: int,
                 mean: Sequence[float], std: Sequence[float], classes: Sequence[str] | None = None,
                 augment: bool | str = False, normalize: bool = True, image_size: tuple[int, int] | None = None,
                 corruption: str | None = None, severity: int | None = None):
        if isinstance(images, np.ndarray):
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
                raise InputError(f"{name} {split}: images must be uint8 (N, H, W, 3), got {images.dtype} "
                                 f"{tuple(images.shape)}; convert them to 8-bit RGB, channels last")
            self._images = _ArrayImages(images)
        else:
            paths = [str(path) for path in images]
            if not paths:
                raise InputError(f"{name} {split}: no images")
            self._images = _ImageFiles(paths, tuple(image_size) if image_size else _image_size_of(paths[0]))
        targets = torch.as_tensor(np.asarray(targets), dtype=torch.long).reshape(-1)
        if len(targets) != len(self._images):
            raise InputError(f"{name} {split}: {len(self._images)} images but {len(targets)} labels; "
                             "give one label per image")
        if len(targets) and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
            raise InputError(f"{name} {split}: labels must lie in 0..{num_classes - 1}, found "
                             f"{int(targets.min())}..{int(targets.max())}; check the labels file")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise InputError(f"{name}: mean and std need 3 channels and std > 0, got {mean} and {std}")
        self.name, self.split = name, split
        self.num_classes = int(num_classes)
        self.classes = tuple(classes) if classes is not None else tuple(str(k) for k in range(num_classes))
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.targets = targets
        self.image_size = tuple(self._images.size)
        self.augmentation, self.normalize = check_augmentation(augment), bool(normalize)
        self.corruption, self.severity = corruption, severity

    @property
    def augment(self) -> bool:
        return self.augmentation != "none"

    @property
    def array(self) -> np.ndarray | None:
        return self._images.array if isinstance(self._images, _ArrayImages) else None

    @property
    def paths(self) -> list[str] | None:
        return self._images.paths if isinstance(self._images, _ImageFiles) else None

    def __len__(self) -> int:
        return len(self.targets)

    def __repr__(self) -> str:
        where = f" {self.corruption} severity {self.severity}" if self.corruption else ""
        return (f"ImageDataset({self.name}{where}, {self.split}, {len(self)} images "
                f"{self.image_size[0]}x{self.image_size[1]}, {self.num_classes} classes)")

    def batch(self, indices, device: torch.device | str | None = None,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """The float32 batch ``(B, 3, H, W)`` for ``indices``, augmented and normalized as set; the
        augmentation draws from ``generator`` (torch's global RNG when None)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < -len(self) or indices.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} images")
        stored = self._images.gather(indices % max(len(self), 1))
        if device is not None:
            stored = stored.to(device)  # move uint8, a quarter of the float32 bytes
        if self.augment:
            stored = random_crop_and_flip(stored, generator=generator, flip=self.augmentation == "crop-flip")
        batch = stored.to(torch.float32).div_(255)
        if self.normalize:
            mean = torch.tensor(self.mean, dtype=torch.float32, device=batch.device)[:, None, None]
            std = torch.tensor(self.std, dtype=torch.float32, device=batch.device)[:, None, None]
            batch = batch.sub_(mean).div_(std)
        return batch.contiguous()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        index = int(index)
        return self.batch([index])[0], int(self.targets[index])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        # DataLoader fetches a whole batch through this when it exists: one gather instead of B.
        batch = self.batch(indices)
        return [(image, int(self.targets[index])) for image, index in zip(batch, indices)]


class Indexed(Dataset):
    """``Indexed(dataset)[i] = (x, y, i)``: each sample with its position in its split (the
    SharpBalance trainer keys per-sample sets by it). Other attributes pass through."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        x, y = self.dataset[index]
        return x, y, int(index)

    def __getattr__(self, attribute: str):
        # Dunders stay unforwarded: DataLoader would take the wrapped __getitems__ (no index);
        # "dataset" itself is missing while unpickling.
        if attribute.startswith("__") or attribute == "dataset":
            raise AttributeError(attribute)
        return getattr(self.dataset, attribute)


class Batches:
    """An iterable of ``(x, y)`` or ``(x, y, index)`` batches over an :class:`ImageDataset`;
    each pass draws a fresh order when shuffling. ``len()`` is the number of batches."""

    def __init__(self, dataset: ImageDataset, batch_size: int, shuffle: bool = False,
                 generator: torch.Generator | None = None, with_index: bool = False, drop_last: bool = False,
                 device: torch.device | str | None = None, augmentation_generator: torch.Generator | None = None):
        if isinstance(dataset, Indexed):
            dataset = dataset.dataset
        if not isinstance(dataset, ImageDataset):
            raise InputError(f"batches() needs an ImageDataset, got {type(dataset).__name__}; "
                             "wrap other datasets in torch.utils.data.DataLoader")
        self.dataset, self.batch_size = dataset, positive_int("batch_size", batch_size)
        self.shuffle, self.generator = shuffle, generator
        self.with_index, self.drop_last, self.device = with_index, drop_last, device
        self.augmentation_generator = augmentation_generator

    def __len__(self) -> int:
        count = len(self.dataset)
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        count = len(self.dataset)
        order = torch.randperm(count, generator=self.generator) if self.shuffle else torch.arange(count)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start:start + self.batch_size]
            x = self.dataset.batch(index.numpy(), device=self.device, generator=self.augmentation_generator)
            y = self.dataset.targets[index]
            if self.device is not None:
                y, index = y.to(self.device), index.to(self.device)
            yield (x, y, index) if self.with_index else (x, y)


def batches(dataset: ImageDataset, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
            with_index: bool = False, drop_last: bool = False, device: torch.device | str | None = None,
            augmentation_generator: torch.Generator | None = None) -> Batches:
    """Batches ``(x, y)`` (``(x, y, index)`` with ``with_index``) of ``batch_size`` samples.

    Each batch is gathered at once from the stored uint8 images (a slice or one fancy index of
    the array; one decode per file for JPEG trees), moved to ``device`` while still uint8,
    cropped and flipped as a batch when the dataset augments, then normalized. Without
    augmentation ``x`` equals ``torch.stack([dataset[i][0] for i in index])`` exactly.
    ``shuffle`` orders samples by ``torch.randperm(N, generator=generator)``; crops and flips are
    drawn from ``augmentation_generator`` (a CPU generator; torch's global RNG when None), batch
    after batch.
    """
    return Batches(dataset, batch_size, shuffle, generator, with_index, drop_last, device, augmentation_generator)


# --------------------------------------------------------------------------------------------
# CIFAR


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts of NumPy arrays, lists and strings and nothing else: a pickle can run any
    code it names, so a file from the web may only name what the CIFAR batches need."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
                ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as stream:
            content = _ArraysOnlyUnpickler(stream, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise InputError(f"{path} is not a CIFAR python-pickle batch ({error}); re-extract the official "
                         "python version of the archive") from error
    if not isinstance(content, dict):
        raise InputError(f"{path} holds a {type(content).__name__}, not a CIFAR batch dict; re-extract it")
    # The official files were pickled by Python 2 (bytes keys); torchvision's readers give str keys.
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in content.items()}


def _cifar_arrays(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 ``(n, 32, 32, 3)`` and labels from one batch: ``data`` rows are CHW, row-major."""
    batch = _read_pickle(path)
    if "data" not in batch or label_key not in batch:
        raise InputError(f"{path} lacks the 'data' or '{label_key}' entry of a CIFAR batch; re-extract it")
    data, labels = np.asarray(batch["data"]), np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise InputError(f"{path}: 'data' must be uint8 (n, 3072), got {data.dtype} {data.shape}; re-extract it")
    if labels.shape != (len(data),):
        raise InputError(f"{path}: {len(data)} images but {labels.size} labels; re-extract it")
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)), labels


def _cifar_class_names(folder: Path, meta_file: str, key: str, count: int) -> tuple[str, ...]:
    if (folder / meta_file).is_file():
        names = _read_pickle(folder / meta_file).get(key)
        if names is not None and len(names) == count:
            return tuple(name.decode() if isinstance(name, bytes) else str(name) for name in names)
    return tuple(str(k) for k in range(count))


def _cifar_classes(kind: str, root) -> tuple[str, ...]:
    """Class names from the meta file when present, else "0", "1", ..."""
    folder = _locate(root, _CLEAN_FOLDERS[kind])
    if kind == "cifar10":
        return _cifar_class_names(folder, "batches.meta", "label_names", 10)
    return _cifar_class_names(folder, "meta", "fine_label_names", 100)


def _load_cifar(kind: str, root, split: str):
    folder = _locate(root, _CLEAN_FOLDERS[kind])
    if kind == "cifar10":
        title, train_files, test_files, label_key = "CIFAR-10", [f"data_batch_{k}" for k in range(1, 6)], ["test_batch"], "labels"
        layout = "data_batch_1..5, test_batch"
    else:
        title, train_files, test_files, label_key = "CIFAR-100", ["train"], ["test"], "fine_labels"
        layout = "train, test, meta"
    files = test_files if split == "test" else train_files
    missing = [name for name in files if not (folder / name).is_file()]
    if missing:
        raise InputError(f"{title} not found at {folder}: expected torchvision's python-pickle folder ({layout}), "
                         f"missing {', '.join(missing)}; {WHERE_TO_GET[kind]}, extract it {_PASS_ROOT}")
    parts = [_cifar_arrays(folder / name, label_key) for name in files]
    images = np.concatenate([part[0] for part in parts])
    labels = np.concatenate([part[1] for part in parts])
    if split != "test":
        train, val = _cut(len(images), (VALIDATION_FRACTION,), f"{title}'s training set")
        rows = train if split == "train" else val
        images, labels = images[rows], labels[rows]
    return images, labels, _cifar_classes(kind, root)


# --------------------------------------------------------------------------------------------
# digits


@lru_cache(maxsize=1)
def _digits_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as uint8 ``(1797, 32, 32, 3)``: grey level ``g`` in 0..16 becomes
    ``round(255 g / 16)`` after bilinear upscaling 8x8 -> 32x32 (half-pixel centres, edges clamped)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = torch.from_numpy(digits.images.astype(np.float64))[:, None] / 16
    large = F.interpolate(grey, size=(32, 32), mode="bilinear", align_corners=False)
    levels = torch.round(large * 255).clamp_(0, 255).to(torch.uint8)[:, 0]
    images = levels[..., None].expand(-1, -1, -1, 3).contiguous().numpy()
    images.setflags(write=False)
    labels = digits.target.astype(np.int64)
    labels.setflags(write=False)
    return images, labels


def _load_digits(split: str):
    images, labels = _digits_images()
    train, val, test = _cut(len(images), (0.2, 0.2), "digits")
    rows = {"train": train, "val": val, "test": test}[split]
    return images[rows], labels[rows], tuple(str(k) for k in range(10))


# --------------------------------------------------------------------------------------------
# Image folders: TinyImageNet and the user's own


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _image_files(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursively), sorted by their path relative to it."""
    found = []
    for directory, subdirectories, names in os.walk(folder, followlinks=True):
        subdirectories[:] = [name for name in subdirectories if not name.startswith(".")]
        found.extend(os.path.join(directory, name) for name in names if _is_image(name))
    return sorted(found, key=lambda path: os.path.relpath(path, folder))


def _class_folders(folder: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith("."))


def _labelled_files(folder: Path, classes: Sequence[str], where: str) -> tuple[list[str], np.ndarray]:
    """Files of ``folder/<class>/...`` ordered by class index, then path; labels are class positions."""
    position = {name: k for k, name in enumerate(classes)}
    paths, labels = [], []
    for name in _class_folders(folder):
        if name not in position:
            raise InputError(f"{where}: class folder {folder / name} is not among the training classes "
                             f"({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}); remove it or add it to train")
    for name in classes:
        if (folder / name).is_dir():
            files = _image_files(folder / name)
            paths += files
            labels += [position[name]] * len(files)
    return paths, np.asarray(labels, dtype=np.int64)


def _tinyimagenet_classes(folder: Path) -> tuple[str, ...]:
    """The wnids in sorted order (wnids.txt is not sorted; ImageFolder numbers sorted folders)."""
    listed = folder / "wnids.txt"
    if listed.is_file():
        return tuple(sorted(line.strip() for line in listed.read_text().splitlines() if line.strip()))
    return tuple(_class_folders(folder / "train"))


def _load_tinyimagenet(root, split: str):
    folder = _locate(root, _CLEAN_FOLDERS["tinyimagenet"])
    layout = "wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, val/val_annotations.txt"
    needed = ["train"] if split != "test" else ["val/images", "val/val_annotations.txt"]
    missing = [part for part in needed if not (folder / part).exists()]
    if missing:
        raise InputError(f"TinyImageNet not found at {folder}: expected {layout}, missing {', '.join(missing)}; "
                         f"{WHERE_TO_GET['tinyimagenet']}, unzip it {_PASS_ROOT}")
    classes = _tinyimagenet_classes(folder)
    if split == "test":
        position = {wnid: k for k, wnid in enumerate(classes)}
        present = {entry.name for entry in os.scandir(folder / "val" / "images")}
        paths, labels = [], []
        annotations = folder / "val" / "val_annotations.txt"
        for number, line in enumerate(annotations.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split("\t") if "\t" in line else line.split()
            if len(fields) < 2 or fields[1] not in position or fields[0] not in present:
                raise InputError(f"{annotations} line {number}: {line!r} does not name an image in val/images "
                                 "and a wnid of wnids.txt; re-extract the archive")
            paths.append(str(folder / "val" / "images" / fields[0]))
            labels.append(position[fields[1]])
        return paths, np.asarray(labels, dtype=np.int64), classes
    paths, labels = [], []
    for label, wnid in enumerate(classes):
        files = _image_files(folder / "train" / wnid / "images")
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise InputError(f"TinyImageNet at {folder} has no training images: expected {layout}; re-extract the archive")
    train, val = _cut(len(paths), (VALIDATION_FRACTION,), "TinyImageNet's training set")
    rows = train if split == "train" else val
    return [paths[k] for k in rows], np.asarray(labels, dtype=np.int64)[rows], classes


def _folder_layout(path: Path) -> tuple[bool, tuple[str, ...]]:
    """``(has split folders, class names)`` of a user's image folder."""
    if not path.is_dir():
        raise InputError(f"image folder {path} not found: expected {path}/<class>/<images> or "
                         f"{path}/{{train,val,test}}/<class>/<images>; check the path after folder:")
    split_layout = (path / "train").is_dir()
    classes = tuple(_class_folders(path / "train" if split_layout else path))
    if not classes:
        raise InputError(f"image folder {path} has no class folders: expected {path}/<class>/<images> or "
                         f"{path}/{{train,val,test}}/<class>/<images>")
    return split_layout, classes


def _load_folder(path: Path, split: str):
    split_layout, classes = _folder_layout(path)
    if split_layout:
        if not (path / "test").is_dir():
            raise InputError(f"image folder {path} has train/ but no test/: add {path}/test/<class>/<images>, "
                             f"or drop the split folders to have {path}/<class>/... cut 80/10/10")
        if split == "test" or (split == "val" and (path / "val").is_dir()):
            paths, labels = _labelled_files(path / split, classes, f"image folder {path}")
        else:
            paths, labels = _labelled_files(path / "train", classes, f"image folder {path}")
            if not (path / "val").is_dir():
                train, val = _cut(len(paths), (VALIDATION_FRACTION,), f"{path}/train")
                rows = train if split == "train" else val
                paths, labels = [paths[k] for k in rows], labels[rows]
        first = _labelled_files(path / "train", classes, f"image folder {path}")[0][:1]
    else:
        paths, labels = _labelled_files(path, classes, f"image folder {path}")
        train, val, test = _cut(len(paths), (VALIDATION_FRACTION, VALIDATION_FRACTION), f"image folder {path}")
        first = paths[:1]
        rows = {"train": train, "val": val, "test": test}[split]
        paths, labels = [paths[k] for k in rows], labels[rows]
    if not paths or not first:
        raise InputError(f"image folder {path} has no images for split {split!r} "
                         f"(extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    # One size for all splits: the first training image's.
    return paths, labels, classes, _image_size_of(first[0])


# --------------------------------------------------------------------------------------------
# Public loaders


def load_dataset(name: str, root: str | os.PathLike | None = None, split: str = "train",
                 augment: bool | str = False, normalize: bool = True) -> ImageDataset:
    """One split (``train``, ``val`` or ``test``) of a clean dataset; see the module docstring
    for the datasets, their layouts and their fixed splits. ``root`` holds the dataset folders
    (default ``$SHARPDIV_DATA``, then ``~/.cache/sharpdiv/data``); digits needs none, and
    ``folder:<path>`` names its own folder."""
    kind, path, corrupted = parse_name(name)
    if corrupted:
        raise InputError(f"{name!r} is a corrupted dataset: read it with load_corrupted(name, root, corruption, severity)")
    _check_split(split)
    image_size = None
    if kind in ("cifar10", "cifar100"):
        images, labels, classes = _load_cifar(kind, root, split)
    elif kind == "digits":
        images, labels, classes = _load_digits(split)
    elif kind == "tinyimagenet":
        images, labels, classes = _load_tinyimagenet(root, split)
        image_size = _IMAGE_SIZES["tinyimagenet"]
    else:
        images, labels, classes, image_size = _load_folder(path, split)
    mean, std = _NORMALIZATION[kind]
    label = f"folder:{path}" if kind == "folder" else kind
    return ImageDataset(images, labels, name=label, split=split, num_classes=len(classes), mean=mean, std=std,
                        classes=classes, augment=augment, normalize=normalize, image_size=image_size)


def corrupted_folder(name: str, root: str | os.PathLike | None = None) -> Path:
    """Where the ``-C`` version of ``name`` lives: ``<root>/CIFAR-10-C``, ``<root>/CIFAR-100-C``,
    ``<root>/Tiny-ImageNet-C``, ``<root>/digits-C``, or ``<root>/<basename of path>-C`` for ``folder:<path>``."""
    kind, path, _ = parse_name(name)
    folder_name = f"{path.resolve().name}-C" if kind == "folder" else _CORRUPTED_FOLDERS[kind]
    return _locate(root, folder_name)


def _order_corruptions(names) -> list[str]:
    known = STANDARD_CORRUPTIONS + EXTRA_CORRUPTIONS
    return sorted(names, key=lambda name: (known.index(name) if name in known else len(known), name))


def available_corruptions(name: str, root: str | os.PathLike | None = None) -> list[str]:
    """The corruptions of ``name`` present on disk: the 15 standard ones first, in the order of
    Hendrycks & Dietterich (ICLR 2019, Fig. 1), then the 4 extra ones of their release."""
    kind, _, _ = parse_name(name)
    folder = corrupted_folder(name, root)
    if not folder.is_dir():
        return []
    if kind == "tinyimagenet":
        names = [entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith(".")]
    else:
        names = [entry.name[:-4] for entry in os.scandir(folder)
                 if entry.name.endswith(".npy") and entry.name != "labels.npy" and not entry.name.startswith(".")]
    return _order_corruptions(names)


def check_severity(severity, example: str = "") -> int:
    """``severity`` as an ``int`` if it is one of :data:`SEVERITIES` (1..5), else an
    :class:`InputError`; ``example`` shows the fix in the caller's words (``--severities 1-5``)."""
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise InputError(f"severity must be an integer in 1..5, got {severity!r}" + (f"; e.g. {example}" if example else ""))
    return int(severity)


def _corrupted_arrays(folder: Path, corruption: str, severity: int, title: str, image_size):
    """Severity ``s`` of ``<corruption>.npy``: rows ``[(s - 1) n/5, s n/5)`` of the memory-mapped
    array (a view; nothing is read until a batch asks for its rows) and their labels."""
    images_file, labels_file = folder / f"{corruption}.npy", folder / "labels.npy"
    if not labels_file.is_file():
        raise InputError(f"{title} at {folder} has no labels.npy: expected <corruption>.npy and labels.npy side by side")
    try:
        images = np.load(images_file, mmap_mode="r", allow_pickle=False)
        labels = np.load(labels_file, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read {images_file} or {labels_file} as .npy arrays ({error}); re-extract them") from error
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise InputError(f"{images_file} must be uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}; "
                         "save corrupted images as 8-bit RGB, channels last")
    if image_size is not None and tuple(images.shape[1:3]) != tuple(image_size):
        raise InputError(f"{images_file} holds {images.shape[1]}x{images.shape[2]} images but {title} is "
                         f"{image_size[0]}x{image_size[1]}; it belongs to another dataset")
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(images):
        raise InputError(f"{labels_file} must be integer labels, one per row of {images_file} ({len(images)}), "
                         f"got {labels.dtype} {labels.shape}")
    if len(images) % 5:
        raise InputError(f"{images_file} has {len(images)} rows, not divisible by 5: the five severities "
                         "must be stacked in equal blocks")
    per_severity = len(images) // 5
    rows = slice((severity - 1) * per_severity, severity * per_severity)
    if images.flags.c_contiguous:
        # Map just these rows, so the memmap's offset and shape describe them (and it pickles small).
        row_bytes = int(np.prod(images.shape[1:]))
        severity_images = np.memmap(images_file, dtype=np.uint8, mode="r", shape=(per_severity, *images.shape[1:]),
                                    offset=images.offset + rows.start * row_bytes)
    else:
        severity_images = images[rows]
    return severity_images, np.array(labels[rows], dtype=np.int64)


def load_corrupted(name: str, root: str | os.PathLike | None = None, corruption: str | None = None,
                   severity: int | None = None, normalize: bool = True) -> ImageDataset:
    """One corruption at one severity (1..5) of a ``-C`` dataset, normalized as its clean dataset.

    ``name`` is the clean or the ``-C`` name (``cifar10`` or ``cifar10-c``). Array datasets are
    memory-mapped (``dataset.array`` is an ``np.memmap`` view of the severity's rows); the
    TinyImageNet-C JPEGs are decoded on demand, class ``k`` being the ``k``-th wnid in sorted
    order, as in :func:`load_dataset`. ``split`` is ``"test"``.
    """
    kind, path, _ = parse_name(name)
    folder = corrupted_folder(name, root)
    title = f"{path.resolve().name}-C" if kind == "folder" else _CORRUPTED_FOLDERS[kind]
    source = WHERE_TO_GET["folder-c" if kind == "folder" else f"{kind}-c"]
    layout = ("<corruption>/<severity 1..5>/<wnid>/*.JPEG" if kind == "tinyimagenet"
              else "<corruption>.npy (uint8 (N, H, W, 3), severity s in the s-th fifth of the rows) and labels.npy")
    if not folder.is_dir():
        raise InputError(f"{title} not found at {folder}: expected {layout}; {source} {_PASS_ROOT}")
    present = available_corruptions(name, root)
    if corruption not in present:
        raise InputError(f"corruption {corruption!r} not found in {folder}; present: {', '.join(present) or 'none'}")
    severity = check_severity(severity)
    mean, std = _NORMALIZATION[kind]
    clean_name = f"folder:{path}" if kind == "folder" else kind
    if kind == "tinyimagenet":
        clean = folder.parent / _CLEAN_FOLDERS["tinyimagenet"]
        severity_folder = folder / corruption / str(severity)
        if not severity_folder.is_dir():
            raise InputError(f"{severity_folder} not found: expected {layout}; re-extract {title}")
        # Class indices must match the clean dataset's: its sorted wnids when it is on disk.
        classes = (_tinyimagenet_classes(clean) if (clean / "wnids.txt").is_file()
                   else tuple(_class_folders(severity_folder)))
        images, labels = _labelled_files(severity_folder, classes, str(severity_folder))
        image_size = _IMAGE_SIZES["tinyimagenet"]
    else:
        if kind == "folder":
            classes = _folder_layout(path)[1]
        else:
            classes = _cifar_classes(kind, root) if kind.startswith("cifar") else tuple(str(k) for k in range(10))
        images, labels = _corrupted_arrays(folder, corruption, severity, title, _IMAGE_SIZES.get(kind))
        image_size = None  # the array's own
    return ImageDataset(images, labels, name=f"{clean_name}-c", split="test", num_classes=len(classes),
                        mean=mean, std=std, classes=classes, normalize=normalize, image_size=image_size,
                        corruption=corruption, severity=severity)


# --------------------------------------------------------------------------------------------
# Fingerprints: which data produced a number


def _fingerprint(*parts) -> str:
    return hashlib.sha256("|".join(str(part) for part in parts).encode()).hexdigest()[:16]


@lru_cache(maxsize=1)
def _digits_digest() -> str:
    images, labels = _digits_images()
    return _fingerprint(hashlib.sha256(images.tobytes()).hexdigest(), hashlib.sha256(labels.tobytes()).hexdigest())


def _files_digest(paths: Sequence[str], labels: torch.Tensor) -> str:
    """Content digests of image files in order, with their labels (not their paths: a moved copy
    of the same data keeps its fingerprint). Each file is hashed once per process."""
    return _fingerprint(*(file_digest(path) for path in paths),
                        hashlib.sha256(labels.numpy().astype(np.int64).tobytes()).hexdigest())


def data_digest(name: str, root: str | os.PathLike | None = None, split: str = "test",
                corruption: str | None = None, severity: int | None = None) -> str:
    """A stable fingerprint (16 hex characters) of the images and labels one slice reads: the clean
    ``split`` of ``name``, or ``corruption`` at ``severity`` of its ``-C`` version.

    Built from the bytes of the files the slice comes from (``<corruption>.npy`` and ``labels.npy``;
    the CIFAR batches; the image files with their labels; scikit-learn's digits arrays), each file
    hashed once per process (:func:`ensembles.runs.files.file_digest` caches by path, size and mtime),
    so it is cheap to ask for again. Stored rows and cached logits carry it: data regenerated with
    another seed, or other files under another ``--data-path``, give another fingerprint.
    """
    kind, _, _ = parse_name(name)
    if corruption is not None:
        severity = check_severity(severity)
        folder = corrupted_folder(name, root)
        if kind == "tinyimagenet":
            images = load_corrupted(name, root, corruption, severity, normalize=False)
            return _fingerprint(kind, "c", corruption, severity, _files_digest(images.paths, images.targets))
        files = [folder / f"{corruption}.npy", folder / "labels.npy"]
        missing = [str(file) for file in files if not file.is_file()]
        if missing:
            raise InputError(f"{', '.join(missing)} not found; write the corrupted data with `sharpdiv corrupt` "
                             "or pass --data-path to the folder holding it")
        return _fingerprint(kind, "c", corruption, severity, *(file_digest(file) for file in files))
    _check_split(split)
    if kind in ("cifar10", "cifar100"):
        folder = _locate(root, _CLEAN_FOLDERS[kind])
        names = ({"cifar10": ["test_batch"], "cifar100": ["test"]} if split == "test" else
                 {"cifar10": [f"data_batch_{k}" for k in range(1, 6)], "cifar100": ["train"]})[kind]
        if not all((folder / file).is_file() for file in names):
            load_dataset(name, root, split)  # raises the loader's own message for what is missing
        return _fingerprint(kind, split, SPLIT_SEED, *(file_digest(folder / file) for file in names))
    if kind == "digits":
        return _fingerprint(kind, split, SPLIT_SEED, _digits_digest())
    images = load_dataset(name, root, split, normalize=False)
    return _fingerprint(kind, split, SPLIT_SEED, _files_digest(images.paths, images.targets))
