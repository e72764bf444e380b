"""small_cnn's 2x2 max pooling (ensembles.models.zoo._max_pool_2x2) gives F.max_pool2d's values and
gradients bit for bit, on maps full of ties (digits upscaled 4x: neighbouring pixels are equal), in
training, in evaluation without gradients and in eval mode with gradients, where it is F.max_pool2d
itself (the Hessian's rewrite and the permutation tracer read that call)."""
import pytest
import torch
import torch.nn.functional as F

from ensembles.data.datasets import batches, load_dataset
from ensembles.models import zoo
from ensembles.models.zoo import _max_pool_2x2


def tied_maps(dtype=torch.float32, channels=8):
    """ReLU'd maps with many ties: zeros, and blocks of equal values (a 16x16 map upscaled 2x)."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.randn(6, channels, 16, 16, generator=generator, dtype=dtype).round(decimals=1)
    return F.relu(coarse.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)).contiguous()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("training", [True, False])
def test_values_and_gradients_are_max_pool2d_s(dtype, training):
    x = tied_maps(dtype)
    assert (x == 0).float().mean() > 0.3  # the windows hold ties, which decide where a gradient goes
    reference_input, input_ = x.clone().requires_grad_(), x.clone().requires_grad_()
    reference, pooled = F.max_pool2d(reference_input, 2), _max_pool_2x2(input_, training)
    assert pooled.is_contiguous() and pooled.dtype == dtype
    assert torch.equal(pooled, reference)
    upstream = torch.randn(reference.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    reference.backward(upstream)
    pooled.backward(upstream)
    assert torch.equal(input_.grad, reference_input.grad)
    with torch.no_grad():
        assert torch.equal(_max_pool_2x2(x, training), reference.detach())
        assert _max_pool_2x2(x, training).is_contiguous()


@pytest.mark.parametrize("size", [(7, 9), (2, 3), (5, 4)])
def test_odd_sizes_drop_the_last_row_or_column_as_max_pool2d_does(size):
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        pooled = _max_pool_2x2(x, training=False)
    assert torch.equal(pooled, F.max_pool2d(x, 2)) and pooled.is_contiguous()
    with_nan = x.clone()
    with_nan[0, 0, 1, 1] = float("nan")
    with torch.no_grad():
        assert torch.isnan(_max_pool_2x2(with_nan, training=False)[0, 0, 0, 0])


def test_eval_mode_with_gradients_calls_max_pool2d(monkeypatch):
    calls = []
    original = F.max_pool2d
    monkeypatch.setattr(F, "max_pool2d", lambda *args, **kwargs: calls.append(kwargs) or original(*args, **kwargs))
    x = tied_maps().requires_grad_()
    _max_pool_2x2(x, training=False)
    assert len(calls) == 1
    x = torch.randn(2, 8, 4, 4).to(memory_format=torch.channels_last)  # another layout: left as it was
    with torch.no_grad():
        pooled = _max_pool_2x2(x, training=False)
    assert torch.equal(pooled, original(x, 2)) and pooled.is_contiguous(memory_format=torch.channels_last)


def test_a_training_step_of_small_cnn_on_digits_is_unchanged():
    """The network as a whole, on real digits, against the same network pooling with F.max_pool2d:
    the loss, every gradient and the batch-norm statistics are equal bit for bit."""
    inputs, targets = next(iter(batches(load_dataset("digits", None, "train"), 64)))

    def step(pool):
        torch.manual_seed(0)
        model = zoo.build("small_cnn", 10, width=8)
        model.train()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(zoo, "_max_pool_2x2", pool)
            loss = F.cross_entropy(model(inputs), targets)
            loss.backward()
            with torch.no_grad():
                evaluated = model.eval()(inputs)
        return [loss, evaluated, *(p.grad for p in model.parameters()), *model.state_dict().values()]

    fast = step(_max_pool_2x2)
    plain = step(lambda x, training: F.max_pool2d(x, 2))
    assert all(torch.equal(a, b) for a, b in zip(fast, plain))
