"""The theory simulation lives in ensembles/studies, the report only reads its table;
the quickstart summary's β fit lives in reports; the augmentation draws from the member's generator."""
import ast
from pathlib import Path

import pandas as pd
import torch
import pytest

from landscape.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


# --- theory: the study computes, the report draws -------------------------------------------------

def test_reports_theory_does_not_simulate():
    assert "landscape.theory" not in _imported_modules(ROOT / "reports" / "theory.py")


def test_the_figure_is_drawn_from_the_stored_table_without_simulating(tmp_path, monkeypatch):
    import matplotlib

    from ensembles.studies import theory as study
    from reports.theory import draw_theory_figure, write_theory_figure

    stored = study.write_theory_table("2", tmp_path, quick=True, seed=1)
    assert stored == tmp_path / "theory-figure-2.csv"

    def refuse(*args, **kwargs):
        raise AssertionError("the report simulated")

    monkeypatch.setattr(study, "simulate_tradeoff", refuse)
    monkeypatch.setattr(study, "draw_problems", refuse)
    png, svg = write_theory_figure(stored)
    assert png == tmp_path / "theory-figure-2.png" and png.stat().st_size > 0
    monkeypatch.undo()
    # the same SVG as drawing the freshly computed table: nothing is lost in the stored CSV
    direct = tmp_path / "direct.svg"
    with matplotlib.rc_context({"svg.hashsalt": "sharpdiv-theory"}):
        draw_theory_figure(study.theory_table("2", quick=True, seed=1)).savefig(direct, metadata={"Date": None})
    assert direct.read_bytes() == svg.read_bytes()


def test_a_table_that_is_not_a_theory_table_is_refused(tmp_path):
    from reports.theory import diversity_at_matched_sharpness, write_theory_figure

    with pytest.raises(InputError, match="is not a theory table"):
        write_theory_figure(tmp_path / "missing.csv")
    other = tmp_path / "other.csv"
    pd.DataFrame({"a": [1]}).to_csv(other, index=False)
    with pytest.raises(InputError, match="missing figure"):
        diversity_at_matched_sharpness(other)
    assert not (tmp_path / "other.png").exists()


def test_the_study_refuses_a_file_as_output_folder(tmp_path):
    from ensembles.studies.theory import write_theory_table

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        write_theory_table("2", blocker, quick=True)


# --- the quickstart summary is a report; cli.py only prints it ---------------------------------------

def test_cli_fits_nothing():
    source = (ROOT / "cli.py").read_text()
    assert "fits_by_group" not in source and "fit_beta" not in source and "tradeoff_points" not in source


def test_quickstart_summary_from_run_folders(tmp_path):
    from results_fixtures import STUDY_LAWS, write_study

    from reports.tables import quickstart_summary

    lines = quickstart_summary(write_study(tmp_path))
    # sam: members' mean sharpness 0.25·2^r over r = 0, 1, 2; DER = 0.5·s^0.6 on every corrupted slice
    sam_sharpness = [0.25 * 2 ** r for r in range(3)]
    sam_der = sum(0.5 * s ** 0.6 for s in sam_sharpness) / 3
    assert lines[0] == (f"         sam: ensemble accuracy 94.5% clean, 82.0% corrupted; DER (corrupted) {sam_der:.3g}; "
                        f"sharpness {sum(sam_sharpness) / 3:.3g} (3 ensembles)")
    assert [line.split(":")[0].strip() for line in lines[:3]] == ["sam", "sgd", "sharpbalance"]
    # exact power laws: no scatter, so a zero-width t interval, but 3 ensembles cannot show that
    expected = "; ".join(f"{method} {beta:.2f} [{beta:.2f}, {beta:.2f}] (n = 3 < 5: too few ensembles to tell "
                         "a slope from noise)" for method, (scale, beta) in STUDY_LAWS.items())
    assert lines[3] == "β, slope of log DER on log sharpness [95% t interval]: " + expected


def test_quickstart_summary_says_when_beta_cannot_be_fitted(tmp_path):
    from results_fixtures import write_study

    from reports.tables import quickstart_summary

    paths = [path for path in write_study(tmp_path) if path.name.endswith(("-0", "-1"))]  # 2 ensembles per method
    lines = quickstart_summary(paths)
    assert lines[-1] == "β, slope of log DER on log sharpness [95% t interval]: not fitted (a group needs 3 ensembles)"
    assert all("(2 ensembles)" in line for line in lines[:-1])


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


def _weights(run):
    import safetensors.torch

    return [safetensors.torch.load_file(str(path)) for path in sorted(run.glob("member-*.safetensors"))]


# Two members on 96 digits (augmented: random crops and flips), SAM so both steps see the batch twice.
SMALL = dict(dataset="digits", model="small_cnn", width=4, method="sam", rho=0.1, seeds=(3, 5), epochs=2, lr=0.05,
             batch_size=32, train_samples=96)


def test_weights_are_bit_identical_to_the_global_rng_swap(tmp_path, monkeypatch):
    from ensembles.data import datasets
    from ensembles.training import trainer

    settings = trainer.TrainingSettings(**SMALL)
    assert datasets.load_dataset("digits", None, "train", augment=True).augment
    trainer.train(tmp_path / "new", settings)

    # The old path: crops drawn from the global RNG, swapped to the member's stream per epoch.
    original_crop, original_epoch = datasets.random_crop_and_flip, trainer._Member.train_epoch

    def crop_from_global(images, padding=datasets.CROP_PADDING, generator=None):
        return original_crop(images, padding)

    def epoch_with_swap(member, data, sets):
        outside = torch.get_rng_state()
        torch.set_rng_state(member.augmentation.get_state())
        try:
            return original_epoch(member, data, sets)
        finally:
            member.augmentation.set_state(torch.get_rng_state())
            torch.set_rng_state(outside)

    monkeypatch.setattr(datasets, "random_crop_and_flip", crop_from_global)
    monkeypatch.setattr(trainer._Member, "train_epoch", epoch_with_swap)
    trainer.train(tmp_path / "old", settings)
    monkeypatch.undo()

    new, old = _weights(tmp_path / "new"), _weights(tmp_path / "old")
    assert len(new) == 2
    for a, b in zip(new, old):
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    for a, b in zip(sorted((tmp_path / "new" / "train").glob("member-*.pt")),
                    sorted((tmp_path / "old" / "train").glob("member-*.pt"))):  # the streams end alike
        assert torch.equal(torch.load(a, weights_only=True)["augmentation"],
                           torch.load(b, weights_only=True)["augmentation"])


def test_training_neither_reads_nor_moves_the_global_rng(tmp_path, monkeypatch):
    from ensembles.training import trainer

    settings = trainer.TrainingSettings(**{**SMALL, "epochs": 1})
    original_epoch = trainer._Member.train_epoch
    touched = []

    def epoch_watched(member, data, sets):
        with monkeypatch.context() as inside:
            inside.setattr(torch, "set_rng_state", lambda state: touched.append("set"))
            inside.setattr(torch, "get_rng_state", lambda: touched.append("get"))
            before = torch.random.default_generator.get_state()
            row = original_epoch(member, data, sets)
            assert torch.equal(before, torch.random.default_generator.get_state()), "the epoch drew globally"
        return row

    monkeypatch.setattr(trainer._Member, "train_epoch", epoch_watched)
    trainer.train(tmp_path / "run", settings)
    assert touched == []
