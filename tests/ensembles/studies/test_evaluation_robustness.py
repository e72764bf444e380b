"""`sharpdiv robustness`: AutoAttack on each member and on the ensemble, end to end.

The members are linear models on a small image folder (4 classes, 8x8 images), ``z = W (x − mean)/std`` for
``x ∈ [0, 1]``. For such a model the strongest l∞ attack has a closed form: for each wrong class
``k`` the margin ``z_y − z_k`` is linear in ``x``, so its minimum over the box-clipped ball is reached
coordinate by coordinate at ``δ_i = clip(x_i + ε sign(d_i), 0, 1) − x_i`` with
``d = (w_k − w_y)/std``. The weights are matched filters of the first examples with different
strengths, so the critical radii spread out and ε is chosen away from every one of them (a correct
attack must then reproduce the closed-form count exactly; here APGD-CE alone misses one point that
APGD-T finds, which is why AutoAttack runs both). The command must attack inputs in
[0, 1] with the normalization inside the model: a wrong range or a missing normalization changes
the answer. A repeated call attacks nothing.
"""
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import cli
from ensembles.data import datasets
from ensembles.models.zoo import build
from ensembles.runs import run_folder
from landscape import robustness
from landscape.ensemble import combine as combine_members

from disk_layouts import write_image_folder
from tiny_runs import invoke

N_CLASSES = 4   # few classes: the targeted attack tries C − 1 targets
SIDE = 8
INPUTS = 3 * SIDE * SIDE
N_EXAMPLES = 6
EPS = 20 / 255
STRENGTHS = torch.tensor([0.5, 1.0, 1.5, 2.0, 2.5, 3.0], dtype=torch.float64)


def matched_filter(images, labels, seed):
    """``W = Σ_n a_n e_{y_n} x̃_nᵀ / d`` plus small member-specific noise: each example is classified
    correctly with a margin proportional to its strength ``a_n``."""
    normalized = images.batch(np.arange(N_EXAMPLES)).double().flatten(1)
    weight = (torch.nn.functional.one_hot(labels[:N_EXAMPLES], N_CLASSES).double().T * STRENGTHS) @ normalized / INPUTS
    noise = torch.randn(N_CLASSES, INPUTS, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    model = build("mlp", N_CLASSES, input_size=INPUTS, hidden=[])
    with torch.no_grad():
        model.layers[0].weight.copy_(weight + 0.002 * noise)
        model.layers[0].bias.zero_()
    return model


def make_run(path, dataset, n_members=2):
    run_folder.create_run(path, dataset=dataset, num_classes=N_CLASSES, model="mlp",
                    model_args={"input_size": INPUTS, "hidden": []}, seeds=list(range(n_members)))
    images = datasets.load_dataset(dataset, None, "test")
    for index in range(n_members):
        run_folder.save_member(path, index, matched_filter(images, images.targets, seed=index))
    return path


def worst_margin(weight, mean, std, x, label, eps):
    """``min_{k≠y} min_δ (z_y − z_k)(x + δ)`` over ``‖δ‖∞ ≤ ε``, ``x + δ ∈ [0, 1]`` (float64, closed form)."""
    logits = weight @ ((x - mean) / std)
    slopes = (weight - weight[label]) / std                # d(z_k − z_y)/dx for every k
    delta = np.clip(x + eps * np.sign(slopes), 0, 1) - x
    margins = logits[label] - logits - (slopes * delta).sum(axis=1)
    margins[label] = np.inf
    return margins.min()


def critical_radius(weight, mean, std, x, label):
    """The smallest ε at which the closed-form attack succeeds (0 if misclassified), by bisection."""
    if worst_margin(weight, mean, std, x, label, 0.0) <= 0:
        return 0.0
    low, high = 0.0, 1.0
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (middle, high) if worst_margin(weight, mean, std, x, label, middle) > 0 else (low, middle)
    return low


@pytest.fixture
def setting(tmp_path):
    write_image_folder(tmp_path / "images", classes=("a", "b", "c", "d"), n_per_class=3, split_layout=True,
                       height=SIDE, width=SIDE)
    dataset = f"folder:{tmp_path / 'images'}"
    return make_run(tmp_path / "run", dataset), dataset


def attack(run, *options):
    return CliRunner().invoke(cli.main, [
        "robustness", str(run), "--norm", "linf", "--eps", str(EPS),
        "--n-examples", str(N_EXAMPLES), "--seed", "3", "--device", "cpu", *options])


def test_rows_for_members_and_the_ensemble(setting, monkeypatch):
    run, dataset = setting
    result = attack(run)
    assert result.exit_code == 0, result.output
    table = run_folder.read_results(run, current_only=True)
    assert set(table["scope"]) == {"member-0", "member-1", "ensemble"}
    assert set(table["metric"]) == {"robust_accuracy", "clean_accuracy"}
    assert len(table) == 6
    assert (table["norm"] == "linf").all() and np.allclose(table["eps"], EPS)
    assert (table["attacks"] == "apgd-ce,apgd-t").all() and (table["n_examples"] == N_EXAMPLES).all()
    assert (table["seed"] == 3).all()
    assert (table["dataset"] == dataset).all() and (table["split"] == "test").all()
    assert table.loc[table["scope"] == "ensemble", "combine"].eq("probs").all()
    assert table.loc[table["scope"] != "ensemble", "combine"].isna().all()

    def value(scope, metric):
        return table.loc[(table["scope"] == scope) & (table["metric"] == metric), "value"].item()

    # Clean accuracy by hand: the first N normalized test images through the members.
    normalized = datasets.load_dataset(dataset, None, "test")
    inputs, labels = normalized.batch(np.arange(N_EXAMPLES)), normalized.targets[:N_EXAMPLES]
    run_members = run_folder.load_run(run).members
    with torch.no_grad():
        member_logits = torch.stack([member(inputs) for member in run_members])
    for index in range(2):
        correct = (member_logits[index].argmax(-1) == labels).double().mean().item()
        assert value(f"member-{index}", "clean_accuracy") == pytest.approx(correct)
    ensemble_correct = (combine_members(member_logits, "probs").argmax(-1) == labels).double().mean().item()
    assert value("ensemble", "clean_accuracy") == pytest.approx(ensemble_correct)
    # Members' robust accuracy: the closed form on the [0, 1] images.
    raw = datasets.load_dataset(dataset, None, "test", normalize=False)
    unit_inputs = raw.batch(np.arange(N_EXAMPLES)).double().flatten(1).numpy()
    mean, std = np.repeat(raw.mean, SIDE * SIDE), np.repeat(raw.std, SIDE * SIDE)
    for index in range(2):
        weight = run_members[index].layers[0].weight.detach().double().numpy()
        radii = np.array([critical_radius(weight, mean, std, x, int(label)) for x, label in zip(unit_inputs, labels)])
        assert np.all(np.abs(radii - EPS) > 0.1 * EPS)      # no point is borderline
        robust = (radii > EPS).mean()
        assert 0 < robust < 1                               # both outcomes occur
        assert value(f"member-{index}", "robust_accuracy") == pytest.approx(robust)
    # The ensemble (no closed form): attacked as one model of its combined log-probabilities.
    direct = robustness.robust_accuracy(
        robustness.EnsembleClassifier(run_members, "probs", raw.mean, raw.std),
        raw.batch(np.arange(N_EXAMPLES)), labels, eps=EPS, norm="Linf", seed=3)
    assert value("ensemble", "robust_accuracy") == pytest.approx(direct.robust_accuracy)
    assert value("ensemble", "robust_accuracy") <= value("ensemble", "clean_accuracy")
    assert "ensemble" in result.output

    # Stored rows are not attacked again.
    calls = []
    monkeypatch.setattr(robustness, "robust_accuracy", lambda *a, **k: calls.append(1))
    again = attack(run)
    assert again.exit_code == 0 and calls == []
    assert "0 of 3 scopes attacked now" in again.output


def test_bad_requests_fail_without_rows(setting):
    run, _ = setting
    assert attack(run, "--combine", "vote").exit_code == 2   # a vote has no gradient
    result = CliRunner().invoke(cli.main, ["robustness", str(run), "--norm", "linf",
                                           "--eps", "0.01", "--n-examples", "99", "--attacks", "apgd-ce"])
    assert result.exit_code == 2 and "at most 12" in result.output
    assert not (run / "results").exists()


# ----------------------------------------------------------------------------------------------
# radius and attack names: checked against the input box before any data or model is loaded


@pytest.fixture
def loads(monkeypatch):
    """Records every dataset the robustness command loads."""
    loaded = []
    original = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: loaded.append(a) or original(*a, **k))
    return loaded


def fake_attack(calls):
    """Stands in for AutoAttack where only the accepted radius matters."""
    def attacked(model, inputs, labels, *, eps, **options):
        calls.append(eps)
        return robustness.RobustnessResult(1.0, 0.5, None, None, options["norm"], eps, (), "custom", 0, 1, 1, 1)
    return attacked


def test_an_linf_radius_above_one_is_refused_with_the_reason(setting, loads):
    run, _ = setting
    result = attack(run, "--eps", "3")   # the last --eps wins: 3, as if pixels ran 0..255
    assert result.exit_code == 2
    assert "larger than 1" in result.output and "3/255 = 0.01176" in result.output
    assert loads == [] and not (run / "results").exists()


def test_an_l2_radius_is_bounded_by_the_diameter_of_the_input_box(setting, loads, monkeypatch):
    run, _ = setting
    diameter = float(np.sqrt(INPUTS))    # ‖1 − 0‖₂ over the 3·8·8 pixels of the box [0, 1]^d
    calls = []
    monkeypatch.setattr(robustness, "robust_accuracy", fake_attack(calls))
    above = CliRunner().invoke(cli.main, ["robustness", str(run), "--norm", "l2", "--eps", str(diameter * 1.001),
                                          "--n-examples", "2", "--device", "cpu"])
    assert above.exit_code == 2 and f"√{INPUTS}" in above.output and f"{diameter:.4g}" in above.output
    assert calls == [] and not (run / "results").exists()
    # l2 radii above 1 are common (0.5 to 2 on CIFAR-10) and legitimate, up to the diameter itself.
    for eps in (2.0, diameter):
        result = CliRunner().invoke(cli.main, ["robustness", str(run), "--norm", "l2", "--eps", repr(eps),
                                               "--n-examples", "2", "--device", "cpu"])
        assert result.exit_code == 0, result.output
    assert calls == [2.0] * 3 + [diameter] * 3    # two members and the ensemble, each time
    assert loads != []                            # (so the fixture does see the loads the refusals avoid)


def test_an_unknown_attack_is_named_with_the_choices(setting, loads):
    run, _ = setting
    result = attack(run, "--attacks", "apgd-ce,pgd")
    assert result.exit_code == 2
    assert "unknown attack 'pgd'; choose from apgd-ce, apgd-t, apgd-dlr, fab, fab-t, square" in result.output
    assert "('apgd-ce'" not in result.output    # no Python tuple
    assert loads == [] and not (run / "results").exists()


ONE_TINY_EPOCH = ("--epochs", 1, "--seeds", 1, "--train-samples", 16, "--batch-size", 8, "--device", "cpu")


def ok(*arguments):
    result = invoke(*arguments)
    assert result.exit_code == 0, result.output
    return result


def test_robustness_feeds_pixels_to_a_model_that_normalises_itself(tmp_path):
    """AutoAttack's ε is in [0, 1] pixel space: with the normalization inside the model, the
    attacked model's clean accuracy is the member's own on raw pixels (not normalised twice)."""
    run = tmp_path / "run"
    ok("train", "--data", "digits", "--model", "small_cnn", "--width", 4, "--mean", "0.3,0.3,0.3",
       "--std", "0.2,0.2,0.2", "--out", run, *ONE_TINY_EPOCH)
    ok("robustness", run, "--norm", "linf", "--eps", 0.01, "--n-examples", 16, "--attacks", "apgd-ce",
       "--device", "cpu")
    images = datasets.load_dataset("digits", split="test", normalize=False)
    member = run_folder.load_run(run).members[0]
    with torch.no_grad():
        expected = (member(images.batch(range(16))).argmax(1) == images.targets[:16]).float().mean().item()
    rows = run_folder.read_results(run)
    clean = rows[(rows["metric"] == "clean_accuracy") & (rows["scope"] == "member-0")]["value"].item()
    assert clean == pytest.approx(expected)
