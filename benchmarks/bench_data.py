"""Data batches: the vectorized ``ensembles.data.datasets.batches`` against torchvision transforms
and a DataLoader, side by side in one process.

    python benchmarks/bench_data.py [--quick] [--images 5000] [--threads 1] [--jpeg]

One epoch over ``--images`` random CIFAR-size images (uint8 32×32×3, 10 classes) in batches of 128,
shuffled, with and without the standard training augmentation (zero-pad 4, random 32×32 crop,
horizontal flip with p = 1/2), normalized with per-channel statistics. Cases:

- ``batches()``: the library's path: one gather per batch, crop and flip as a batch, then normalize;
- ``DataLoader(ImageDataset)``: the same dataset read one sample at a time by ``__getitem__``
  through a ``torch.utils.data.DataLoader`` (``num_workers=0``): what vectorizing the batch saves;
- ``torchvision``: the usual CIFAR pipeline: a PIL image per sample (as ``torchvision.datasets.CIFAR10``
  makes), ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize``,
  through a ``DataLoader`` (``num_workers=0``, default collate).

With ``--jpeg`` the images are also written as an ImageFolder tree of JPEGs and read by
``load_dataset("folder:<tree>")`` + ``batches()`` against ``torchvision.datasets.ImageFolder`` + the
same transforms and DataLoader (each pipeline decodes every file once per epoch).

The thread count is fixed before torch is imported (``OMP_NUM_THREADS``, ``OMP_WAIT_POLICY=PASSIVE``
unless set); cases are timed in interleaved rounds (``interleaved.timed``) and the load average is
printed before and after, since the machine may be shared. Compare the ratios, not the seconds.
Measured numbers: ``benchmarks/README.md``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000, help="images per epoch (default 5000)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch and OpenMP threads (default 1)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--jpeg", action="store_true", help="also compare reading a JPEG ImageFolder tree")
    parser.add_argument("--quick", action="store_true", help="1000 images, 2 rounds: a smoke run")
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.images, arguments.rounds = min(arguments.images, 1000), 2
    return arguments


ARGUMENTS = _arguments()
# threads are fixed before torch is imported: OpenMP reads these once
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["OMP_NUM_THREADS"] = str(ARGUMENTS.threads)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision import transforms  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from interleaved import timed  # noqa: E402  (benchmarks/ is the script's folder)

from ensembles.data import datasets  # noqa: E402

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # CIFAR-10's


class PilArrays(Dataset):
    """uint8 ``(N, H, W, 3)`` arrays read as torchvision's CIFAR10 reads them: a PIL image per sample."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def torchvision_transform(augment: bool):
    steps = [transforms.RandomCrop(32, padding=datasets.CROP_PADDING), transforms.RandomHorizontalFlip()] if augment else []
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(MEAN, STD)])


def epoch(batches) -> int:
    """Read one epoch; the number of images seen."""
    return sum(inputs.shape[0] for inputs, _ in batches)


def array_cases(images: np.ndarray, labels: np.ndarray, augment: bool, batch_size: int) -> dict:
    """(epoch function, images per epoch) of each case on the uint8 arrays."""
    ours = datasets.ImageDataset(images, labels, name="bench", split="train", num_classes=10,
                                 mean=MEAN, std=STD, augment=augment)
    pil = PilArrays(images, labels, torchvision_transform(augment))
    generator = torch.Generator().manual_seed(0)
    return {
        "batches()": (lambda: epoch(datasets.batches(ours, batch_size, shuffle=True, generator=generator)), len(ours)),
        "DataLoader(ImageDataset)": (lambda: epoch(DataLoader(ours, batch_size, shuffle=True, generator=generator)),
                                     len(ours)),
        "torchvision": (lambda: epoch(DataLoader(pil, batch_size, shuffle=True, generator=generator)), len(pil)),
    }


def write_jpeg_tree(images: np.ndarray, labels: np.ndarray, folder: Path) -> None:
    for index, (image, label) in enumerate(zip(images, labels)):
        (folder / f"class{label}").mkdir(exist_ok=True)
        Image.fromarray(image).save(folder / f"class{label}" / f"{index:05d}.jpg", quality=90)


def jpeg_cases(folder: Path, augment: bool, batch_size: int) -> dict:
    """The same, reading the tree (ours reads its fixed 80% train cut, torchvision every file)."""
    ours = datasets.load_dataset(f"folder:{folder}", split="train", augment=augment)
    theirs = torchvision.datasets.ImageFolder(str(folder), transform=torchvision_transform(augment))
    generator = torch.Generator().manual_seed(0)
    return {
        "batches() on JPEGs": (lambda: epoch(datasets.batches(ours, batch_size, shuffle=True, generator=generator)),
                               len(ours)),
        "torchvision ImageFolder": (lambda: epoch(DataLoader(theirs, batch_size, shuffle=True, generator=generator)),
                                    len(theirs)),
    }


def report(title: str, cases: dict, rounds: int) -> None:
    """Time ``cases`` in interleaved rounds and print seconds per epoch, images per second and each
    case's wall-clock and CPU time per image relative to the first case's (on a loaded machine the
    CPU ratio is the steadier one)."""
    times = timed({name: function for name, (function, _) in cases.items()}, rounds)
    reference = next(iter(cases))
    per_image = {name: (times[name][0] / count, times[name][1] / count) for name, (_, count) in cases.items()}
    print(f"\n{title}")
    print(f"  {'case':26s} {'images':>6s} {'wall s':>7s} {'cpu s':>7s} {'images/s':>9s}  per image / {reference}: wall, cpu")
    for name, (_, count) in cases.items():
        (wall, cpu), (wall_ratio, cpu_ratio) = times[name], (
            per_image[name][0] / per_image[reference][0], per_image[name][1] / per_image[reference][1])
        print(f"  {name:26s} {count:6d} {wall:7.3f} {cpu:7.3f} {count / wall:9.0f}  {wall_ratio:5.1f}×  {cpu_ratio:5.1f}×")


def main() -> None:
    torch.set_num_threads(ARGUMENTS.threads)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(ARGUMENTS.images, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=ARGUMENTS.images)
    load = os.getloadavg()
    print(f"{ARGUMENTS.images} images 32×32×3, batches of {ARGUMENTS.batch_size}, {torch.get_num_threads()} torch "
          f"thread(s), OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}; median of {ARGUMENTS.rounds} interleaved rounds after a warm-up")
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for augment in (False, True):
        report(f"uint8 arrays in memory, {'with' if augment else 'without'} augmentation",
               array_cases(images, labels, augment, ARGUMENTS.batch_size), ARGUMENTS.rounds)
    if ARGUMENTS.jpeg:
        with tempfile.TemporaryDirectory(prefix="sharpdiv-bench-data-") as folder:
            write_jpeg_tree(images, labels, Path(folder))
            for augment in (False, True):
                report(f"JPEG ImageFolder tree (quality 90), {'with' if augment else 'without'} augmentation",
                       jpeg_cases(Path(folder), augment, ARGUMENTS.batch_size), ARGUMENTS.rounds)
    load = os.getloadavg()
    print(f"\nload average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
