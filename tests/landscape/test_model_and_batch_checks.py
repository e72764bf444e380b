"""Every public function of landscape/ that takes a network checks it, and every one that reads
batches reads them, the same way (``landscape._checks.require_model`` and ``batch_pair``): a
wrong argument is one InputError naming the argument, never an AttributeError from deep inside."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape import alignment, connectivity, fisher, hessian, robustness, sharpness
from landscape.errors import InputError

torch.manual_seed(0)
NET = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
INPUTS, TARGETS = torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
PAIRS = [(INPUTS, TARGETS)]
DICTS = [{"x": INPUTS, "y": TARGETS}]
NO_GROUPS = alignment.PermutationSpec(axes={}, sizes={})

MODEL_FIRST = {
    "worst_case_sharpness": (lambda m, b: sharpness.worst_case_sharpness(m, F.cross_entropy, b, rho=0.1, n_iters=1),
                             "model"),
    "average_case_sharpness": (lambda m, b: sharpness.average_case_sharpness(m, F.cross_entropy, b, rho=0.1,
                                                                             n_draws=1), "model"),
    "hessian_trace": (lambda m, b: hessian.hessian_trace(m, F.cross_entropy, b, n_probes=1), "model"),
    "hessian_eigenvalues": (lambda m, b: hessian.hessian_eigenvalues(m, F.cross_entropy, b, k=1), "model"),
    "hessian_spectral_density": (lambda m, b: hessian.hessian_spectral_density(m, F.cross_entropy, b, n_iters=3),
                                 "model"),
    "per_sample_fisher_trace": (lambda m, b: fisher.per_sample_fisher_trace(m, F.cross_entropy, b), "model"),
    "interpolate": (lambda m, b: connectivity.interpolate(m, NET, F.cross_entropy, b, alphas=3), "model_a"),
    "loss_barrier": (lambda m, b: connectivity.loss_barrier(m, NET, F.cross_entropy, b), "model_a"),
    "barrier_matrix": (lambda m, b: connectivity.barrier_matrix([m, NET], F.cross_entropy, b), r"members\[0\]"),
    "plane": (lambda m, b: connectivity.plane([m, NET, NET], F.cross_entropy, b, grid=2), r"models\[0\]"),
    "random_directions_slice": (lambda m, b: connectivity.random_directions_slice(m, F.cross_entropy, b), "model"),
    "random_directions": (lambda m, b: connectivity.random_directions(m), "model"),
    "interpolated_model": (lambda m, b: connectivity.interpolated_model(m, NET, 0.5), "model_a"),
    "recompute_batchnorm_statistics": (lambda m, b: connectivity.recompute_batchnorm_statistics(m, b), "model"),
    "check_spec": (lambda m, b: alignment.check_spec(NO_GROUPS, m), "model"),
    "apply_permutation": (lambda m, b: alignment.apply_permutation(m, {}, NO_GROUPS), "model"),
    "weight_matching": (lambda m, b: alignment.weight_matching(m, NET, NO_GROUPS), "reference"),
    "match_activations": (lambda m, b: alignment.match_activations(m, NET, NO_GROUPS, b), "reference"),
    "robust_accuracy": (lambda m, b: robustness.robust_accuracy(m, INPUTS, TARGETS, eps=0.01, norm="linf"), "model"),
}
READS_PAIRS = ["worst_case_sharpness", "average_case_sharpness", "hessian_trace", "hessian_eigenvalues",
               "hessian_spectral_density", "per_sample_fisher_trace", "interpolate", "loss_barrier", "barrier_matrix",
               "random_directions_slice"]


@pytest.mark.parametrize("function", list(MODEL_FIRST))
def test_a_name_where_the_network_belongs_is_one_error_naming_the_argument(function):
    call, argument = MODEL_FIRST[function]
    with pytest.raises(InputError, match=rf"^{argument} must be a torch.nn.Module \(the network itself\), "
                                         r"got a str \('resnet'\)"):
        call("resnet", PAIRS)


@pytest.mark.parametrize("function", READS_PAIRS)
def test_batches_of_dicts_are_one_error_naming_the_argument(function):
    call, _ = MODEL_FIRST[function]
    with pytest.raises(InputError, match=r"^batches must yield \(inputs, targets\) pairs of tensors, but .*batch "
                                         r".*is a dict with keys 'x', 'y'"):
        call(NET, DICTS)


@pytest.mark.parametrize("function", READS_PAIRS)
def test_targets_that_are_not_tensors_are_named(function):
    call, _ = MODEL_FIRST[function]
    with pytest.raises(InputError, match=r"^batches must yield .* the targets of .*batch.* are a list"):
        call(NET, [(INPUTS, [0, 1, 2, 0])])
