"""Writing a -C folder (ensembles.data.corruptions.write_corrupted_dataset, `sharpdiv corrupt`):
`load_corrupted` reads it back as the corruption of the clean test split, severity by severity, for
digits and for a user's own image folder; a folder of another seed or of unknown origin is refused."""
import json

import numpy as np
import torch
from click.testing import CliRunner

import cli
from ensembles.data import datasets
from ensembles.data.corruptions import corrupt

from disk_layouts import write_image_folder
from tiny_runs import invoke


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


# ----------------------------------------------------------------------------------------------
# one generation per -C folder


def test_corrupt_refuses_to_mix_seeds_in_one_folder(tmp_path):
    folder = tmp_path / "digits-C"
    assert invoke("corrupt", "--data", "digits", "--out", tmp_path, "--corruptions", "gaussian_noise",
                  "--seed", 0).exit_code == 0
    before = (folder / "gaussian_noise.npy").read_bytes()
    result = invoke("corrupt", "--data", "digits", "--out", tmp_path, "--corruptions", "gaussian_noise,shot_noise",
                    "--seed", 1)
    assert result.exit_code == 2 and "seed 0" in result.output and "--force" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert (folder / "gaussian_noise.npy").read_bytes() == before and not (folder / "shot_noise.npy").exists()
    assert json.loads((folder / "sharpdiv-corrupt.json").read_text())["seed"] == 0

    # The same settings resume; --force regenerates everything with the new seed.
    same = invoke("corrupt", "--data", "digits", "--out", tmp_path, "--corruptions", "gaussian_noise,shot_noise",
                  "--seed", 0)
    assert same.exit_code == 0 and "kept 1" in same.output, same.output
    forced = invoke("corrupt", "--data", "digits", "--out", tmp_path, "--corruptions", "gaussian_noise",
                    "--seed", 1, "--force")
    assert forced.exit_code == 0, forced.output
    assert datasets.available_corruptions("digits", tmp_path) == ["gaussian_noise"]  # no shot_noise of seed 0 left
    clean = datasets.load_dataset("digits", split="test", normalize=False)
    pixels = (clean.batch(np.arange(len(clean))) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    loaded = datasets.load_corrupted("digits", tmp_path, "gaussian_noise", 2, normalize=False)
    stored_pixels = (loaded.batch(np.arange(len(loaded))) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(stored_pixels, corrupt(pixels, "gaussian_noise", 2, seed=1))


def test_corrupt_refuses_a_folder_of_unknown_origin(tmp_path):
    folder = tmp_path / "digits-C"
    folder.mkdir()
    np.save(folder / "gaussian_noise.npy", np.zeros((5, 32, 32, 3), dtype=np.uint8))
    result = invoke("corrupt", "--data", "digits", "--out", tmp_path, "--corruptions", "fog")
    assert result.exit_code == 2 and "no record" in result.output, result.output
    assert not (folder / "fog.npy").exists() and not (folder / "labels.npy").exists()
