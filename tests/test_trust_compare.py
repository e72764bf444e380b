"""Issue 20: numbers comparable with the literature (ECE edges, ASAM's scaling rule, the reference
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

from cli import main, usable_cpus
from ensembles.methods.sam import SAM, asam_scaled_parameters
from ensembles.runs.run_folder import read_config
from ensembles.training import trainer
from ensembles.training.trainer import TrainingSettings, settings_of_run
from landscape.calibration import expected_calibration_error, reliability_bins
from landscape.errors import InputError


def _on_edge(logits, confidence):
    """Check the float32 softmax confidence of the first row is exactly ``confidence`` (the edge is hit)."""
    logits = torch.tensor(logits, dtype=torch.float32)
    assert torch.log_softmax(logits[0], dim=-1).max().exp() == torch.tensor(confidence, dtype=torch.float32)
    return logits


def test_torchmetrics_edges_differ_from_float32_k_over_15_exactly_at_3_6_7():
    edges = torch.linspace(0, 1, 16)
    on_edge = torch.tensor([k / 15 for k in range(16)], dtype=torch.float32)
    assert torch.nonzero(edges > on_edge).flatten().tolist() == [3, 6, 7]  # (8, 9, 10 lie below: harmless)
    assert ((on_edge * 15).floor() == torch.arange(16.0)).all()  # ⌊float32(k/15)·15⌋ = k for every k


def test_ece_confidence_exactly_on_an_edge_goes_to_the_upper_bin():
    # A: confidence exactly float32(7/15) (an edge), right; B: confidence 0.45 (bin 6), wrong.
    # Our rule: ⌊(7/15)·15⌋ = 7, so A is alone in bin 7 and B alone in bin 6:
    #   ECE = (|1 − 7/15| + |0 − 0.45|) / 2 = (8/15 + 0.45) / 2 = 0.491667.
    # torchmetrics: linspace(0, 1, 16)[7] lies just above float32(7/15), so A joins B in bin 6:
    #   ECE = |(1 − 7/15) + (0 − 0.45)| / 2 = (1/12) / 2 = 0.041667.
    logits = _on_edge([[0.5596157908439636, 0.0, 0.0], [math.log(0.45), math.log(0.3), math.log(0.25)]], 7 / 15)
    labels = torch.tensor([0, 1])
    assert reliability_bins(logits, labels).count[6:8].tolist() == [1, 1]
    ours = expected_calibration_error(logits, labels).item()
    assert ours == pytest.approx((8 / 15 + 0.45) / 2, abs=1e-6)
    theirs = multiclass_calibration_error(logits.softmax(-1), labels, num_classes=3, n_bins=15, norm="l1").item()
    assert theirs == pytest.approx((1 / 12) / 2, abs=1e-6)


def test_ece_wrong_prediction_with_confidence_one_shares_the_last_bin():
    # C: confidence exactly 1, wrong; D: confidence 0.95 (bin 14), right.
    # Our rule: both in bin 14: |(0 − 1) + (1 − 0.95)| / 2 = 0.475.
    # torchmetrics gives 1.0 its own bin: (|0 − 1| + |1 − 0.95|) / 2 = 0.525.
    logits = _on_edge([[0.0, -200.0], [2.9444386959075928, 0.0]], 1.0)
    labels = torch.tensor([1, 0])
    assert logits.softmax(-1)[1, 0] == torch.tensor(0.95)
    probabilities = logits.softmax(-1)
    ours = expected_calibration_error(logits, labels).item()
    assert ours == pytest.approx(0.475, abs=1e-6)
    theirs = multiclass_calibration_error(probabilities, labels, num_classes=2, n_bins=15, norm="l1").item()
    assert theirs == pytest.approx(0.525, abs=1e-6)


# -- item 2: ASAM scales only the parameters named "weight" by default (official ASAM)

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


# -- item 3: every command sets OpenMP's wait policy and thread count before torch is imported

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
    assert 1 <= usable_cpus() <= (os.cpu_count() or 1)
