"""Robust accuracy under AutoAttack against the closed form for linear classifiers.

For logits ``z = W x + b`` the prediction ``y`` survives every perturbation with ``‖δ‖_p ≤ ε`` iff
``min_{k≠y} (z_y − z_k) / ‖w_y − w_k‖_q > ε`` with ``q`` the dual norm (``q = 2`` for l2, ``q = 1``
for l∞), provided the box ``[0, 1]`` does not bind. Inputs lie in ``[0.35, 0.65]`` and every
``ε < 0.35``, and an optimal perturbation moves no coordinate by more than ``ε``, so it never binds.
Points are kept only if their distance is at least 25% away from ``ε``, so a correct attack must
reproduce the closed-form count exactly.
"""
import numpy as np
import pytest
import torch
from torch import nn

from landscape import robustness
from landscape.ensemble import combine
from landscape.errors import InputError
from landscape.robustness import EnsembleClassifier, Normalized, RobustnessResult, robust_accuracy

DUAL_NORM_ORDER = {"L2": 2, "Linf": 1}


def linear_classifier(n_features, n_classes, dtype, seed):
    """A linear model whose logits all equal 0 at the centre of the box, so boundaries cross the data."""
    generator = torch.Generator().manual_seed(seed)
    layer = nn.Linear(n_features, n_classes, dtype=dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(n_classes, n_features, generator=generator, dtype=dtype))
        layer.bias.copy_(-layer.weight.sum(dim=1) * 0.5)
    return nn.Sequential(nn.Flatten(), layer)


def distance_to_misclassification(weight, bias, inputs, labels, norm):
    """Closed-form ``min_{k≠y} (z_y − z_k) / ‖w_y − w_k‖_q`` per sample (≤ 0 when misclassified), float64."""
    weight, bias = np.asarray(weight, dtype=np.float64), np.asarray(bias, dtype=np.float64)
    flat = np.asarray(inputs, dtype=np.float64).reshape(len(inputs), -1)
    logits = flat @ weight.T + bias
    rows = np.arange(len(flat))
    distances = np.full(len(flat), np.inf)
    for k in range(weight.shape[0]):
        other = k != labels
        margin = logits[rows, labels] - logits[:, k]
        scale = np.linalg.norm(weight[labels] - weight[k], ord=DUAL_NORM_ORDER[norm], axis=1)
        distances[other] = np.minimum(distances[other], margin[other] / scale[other])
    return distances


def points_with_known_robustness(weight, bias, sample_shape, n_points, norm, seed, n_wrong=3):
    """Inputs, labels, ε and the closed-form robust mask, every distance ≥ 25% away from ε."""
    generator = np.random.default_rng(seed)
    candidates = generator.uniform(0.35, 0.65, size=(20 * n_points, int(np.prod(sample_shape))))
    predicted = (candidates @ np.asarray(weight, dtype=np.float64).T + np.asarray(bias, dtype=np.float64)).argmax(1)
    distances = distance_to_misclassification(weight, bias, candidates, predicted, norm)
    eps = float(np.median(distances))
    assert eps < 0.35  # the box [0, 1] cannot bind
    clear = (distances < eps / 1.25) | (distances > eps * 1.25)
    inputs, labels, distances = candidates[clear][:n_points], predicted[clear][:n_points], distances[clear][:n_points]
    assert len(inputs) == n_points
    labels[:n_wrong] = (labels[:n_wrong] + 1) % weight.shape[0]   # a few misclassified points
    robust = (np.arange(n_points) >= n_wrong) & (distances > eps)
    assert 0 < robust.sum() < n_points - n_wrong  # both outcomes occur
    return inputs.reshape(n_points, *sample_shape), labels, eps, robust


def as_tensors(inputs, labels, dtype):
    return torch.as_tensor(inputs, dtype=dtype), torch.as_tensor(labels, dtype=torch.long)


@pytest.mark.parametrize("norm, dtype, sample_shape", [
    ("L2", torch.float64, (8,)),
    ("Linf", torch.float64, (2, 4)),
    ("L2", torch.float32, (2, 2, 2)),
    ("Linf", torch.float32, (8,)),
])
def test_two_class_linear_model_matches_the_closed_form(norm, dtype, sample_shape):
    model = linear_classifier(8, 2, dtype, seed=1)
    weight, bias = model[1].weight.detach().double().numpy(), model[1].bias.detach().double().numpy()
    inputs, labels, eps, robust = points_with_known_robustness(weight, bias, sample_shape, 24, norm, seed=2)
    inputs, labels = as_tensors(inputs, labels, dtype)
    result = robust_accuracy(model, inputs, labels, eps=eps, norm=norm, attacks=("apgd-ce",), iterations=10)
    assert isinstance(result, RobustnessResult)
    assert result.robust.tolist() == robust.tolist()
    assert result.robust_accuracy == pytest.approx(robust.mean())
    assert result.clean_accuracy == pytest.approx(21 / 24)
    assert result.clean[:3].tolist() == [False] * 3 and result.clean[3:].all()
    assert (result.norm, result.eps, result.attacks, result.iterations) == (norm.lower(), eps, ("apgd-ce",), 10)


@pytest.mark.parametrize("norm", ["L2", "Linf"])
def test_four_class_linear_model_with_targeted_attack(norm):
    model = linear_classifier(8, 4, torch.float64, seed=3)
    weight, bias = model[1].weight.detach().numpy(), model[1].bias.detach().numpy()
    inputs, labels, eps, robust = points_with_known_robustness(weight, bias, (8,), 24, norm, seed=4)
    inputs, labels = as_tensors(inputs, labels, torch.float64)
    result = robust_accuracy(model, inputs, labels, eps=eps, norm=norm, iterations=10)
    assert result.attacks == ("apgd-ce", "apgd-t") and result.target_classes == 3
    assert result.robust.tolist() == robust.tolist()


def test_normalized_ensemble_averaging_logits_is_the_averaged_linear_model():
    # Averaging the logits of linear members on (x − m)/s is one linear model with weights W̄/s and
    # bias b̄ − (W̄/s)·m, so the closed form still applies to the whole wrapper.
    members = [linear_classifier(8, 4, torch.float64, seed) for seed in (5, 6, 7)]
    mean, std = [0.4, 0.6], [0.5, 0.25]
    ensemble = EnsembleClassifier(members, combine="logits", mean=mean, std=std)
    per_coordinate_mean = np.repeat(mean, 4)    # inputs are (N, 2 channels, 2, 2)
    per_coordinate_std = np.repeat(std, 4)
    weight = np.mean([member[1].weight.detach().numpy() for member in members], axis=0) / per_coordinate_std
    bias = np.mean([member[1].bias.detach().numpy() for member in members], axis=0) - weight @ per_coordinate_mean
    inputs, labels, eps, robust = points_with_known_robustness(weight, bias, (2, 2, 2), 24, "L2", seed=8)
    inputs, labels = as_tensors(inputs, labels, torch.float64)
    result = robust_accuracy(ensemble, inputs, labels, eps=eps, norm="L2", iterations=10)
    assert result.robust.tolist() == robust.tolist()


@pytest.mark.parametrize("combine_mode", ["probs", "logits"])
def test_ensemble_classifier_outputs_the_combined_log_probabilities(combine_mode):
    members = [linear_classifier(8, 3, torch.float64, seed) for seed in (9, 10)]
    mean, std = torch.tensor([0.3, 0.5]), torch.tensor([0.2, 0.4])
    inputs = torch.rand(5, 2, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    normalized = (inputs - mean.view(2, 1, 1)) / std.view(2, 1, 1)
    expected = combine(torch.stack([member(normalized) for member in members]), combine_mode)
    ensemble = EnsembleClassifier(members, combine=combine_mode, mean=mean, std=std)
    torch.testing.assert_close(ensemble(inputs), expected)
    torch.testing.assert_close(Normalized(members[0], mean, std)(inputs), members[0](normalized))
    torch.testing.assert_close(EnsembleClassifier(members, combine=combine_mode)(inputs),
                               combine(torch.stack([member(inputs) for member in members]), combine_mode))


def test_leaves_the_model_and_the_random_state_as_they_were():
    model = nn.Sequential(linear_classifier(8, 2, torch.float32, seed=11), nn.Dropout(0.5))
    model.train()
    inputs = torch.rand(6, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.zeros(6, dtype=torch.long)
    random_state = torch.get_rng_state()
    result = robust_accuracy(model, inputs, labels, eps=0.05, attacks=("apgd-ce",), iterations=3)
    assert torch.equal(torch.get_rng_state(), random_state)
    assert model.training and all(module.training for module in model.modules())
    assert all(parameter.requires_grad for parameter in model.parameters())
    # Eval mode during the attack: dropout off, so the clean mask is the deterministic prediction.
    with torch.no_grad():
        assert result.clean.tolist() == (model.eval()(inputs).argmax(-1) == labels).tolist()


@pytest.mark.parametrize("inputs, labels, options, message", [
    (torch.full((4, 8), 1.5), torch.zeros(4, dtype=torch.long), {"attacks": ("apgd-ce",)}, r"\[0, 1\]"),
    (torch.full((4, 8), -0.1), torch.zeros(4, dtype=torch.long), {"attacks": ("apgd-ce",)}, r"\[0, 1\]"),
    (torch.full((4, 8), float("nan")), torch.zeros(4, dtype=torch.long), {}, "NaN"),
    (torch.rand(4, 8), torch.zeros(4, dtype=torch.long), {}, "at least 4 classes"),
    (torch.rand(4, 8), torch.zeros(3, dtype=torch.long), {"attacks": ("apgd-ce",)}, "shape"),
    (torch.rand(4, 8), torch.full((4,), 2), {"attacks": ("apgd-ce",)}, r"\[0, 2\)"),
    (torch.rand(4, 8), torch.zeros(4, dtype=torch.long), {"attacks": ("apgd-ce", "square")}, "image"),
    (torch.rand(4, 8), torch.zeros(4, dtype=torch.long), {"attacks": ("pgd",)}, "attacks"),
    (torch.rand(4, 8), torch.zeros(4, dtype=torch.long), {"version": "standard", "attacks": ("apgd-ce",)},
     "standard"),
    (torch.rand(4, 8), torch.zeros(4, dtype=torch.long), {"attacks": ("apgd-ce",), "norm": "L1"}, "norm"),
])
def test_bad_input_raises_input_error(inputs, labels, options, message):
    model = linear_classifier(8, 2, torch.float32, seed=12)
    options = {"eps": 0.1, **options}
    with pytest.raises(InputError, match=message):
        robust_accuracy(model, inputs, labels, **options)


@pytest.mark.parametrize("eps", [0.0, -0.1, float("nan")])
def test_bad_radius(eps):
    model = linear_classifier(8, 2, torch.float32, seed=12)
    with pytest.raises(InputError, match="eps"):
        robust_accuracy(model, torch.rand(4, 8), torch.zeros(4, dtype=torch.long), eps=eps, attacks=("apgd-ce",))


def test_vote_cannot_be_attacked():
    with pytest.raises(InputError, match="vote"):
        EnsembleClassifier([linear_classifier(8, 2, torch.float32, seed=13)], combine="vote")


def test_standard_version_with_fewer_than_ten_classes():
    # Every point lies closer than ε/1.25 to a boundary, so APGD-CE already breaks all of them and
    # AutoAttack skips its slow FAB-T and Square stages; targets are capped at C − 1 = 4.
    model = linear_classifier(12, 5, torch.float64, seed=14)
    weight, bias = model[1].weight.detach().numpy(), model[1].bias.detach().numpy()
    inputs = np.random.default_rng(15).uniform(0.45, 0.55, size=(200, 12))
    labels = (inputs @ weight.T + bias).argmax(1)
    distances = distance_to_misclassification(weight, bias, inputs, labels, "Linf")
    eps = 0.02
    close = distances < eps / 1.25
    inputs, labels = as_tensors(inputs[close][:10].reshape(10, 3, 2, 2), labels[close][:10], torch.float64)
    result = robust_accuracy(model, inputs, labels, eps=eps, norm="Linf", version="standard")
    assert result.clean.all() and not result.robust.any()
    assert result.attacks == ("apgd-ce", "apgd-t", "fab-t", "square") and result.target_classes == 4


def test_robust_accuracy_takes_l2_and_linf_in_any_case():
    model = nn.Sequential(nn.Linear(2, 2)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        model[0].bias.copy_(torch.tensor([-0.5, 0.5]))
    inputs = torch.tensor([[0.6, 0.5], [0.9, 0.5]], dtype=torch.float64)
    labels = torch.tensor([0, 0])
    results = [robustness.robust_accuracy(model, inputs, labels, eps=0.2, norm=norm, attacks=("apgd-ce",),
                                          iterations=5) for norm in ("Linf", "linf", "LINF")]
    assert {result.norm for result in results} == {"linf"}
    assert [result.robust.tolist() for result in results] == [[False, True]] * 3


def test_check_radius_bounds():
    robustness.check_radius("Linf", 1.0)
    robustness.check_radius("L2", 50.0)              # the size of the inputs is not known: no bound
    robustness.check_radius("L2", 2.0, input_size=4)  # √4 = 2: the diameter itself is allowed
    for norm, eps, size in (("Linf", 1.0001, None), ("Linf", 8.0, 3072), ("L2", 2.0001, 4)):
        with pytest.raises(InputError, match="larger than"):
            robustness.check_radius(norm, eps, size)
