"""`sharpdiv corrupt` writes a -C folder that `load_corrupted` reads back as the corruption of the
clean test split, severity by severity, for digits and for a user's own image folder."""
import numpy as np
import torch
from click.testing import CliRunner

import cli
from disk_layouts import write_image_folder
from ensembles.data import datasets
from ensembles.data.corruptions import corrupt


def stored_pixels(dataset):
    return (dataset.batch(np.arange(len(dataset))) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_digits_c_round_trips_through_load_corrupted(tmp_path):
    result = CliRunner().invoke(cli.main, ["corrupt", "--data", "digits", "--out", str(tmp_path),
                                           "--corruptions", "gaussian_noise,pixelate", "--seed", "5"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "digits-C").iterdir()) == [
        "gaussian_noise.npy", "labels.npy", "pixelate.npy", "sharpdiv-corrupt.json"]
    clean = datasets.load_dataset("digits", split="test", normalize=False)
    clean_pixels = stored_pixels(clean)
    assert datasets.available_corruptions("digits", tmp_path) == ["gaussian_noise", "pixelate"]
    for severity in (1, 3, 5):
        for name in ("gaussian_noise", "pixelate"):
            loaded = datasets.load_corrupted("digits", tmp_path, name, severity, normalize=False)
            assert torch.equal(loaded.targets, clean.targets)
            np.testing.assert_array_equal(stored_pixels(loaded), corrupt(clean_pixels, name, severity, seed=5, parameters="digits-c"))
    # Normalized loading uses the clean data set's normalization.
    normalized = datasets.load_corrupted("digits", tmp_path, "pixelate", 2)
    assert normalized.mean == clean.mean and normalized.std == clean.std


def test_rerun_keeps_what_is_written_and_adds_the_rest(tmp_path):
    runner = CliRunner()
    assert runner.invoke(cli.main, ["corrupt", "--data", "digits", "--out", str(tmp_path),
                                    "--corruptions", "contrast"]).exit_code == 0
    first = (tmp_path / "digits-C" / "contrast.npy").stat().st_mtime_ns
    result = runner.invoke(cli.main, ["corrupt", "--data", "digits", "--out", str(tmp_path),
                                      "--corruptions", "contrast,brightness"])
    assert result.exit_code == 0 and "kept 1" in result.output
    assert (tmp_path / "digits-C" / "contrast.npy").stat().st_mtime_ns == first
    assert datasets.available_corruptions("digits", tmp_path) == ["brightness", "contrast"]


def test_a_users_folder_gets_its_own_c_folder(tmp_path):
    written = write_image_folder(tmp_path / "pets", n_per_class=4, split_layout=True, height=16, width=16)
    result = CliRunner().invoke(cli.main, ["corrupt", "--data", f"folder:{tmp_path / 'pets'}",
                                           "--out", str(tmp_path / "root"), "--corruptions", "brightness"])
    assert result.exit_code == 0, result.output
    loaded = datasets.load_corrupted(f"folder:{tmp_path / 'pets'}", tmp_path / "root", "brightness", 4, normalize=False)
    clean = datasets.load_dataset(f"folder:{tmp_path / 'pets'}", split="test", normalize=False)
    np.testing.assert_array_equal(stored_pixels(loaded), corrupt(stored_pixels(clean), "brightness", 4))
    assert written.folder.name == "pets" and (tmp_path / "root" / "pets-C" / "labels.npy").is_file()


def test_unknown_corruption_exits_2(tmp_path):
    result = CliRunner().invoke(cli.main, ["corrupt", "--data", "digits", "--out", str(tmp_path),
                                           "--corruptions", "snowstorm"])
    assert result.exit_code == 2 and "snowstorm" in result.output
    assert not (tmp_path / "digits-C").exists()
