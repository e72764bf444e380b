"""Per-sample Fisher trace against a plain loop over samples with ordinary autograd, and against
the closed form of a linear model."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from landscape import fisher
from landscape.errors import InputError
from landscape.fisher import per_sample_fisher_trace
from tiny_networks import tiny_batches, tiny_model

DTYPE = torch.float64


def looped_fisher_trace(model: nn.Module, loss_fn, inputs, targets, names=None) -> torch.Tensor:
    """‖∇θ ℓ(x_j, y_j)‖² one sample at a time with torch.autograd.grad, in eval mode."""
    model.eval()
    named = dict(model.named_parameters())
    parameters = [named[name] for name in (names or named)]
    traces = []
    for j in range(len(inputs)):
        loss = loss_fn(model(inputs[j:j + 1]), targets[j:j + 1])
        gradient = torch.autograd.grad(loss, parameters)
        traces.append(sum((part ** 2).sum() for part in gradient))
    return torch.stack(traces).detach()


def small_cnn_with_batch_norm(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Dropout(0.3), nn.Linear(4 * 3 * 3, 5)).to(DTYPE)
    batch_norm = model[1]
    batch_norm.running_mean.copy_(torch.randn(4))
    batch_norm.running_var.copy_(torch.rand(4) + 0.5)
    batch_norm.weight.data.copy_(torch.randn(4))
    return model


def images(n: int, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 6, 6, dtype=DTYPE, generator=generator), torch.randint(0, 5, (n,), generator=generator)


def test_equals_a_loop_over_samples_with_batch_norm_in_eval_mode():
    model = small_cnn_with_batch_norm()
    inputs, targets = images(13)
    model.train()
    running_mean = model[1].running_mean.clone()
    traces = per_sample_fisher_trace(model, F.cross_entropy, (inputs, targets), chunk_size=5)
    assert model.training and model[1].training  # mode restored
    expected = looped_fisher_trace(model, F.cross_entropy, inputs, targets)
    assert traces.shape == (13,) and traces.dtype == DTYPE
    assert torch.allclose(traces, expected, rtol=1e-10, atol=0)
    # the reference ran in eval mode; in train mode BatchNorm would use the sample's own statistics
    # and update its running statistics, which must be untouched
    assert torch.equal(model[1].running_mean, running_mean) and model[1].num_batches_tracked.item() == 0


def test_batches_are_concatenated_in_order_and_chunking_does_not_matter():
    model = small_cnn_with_batch_norm(seed=2)
    inputs, targets = images(20, seed=3)
    whole = per_sample_fisher_trace(model, F.cross_entropy, (inputs, targets), chunk_size=None)
    batches = (pair for pair in [(inputs[:7], targets[:7]), (inputs[7:8], targets[7:8]), (inputs[8:], targets[8:])])
    split = per_sample_fisher_trace(model, F.cross_entropy, batches, chunk_size=3)
    assert torch.allclose(whole, split, rtol=1e-12, atol=0)
    assert torch.allclose(whole, looped_fisher_trace(model, F.cross_entropy, inputs, targets), rtol=1e-10, atol=0)


def test_closed_form_of_a_linear_least_squares_model():
    # ℓ_j(w, b) = (wᵀx_j + b − y_j)²: ∇ = 2 r_j (x_j, 1), so ‖∇‖² = 4 r_j² (‖x_j‖² + 1)
    torch.manual_seed(4)
    model = nn.Linear(5, 1).to(DTYPE)
    inputs = torch.randn(9, 5, dtype=DTYPE)
    targets = torch.randn(9, dtype=DTYPE)
    squared_error = lambda outputs, target: ((outputs.squeeze(1) - target) ** 2).mean()
    residual = (inputs @ model.weight.detach()[0] + model.bias.detach() - targets)
    expected = 4 * residual ** 2 * ((inputs ** 2).sum(dim=1) + 1)
    assert torch.allclose(per_sample_fisher_trace(model, squared_error, (inputs, targets)), expected, rtol=1e-12)
    only_bias = per_sample_fisher_trace(model, squared_error, (inputs, targets), params=["bias"])
    assert torch.allclose(only_bias, 4 * residual ** 2, rtol=1e-12)


def test_float32_model_stays_in_float32():
    model = small_cnn_with_batch_norm(seed=5).float()
    inputs, targets = images(6, seed=6)
    traces = per_sample_fisher_trace(model, F.cross_entropy, (inputs, targets))  # float64 inputs are cast
    assert traces.dtype == torch.float32
    expected = looped_fisher_trace(model.double(), F.cross_entropy, inputs, targets)
    assert torch.allclose(traces.double(), expected, rtol=1e-4)


def test_bad_input_raises_input_error():
    model = small_cnn_with_batch_norm()
    inputs, targets = images(4)
    with pytest.raises(InputError, match="chunk_size"):
        per_sample_fisher_trace(model, F.cross_entropy, (inputs, targets), chunk_size=0)
    with pytest.raises(InputError, match="no samples"):
        per_sample_fisher_trace(model, F.cross_entropy, [])
    with pytest.raises(InputError, match="targets"):
        per_sample_fisher_trace(model, F.cross_entropy, [(inputs, targets[:3])])
    with pytest.raises(InputError, match="unknown parameter"):
        per_sample_fisher_trace(model, F.cross_entropy, (inputs, targets), params=["head.weight"])


# ------------------------------------------------------------------------------------------------
# The layerwise method (norms from each layer's input and output gradient) against the loop
# ------------------------------------------------------------------------------------------------

def _randomize_batch_norms(model: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator))
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.weight.copy_(torch.randn(module.num_features, generator=generator))
                module.bias.copy_(torch.randn(module.num_features, generator=generator))
    return model


def _never_vmap(monkeypatch):
    import landscape.fisher as fisher

    def refuse(*arguments):
        raise AssertionError("the vmap method ran where the layerwise one applies")
    monkeypatch.setattr(fisher, "_vmap_traces", refuse)


class ConvolutionZoo(nn.Module):
    """Strided, dilated, grouped and biased convolutions; a late layer with few positions (where
    the Gram-matrix 'ghost' norm is cheaper) and an early one with many (where it is not)."""

    def __init__(self):
        super().__init__()
        self.early = nn.Conv2d(3, 8, 3, padding=1, bias=True)  # T = 64, K = 27, C = 8: per-sample gradient
        self.batch_norm = nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=2, bias=False)
        self.late = nn.Conv2d(8, 16, 3, stride=2, padding=1)  # T = 4, K = 72, C = 16: ghost norm
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        out = F.relu(self.batch_norm(self.early(x)))
        out = F.relu(self.grouped(out))
        out = F.relu(self.late(out))
        return self.head(out.mean((2, 3)))


def test_layerwise_equals_the_loop_for_strided_dilated_grouped_convolutions(monkeypatch):
    torch.manual_seed(5)
    model = _randomize_batch_norms(ConvolutionZoo().to(DTYPE), seed=6)
    generator = torch.Generator().manual_seed(7)
    inputs = torch.randn(11, 3, 8, 8, dtype=DTYPE, generator=generator)
    targets = torch.randint(0, 4, (11,), generator=generator)
    # both sides of the per-layer choice are exercised: T(K + C) against K·C
    assert 64 * (27 + 8) > 27 * 8 and 4 * (72 + 16) < 72 * 16
    expected = looped_fisher_trace(model, F.cross_entropy, inputs, targets)
    _never_vmap(monkeypatch)
    for chunk_size in (None, 4):
        traces = per_sample_fisher_trace(model, F.cross_entropy, (inputs, targets), chunk_size=chunk_size,
                                         method="layerwise")
        torch.testing.assert_close(traces, expected, rtol=1e-10, atol=0)
    names = ["grouped.weight", "batch_norm.bias", "late.bias", "head.weight"]
    only = per_sample_fisher_trace(model, F.cross_entropy, (inputs, targets), params=names)
    torch.testing.assert_close(only, looped_fisher_trace(model, F.cross_entropy, inputs, targets, names),
                               rtol=1e-10, atol=0)


def test_layerwise_equals_the_loop_for_dense_layers_on_sequences_and_batch_norm_1d(monkeypatch):
    torch.manual_seed(8)

    class Sequence(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(6, 5)  # applied at each of 7 positions
            self.batch_norm = nn.BatchNorm1d(5)
            self.head = nn.Linear(5, 3, bias=False)

        def forward(self, x):
            hidden = torch.tanh(self.embed(x))  # (n, 7, 5)
            return self.head(self.batch_norm(hidden.mean(1)))

    model = _randomize_batch_norms(Sequence().to(DTYPE), seed=9)
    generator = torch.Generator().manual_seed(10)
    inputs = torch.randn(9, 7, 6, dtype=DTYPE, generator=generator)
    targets = torch.randint(0, 3, (9,), generator=generator)
    _never_vmap(monkeypatch)
    torch.testing.assert_close(per_sample_fisher_trace(model, F.cross_entropy, (inputs, targets)),
                               looped_fisher_trace(model, F.cross_entropy, inputs, targets), rtol=1e-10, atol=0)


@pytest.mark.parametrize("name,options", [("small_cnn", {"width": 4}), ("resnet18", {"width": 2}),
                                          ("mlp", {"input_size": 48, "hidden": (16, 8)})])
def test_layerwise_equals_the_loop_on_the_bundled_architectures(monkeypatch, name, options):
    from ensembles.models.zoo import build

    torch.manual_seed(11)
    model = _randomize_batch_norms(build(name, 5, **options).to(DTYPE), seed=12)
    size = 4 if name == "mlp" else 16
    generator = torch.Generator().manual_seed(13)
    inputs = torch.randn(6, 3, size, size, dtype=DTYPE, generator=generator)
    targets = torch.randint(0, 5, (6,), generator=generator)
    expected = looped_fisher_trace(model, F.cross_entropy, inputs, targets)
    _never_vmap(monkeypatch)
    torch.testing.assert_close(per_sample_fisher_trace(model, F.cross_entropy, (inputs, targets)), expected,
                               rtol=1e-9, atol=0)


class SharedLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.layer(torch.tanh(self.layer(x)))))


class Scaled(nn.Module):
    """A parameterized module the layerwise method has no formula for."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 4))
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.tanh(x * self.scale))


@pytest.mark.parametrize("make", [SharedLayer, Scaled, lambda: nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 3))])
def test_auto_falls_back_to_vmap_where_the_layer_formulas_do_not_apply(make):
    torch.manual_seed(14)
    model = make().to(DTYPE)
    generator = torch.Generator().manual_seed(15)
    inputs = torch.randn(7, 4, dtype=DTYPE, generator=generator)
    targets = torch.randint(0, 3, (7,), generator=generator)
    expected = looped_fisher_trace(model, F.cross_entropy, inputs, targets)
    for method in ("auto", "vmap"):
        torch.testing.assert_close(per_sample_fisher_trace(model, F.cross_entropy, (inputs, targets), method=method),
                                   expected, rtol=1e-10, atol=0)
    with pytest.raises(InputError, match="method='layerwise'.*(twice|is not)"):
        per_sample_fisher_trace(model, F.cross_entropy, (inputs, targets), method="layerwise")


def test_batch_norm_without_running_statistics_is_not_treated_as_per_sample(monkeypatch):
    # it normalizes with the batch's own statistics even in eval mode, mixing samples: auto must use vmap
    import landscape.fisher as fisher

    torch.manual_seed(16)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.Linear(4, 3)).to(DTYPE)
    assert fisher._layers_of(model.eval(), [name for name, _ in model.named_parameters()])[0] is None
    with pytest.raises(InputError, match="unknown method|must be one of"):
        per_sample_fisher_trace(model, F.cross_entropy, (torch.zeros(2, 4, dtype=DTYPE), torch.zeros(2, dtype=torch.long)),
                                method="ghost")


def test_fisher_takes_its_settings_by_keyword():
    model, batches = tiny_model(), tiny_batches()
    with pytest.raises(TypeError, match="positional"):
        fisher.per_sample_fisher_trace(model, F.cross_entropy, batches, 3)
    assert fisher.per_sample_fisher_trace(model, F.cross_entropy, batches, chunk_size=3).shape == (8,)
