"""Numbers comparable with the literature (ECE edges, ASAM's scaling rule, the reference
ascent) and the OpenMP/thread settings every command applies before torch is imported."""
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torchmetrics.functional.classification import multiclass_calibration_error

import landscape.sharpness
from cli import main
from ensembles.cpus import usable_cpus
from ensembles.methods.sam import SAM, asam_scaled_parameters
from ensembles.runs import run_folder
from ensembles.runs.run_folder import read_config
from ensembles.studies.sweep import read_sweep
from ensembles.training import trainer
from ensembles.training.trainer import TrainingSettings, settings_of_run
from landscape.calibration import expected_calibration_error, reliability_bins
from landscape.errors import InputError
from landscape.sharpness import worst_case_sharpness
from reports.collect import SharpnessSpec, collect, sharpness_per_run
from test_measurements import documented_batches, first_member, make_run


def _on_edge(logits, confidence):
    """``logits`` whose first row has a float32 softmax confidence of exactly ``float32(confidence)``
    (the edge is hit): its first logit is moved by float32 ulps from the given value until it does.
    exp and log_softmax round differently with different CPU kernels, so the logit that hits an edge
    is found on the machine running the test rather than pinned."""
    logits = torch.tensor(logits, dtype=torch.float32)
    target = torch.tensor(confidence, dtype=torch.float32)
    for _ in range(64):
        reached = torch.log_softmax(logits[0], dim=-1).max().exp()
        if reached == target:
            return logits
        logits[0, 0] = torch.nextafter(logits[0, 0], torch.tensor(math.inf if reached < target else -math.inf))
    raise AssertionError(f"no float32 logit near {logits[0, 0].item()} gives a confidence of exactly {confidence}")


def test_on_edge_finds_the_logit_from_a_few_ulps_away():
    start = torch.tensor(math.log(1.75), dtype=torch.float32)
    for _ in range(5):
        start = torch.nextafter(start, torch.tensor(1.0))
    logits = _on_edge([[start.item(), 0.0, 0.0]], 7 / 15)
    assert torch.softmax(logits[0], dim=-1).max().item() == pytest.approx(7 / 15, abs=1e-7)
    assert torch.log_softmax(logits[0], dim=-1).max().exp() == torch.tensor(7 / 15, dtype=torch.float32)


def _torchmetrics_edges_above():
    """The k at which torchmetrics' float32 edges ``linspace(0, 1, 16)`` lie above ``float32(k/15)``:
    3, 6 and 7 with the x86 kernels we ran, but linspace's last bits come from the CPU's kernel, so
    the tests read them here rather than pin them."""
    edges = torch.linspace(0, 1, 16)
    on_edge = torch.tensor([k / 15 for k in range(16)], dtype=torch.float32)
    return set(torch.nonzero(edges > on_edge).flatten().tolist())


def test_torchmetrics_edges_differ_from_float32_k_over_15_by_an_ulp_at_most():
    edges = torch.linspace(0, 1, 16)
    on_edge = torch.tensor([k / 15 for k in range(16)], dtype=torch.float32)
    # so the two binnings disagree only on exact edges (an edge an ulp above float32(k/15))
    assert (torch.nextafter(on_edge, torch.tensor(-1.0)) <= edges).all()
    assert (edges <= torch.nextafter(on_edge, torch.tensor(2.0))).all()
    assert ((on_edge * 15).floor() == torch.arange(16.0)).all()  # ⌊float32(k/15)·15⌋ = k for every k (IEEE)


def test_ece_confidence_exactly_on_an_edge_goes_to_the_upper_bin():
    # A: confidence exactly float32(7/15) (an edge), right; B: confidence 0.45 (bin 6), wrong.
    # Our rule: ⌊(7/15)·15⌋ = 7, so A is alone in bin 7 and B alone in bin 6:
    #   ECE = (|1 − 7/15| + |0 − 0.45|) / 2 = (8/15 + 0.45) / 2 = 0.491667.
    # torchmetrics, where linspace(0, 1, 16)[7] lies just above float32(7/15), puts A with B in bin 6:
    #   ECE = |(1 − 7/15) + (0 − 0.45)| / 2 = (1/12) / 2 = 0.041667 (and agrees with us elsewhere).
    logits = _on_edge([[math.log(1.75), 0.0, 0.0], [math.log(0.45), math.log(0.3), math.log(0.25)]], 7 / 15)
    labels = torch.tensor([0, 1])
    assert reliability_bins(logits, labels).count[6:8].tolist() == [1, 1]
    ours = expected_calibration_error(logits, labels).item()
    assert ours == pytest.approx((8 / 15 + 0.45) / 2, abs=1e-6)
    theirs = multiclass_calibration_error(logits.softmax(-1), labels, num_classes=3, n_bins=15, norm="l1").item()
    assert theirs == pytest.approx((1 / 12) / 2 if 7 in _torchmetrics_edges_above() else ours, abs=1e-6)


def test_ece_wrong_prediction_with_confidence_one_shares_the_last_bin():
    # C: confidence exactly 1, wrong; D: confidence 0.95 (bin 14), right.
    # Our rule: both in bin 14: |(0 − 1) + (1 − 0.95)| / 2 = 0.475.
    # torchmetrics gives 1.0 its own bin: (|0 − 1| + |1 − 0.95|) / 2 = 0.525.
    logits = _on_edge([[0.0, -200.0], [math.log(19.0), 0.0]], 1.0)  # exp(−200) is 0 in float32: exactly 1
    labels = torch.tensor([1, 0])
    probabilities = logits.softmax(-1)
    assert probabilities[1, 0].item() == pytest.approx(0.95, abs=1e-6)  # bin 14, whatever its last bits
    ours = expected_calibration_error(logits, labels).item()
    assert ours == pytest.approx(0.475, abs=1e-6)
    theirs = multiclass_calibration_error(probabilities, labels, num_classes=2, n_bins=15, norm="l1").item()
    assert theirs == pytest.approx(0.525, abs=1e-6)


# -- ASAM scales only the parameters named "weight" by default (official ASAM)

def _tiny_linear_step(rule):
    """One ASAM first step on f(x) = w·x + b, L = f², at w = (0.5, −1), b = 0.25, x = (1, 2)."""
    model = torch.nn.Linear(2, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, -1.0]]))
        model.bias.copy_(torch.tensor([0.25]))
    optimizer = SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.1, adaptive=True, eta=0.01,
                    scaled=asam_scaled_parameters(model, rule))
    model(torch.tensor([[1.0, 2.0]], dtype=torch.float64)).pow(2).sum().backward()
    optimizer.first_step()
    return model.weight.detach().flatten() - torch.tensor([0.5, -1.0]), model.bias.detach() - 0.25


def test_official_asam_step_leaves_the_bias_unscaled():
    # f = 0.5 − 2 + 0.25 = −1.25, so g_w = 2f·x = (−2.5, −5), g_b = 2f = −2.5.
    # Weights: T_w = |w| + η = (0.51, 1.01); bias: T_b = 1.
    # N = ‖(T_w g_w, g_b)‖ = sqrt(1.275² + 5.05² + 2.5²); ε_w = ρ T_w² g_w / N, ε_b = ρ g_b / N.
    norm = math.sqrt(1.275 ** 2 + 5.05 ** 2 + 2.5 ** 2)
    epsilon_w, epsilon_b = _tiny_linear_step("weights")
    assert epsilon_w.tolist() == pytest.approx([0.1 * 0.51 ** 2 * -2.5 / norm, 0.1 * 1.01 ** 2 * -5 / norm], abs=1e-12)
    assert epsilon_b.item() == pytest.approx(0.1 * -2.5 / norm, abs=1e-12)


def test_all_parameter_asam_step_scales_the_bias_too():
    # As above with T_b = |b| + η = 0.26: N = sqrt(1.275² + 5.05² + 0.65²), ε_b = ρ T_b² g_b / N.
    norm = math.sqrt(1.275 ** 2 + 5.05 ** 2 + 0.65 ** 2)
    epsilon_w, epsilon_b = _tiny_linear_step("all")
    assert epsilon_w.tolist() == pytest.approx([0.1 * 0.51 ** 2 * -2.5 / norm, 0.1 * 1.01 ** 2 * -5 / norm], abs=1e-12)
    assert epsilon_b.item() == pytest.approx(0.1 * 0.26 ** 2 * -2.5 / norm, abs=1e-12)


def test_official_rule_scales_conv_and_batch_norm_weights_but_no_shift():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(), torch.nn.Linear(2, 2))
    names = {id(p): name for name, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in asam_scaled_parameters(model)) == ["0.weight", "1.weight", "3.weight"]
    assert len(asam_scaled_parameters(model, "all")) == 6
    with pytest.raises(InputError, match="unknown ASAM scaling"):
        asam_scaled_parameters(model, "biases")


def test_asam_training_defaults_to_the_official_rule_and_records_it(tmp_path):
    settings = TrainingSettings(dataset="digits", model="small_cnn", width=4, method="asam", seeds=(4,), epochs=1)
    assert settings.asam_scale == "weights"
    member = trainer._Member(0, 4, settings, 10, torch.device("cpu"))
    scales = {name: member.optimizer._scale(p) for name, p in member.model.named_parameters()}
    assert all(isinstance(t, torch.Tensor) == ("weight" in name) for name, t in scales.items()), scales
    assert any("bias" in name for name in scales)

    flags = ["--data", "digits", "--model", "small_cnn", "--width", "4", "--method", "asam", "--epochs", "1",
             "--batch-size", "32", "--train-samples", "32", "--seeds", "4", "--threads", "1"]
    for given, recorded in (([], "weights"), (["--asam-scale", "all"], "all")):
        out = tmp_path / f"run-{recorded}"
        result = CliRunner().invoke(main, ["train", *flags, *given, "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert read_config(out)["asam_scale"] == recorded
        assert settings_of_run(out).asam_scale == recorded


def test_asam_scale_is_refused_outside_asam():
    result = CliRunner().invoke(main, ["train", "--data", "digits", "--model", "small_cnn", "--method", "sam",
                                       "--asam-scale", "all", "--out", "unused"])
    assert result.exit_code == 2 and "--asam-scale all has no effect with --method sam" in result.stderr


def test_asam_runs_recorded_before_the_option_read_as_all_parameters(tmp_path):
    out = tmp_path / "old"
    settings = TrainingSettings(dataset="digits", model="small_cnn", width=4, method="asam", seeds=(4,), epochs=1,
                                batch_size=32, train_samples=32, asam_scale="all")
    trainer.train(out, settings)
    config = json.loads((out / "run.json").read_text())
    del config["asam_scale"]  # as written before asam_scale existed (ASAM then scaled every parameter)
    (out / "run.json").write_text(json.dumps(config))
    record = json.loads((out / "train" / "settings.json").read_text())
    del record["asam_scale"]
    (out / "train" / "settings.json").write_text(json.dumps(record))
    assert settings_of_run(out).asam_scale == "all"
    trainer._require_own_training_state(out, settings, recorded=True)  # the old state is still its own


# -- every command sets OpenMP's wait policy and thread count before torch is imported

_SPY = textwrap.dedent("""
    import json, os, sys
    seen = {}

    class Spy:  # records the environment at the moment torch is first imported
        def find_spec(self, name, path=None, target=None):
            if name == "torch" and not seen:
                seen.update(policy=os.environ.get("OMP_WAIT_POLICY"), threads=os.environ.get("OMP_NUM_THREADS"))
            return None

    sys.meta_path.insert(0, Spy())
    from cli import main
    try:
        main(sys.argv[1:], standalone_mode=False)
    except SystemExit:
        pass
    import torch
    print(json.dumps({**seen, "torch_threads": torch.get_num_threads()}))
""")
# Imports torch, then refuses the settings (exit 2): fast, and nothing is written.
_TRAIN = ["train", "--data", "digits", "--model", "small_cnn", "--method", "sam", "--asam-scale", "all",
          "--out", "unused"]


def _spy(arguments, tmp_path, **environment):
    env = {name: value for name, value in os.environ.items() if not name.startswith(("OMP_", "MKL_"))}
    env.update(PYTHONPATH=str(Path(__file__).resolve().parents[1]), **environment)
    result = subprocess.run([sys.executable, "-c", _SPY, *arguments], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_commands_set_a_passive_wait_policy_and_threads_before_torch_loads(tmp_path):
    seen = _spy(_TRAIN, tmp_path)
    assert seen["policy"] == "PASSIVE"
    assert seen["threads"] == str(usable_cpus()) and seen["torch_threads"] == usable_cpus()
    assert not (tmp_path / "unused").exists()


def test_threads_flag_reaches_openmp_before_torch_loads(tmp_path):
    seen = _spy([*_TRAIN, "--threads", "1"], tmp_path, OMP_NUM_THREADS="2")
    assert seen == {"policy": "PASSIVE", "threads": "1", "torch_threads": 1}


def test_the_users_openmp_settings_are_kept(tmp_path):
    seen = _spy(_TRAIN, tmp_path, OMP_WAIT_POLICY="ACTIVE", OMP_NUM_THREADS="1")
    assert seen == {"policy": "ACTIVE", "threads": "1", "torch_threads": 1}


def test_usable_cpus_is_at_most_the_machine():
    assert usable_cpus() in range(1, (os.cpu_count() or 1) + 1)


# -- the reference code's ascent, everywhere a sharpness is measured, never mixed with APGD's

# APGD's step-size checkpoints (Croce & Hein, ICML 2020, §3.2) for 20 iterations, as Andriushchenko et al.'s code uses them
_CHECKPOINTS_20 = (5, 9, 12, 15, 16, 18, 19, 20)


def _ellipsoid_projection(delta, t, rho):
    """Euclidean projection onto {d: ‖d/t‖₂ ≤ ρ}: d = x t²/(t² + λ), λ ≥ 0 found by bisection."""
    def scaled_norm2(lam):
        return sum(((d * s / (s * s + lam)) ** 2).sum() for d, s in zip(delta, t)).item()
    if scaled_norm2(0.0) <= rho ** 2:
        return delta
    low, high = 0.0, 1.0
    while scaled_norm2(high) > rho ** 2:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if scaled_norm2(middle) > rho ** 2 else (low, middle)
    return [d * s * s / (s * s + high) for d, s in zip(delta, t)]


def _reference_worst_case(model, inputs, targets, rho, norm, adaptive, n_iters=20, alpha=0.75):
    """The ascent of Andriushchenko et al.'s (ICML 2023) code for one batch, as it reads: start at 0, step 2ρ;
    step η·T·g/‖g‖₂ (raw gradient norm) or η·T·sign(g); project (clamp, rescale, or the ellipsoid);
    δ ← α z + (1 − α) δ_prev; at the checkpoints halve η when < 0.75 of the steps since the last one
    improved, or when it was not halved last time and the best did not improve, and then take the
    next gradient at the best point (δ itself stays). Returns best loss − clean loss."""
    names = [name for name, _ in model.named_parameters()]
    theta = [p.detach() for _, p in model.named_parameters()]
    t = [p.abs() if adaptive else torch.ones_like(p) for p in theta]

    def loss_and_gradient(delta):
        leaves = [d.clone().requires_grad_() for d in delta]
        outputs = torch.func.functional_call(model, {n: p + d for n, p, d in zip(names, theta, leaves)}, (inputs,))
        loss = torch.nn.functional.cross_entropy(outputs, targets)
        return loss.item(), torch.autograd.grad(loss, leaves)

    def project(delta):
        if norm == "linf":
            return [d.clamp(-rho * s, rho * s) for d, s in zip(delta, t)]
        if adaptive:
            return _ellipsoid_projection(delta, t, rho)
        length = math.sqrt(sum((d ** 2).sum().item() for d in delta))
        return delta if length <= rho else [d * rho / length for d in delta]

    delta = previous = [torch.zeros_like(p) for p in theta]
    clean, gradient = loss_and_gradient(delta)
    best, best_gradient, step = clean, gradient, 2 * rho
    improvements, halved_last, best_at_checkpoint, last_checkpoint = 0, False, clean, 0
    for k in range(n_iters):
        if norm == "linf":
            moved = [d + step * g.sign() * s for d, g, s in zip(delta, gradient, t)]
        else:
            length = math.sqrt(sum((g ** 2).sum().item() for g in gradient)) + 1e-12
            moved = [d + step * s * g / length for d, g, s in zip(delta, gradient, t)]
        z = project(moved)
        previous, delta = delta, [alpha * zi + (1 - alpha) * p for zi, p in zip(z, previous)]
        loss, gradient = loss_and_gradient(delta)
        if loss > best:
            best, best_gradient, improvements = loss, gradient, improvements + 1
        if k in _CHECKPOINTS_20 and k < n_iters - 1:
            halve = improvements < 0.75 * (k - last_checkpoint) or (not halved_last and best == best_at_checkpoint)
            halved_last, best_at_checkpoint, last_checkpoint, improvements = halve, best, k, 0
            if halve:
                step, gradient = step / 2, best_gradient
    return best - clean


@pytest.mark.parametrize("norm, adaptive", [("l2", True), ("l2", False), ("linf", True)])
def test_reference_ascent_equals_an_independent_reimplementation(norm, adaptive):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3)).double()
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(5, 6, generator=generator, dtype=torch.float64),
                torch.randint(0, 3, (5,), generator=generator)) for _ in range(4)]
    rho = 0.5 if norm == "l2" else 0.05
    ours = worst_case_sharpness(model, torch.nn.functional.cross_entropy, batches, rho, norm, adaptive,
                                n_iters=20, reference_ascent=True)
    theirs = [_reference_worst_case(model, x, y, rho, norm, adaptive) for x, y in batches]
    assert ours.per_batch.tolist() == pytest.approx(theirs, abs=1e-4)
    assert min(theirs) > 0
    if norm == "l2" and adaptive:  # and the two ascents really differ here, so the test can tell them apart
        apgd = worst_case_sharpness(model, torch.nn.functional.cross_entropy, batches, rho, norm, adaptive, n_iters=20)
        assert (apgd.per_batch - torch.tensor(theirs, dtype=torch.float64)).abs().max() > 1e-4


_TINY = ["--batch-size", "4", "--n-batches", "3", "--seed", "5", "--n-iters", "2", "--rho", "0.5", "--device", "cpu"]


def test_ascent_flag_reaches_the_measurement_and_is_stored_apart(tmp_path, monkeypatch):
    path = make_run(tmp_path / "run")
    seen = []
    original = landscape.sharpness.worst_case_sharpness

    def spy(*arguments, **options):
        seen.append(options.get("reference_ascent"))
        return original(*arguments, **options)

    monkeypatch.setattr(landscape.sharpness, "worst_case_sharpness", spy)
    result = CliRunner().invoke(main, ["sharpness", str(path), *_TINY, "--ascent", "reference"])
    assert result.exit_code == 0, result.output
    assert seen == [True, True] and "reference code's ascent" in result.output
    rows = run_folder.read_results(path, current_only=True)
    member = rows[(rows["metric"] == "sharpness/worst/l2/adaptive") & (rows["scope"] == "member-0")]
    assert json.loads(member["settings"].iloc[0])["ascent"] == "reference"
    direct = original(first_member(path), torch.nn.functional.cross_entropy, documented_batches(4, 3, 5), 0.5,
                      n_iters=2, reference_ascent=True)
    assert member["value"].iloc[0] == pytest.approx(direct.value, rel=1e-6)

    seen.clear()  # the default ascent is not answered by the reference rows: measured anew, stored without the setting
    result = CliRunner().invoke(main, ["sharpness", str(path), *_TINY])
    assert result.exit_code == 0, result.output
    assert seen == [False, False]
    rows = run_folder.read_results(path, current_only=True)
    ours = rows[(rows["metric"] == "sharpness/worst/l2/adaptive") & (rows["scope"] == "ensemble")]
    assert sorted(json.loads(text).get("ascent", "none") for text in ours["settings"]) == ["none", "reference"]

    seen.clear()
    again = CliRunner().invoke(main, ["sharpness", str(path), *_TINY, "--ascent", "reference"])
    assert again.exit_code == 0 and seen == [] and "0 measured now, 2 stored" in again.output

    # reports read one ascent at a time
    results = collect([path])
    reference = sharpness_per_run(results, SharpnessSpec.parse("sharpness/worst/l2/adaptive@0.5:reference"))
    apgd = sharpness_per_run(results, SharpnessSpec.parse("sharpness/worst/l2/adaptive@0.5"))
    stored = {json.loads(text).get("ascent", "apgd"): value for text, value in zip(ours["settings"], ours["value"])}
    assert reference.iloc[0] == pytest.approx(stored["reference"]) and apgd.iloc[0] == pytest.approx(stored["apgd"])
    assert reference.iloc[0] != apgd.iloc[0]


def test_rows_without_an_ascent_setting_read_as_apgd(tmp_path):
    path = make_run(tmp_path / "old")
    result = CliRunner().invoke(main, ["sharpness", str(path), *_TINY])  # rows exactly as before the setting
    assert result.exit_code == 0, result.output
    results = collect([path])
    assert "ascent" not in results.columns
    assert sharpness_per_run(results, SharpnessSpec.parse("sharpness/worst/l2/adaptive@0.5")).notna().all()
    assert sharpness_per_run(results, SharpnessSpec.parse("sharpness/worst/l2/adaptive@0.5:reference")).empty
    spec = SharpnessSpec.parse("sharpness/worst/l2/adaptive@0.5:reference")
    assert str(spec).endswith(":reference") and "--ascent reference" in spec.command("runs/x")


@pytest.mark.parametrize("arguments, words", [
    (["--kind", "average", "--ascent", "reference"], "worst case only"),
])
def test_reference_ascent_of_an_average_case_is_refused(tmp_path, arguments, words):
    path = make_run(tmp_path / "run")
    result = CliRunner().invoke(main, ["sharpness", str(path), *_TINY, *arguments])
    assert result.exit_code == 2 and words in result.stderr
    assert run_folder.read_results(path).empty


def test_spec_refuses_an_ascent_it_cannot_have():
    for text in ("sharpness/average/l2/adaptive@0.5:reference", "sharpness/worst/l2/adaptive@0.5:fast",
                 "hessian/trace:reference"):
        with pytest.raises(InputError):
            SharpnessSpec.parse(text)


def test_sweep_files_accept_the_ascent(tmp_path):
    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text('[base]\ndataset = "digits"\nmodel = "small_cnn"\n[grid]\nmethod = ["sgd"]\n'
                          '[[measure.sharpness]]\nrho = [0.5]\nascent = "reference"\n')
    sweep = read_sweep(sweep_file)
    assert [dict(m.options) for m in sweep.measurements] == [{"rhos": (0.5,), "ascent": "reference"}]
