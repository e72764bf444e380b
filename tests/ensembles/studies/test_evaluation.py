"""`sharpdiv evaluate` (ensembles.studies.evaluation) and the logit cache it fills.

The members are linear models (``mlp`` with no hidden layer) whose first three logits are, by
hand-set weights, the three channels of pixel [0, 0] after normalization. The CIFAR-10-C fixture
writes its corruption, severity and row into that pixel, so decoding the cached logits tells which
images a slice really holds. The other seven logits have random weights that differ per member,
so the members disagree and the diversity metrics are not trivial. Every stored number is
recomputed here from the cache files, read with safetensors directly, by the landscape functions.
Rows are tied to the data and weights they came from, and the data root a run was trained on is
found again."""
import shutil
import threading
import warnings

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
from click.testing import CliRunner

import cli
from ensembles.data import datasets
from ensembles.models.zoo import MLP, build
from ensembles.runs import logit_cache, run_folder
from ensembles.studies import evaluation
from landscape import calibration, diversity, ensemble
from landscape.errors import InputError

from disk_layouts import write_cifar10, write_cifar_c
from measured_runs import LINEAR_INPUT_SIZE, make_linear_run, member_accuracy, stored_rows
from tiny_runs import invoke

N_CLASSES = 10
SIDE = 32
PIXELS = SIDE * SIDE
CORRUPTIONS = ("gaussian_noise", "fog")   # positions 0 and 1 in the fixture's pixel code
N_PER_SEVERITY = 4
N_TEST, N_TRAIN = 10, 40
MEAN, STD = datasets.normalization("cifar10")
# Metric names of docs/results-table.md, written out here rather than taken from the module.
MEMBER = {"accuracy", "nll", "ece", "brier", "reliability/confidence", "reliability/accuracy", "reliability/count"}
ENSEMBLE_AT_K = {"accuracy", "nll", "ece", "brier", "der", "disagreement", "variance/logits", "variance/probs", "kl",
                 "eir", "mean_member_error"}
ENSEMBLE = ENSEMBLE_AT_K | {"reliability/confidence", "reliability/accuracy", "reliability/count"}


def pixel_reader(seed: int) -> MLP:
    """Logit c (c < 3) = channel c of pixel [0, 0], normalized; logits 3..9 random."""
    model = build("mlp", N_CLASSES, input_size=3 * PIXELS, hidden=[])
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        weight = torch.zeros(N_CLASSES, 3 * PIXELS)
        weight[3:] = torch.randn(N_CLASSES - 3, 3 * PIXELS, generator=generator) * 0.05
        for channel in range(3):
            weight[channel, channel * PIXELS] = 1.0   # flattened CHW: channel c, row 0, column 0
        model.layers[0].weight.copy_(weight)
        model.layers[0].bias.zero_()
    return model


def make_run(path, n_members=3):
    run_folder.create_run(path, dataset="cifar10", num_classes=N_CLASSES, model="mlp",
                    model_args={"input_size": 3 * PIXELS, "hidden": []}, seeds=list(range(n_members)))
    for index in range(n_members):
        run_folder.save_member(path, index, pixel_reader(seed=index))
    return path


@pytest.fixture
def setting(tmp_path):
    root = tmp_path / "data"
    clean = write_cifar10(root, n_train=N_TRAIN, n_test=N_TEST)
    corrupted = write_cifar_c(root, corruptions=CORRUPTIONS, n_per_severity=N_PER_SEVERITY)
    return make_run(tmp_path / "run"), root, clean, corrupted


@pytest.fixture
def forward_calls(monkeypatch):
    """Counts MLP forward calls (one per batch per member)."""
    calls = []
    original = MLP.forward

    def counted(self, x):
        calls.append(x.shape[0])
        return original(self, x)

    monkeypatch.setattr(MLP, "forward", counted)
    return calls


def evaluate(run, root, *options):
    result = CliRunner().invoke(cli.main, ["evaluate", str(run), "--data-path", str(root), "--device", "cpu", *options])
    return result


def cached(run, slice_name, member=None):
    folder = run / "logits" / "cifar10" / slice_name
    if member is None:
        return safetensors.torch.load_file(str(folder / "labels.safetensors"))["labels"]
    return safetensors.torch.load_file(str(folder / f"member-{member}.safetensors"))["logits"]


def decoded_pixels(logits):
    """Invert the normalization of the three pixel logits: the uint8 values of pixel [0, 0]."""
    values = (logits[:, :3].double() * torch.tensor(STD, dtype=torch.float64)
              + torch.tensor(MEAN, dtype=torch.float64)) * 255
    assert torch.allclose(values, values.round(), atol=1e-3)
    return values.round().long()


def results(run):
    table = run_folder.read_results(run, current_only=True)
    return table


def select(table, scope, metric, corruption=None, severity=None, split="test", **settings):
    rows = table[(table["scope"] == scope) & (table["metric"] == metric) & (table["split"] == split)]
    rows = rows[rows["corruption"].isna()] if corruption is None else rows[rows["corruption"] == corruption]
    rows = rows[rows["severity"].isna()] if severity is None else rows[rows["severity"] == severity]
    for name, value in settings.items():
        rows = rows[rows[name] == value]
    return rows


def parts(run):
    return sorted((run / "results").glob("part-*.parquet")) if (run / "results").exists() else []


# ----------------------------------------------------------------------------------------------


def test_every_slice_holds_its_own_images(setting):
    run, root, clean, corrupted = setting
    result = evaluate(run, root)
    assert result.exit_code == 0, result.output
    for position, corruption in enumerate(CORRUPTIONS):
        for severity in range(1, 6):
            name = f"{corruption}-{severity}"
            rows = corrupted.severity_rows(severity)
            assert torch.equal(cached(run, name), torch.from_numpy(corrupted.labels[rows]))
            for member in range(3):
                pixels = decoded_pixels(cached(run, name, member))
                assert (pixels[:, 0] == 10 * (position + 1) + severity).all(), name
                assert torch.equal(pixels[:, 1], torch.arange(N_PER_SEVERITY)), name
                assert (pixels[:, 2] == 255 - severity).all(), name
    assert torch.equal(decoded_pixels(cached(run, "test", 0)), torch.from_numpy(clean.test_images[:, 0, 0]).long())
    assert torch.equal(cached(run, "test"), torch.from_numpy(clean.test_labels))
    _, val_rows = datasets.fixed_split(N_TRAIN, (datasets.VALIDATION_FRACTION,))
    assert torch.equal(decoded_pixels(cached(run, "val", 2)), torch.from_numpy(clean.train_images[val_rows, 0, 0]).long())
    # The summary names the clean splits and every severity.
    assert "test (ID)" in result.output and all(f"OOD severity {s}" in result.output for s in range(1, 6))


def test_cached_logits_are_the_members_outputs(setting):
    run, root, _, corrupted = setting
    assert evaluate(run, root, "--corruptions", "fog", "--severities", "4").exit_code == 0
    images = datasets.load_corrupted("cifar10", root, "fog", 4)
    inputs = images.batch(np.arange(len(images)))
    for member in range(3):
        assert torch.allclose(cached(run, "fog-4", member), pixel_reader(member)(inputs), atol=1e-5)


def test_rows_follow_the_contract_and_equal_the_landscape_functions(setting):
    run, root, _, _ = setting
    assert evaluate(run, root, "--corruptions", "fog", "--severities", "2", "--n-bins", "5").exit_code == 0
    table = results(run)
    for slice_name, corruption, severity in (("test", None, None), ("fog-2", "fog", 2)):
        member_logits = torch.stack([cached(run, slice_name, m) for m in range(3)])
        labels = cached(run, slice_name)
        where = {"corruption": corruption, "severity": severity}

        def value(scope, metric, **settings):
            rows = select(table, scope, metric, **where, **settings)
            assert len(rows) == 1, (scope, metric, settings, slice_name)
            return rows["value"].iloc[0]

        for member in range(3):
            logits = member_logits[member]
            assert value(f"member-{member}", "accuracy") == pytest.approx(float(calibration.accuracy(logits, labels)))
            assert value(f"member-{member}", "nll") == pytest.approx(
                float(calibration.negative_log_likelihood(logits, labels)), rel=1e-6)
            assert value(f"member-{member}", "ece", n_bins=5) == pytest.approx(
                float(calibration.expected_calibration_error(logits, labels, 5)), rel=1e-6, abs=1e-9)
            assert value(f"member-{member}", "brier") == pytest.approx(float(calibration.brier_score(logits, labels)), rel=1e-6)
        for scope, k in (("ensemble", 3), ("ensemble@2", 2), ("ensemble@3", 3)):
            part = member_logits[:k]
            combined = ensemble.combine(part, "probs")
            expected = {
                "accuracy": calibration.accuracy(combined, labels),
                "nll": calibration.negative_log_likelihood(combined, labels),
                "ece": calibration.expected_calibration_error(combined, labels, 5),
                "brier": calibration.brier_score(combined, labels),
                "der": diversity.disagreement_error_ratio(part, labels),
                "disagreement": diversity.disagreement_matrix(part)[tuple(torch.triu_indices(k, k, 1))].mean(),
                "variance/logits": diversity.prediction_variance(part, "logits"),
                "variance/probs": diversity.prediction_variance(part, "probs"),
                "kl": diversity.pairwise_kl(part),
                "eir": ensemble.ensemble_improvement_rate(part, labels, "probs"),
                "mean_member_error": ensemble.mean_member_error(part, labels),
            }
            for metric, number in expected.items():
                settings = {"combine": "probs", **({"n_bins": 5} if metric == "ece" else {})}
                assert value(scope, metric, **settings) == pytest.approx(float(number), rel=1e-5, abs=1e-7), (scope, metric)
        bins = calibration.reliability_bins(ensemble.combine(member_logits, "probs"), labels, 5)
        for b in range(5):
            assert value("ensemble", "reliability/count", bin=b, n_bins=5, combine="probs") == int(bins.count[b])
        member_bins = calibration.reliability_bins(member_logits[1], labels, 5)
        counts = [value("member-1", "reliability/count", bin=b, n_bins=5) for b in range(5)]
        assert counts == member_bins.count.tolist() and sum(counts) == len(labels)
    # Exactly the documented metrics per scope, on every slice, with combine only on ensemble rows.
    for slice_name in ("val", "test"):
        on_slice = table[(table["split"] == slice_name) & table["corruption"].isna()]
        for scope, names in (("member-0", MEMBER), ("ensemble", ENSEMBLE), ("ensemble@2", ENSEMBLE_AT_K)):
            assert set(on_slice.loc[on_slice["scope"] == scope, "metric"]) == names, scope
    assert set(table["scope"]) == {"member-0", "member-1", "member-2", "ensemble", "ensemble@2", "ensemble@3"}
    assert table.loc[table["scope"].str.startswith("member"), "combine"].isna().all()
    assert (table.loc[table["scope"].str.startswith("ensemble"), "combine"] == "probs").all()
    assert set(table["dataset"]) == {"cifar10"}


def test_second_call_does_no_forward_pass_and_no_recomputation(setting, forward_calls, monkeypatch):
    run, root, _, _ = setting
    assert evaluate(run, root, "--severities", "1,5").exit_code == 0
    n_slices = 2 + len(CORRUPTIONS) * 2
    assert len(forward_calls) == 3 * n_slices          # every slice fits one batch of 512
    stored = parts(run)
    slices_measured = []
    original = evaluation.slice_rows
    monkeypatch.setattr(evaluation, "slice_rows", lambda *a, **k: slices_measured.append(1) or original(*a, **k))
    forward_calls.clear()
    result = evaluate(run, root, "--severities", "1,5")
    assert result.exit_code == 0, result.output
    assert forward_calls == [] and slices_measured == [] and parts(run) == stored
    assert f"{n_slices} were already stored" in result.output
    # Another combine mode reuses the cached logits: metrics, but no forward pass.
    result = evaluate(run, root, "--severities", "1,5", "--combine", "logits")
    assert result.exit_code == 0 and forward_calls == [] and len(slices_measured) == n_slices
    assert f"{n_slices} came from cached logits" in result.output


def test_an_interrupted_evaluation_resumes_from_the_cache(setting, forward_calls, monkeypatch):
    run, root, _, _ = setting
    original = logit_cache.compute_member_logits
    done = []

    def interrupted_after_three_slices(*args, **kwargs):
        if len(done) == 3:
            raise KeyboardInterrupt
        done.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(logit_cache, "compute_member_logits", interrupted_after_three_slices)
    with pytest.raises(KeyboardInterrupt):
        evaluation.evaluate_runs([run], root=root)
    assert parts(run) == []   # no partial rows
    monkeypatch.setattr(logit_cache, "compute_member_logits", original)
    forward_calls.clear()
    result = evaluate(run, root)
    assert result.exit_code == 0, result.output
    n_slices = 2 + len(CORRUPTIONS) * 5
    assert len(forward_calls) == 3 * (n_slices - 3)
    assert f"{n_slices - 3} needed forward passes, 3 came from cached logits" in result.output


def test_new_weights_recompute_only_that_member(setting, forward_calls):
    run, root, _, _ = setting
    assert evaluate(run, root, "--corruptions", "none").exit_code == 0
    run_folder.save_member(run, 1, pixel_reader(seed=11))
    forward_calls.clear()
    assert evaluate(run, root, "--corruptions", "none").exit_code == 0
    assert len(forward_calls) == 2   # member 1 on val and on test
    logits, labels = cached(run, "test", 1), cached(run, "test")
    assert torch.allclose(logits, pixel_reader(11)(datasets.load_dataset("cifar10", root, "test").batch(np.arange(N_TEST))),
                          atol=1e-5)
    after = select(results(run), "member-1", "accuracy")["value"]
    assert len(after) == 1 and after.iloc[0] == pytest.approx(float(calibration.accuracy(logits, labels)))


def test_a_cache_file_without_a_weights_digest_is_recomputed_with_a_warning(setting, forward_calls):
    run, root, _, _ = setting
    test_slice = logit_cache.DataSlice("cifar10", "test")
    file = run / "logits" / "cifar10" / "test" / "member-1.safetensors"
    members = {"members": [0, 1, 2], "n_classes": N_CLASSES, "root": root,
               "load_members": lambda indices: [pixel_reader(seed=index) for index in indices]}
    logit_cache.slice_logits(run, test_slice, **members)
    with safetensors.safe_open(str(file), framework="pt") as stored:
        metadata = stored.metadata()
    # An older or foreign file: plausible logits, but no record of the weights they came from.
    del metadata["weights"]
    safetensors.torch.save_file({"logits": torch.zeros(N_TEST, N_CLASSES)}, str(file), metadata=metadata)
    forward_calls.clear()
    with pytest.warns(UserWarning) as caught:
        again = logit_cache.slice_logits(run, test_slice, **members)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert str(file) in message and "no 'weights' digest" in message and "recomputing" in message
    assert again.computed == (1,) and len(forward_calls) == 1
    images = datasets.load_dataset("cifar10", root, "test").batch(np.arange(N_TEST))
    assert torch.allclose(again.member_logits[1], pixel_reader(seed=1)(images), atol=1e-5)
    # rewritten with its digest: read back silently, no forward pass
    forward_calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert logit_cache.slice_logits(run, test_slice, **members).computed == ()
        # new weights make a file stale: recomputed too, but that is the cache working, not worth a warning
        run_folder.save_member(run, 1, pixel_reader(seed=11))
        assert logit_cache.slice_logits(run, test_slice, **members).computed == (1,)
    assert len(forward_calls) == 1


def test_vote_writes_no_probability_metrics_and_says_so(setting):
    run, root, _, _ = setting
    result = evaluate(run, root, "--corruptions", "none", "--combine", "vote")
    assert result.exit_code == 0, result.output
    assert "not defined" in result.output
    table = results(run)
    ensemble_rows = table[table["scope"].str.startswith("ensemble")]
    assert not ensemble_rows["metric"].isin(["nll", "ece", "brier"]).any()
    assert not ensemble_rows["metric"].str.startswith("reliability/").any()
    member_logits = torch.stack([cached(run, "test", m) for m in range(3)])
    labels = cached(run, "test")
    accuracy = select(table, "ensemble", "accuracy", combine="vote")["value"].iloc[0]
    # Majority vote counted by hand, ties to the lowest class.
    counts = torch.nn.functional.one_hot(member_logits.argmax(-1), N_CLASSES).sum(0)
    majority = torch.tensor([min(c for c in range(N_CLASSES) if row[c] == row.max()) for row in counts])
    assert accuracy == pytest.approx(float((majority == labels).double().mean()))
    assert set(table.loc[table["scope"] == "member-0", "metric"]) == MEMBER


def overwrite(file, tensor):
    with safetensors.safe_open(str(file), framework="pt") as stored:
        metadata = stored.metadata()
    safetensors.torch.save_file({"logits": tensor}, str(file), metadata=metadata)


@pytest.mark.parametrize("damage, message", [
    (lambda logits: logits.index_fill(0, torch.tensor([2]), float("nan")), "NaN or Inf"),
    (lambda logits: logits[:, :-1].contiguous(), "shape"),
    (lambda logits: logits[:-1].contiguous(), "shape"),
])
def test_a_damaged_cache_file_is_a_clear_error_without_rows(setting, damage, message):
    run, root, _, _ = setting
    assert evaluate(run, root, "--corruptions", "none").exit_code == 0
    shutil.rmtree(run / "results")
    file = run / "logits" / "cifar10" / "test" / "member-1.safetensors"
    overwrite(file, damage(cached(run, "test", 1)))
    result = evaluate(run, root, "--corruptions", "none")
    assert result.exit_code == 2
    assert message in result.output and str(file) in result.output and "delete" in result.output
    assert parts(run) == []


def test_foreign_labels_are_read_again_and_a_dataset_with_other_classes_is_an_error(setting, tmp_path):
    run, root, _, _ = setting
    assert evaluate(run, root, "--corruptions", "none").exit_code == 0
    shutil.rmtree(run / "results")
    file = run / "logits" / "cifar10" / "val" / "labels.safetensors"
    # Labels that do not record the data they came from are not trusted: they are read again.
    safetensors.torch.save_file({"labels": torch.full((4,), 12, dtype=torch.long)}, str(file))
    result = evaluate(run, root, "--corruptions", "none")
    assert result.exit_code == 0, result.output
    assert torch.equal(safetensors.torch.load_file(str(file))["labels"],
                       datasets.load_dataset("cifar10", root, "val").targets)
    # A 3-class run evaluated on 10-class CIFAR-10.
    other = tmp_path / "three"
    run_folder.create_run(other, dataset="cifar10", num_classes=3, model="mlp", model_args={"input_size": 3 * PIXELS, "hidden": []})
    run_folder.save_member(other, 0, build("mlp", 3, input_size=3 * PIXELS, hidden=[]))
    result = evaluate(other, root, "--corruptions", "none")
    assert result.exit_code == 2 and "10 classes" in result.output and "3" in result.output
    assert parts(other) == []


def test_members_with_different_numbers_of_classes_are_an_error(setting):
    run, root, _, _ = setting
    run_folder.save_member(run, 1, build("mlp", 5, input_size=3 * PIXELS, hidden=[]))
    result = evaluate(run, root, "--corruptions", "none")
    assert result.exit_code == 2 and "member 1" in result.output
    assert parts(run) == []


def test_two_evaluations_at_once_both_keep_their_rows(setting, forward_calls):
    run, root, _, _ = setting
    barrier = threading.Barrier(2)
    errors = []

    def evaluate_with(combine):
        try:
            barrier.wait()
            evaluation.evaluate_runs([run], root=root, corruptions="fog", severities=[1, 3], combine=combine)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=evaluate_with, args=(mode,)) for mode in ("probs", "logits")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    table = results(run)
    for mode in ("probs", "logits"):
        assert len(select(table, "ensemble", "accuracy", combine=mode)) == 1
        assert len(select(table, "ensemble", "der", "fog", 3, combine=mode)) == 1
    # Both wrote the same cache files; what is left is complete and current.
    forward_calls.clear()
    result = evaluate(run, root, "--corruptions", "fog", "--severities", "1,3", "--combine", "vote")
    assert result.exit_code == 0 and forward_calls == []
    assert not list(run.glob("logits/**/.*.tmp"))


def test_planned_measurements_are_exactly_the_rows_written():
    generator = torch.Generator().manual_seed(0)
    where = logit_cache.DataSlice("cifar10", "test", "fog", 3)
    for n_members in (1, 2, 3):
        for combine in ("probs", "logits", "vote"):
            member_logits = torch.randn(n_members, 20, 4, generator=generator, dtype=torch.float64)
            labels = torch.randint(0, 4, (20,), generator=generator)
            rows = evaluation.slice_rows(member_logits, labels, where, member_indices=[0, 2, 5][:n_members],
                                         combine=combine, n_bins=4)
            written = sorted((r["scope"], r["metric"], run_folder.canonical_settings(
                {k: v for k, v in r.items() if k not in run_folder.RESULT_COLUMNS})) for r in rows)
            planned = sorted((scope, metric, run_folder.canonical_settings(settings)) for scope, metric, settings
                             in evaluation.planned_measurements([0, 2, 5][:n_members], combine, 4))
            assert written == planned
            assert len(set(written)) == len(written)


def test_bad_options_are_clear_errors(setting):
    run, root, _, _ = setting
    result = evaluate(run, root, "--corruptions", "no_such_corruption")
    assert result.exit_code == 2 and "no_such_corruption" in result.output
    result = evaluate(run, root, "--severities", "0-2")
    assert result.exit_code == 2 and "severity" in result.output
    assert parts(run) == []


# ----------------------------------------------------------------------------------------------
# what --corruptions finds on disk, checked before any forward pass


def test_all_without_a_corrupted_folder_says_so_and_how_to_get_it(tmp_path, forward_calls):
    root = tmp_path / "data"
    write_cifar10(root, n_train=N_TRAIN, n_test=N_TEST)   # no CIFAR-10-C next to it
    run = make_run(tmp_path / "run")
    result = evaluate(run, root)
    assert result.exit_code == 0, result.output
    looked_in = str(root / "CIFAR-10-C")
    # On stderr as a note, and in the summary on stdout.
    note_lines = [line for line in result.stderr.splitlines() if line.startswith("sharpdiv: note:")]
    assert len(note_lines) == 1
    assert looked_in in note_lines[0] and "does not exist" in note_lines[0]
    assert "zenodo.org/record/2535967" in note_lines[0]                  # where CIFAR-10-C is published
    assert f"sharpdiv corrupt --data cifar10 --data-path {root} --out {root}" in note_lines[0]
    assert "only val and test" in note_lines[0]
    assert any(line.strip().startswith("note:") and looked_in in line for line in result.stdout.splitlines())
    assert len(forward_calls) == 3 * 2                                   # val and test, one batch per member
    # "none" asks for no corrupted data: no note.
    quiet = evaluate(run, root, "--corruptions", "none")
    assert quiet.exit_code == 0 and "note" not in quiet.output


def test_the_note_names_the_digits_command_and_a_folder_without_standard_corruptions(tmp_path):
    note = evaluation.missing_corruptions_note("digits", tmp_path)
    assert str(tmp_path / "digits-C") in note
    assert f"sharpdiv corrupt --data digits --data-path {tmp_path} --out {tmp_path}`" in note
    # A -C folder holding only an extra corruption: "all" (the 15 standard ones) still finds none.
    write_cifar_c(tmp_path, corruptions=("saturate",), n_per_severity=1)
    note = evaluation.missing_corruptions_note("cifar10", tmp_path)
    assert "none of the 15 standard corruptions" in note and "saturate" in note
    assert [s.name for s in evaluation.evaluation_slices("cifar10", tmp_path, "all")] == ["val", "test"]
    write_cifar_c(tmp_path, corruptions=("fog",), n_per_severity=1)
    assert evaluation.missing_corruptions_note("cifar10", tmp_path) is None


def test_named_corruptions_are_checked_before_any_forward_pass(setting, forward_calls, tmp_path):
    run, root, _, _ = setting
    result = evaluate(run, root, "--corruptions", "fog,frost_bite")
    assert result.exit_code == 2
    assert "unknown corruption 'frost_bite'" in result.output and "did you mean frost?" in result.output
    # frost is a known corruption, just not in this CIFAR-10-C folder.
    result = evaluate(run, root, "--corruptions", "frost")
    assert result.exit_code == 2 and "frost not found in" in result.output and "gaussian_noise, fog" in result.output
    # Named corruptions without a -C folder: an error that says where it looked (not a silent skip).
    bare = tmp_path / "bare"
    write_cifar10(bare, n_train=N_TRAIN, n_test=N_TEST)
    result = evaluate(run, bare, "--corruptions", "fog")
    assert result.exit_code == 2 and f"{bare / 'CIFAR-10-C'} does not exist" in result.output
    assert forward_calls == [] and not (run / "logits").exists() and parts(run) == []


def test_every_run_is_checked_before_the_first_forward_pass(setting, forward_calls, tmp_path):
    run, root, _, _ = setting
    # A second run on CIFAR-100, whose -C folder is not under root: nothing may be computed for the first.
    other = tmp_path / "other"
    run_folder.create_run(other, dataset="cifar100", num_classes=100, model="mlp",
                    model_args={"input_size": 3 * PIXELS, "hidden": []}, seeds=[0])
    run_folder.save_member(other, 0, build("mlp", 100, input_size=3 * PIXELS, hidden=[]))
    result = CliRunner().invoke(cli.main, ["evaluate", str(run), str(other), "--data-path", str(root),
                                           "--corruptions", "fog", "--device", "cpu"])
    assert result.exit_code == 2 and str(root / "CIFAR-100-C") in result.output
    assert forward_calls == [] and not (run / "logits").exists()


def test_the_train_split_is_evaluated_only_when_asked_and_without_augmentation():
    default = evaluation.evaluation_slices("digits", corruptions="none")
    assert [s.split for s in default] == ["val", "test"]
    chosen = evaluation.evaluation_slices("digits", corruptions="none", splits="train,val,test")
    assert [s.split for s in chosen] == ["train", "val", "test"]
    assert chosen[0].load().augment is False
    with pytest.raises(InputError, match="--splits"):
        evaluation.evaluation_slices("digits", corruptions="none", splits="train,holdout")


# ----------------------------------------------------------------------------------------------
# data identity


def test_digits_c_regenerated_with_another_seed_is_evaluated_again(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    for root, seed in ((old, 0), (new, 1)):
        result = invoke("corrupt", "--data", "digits", "--out", root, "--corruptions", "gaussian_noise", "--seed", seed)
        assert result.exit_code == 0, result.output
    run = make_linear_run(tmp_path / "run", "digits")
    first = invoke("evaluate", run, "--data-path", old, "--corruptions", "gaussian_noise", "--severities", "5")
    assert first.exit_code == 0, first.output

    second = invoke("evaluate", run, "--data-path", new, "--corruptions", "gaussian_noise", "--severities", "5")
    assert second.exit_code == 0, second.output
    # val and test are the same digits: stored; the regenerated corruption is not.
    assert "1 needed forward passes, 0 came from cached logits, 2 were already stored" in second.output

    images = datasets.load_corrupted("digits", new, "gaussian_noise", 5)
    digest = datasets.data_digest("digits", new, corruption="gaussian_noise", severity=5)
    assert digest != datasets.data_digest("digits", old, corruption="gaussian_noise", severity=5)
    rows = stored_rows(run, scope="member-1", metric="accuracy", corruption="gaussian_noise")
    assert rows["data"].tolist() == [digest]  # the old data's row is superseded, hence stale
    assert rows["value"].tolist() == [member_accuracy(run, 1, images)]
    slice_ = logit_cache.DataSlice("digits", "test", "gaussian_noise", 5)
    with safetensors.safe_open(str(logit_cache.member_logits_path(run, slice_, 1)), framework="pt") as cached:
        assert cached.metadata()["data"] == digest
        model = run_folder.load_run(run).members[1]
        with torch.no_grad():
            torch.testing.assert_close(cached.get_tensor("logits"), model(images.batch(np.arange(len(images)))))


def test_a_member_replaced_during_an_evaluation_stores_no_rows(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "data", n_train=20, n_test=10, seed=0)
    run = make_linear_run(tmp_path / "run", "cifar10")
    original = logit_cache.compute_member_logits

    def replacing(*arguments, **options):
        torch.manual_seed(99)
        run_folder.save_member(run, 1, build("mlp", 10, input_size=LINEAR_INPUT_SIZE, hidden=[]))
        monkeypatch.setattr(logit_cache, "compute_member_logits", original)
        return original(*arguments, **options)

    monkeypatch.setattr(logit_cache, "compute_member_logits", replacing)
    result = invoke("evaluate", run, "--data-path", tmp_path / "data", "--corruptions", "none")
    assert result.exit_code == 2, result.output
    assert "changed during the" in result.output and "member-1.safetensors" in result.output
    assert run_folder.read_results(run).empty
    # The run is fine afterwards: the new weights are evaluated, the logits of the old ones are not reused.
    again = invoke("evaluate", run, "--data-path", tmp_path / "data", "--corruptions", "none")
    assert again.exit_code == 0, again.output
    test = datasets.load_dataset("cifar10", tmp_path / "data", "test")
    assert stored_rows(run, scope="member-1", metric="accuracy", split="test")["value"].tolist() == \
        [member_accuracy(run, 1, test)]


# ----------------------------------------------------------------------------------------------
# the data a run was trained on


def test_evaluate_finds_the_data_the_run_was_trained_on(tmp_path, monkeypatch):
    from disk_layouts import write_cifar10, write_cifar_c
    from ensembles.models.zoo import build

    root = tmp_path / "own-data"  # like a quickstart folder's data/, not the default root
    write_cifar10(root, n_train=20, n_test=8)
    write_cifar_c(root, corruptions=("fog",), n_per_severity=2)
    monkeypatch.chdir(tmp_path)  # whatever the default root is, it holds no data here
    monkeypatch.setenv("SHARPDIV_DATA", str(tmp_path / "empty"))
    run = tmp_path / "run"
    run_folder.create_run(run, dataset="cifar10", num_classes=10, model="mlp",
                          model_args={"input_size": 3 * 32 * 32, "hidden": []}, seeds=[0, 1], data_path=str(root))
    for index in range(2):
        run_folder.save_member(run, index, build("mlp", 10, input_size=3 * 32 * 32, hidden=[]))
    result = CliRunner().invoke(cli.main, ["evaluate", str(run), "--device", "cpu", "--severities", "1"])
    assert result.exit_code == 0, result.output
    rows = run_folder.read_results(run)
    assert set(rows["corruption"].dropna()) == {"fog"}
    # a recorded root that is gone falls back to the default, and says so
    from ensembles.studies import evaluation

    config = {"dataset": "cifar10", "data_path": str(tmp_path / "moved")}
    assert run_folder.data_root(config, None, None)[0] is None and "is gone" in run_folder.data_root(config, None, None)[1]
    assert run_folder.data_root(config, "/given", None) == ("/given", None)
