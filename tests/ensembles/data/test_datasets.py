"""Tests for ensembles/data/datasets.py against what the fixtures wrote, torchvision's own readers
(CIFAR pickles, ImageFolder class numbering), PIL's bilinear resize and scikit-learn's digits; the
severities' one home, the augmentation chosen per dataset and drawn from the member's generator,
and data digests that tell apart what differs."""
import pickle

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from hypothesis import given, settings, strategies as st

from ensembles.data import corruptions, datasets
from ensembles.data.datasets import (EXTRA_CORRUPTIONS, ImageDataset, Indexed, STANDARD_CORRUPTIONS,
                                     available_corruptions, batches, corrupted_folder, fixed_split, load_corrupted,
                                     load_dataset, normalization)
from ensembles.studies import evaluation
from ensembles.training import trainer
from landscape.errors import InputError

from disk_layouts import (write_cifar10, write_cifar100, write_cifar_c, write_image_folder, write_tinyimagenet,
                          write_tinyimagenet_c)

JPEG_TOLERANCE = 3  # grey levels; flat colours come back within 1, and differ between images by >= 10


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    written = {
        "cifar10": write_cifar10(root),
        "cifar100": write_cifar100(root),
        "cifar10-c": write_cifar_c(root),
        "cifar100-c": write_cifar_c(root, folder="CIFAR-100-C", corruptions=("snow",), num_classes=100),
        "tinyimagenet": write_tinyimagenet(root),
        "tinyimagenet-c": write_tinyimagenet_c(root),
        "tree": write_image_folder(root / "tree"),
        "split": write_image_folder(root / "split", classes=("b", "a", "c"), n_per_class=2, split_layout=True),
    }
    return root, written


def stored(dataset: ImageDataset, batch: torch.Tensor | None = None) -> np.ndarray:
    """The uint8 HWC images behind un-normalized float tensors (u / 255 round-trips exactly)."""
    assert not dataset.normalize
    images = next(iter(batches(dataset, len(dataset))))[0] if batch is None else batch
    return torch.round(images * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def normalized(images: np.ndarray, mean, std) -> torch.Tensor:
    """Independent float64 reference for (u / 255 - mean) / std, CHW."""
    x = images.astype(np.float64).transpose(0, 3, 1, 2) / 255
    return torch.from_numpy((x - np.array(mean)[:, None, None]) / np.array(std)[:, None, None])


def seeded_val_rows(count: int, fraction: float = 0.1) -> np.ndarray:
    """The documented cut: the first round(f N) of default_rng(0).permutation(N), sorted."""
    return np.sort(np.random.default_rng(0).permutation(count)[:round(fraction * count)])


# ---------------------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("name, reader", [("cifar10", torchvision.datasets.CIFAR10),
                                          ("cifar100", torchvision.datasets.CIFAR100)])
def test_cifar_splits_match_torchvision_and_the_documented_cut(root, name, reader, monkeypatch):
    root, written = root
    truth = written[name]
    # our fixture files do not have the real files' MD5 sums; everything else is torchvision's
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    # torchvision reads the fixture as it reads the real files: the layout is the real one.
    official = reader(root, train=True, download=False)
    np.testing.assert_array_equal(official.data, truth.train_images)
    np.testing.assert_array_equal(official.targets, truth.train_labels)
    official_test = reader(root, train=False, download=False)

    train = load_dataset(name, root, "train", normalize=False)
    val = load_dataset(name, root, "val", normalize=False)
    test = load_dataset(name, root, "test", normalize=False)
    val_rows = seeded_val_rows(len(official.data))
    train_rows = np.setdiff1d(np.arange(len(official.data)), val_rows)
    np.testing.assert_array_equal(stored(val), official.data[val_rows])
    np.testing.assert_array_equal(val.targets.numpy(), np.asarray(official.targets)[val_rows])
    np.testing.assert_array_equal(stored(train), official.data[train_rows])
    np.testing.assert_array_equal(train.targets.numpy(), np.asarray(official.targets)[train_rows])
    np.testing.assert_array_equal(stored(test), official_test.data)
    np.testing.assert_array_equal(test.targets.numpy(), official_test.targets)
    assert (len(train), len(val), len(test)) == (36, 4, 10)
    assert train.num_classes == len(train.classes) == {"cifar10": 10, "cifar100": 100}[name]
    assert train.classes == truth.classes and train.image_size == (32, 32)
    assert train.targets.dtype == torch.long and train.array.dtype == np.uint8


def test_fixed_splits_are_identical_across_calls(root):
    root, _ = root
    first, again = load_dataset("cifar10", root, "val"), load_dataset("cifar10", root, "val")
    assert torch.equal(torch.stack([first[i][0] for i in range(len(first))]),
                       torch.stack([again[i][0] for i in range(len(again))]))
    assert torch.equal(first.targets, again.targets)


def test_real_cifar_sizes_give_45k_5k():
    train, val = fixed_split(50000, (0.1,))
    assert (len(train), len(val)) == (45000, 5000)
    np.testing.assert_array_equal(val, seeded_val_rows(50000))
    assert len(np.union1d(train, val)) == 50000


@settings(max_examples=40, deadline=None)
@given(count=st.integers(10, 3000), fractions=st.lists(st.floats(0.01, 0.3), min_size=1, max_size=2))
def test_fixed_split_partitions(count, fractions):
    parts = fixed_split(count, fractions)
    assert [len(part) for part in parts[1:]] == [round(f * count) for f in fractions]
    joined = np.concatenate(parts)
    np.testing.assert_array_equal(np.sort(joined), np.arange(count))  # disjoint and covering
    assert all(np.all(np.diff(part) > 0) for part in parts)
    assert all(np.array_equal(a, b) for a, b in zip(parts, fixed_split(count, fractions)))


def test_normalization_constants_are_applied(root):
    root, written = root
    for name, mean, std in [("cifar10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
                            ("cifar100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))]:
        assert normalization(name) == normalization(f"{name}-c") == (mean, std)
        test = load_dataset(name, root, "test")
        assert (test.mean, test.std) == (mean, std)
        x = torch.stack([test[i][0] for i in range(len(test))])
        torch.testing.assert_close(x.double(), normalized(written[name].test_images, mean, std), rtol=0, atol=1e-6)
    assert normalization("tinyimagenet") == ((0.480, 0.448, 0.397), (0.276, 0.269, 0.282))


# ----------------------------------------------------------------------------------- TinyImageNet


def test_tinyimagenet_splits(root):
    root, written = root
    truth = written["tinyimagenet"]
    train = load_dataset("tinyimagenet", root, "train", normalize=False)
    val = load_dataset("tinyimagenet", root, "val", normalize=False)
    test = load_dataset("tinyimagenet", root, "test", normalize=False)
    # Class k is the k-th wnid in sorted order, exactly as torchvision's ImageFolder numbers them.
    folder = torchvision.datasets.ImageFolder(truth.folder / "train")
    assert train.classes == tuple(folder.classes) == truth.classes
    assert train.image_size == (64, 64) and train.num_classes == 2
    all_files = [str(path) for path in truth.files["train"]]
    assert [path for path, _ in folder.samples] == all_files
    val_rows = seeded_val_rows(len(all_files))
    assert val.paths == [all_files[k] for k in val_rows]
    assert sorted(train.paths + val.paths) == sorted(all_files) and not set(train.paths) & set(val.paths)
    for split in (train, val):
        rows = [all_files.index(path) for path in split.paths]
        np.testing.assert_array_equal(split.targets.numpy(), truth.labels["train"][rows])
        np.testing.assert_array_equal(split.targets.numpy(), [folder.targets[k] for k in rows])
        difference = np.abs(stored(split).astype(int) - truth.images["train"][rows])
        assert difference.max() <= JPEG_TOLERANCE
    # test = the official val folder, labels from val_annotations.txt, in annotation order
    assert test.paths == [str(path) for path in truth.files["val"]]
    np.testing.assert_array_equal(test.targets.numpy(), truth.labels["val"])
    assert np.abs(stored(test).astype(int) - truth.images["val"]).max() <= JPEG_TOLERANCE
    # the greyscale JPEG comes back as three equal channels
    grey = stored(train)[train.paths.index(all_files[0])] if all_files[0] in train.paths else stored(val)[0]
    assert np.abs(grey.astype(int) - 90).max() <= JPEG_TOLERANCE


def test_tinyimagenet_c_severities_and_classes(root):
    root, written = root
    clean = load_dataset("tinyimagenet", root, "test")
    for (corruption, severity), truth in written["tinyimagenet-c"].items():
        corrupted = load_corrupted("tinyimagenet-c", root, corruption, severity, normalize=False)
        assert (corrupted.corruption, corrupted.severity, corrupted.split) == (corruption, severity, "test")
        assert corrupted.classes == clean.classes and (corrupted.mean, corrupted.std) == (clean.mean, clean.std)
        assert corrupted.paths == [str(path) for path in truth.files["test"]]
        np.testing.assert_array_equal(corrupted.targets.numpy(), truth.labels["test"])
        images = stored(corrupted).astype(int)
        assert np.abs(images - truth.images["test"]).max() <= JPEG_TOLERANCE
        assert np.abs(images[..., 0] - 40 * severity).max() <= JPEG_TOLERANCE  # the severity code
    assert available_corruptions("tiny-imagenet", root) == ["gaussian_noise", "fog"]


def test_tinyimagenet_c_numbers_wnids_like_the_clean_dataset(tmp_path):
    # wnids.txt lists n02124075 first; class 0 must still be the first wnid in sorted order,
    # with or without the clean dataset beside it.
    written = write_tinyimagenet_c(tmp_path, corruptions=("fog",), n_per_class=1)
    alone = load_corrupted("tinyimagenet", tmp_path, "fog", 1)
    write_tinyimagenet(tmp_path, n_train_per_class=1, n_val=2)
    beside = load_corrupted("tinyimagenet", tmp_path, "fog", 1)
    for corrupted in (alone, beside):
        assert corrupted.classes == ("n01443537", "n02124075")
        np.testing.assert_array_equal(corrupted.targets.numpy(), written["fog", 1].labels["test"])


# ---------------------------------------------------------------------------------------- -C arrays


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_cifar_c_reads_the_severity_rows_memory_mapped(root, severity):
    root, written = root
    truth = written["cifar10-c"]
    for position, corruption in enumerate(("gaussian_noise", "fog")):
        corrupted = load_corrupted("cifar10", root, corruption, severity, normalize=False)
        assert isinstance(corrupted.array, np.memmap)  # a view of the file, not a copy in memory
        rows = truth.images[corruption][truth.severity_rows(severity)]
        np.testing.assert_array_equal(stored(corrupted), rows)
        assert set(stored(corrupted)[:, 0, 0, 0]) == {10 * (position + 1) + severity}
        np.testing.assert_array_equal(corrupted.targets.numpy(), truth.labels[truth.severity_rows(severity)])
    x = load_corrupted("cifar10-c", root, corruption="fog", severity=severity)
    assert (x.mean, x.std) == normalization("cifar10") and x.num_classes == 10
    # Sent to a DataLoader worker, it travels as a file reference, not as the images' bytes.
    message = pickle.dumps(x)
    assert len(message) < x.array.nbytes and x.array.tobytes() not in message
    copy = pickle.loads(message)
    assert isinstance(copy.array, np.memmap) and torch.equal(copy[1][0], x[1][0])
    batch = next(iter(batches(x, 100)))[0]
    torch.testing.assert_close(batch.double(), normalized(truth.images["fog"][truth.severity_rows(severity)],
                                                          *normalization("cifar10")), rtol=0, atol=1e-6)


def test_corrupted_folder_table(tmp_path):
    assert corrupted_folder("cifar10", tmp_path) == tmp_path / "CIFAR-10-C"
    assert corrupted_folder("cifar10-c", tmp_path) == tmp_path / "CIFAR-10-C"
    assert corrupted_folder("cifar100-c", tmp_path) == tmp_path / "CIFAR-100-C"
    assert corrupted_folder("digits", tmp_path) == tmp_path / "digits-C"
    assert corrupted_folder("tinyimagenet", tmp_path) == tmp_path / "Tiny-ImageNet-C"
    assert corrupted_folder(f"folder:{tmp_path / 'photos'}", tmp_path) == tmp_path / "photos-C"
    assert len(STANDARD_CORRUPTIONS) == 15 and len(EXTRA_CORRUPTIONS) == 4
    assert not set(STANDARD_CORRUPTIONS) & set(EXTRA_CORRUPTIONS)
    assert {"gaussian_noise", "jpeg_compression", "elastic_transform"} <= set(STANDARD_CORRUPTIONS)
    assert set(EXTRA_CORRUPTIONS) == {"speckle_noise", "gaussian_blur", "spatter", "saturate"}


def test_available_corruptions_lists_what_is_on_disk(root, tmp_path):
    root, _ = root
    assert available_corruptions("cifar10", root) == ["gaussian_noise", "fog"]  # Hendrycks & Dietterich's order
    assert available_corruptions("cifar100", root) == ["snow"]
    assert available_corruptions("digits", root) == []
    write_cifar_c(tmp_path, corruptions=("my_blur", "saturate", "frost"), n_per_severity=1)
    assert available_corruptions("cifar10", tmp_path) == ["frost", "saturate", "my_blur"]
    assert load_corrupted("cifar10", tmp_path, "my_blur", 5).severity == 5


def test_digits_and_folder_corrupted_arrays(root, tmp_path):
    root, written = root
    digits = write_cifar_c(tmp_path, folder="digits-C", corruptions=("fog",), n_per_severity=2)
    corrupted = load_corrupted("digits-c", tmp_path, "fog", 2, normalize=False)
    np.testing.assert_array_equal(stored(corrupted), digits.images["fog"][digits.severity_rows(2)])
    assert (corrupted.mean, corrupted.std) == normalization("digits")
    mine = write_cifar_c(tmp_path, folder="tree-C", corruptions=("snow",), n_per_severity=3, num_classes=2,
                         image_size=12)
    corrupted = load_corrupted(f"folder:{root / 'tree'}", tmp_path, "snow", 4, normalize=False)
    assert corrupted.classes == ("cat", "dog") and corrupted.image_size == (12, 12)
    np.testing.assert_array_equal(stored(corrupted), mine.images["snow"][mine.severity_rows(4)])
    np.testing.assert_array_equal(corrupted.targets.numpy(), mine.labels[mine.severity_rows(4)])


# ---------------------------------------------------------------------------------------- digits


def test_digits_match_an_independent_bilinear_upscaling(tmp_path, monkeypatch):
    from sklearn.datasets import load_digits

    monkeypatch.setenv("SHARPDIV_DATA", str(tmp_path / "nothing here"))  # digits needs no files
    digits = load_digits()
    # PIL's bilinear resize (half-pixel centres, edge weights renormalized) on the float image
    expected = np.stack([np.asarray(Image.fromarray(image.astype(np.float32)).resize((32, 32), Image.BILINEAR))
                         for image in digits.images])
    expected = np.clip(np.round(expected * 255 / 16), 0, 255)
    splits = {split: load_dataset("digits", split=split, normalize=False) for split in datasets.SPLITS}
    rows = dict(zip(("train", "val", "test"), fixed_split(1797, (0.2, 0.2))))
    assert [len(splits[s]) for s in datasets.SPLITS] == [1079, 359, 359]
    np.testing.assert_array_equal(np.sort(np.concatenate(list(rows.values()))), np.arange(1797))
    np.testing.assert_array_equal(seeded_val_rows(1797, 0.2), rows["val"])
    for split, dataset in splits.items():
        images = stored(dataset).astype(int)
        assert np.all(images[..., 0] == images[..., 1]) and np.all(images[..., 0] == images[..., 2])
        assert np.abs(images[..., 0] - expected[rows[split]]).max() <= 1  # float rounding at .5 only
        assert np.mean(images[..., 0] == expected[rows[split]]) > 0.99
        np.testing.assert_array_equal(dataset.targets.numpy(), digits.target[rows[split]])
    assert splits["train"].image_size == (32, 32) and splits["train"].num_classes == 10


def test_digits_normalization_constants_match_the_train_split():
    train = load_dataset("digits", split="train", normalize=False)
    pixels = stored(train).astype(np.float64) / 255
    mean, std = normalization("digits")
    np.testing.assert_allclose(mean, pixels.mean(axis=(0, 1, 2)), atol=6e-5)
    np.testing.assert_allclose(std, pixels.std(axis=(0, 1, 2)), atol=6e-5)


# ---------------------------------------------------------------------------------- user folders


def test_single_folder_tree_is_cut_80_10_10(root):
    root, written = root
    truth = written["tree"]
    parts = {split: load_dataset(f"folder:{truth.folder}", split=split, normalize=False) for split in datasets.SPLITS}
    files = [str(path) for path in truth.files["all"]]
    train, val, test = fixed_split(len(files), (0.1, 0.1))
    for split, rows in zip(("train", "val", "test"), (train, val, test)):
        dataset = parts[split]
        assert dataset.paths == [files[k] for k in rows]
        np.testing.assert_array_equal(stored(dataset), truth.images["all"][rows])  # PNG: exact
        np.testing.assert_array_equal(dataset.targets.numpy(), truth.labels["all"][rows])
        assert dataset.classes == ("cat", "dog") and dataset.image_size == (12, 10)
        assert (dataset.mean, dataset.std) == normalization(f"folder:{truth.folder}")
    assert sorted(sum((parts[s].paths for s in datasets.SPLITS), [])) == sorted(files)


def test_split_folder_layout(root, tmp_path):
    root, written = root
    truth = written["split"]
    for split in datasets.SPLITS:
        dataset = load_dataset(f"folder:{truth.folder}", split=split, normalize=False)
        reference = torchvision.datasets.ImageFolder(truth.folder / split)
        assert dataset.classes == tuple(reference.classes) == ("a", "b", "c")
        assert dataset.paths == [path for path, _ in reference.samples]
        np.testing.assert_array_equal(dataset.targets.numpy(), reference.targets)
        np.testing.assert_array_equal(stored(dataset), truth.images[split])
    # without val/: a fixed 10% of train
    no_val = write_image_folder(tmp_path / "no_val", n_per_class=10, split_layout=True, splits=("train", "test"))
    train = load_dataset(f"folder:{no_val.folder}", split="train")
    val = load_dataset(f"folder:{no_val.folder}", split="val", normalize=False)
    files = [str(path) for path in no_val.files["train"]]
    assert val.paths == [files[k] for k in seeded_val_rows(20)]
    assert sorted(train.paths + val.paths) == sorted(files) and len(val) == 2
    np.testing.assert_array_equal(stored(val), no_val.images["train"][seeded_val_rows(20)])


# ------------------------------------------------------------------------------------ augmentation


def candidate_views(image: np.ndarray, padding: int = 4) -> np.ndarray:
    """Every crop (after zero padding) and its mirror image of one CHW image: (2 (2p+1)^2, C, H, W)."""
    _, height, width = image.shape
    padded = np.pad(image, ((0, 0), (padding, padding), (padding, padding)))
    crops = [padded[:, top:top + height, left:left + width]
             for top in range(2 * padding + 1) for left in range(2 * padding + 1)]
    return np.stack(crops + [crop[:, :, ::-1] for crop in crops])


def test_augmentation_is_a_padded_crop_and_flip_reproducible_under_the_seed(root):
    root, written = root
    plain = load_dataset("cifar10", root, "train", normalize=False)
    augmented = load_dataset("cifar10", root, "train", augment=True, normalize=False)
    torch.manual_seed(5)
    first = list(batches(augmented, 16, with_index=True))
    torch.manual_seed(5)
    second = list(batches(augmented, 16, with_index=True))
    offsets, flips = set(), []
    for (x, y, index), (x_again, _, _) in zip(first, second):
        assert torch.equal(x, x_again)  # the trainer's seed fixes the augmentation
        assert x.shape == (len(index), 3, 32, 32) and torch.equal(y, plain.targets[index])
        originals = torch.stack([plain[int(i)][0] for i in index])
        assert not torch.equal(x, originals)
        for view, original in zip(x.numpy(), originals.numpy()):
            matches = np.flatnonzero((candidate_views(original) == view).all(axis=(1, 2, 3)))
            assert len(matches) >= 1, "an augmented image is no padded crop or flip of its original"
            offsets.add(int(matches[0]) % 81)
            flips.append(int(matches[0]) >= 81)
    assert len(offsets) > 10 and 0 < sum(flips) < len(flips)
    # __getitem__ augments too, from the same global RNG
    torch.manual_seed(0)
    x, y = augmented[3]
    assert y == int(plain.targets[3])
    assert (candidate_views(plain[3][0].numpy()) == x.numpy()).all(axis=(1, 2, 3)).any()


def test_augmentation_pads_with_zeros_before_normalizing(root):
    root, written = root
    augmented = load_dataset("cifar10", root, "test", augment=True)
    torch.manual_seed(1)
    x = next(iter(batches(augmented, 10)))[0].double()
    originals = written["cifar10"].test_images.transpose(0, 3, 1, 2).astype(np.float64) / 255
    mean, std = (np.array(v)[:, None, None] for v in normalization("cifar10"))
    for view, original in zip(x.numpy(), originals):
        candidates = (candidate_views(original) - mean) / std  # zero padding = black, then normalized
        assert np.abs(candidates - view).max(axis=(1, 2, 3)).min() < 1e-5


# ---------------------------------------------------------------------------------------- batches


def test_batches_equal_stacking_getitem(root):
    root, _ = root
    sets = [load_dataset("cifar10", root, "train"), load_dataset("tinyimagenet", root, "train"),
                load_corrupted("cifar10", root, "fog", 3), load_dataset("digits", split="val")]
    for dataset in sets:
        generator = torch.Generator().manual_seed(7)
        seen = []
        loader = batches(dataset, 5, shuffle=True, generator=generator, with_index=True)
        assert len(loader) == -(-len(dataset) // 5)
        for x, y, index in loader:
            assert x.dtype == torch.float32 and x.is_contiguous()
            assert torch.equal(x, torch.stack([dataset[int(i)][0] for i in index]))
            assert torch.equal(y, torch.tensor([dataset[int(i)][1] for i in index]))
            seen += index.tolist()
        assert sorted(seen) == list(range(len(dataset)))
        assert seen == torch.randperm(len(dataset), generator=torch.Generator().manual_seed(7)).tolist()
        in_order = [index for _, _, index in batches(dataset, 4, with_index=True, drop_last=True)]
        assert torch.equal(torch.cat(in_order), torch.arange(len(dataset) // 4 * 4))
        x, y = next(iter(batches(dataset, 3, device="cpu")))
        assert torch.equal(x, torch.stack([dataset[i][0] for i in range(3)]))


def test_dataloader_and_indexed_wrapper(root):
    root, _ = root
    dataset = load_dataset("cifar10", root, "val")
    loaded = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    ours = next(iter(batches(dataset, 4)))
    assert torch.equal(loaded[0], ours[0]) and torch.equal(loaded[1], ours[1])
    indexed = Indexed(dataset)
    x, y, i = indexed[2]
    assert torch.equal(x, dataset[2][0]) and y == dataset[2][1] and i == 2
    assert len(indexed) == len(dataset) and indexed.num_classes == 10 and indexed.split == "val"
    x, y, i = next(iter(torch.utils.data.DataLoader(indexed, batch_size=4)))
    assert torch.equal(i, torch.arange(4)) and torch.equal(y, dataset.targets[:4])


def test_image_dataset_from_an_array():
    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    dataset = ImageDataset(images, [1, 0], name="toy", split="test", num_classes=2, mean=(0.5,) * 3, std=(0.25,) * 3)
    torch.testing.assert_close(dataset[1][0].double(), normalized(images, (0.5,) * 3, (0.25,) * 3)[1],
                               rtol=0, atol=1e-6)
    assert dataset[-1][1] == 0 and dataset.image_size == (4, 4)
    with pytest.raises(IndexError):
        dataset[2]


# -------------------------------------------------------------------------------------- roots


def test_root_defaults_and_a_root_that_is_the_dataset_folder(root, monkeypatch, tmp_path):
    root, written = root
    monkeypatch.setenv("SHARPDIV_DATA", str(root))
    assert len(load_dataset("cifar10", split="test")) == 10
    assert available_corruptions("cifar10") == ["gaussian_noise", "fog"]
    assert len(load_dataset("cifar10", written["cifar10"].folder, "test")) == 10
    monkeypatch.delenv("SHARPDIV_DATA")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert datasets.data_root() == tmp_path / ".cache" / "sharpdiv" / "data"
    with pytest.raises(InputError, match=str(tmp_path / ".cache" / "sharpdiv" / "data" / "cifar-10-batches-py")):
        load_dataset("cifar10")


# ---------------------------------------------------------------------------------------- bad input


def test_missing_datasets_name_the_path_layout_and_source(tmp_path):
    with pytest.raises(InputError, match=r"CIFAR-10 not found at .*cifar-10-batches-py.*data_batch_1\.\.5.*"
                                         r"cs\.toronto\.edu/~kriz/cifar\.html.*--data-path"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(InputError, match=r"CIFAR-100 not found at .*cifar-100-python"):
        load_dataset("cifar100", tmp_path, "test")
    with pytest.raises(InputError, match=r"TinyImageNet not found at .*tiny-imagenet-200.*val_annotations.*tiny-imagenet-200\.zip"):
        load_dataset("tinyimagenet", tmp_path)
    with pytest.raises(InputError, match=r"CIFAR-10-C not found at .*CIFAR-10-C.*labels\.npy.*zenodo"):
        load_corrupted("cifar10", tmp_path, "fog", 1)
    with pytest.raises(InputError, match=r"Tiny-ImageNet-C not found .*<wnid>.*zenodo"):
        load_corrupted("tinyimagenet", tmp_path, "fog", 1)
    with pytest.raises(InputError, match=r"image folder .*nowhere not found"):
        load_dataset(f"folder:{tmp_path / 'nowhere'}")


def test_unknown_names_splits_corruptions_and_severities(root):
    root, _ = root
    with pytest.raises(InputError, match=r"unknown dataset 'imagenet'.*cifar10, cifar100, tinyimagenet, digits"):
        load_dataset("imagenet", root)
    with pytest.raises(InputError, match=r"unknown split 'validation'.*train, val, test"):
        load_dataset("cifar10", root, "validation")
    with pytest.raises(InputError, match=r"load_corrupted"):
        load_dataset("cifar10-c", root)
    with pytest.raises(InputError, match=r"corruption 'frost' not found .*present: gaussian_noise, fog"):
        load_corrupted("cifar10", root, "frost", 1)
    with pytest.raises(InputError, match=r"present: gaussian_noise, fog"):
        load_corrupted("cifar10", root)
    for severity in (0, 6, 2.5, True, "3", None):
        with pytest.raises(InputError, match=r"severity must be an integer in 1\.\.5"):
            load_corrupted("cifar10", root, "fog", severity)
    with pytest.raises(InputError, match=r"batch_size must be an integer >= 1"):
        batches(load_dataset("digits", split="test"), 0)


def test_bad_corrupted_arrays(tmp_path):
    folder = tmp_path / "CIFAR-10-C"
    folder.mkdir()
    np.save(folder / "labels.npy", np.zeros(10, dtype=np.int64))
    np.save(folder / "float.npy", np.zeros((10, 32, 32, 3), dtype=np.float32))
    np.save(folder / "flat.npy", np.zeros((10, 3072), dtype=np.uint8))
    np.save(folder / "short.npy", np.zeros((15, 32, 32, 3), dtype=np.uint8))
    np.save(folder / "small.npy", np.zeros((10, 28, 28, 3), dtype=np.uint8))
    cases = {"float": r"float\.npy must be uint8 \(N, H, W, 3\).*float32",
             "flat": r"flat\.npy must be uint8 \(N, H, W, 3\)",
             "short": r"labels\.npy must be integer labels, one per row of .*short\.npy \(15\)",
             "small": r"28x28 images but CIFAR-10-C is 32x32"}
    for corruption, message in cases.items():
        with pytest.raises(InputError, match=message):
            load_corrupted("cifar10", tmp_path, corruption, 1)
    np.save(folder / "labels.npy", np.zeros(12, dtype=np.int64))
    np.save(folder / "odd.npy", np.zeros((12, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(InputError, match=r"odd\.npy has 12 rows, not divisible by 5"):
        load_corrupted("cifar10", tmp_path, "odd", 1)
    np.save(folder / "labels.npy", np.full(10, 10, dtype=np.int64))
    np.save(folder / "fine.npy", np.zeros((10, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(InputError, match=r"labels must lie in 0\.\.9"):
        load_corrupted("cifar10", tmp_path, "fine", 1)


def test_bad_cifar_files(tmp_path):
    written = write_cifar10(tmp_path)
    batch = written.folder / "data_batch_1"
    with open(batch, "rb") as stream:
        content = pickle.load(stream, encoding="bytes")
    content[b"labels"] = content[b"labels"][:-1]
    with open(batch, "wb") as stream:
        pickle.dump(content, stream, protocol=2)
    with pytest.raises(InputError, match=r"data_batch_1: 8 images but 7 labels"):
        load_dataset("cifar10", tmp_path)
    content[b"data"] = content[b"data"][:, :3000]
    with open(batch, "wb") as stream:
        pickle.dump(content, stream, protocol=2)
    with pytest.raises(InputError, match=r"'data' must be uint8 \(n, 3072\)"):
        load_dataset("cifar10", tmp_path)

    class Payload:  # a pickle that would call a function when loaded
        def __reduce__(self):
            return (print, ("pickles can run code",))

    with open(batch, "wb") as stream:
        pickle.dump({b"data": Payload()}, stream)
    with pytest.raises(InputError, match=r"not a CIFAR python-pickle batch.*refusing to load builtins\.print"):
        load_dataset("cifar10", tmp_path)
    assert len(load_dataset("cifar10", tmp_path, "test")) == 10  # the test batch is still fine


def test_bad_image_folders(tmp_path):
    mixed = write_image_folder(tmp_path / "mixed", n_per_class=5)
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(mixed.folder / "dog" / "img_zzz.png")
    dataset = load_dataset(f"folder:{mixed.folder}", split="train")
    with pytest.raises(InputError, match=r"img_zzz\.png is 8x8 but this dataset's images are 12x10"):
        list(batches(dataset, 64))
    no_test = write_image_folder(tmp_path / "no_test", split_layout=True, splits=("train",))
    with pytest.raises(InputError, match=r"has train/ but no test/.*no_test/test/<class>"):
        load_dataset(f"folder:{no_test.folder}", split="train")
    extra = write_image_folder(tmp_path / "extra", split_layout=True)
    write_image_folder(tmp_path / "extra" / "test", classes=("horse",), n_per_class=1)
    with pytest.raises(InputError, match=r"class folder .*horse is not among the training classes"):
        load_dataset(f"folder:{extra.folder}", split="test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"has no class folders"):
        load_dataset(f"folder:{tmp_path / 'empty'}")
    tiny = write_image_folder(tmp_path / "tiny", n_per_class=2)
    with pytest.raises(InputError, match=r"4 images, too few to cut"):
        load_dataset(f"folder:{tiny.folder}")


def test_the_severities_and_their_check_have_one_home():
    assert corruptions.SEVERITIES is datasets.SEVERITIES
    assert corruptions.check_severity is datasets.check_severity
    for bad in (0, 6, 2.0, True):
        with pytest.raises(InputError, match=r"severity must be an integer in 1\.\.5"):
            corruptions.corrupt(np.zeros((1, 32, 32, 3), np.uint8), "fog", bad)
    with pytest.raises(InputError, match=r"in 1\.\.5, got 7; e\.g\. --severities 1-5"):
        evaluation.evaluation_slices("digits", severities=[7])


def test_data_digests_tell_apart_what_differs_and_only_that(tmp_path):
    write_cifar10(tmp_path / "a", n_train=20, n_test=10, seed=0)
    write_cifar10(tmp_path / "copy", n_train=20, n_test=10, seed=0)
    write_cifar10(tmp_path / "b", n_train=20, n_test=10, seed=1)
    digest = datasets.data_digest("cifar10", tmp_path / "a", "test")
    assert datasets.data_digest("cifar10", tmp_path / "copy", "test") == digest  # same bytes elsewhere
    assert datasets.data_digest("cifar10", tmp_path / "b", "test") != digest
    assert len({datasets.data_digest("cifar10", tmp_path / "a", split) for split in ("train", "val", "test")}) == 3
    assert datasets.data_digest("digits", split="val") != datasets.data_digest("digits", split="test")


# --- the augmentation draws from the member's generator, never from torch's global RNG ---------------

def test_crops_and_flips_come_from_the_generator_in_the_global_rngs_order():
    from ensembles.data.datasets import random_crop_and_flip

    images = (torch.arange(8 * 3 * 6 * 6) % 251).to(torch.uint8).reshape(8, 3, 6, 6)
    generator = torch.Generator().manual_seed(11)
    drawn = random_crop_and_flip(images, padding=2, generator=generator)
    assert not torch.equal(drawn, random_crop_and_flip(images, padding=2, generator=torch.Generator().manual_seed(12)))
    outside = torch.get_rng_state()
    torch.manual_seed(11)  # the old path: the global RNG in the generator's state
    assert torch.equal(drawn, random_crop_and_flip(images, padding=2))
    assert torch.equal(generator.get_state(), torch.get_rng_state())  # the same draws, consumed alike
    torch.set_rng_state(outside)


# --- augmentation: one setting, chosen per dataset, recorded in run.json ---------------------------


def test_default_augmentation_is_none_for_digits_and_crop_flip_for_natural_images():
    assert datasets.default_augmentation("digits") == "none"
    for name in ("cifar10", "CIFAR-100", "tinyimagenet", "folder:/somewhere"):
        assert datasets.default_augmentation(name) == "crop-flip"
    assert trainer.TrainingSettings(dataset="digits", model="small_cnn").augmentation == "none"
    assert trainer.TrainingSettings(dataset="cifar10", model="small_cnn").augmentation == "crop-flip"
    chosen = trainer.TrainingSettings(dataset="digits", model="small_cnn", augmentation="crop")
    assert chosen.augmentation == "crop" and chosen.run_fields()["augmentation"] == "crop"
    with pytest.raises(InputError, match="unknown augmentation 'flip'; choose one of none, crop, crop-flip"):
        trainer.TrainingSettings(dataset="digits", model="small_cnn", augmentation="flip")
