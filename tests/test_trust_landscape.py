"""landscape/: one calling convention, one parameter-selection rule, one spelling of
norms, one home for the checks, and the old spellings still working (with a DeprecationWarning)
for one release, giving exactly the result of the new spelling."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape import connectivity, fisher, hessian, robustness, sharpness
from landscape._checks import (_deprecated_alias, evaluation_mode, finite_float, frozen_parameters,
                               model_dtype_device, norm_name, positive_int, select_parameters)
from landscape.errors import InputError
from landscape.hvp import LossHessian


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def tiny_batches(count=2, size=4, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, generator=generator, dtype=torch.float64),
             torch.randint(0, 2, (size,), generator=generator)) for _ in range(count)]


def same(first, second):
    """Equal tensors, floats (NaN equal to NaN) or dataclass fields."""
    if isinstance(first, torch.Tensor):
        return torch.equal(first, second) or bool(torch.allclose(first, second, equal_nan=True, rtol=0, atol=0))
    if isinstance(first, float):
        return first == second or (first != first and second != second)
    return first == second


def no_warning(call):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        return call()


# -- the deprecated spellings ----------------------------------------------------------------------

def test_sharpness_include_is_a_deprecated_alias_of_params():
    model, batches = tiny_model(), tiny_batches()
    new = no_warning(lambda: sharpness.worst_case_sharpness(model, F.cross_entropy, batches, 0.1, params="2.*", n_iters=3))
    with pytest.warns(DeprecationWarning, match="include"):
        old = sharpness.worst_case_sharpness(model, F.cross_entropy, batches, 0.1, include="2.*", n_iters=3)
    assert same(old.per_batch, new.per_batch) and old.n_perturbed == new.n_perturbed == 10
    assert new.params == ("2.*",)
    with pytest.warns(DeprecationWarning, match="params"):
        assert old.include == ("2.*",)


def test_average_case_n_samples_is_a_deprecated_alias_of_n_draws():
    model, batches = tiny_model(), tiny_batches()
    new = no_warning(lambda: sharpness.average_case_sharpness(
        model, F.cross_entropy, batches, 0.1, n_draws=5, generator=torch.Generator().manual_seed(3)))
    with pytest.warns(DeprecationWarning, match="n_samples"):
        old = sharpness.average_case_sharpness(model, F.cross_entropy, batches, 0.1, n_samples=5,
                                               generator=torch.Generator().manual_seed(3))
    assert same(old.per_batch, new.per_batch) and new.n_draws == 5
    with pytest.warns(DeprecationWarning, match="n_draws"):
        assert new.n_samples == 5


def test_sharpness_settings_passed_by_position_still_work_with_a_warning():
    model, batches = tiny_model(), tiny_batches()
    new = sharpness.worst_case_sharpness(model, F.cross_entropy, batches, 0.1, "l2", True, n_iters=2, n_restarts=1)
    with pytest.warns(DeprecationWarning, match="by position"):
        old = sharpness.worst_case_sharpness(model, F.cross_entropy, batches, 0.1, "l2", True, 2, 1)
    assert same(old.per_batch, new.per_batch) and old.n_iters == 2


def test_old_and_new_name_together_is_refused():
    model, batches = tiny_model(), tiny_batches()
    with pytest.raises(TypeError, match="both"):
        sharpness.average_case_sharpness(model, F.cross_entropy, batches, 0.1, n_samples=2, n_draws=2)


def test_select_parameters_include_is_a_deprecated_alias():
    model = tiny_model()
    with pytest.warns(DeprecationWarning):
        old = sharpness.select_parameters(model, include="*.bias")
    assert list(old) == list(select_parameters(model, params="*.bias")) == ["0.bias", "2.bias"]


def test_fisher_inputs_or_batches_and_positional_chunk_size_are_deprecated():
    model, batches = tiny_model(), tiny_batches()
    new = no_warning(lambda: fisher.per_sample_fisher_trace(model, F.cross_entropy, batches, chunk_size=3))
    with pytest.warns(DeprecationWarning, match="inputs_or_batches"):
        old = fisher.per_sample_fisher_trace(model, F.cross_entropy, inputs_or_batches=batches, chunk_size=3)
    assert same(old, new)
    with pytest.warns(DeprecationWarning, match="by position"):
        assert same(fisher.per_sample_fisher_trace(model, F.cross_entropy, batches, 3), new)


def test_hessian_positional_settings_and_n_samples_are_deprecated():
    model, batches = tiny_model(), tiny_batches()
    new = hessian.hessian_trace(model, F.cross_entropy, batches, n_probes=6, generator=torch.Generator().manual_seed(2))
    with pytest.warns(DeprecationWarning, match="by position"):
        old = hessian.hessian_trace(model, F.cross_entropy, batches, 6, generator=torch.Generator().manual_seed(2))
    assert same(old.samples, new.samples)
    assert new.n_examples == 8
    with pytest.warns(DeprecationWarning, match="n_examples"):
        assert new.n_samples == 8


@pytest.mark.parametrize("function, arguments", [
    ("interpolate", lambda a, b, c: (a, b)),
    ("loss_barrier", lambda a, b, c: (a, b)),
    ("barrier_matrix", lambda a, b, c: ([a, b, c],)),
    ("plane", lambda a, b, c: ([a, b, c],)),
    ("random_directions_slice", lambda a, b, c: (a,)),
])
def test_connectivity_old_order_loader_then_loss_is_deprecated(function, arguments):
    members = arguments(tiny_model(0), tiny_model(1), tiny_model(2))
    measure = getattr(connectivity, function)
    options = {"grid": 2} if function in ("plane", "random_directions_slice") else {"alphas": 3}
    batches = tiny_batches()
    new = no_warning(lambda: measure(*members, F.cross_entropy, batches, **options))
    with pytest.warns(DeprecationWarning, match="loss_fn, batches"):
        old = measure(*members, batches, F.cross_entropy, **options)
    with pytest.warns(DeprecationWarning, match="loader"):
        keyword = measure(*members, loss_fn=F.cross_entropy, loader=batches, **options)
    for result in (old, keyword):
        for field in ("loss", "value"):
            if hasattr(new, field):
                assert same(getattr(result, field), getattr(new, field))


def test_connectivity_bn_loader_is_a_deprecated_alias_and_a_module_loss_is_not_taken_for_data():
    a, b = tiny_model(0), tiny_model(1)
    batches, loss = tiny_batches(), nn.CrossEntropyLoss()
    new = no_warning(lambda: connectivity.interpolate(a, b, loss, batches, alphas=3, bn_batches=batches))
    with pytest.warns(DeprecationWarning, match="bn_loader"):
        old = connectivity.interpolate(a, b, loss, batches, alphas=3, bn_loader=batches)
    assert same(old.loss, new.loss)


def test_norms_have_one_spelling_in_any_case():
    model, batches = tiny_model(), tiny_batches()
    lower = sharpness.worst_case_sharpness(model, F.cross_entropy, batches, 0.1, "linf", n_iters=2)
    upper = no_warning(lambda: sharpness.worst_case_sharpness(model, F.cross_entropy, batches, 0.1, "Linf", n_iters=2))
    assert same(lower.per_batch, upper.per_batch) and upper.norm == "linf"
    assert upper.metric == "sharpness/worst/linf/adaptive"
    robustness.check_radius("L2", 0.5, 3)
    robustness.check_radius("linf", 0.1)
    with pytest.raises(InputError, match="norm"):
        norm_name("l1")


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


# -- one parameter-selection rule ------------------------------------------------------------------

SELECTIONS = [
    (None, None),
    ("*.weight", None),
    (["2.weight", "0.bias"], None),          # exact names are globs matching themselves
    (r"(0|2)\.bias", None),                  # a regular expression on the whole name
    (None, "0.*"),
    ("*", ["*.bias"]),
]


def squared_gradient_norms(model, names, inputs, targets):
    named = dict(model.named_parameters())
    norms = []
    for x, y in zip(inputs, targets):
        loss = F.cross_entropy(model(x[None]), y[None])
        gradients = torch.autograd.grad(loss, [named[name] for name in names])
        norms.append(sum(gradient.pow(2).sum() for gradient in gradients))
    return torch.stack(norms).detach()


@pytest.mark.parametrize("params, exclude", SELECTIONS)
def test_every_module_selects_the_same_parameters(params, exclude):
    model, batches = tiny_model(), tiny_batches(count=1)
    expected = list(select_parameters(model, params, exclude))
    count = sum(dict(model.named_parameters())[name].numel() for name in expected)

    assert list(LossHessian(model, F.cross_entropy, batches, params=params, exclude=exclude).names) == expected
    pairs = hessian.hessian_eigenvalues(model, F.cross_entropy, batches, params=params, exclude=exclude, k=1,
                                        n_iters=count)
    assert list(pairs.parameter_names) == expected
    trace = hessian.hessian_trace(model, F.cross_entropy, batches, params=params, exclude=exclude, n_probes=1)
    assert trace.dimension == count
    worst = sharpness.worst_case_sharpness(model, F.cross_entropy, batches, 0.1, params=params, exclude=exclude,
                                           n_iters=1)
    assert worst.n_perturbed == count
    inputs, targets = batches[0]
    torch.testing.assert_close(
        fisher.per_sample_fisher_trace(model, F.cross_entropy, batches, params=params, exclude=exclude),
        squared_gradient_norms(model, expected, inputs, targets))


@pytest.mark.parametrize("measure", [
    lambda model, b, p: hessian.hessian_trace(model, F.cross_entropy, b, params=p, n_probes=1),
    lambda model, b, p: fisher.per_sample_fisher_trace(model, F.cross_entropy, b, params=p),
    lambda model, b, p: sharpness.worst_case_sharpness(model, F.cross_entropy, b, 0.1, params=p, n_iters=1),
    lambda model, b, p: LossHessian(model, F.cross_entropy, b, params=p),
])
def test_a_pattern_matching_nothing_is_the_same_error_everywhere(measure):
    with pytest.raises(InputError, match="unknown parameter: params pattern 'head.*' matches no trainable"):
        measure(tiny_model(), tiny_batches(), "head.*")


def test_frozen_parameters_are_not_selected_by_any_pattern():
    model = tiny_model()
    model[0].weight.requires_grad_(False)
    assert "0.weight" not in select_parameters(model, "*")
    with pytest.raises(InputError, match="matches no trainable"):
        select_parameters(model, "0.weight")


# -- the checks themselves ---------------------------------------------------------------------------

def test_positive_int():
    assert positive_int("n", 3) == 3 and positive_int("n", 0, minimum=0) == 0
    assert positive_int("n", None, optional=True) is None
    for bad in (0, -1, 2.5, True, "3", None, float("nan")):
        with pytest.raises(InputError, match="n must be an integer >= 1"):
            positive_int("n", bad)


def test_finite_float():
    assert finite_float("rho", 0) == 0.0 and finite_float("rho", 0.5, minimum=0) == 0.5
    for bad, options in ((float("nan"), {}), (float("inf"), {}), (True, {}), ("1", {}), (-0.1, {"minimum": 0}),
                         (0.0, {"minimum": 0, "exclusive": True}), (None, {})):
        with pytest.raises(InputError, match="rho must be a finite number"):
            finite_float("rho", bad, **options)


def test_mode_context_managers_restore_every_flag_even_on_error():
    model = tiny_model()
    model[0].eval()
    model[2].weight.requires_grad_(False)
    with pytest.raises(RuntimeError):
        with evaluation_mode(model), frozen_parameters(model):
            assert not any(m.training for m in model.modules())
            assert not any(p.requires_grad for p in model.parameters())
            raise RuntimeError
    assert [m.training for m in model.modules()] == [True, False, True, True]
    assert [p.requires_grad for p in model.parameters()] == [True, True, False, True]


def test_model_dtype_device():
    assert model_dtype_device(tiny_model()) == (torch.float64, torch.device("cpu"))
    assert model_dtype_device(nn.ReLU()) == (torch.get_default_dtype(), torch.device("cpu"))
    with pytest.raises(InputError, match="no floating-point parameters to perturb"):
        model_dtype_device(nn.ReLU(), purpose="to perturb")


def test_deprecated_alias_decorator():
    @_deprecated_alias(old="new")
    def function(*, new):
        return new
    with pytest.warns(DeprecationWarning, match=r"function\(old=...\) is deprecated; use new=..."):
        assert function(old=4) == 4
    assert no_warning(lambda: function(new=5)) == 5


# -- the docstring examples: pytest runs them (setup.cfg: --doctest-modules on the packages) -----------

EXAMPLED_MODULES = ["_checks", "calibration", "connectivity", "diversity", "ensemble", "fisher", "hessian", "hvp",
                    "perturbation", "robustness", "sharpness"]


@pytest.mark.parametrize("name", EXAMPLED_MODULES)
def test_every_measurement_module_keeps_a_runnable_example(name):
    import doctest
    import importlib

    module = importlib.import_module(f"landscape.{name}")
    examples = sum(len(test.examples) for test in doctest.DocTestFinder().find(module))
    assert examples > 0, f"landscape/{name}.py lost its runnable example"
