"""Checks of landscape.connectivity against dense, hand-built references.

Every reference below builds the network at a point of weight space by hand (state-dict
arithmetic or flattened parameter vectors) and evaluates it with one plain forward pass over all
the data at once, so it shares neither the batching, the sample weighting, the vmap evaluation nor
the weight combination of the code under test.
"""
import copy
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

import landscape.connectivity
from landscape import connectivity
from landscape.connectivity import (barrier_matrix, evenly_spaced_alphas, interpolate, interpolated_model,
                                    loss_barrier, plane, random_directions, random_directions_slice,
                                    recompute_batchnorm_statistics)
from landscape.errors import InputError
from tiny_networks import tiny_batches, tiny_model

DTYPE = torch.float64


def batches(seed, sizes=(7, 5, 9), features=4, classes=3, image=False):
    """Uneven batches, so a plain mean of batch means would be wrong."""
    generator = torch.Generator().manual_seed(seed)
    shape = (3, 6, 6) if image else (features,)
    return [(torch.randn(size, *shape, generator=generator, dtype=DTYPE),
             torch.randint(0, classes, (size,), generator=generator)) for size in sizes]


def mlp(seed, hidden=6, batchnorm=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(4, hidden)] + ([nn.BatchNorm1d(hidden)] if batchnorm else []) \
        + [nn.ReLU(), nn.Linear(hidden, 3)]
    return nn.Sequential(*layers).to(DTYPE)


def convnet(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3)).to(DTYPE)


def with_random_statistics(model, seed):
    """Give BatchNorm non-trivial running statistics, so interpolating them matters."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator, dtype=DTYPE))
            module.running_var.copy_(torch.rand(module.num_features, generator=generator, dtype=DTYPE) + 0.5)
    return model


def dense_loss_and_accuracy(model, data):
    inputs = torch.cat([x for x, _ in data])
    targets = torch.cat([y for _, y in data])
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(inputs)
    model.train(was_training)
    return F.cross_entropy(logits, targets).item(), (logits.argmax(1) == targets).double().mean().item()


def by_hand(model_a, model_b, alpha):
    """(1 − α) θ_a + α θ_b on every floating tensor of the state dict (buffers included)."""
    network = copy.deepcopy(model_a)
    state_b = model_b.state_dict()
    network.load_state_dict({name: (1 - alpha) * value + alpha * state_b[name]
                             if value.is_floating_point() else value
                             for name, value in model_a.state_dict().items()})
    return network.eval()


def permuted_hidden_units(model, seed):
    """The same function with its hidden units permuted: a second basin of the same loss."""
    permutation = torch.randperm(model[0].out_features, generator=torch.Generator().manual_seed(seed))
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin[0].weight.copy_(model[0].weight[permutation])
        twin[0].bias.copy_(model[0].bias[permutation])
        twin[-1].weight.copy_(model[-1].weight[:, permutation])
    return twin


# ----------------------------------------------------------------------------- linear interpolation


@pytest.mark.parametrize("chunk_size", [1, 3])
def test_endpoints_reproduce_each_models_own_loss(chunk_size):
    data = batches(0, image=True)
    model_a, model_b = with_random_statistics(convnet(1), 2), with_random_statistics(convnet(3), 4)
    path = interpolate(model_a, model_b, F.cross_entropy, data, alphas=5, chunk_size=chunk_size)
    assert path.bn_mode == "interpolated"
    for index, model in ((0, model_a), (-1, model_b)):
        loss, accuracy = dense_loss_and_accuracy(model, data)
        assert path.loss[index].item() == pytest.approx(loss, rel=1e-12)
        assert path.accuracy[index].item() == accuracy


@pytest.mark.parametrize("batchnorm", [False, True])
def test_interior_points_match_hand_built_networks_for_any_chunk_size(batchnorm):
    data = batches(5)
    model_a = with_random_statistics(mlp(6, batchnorm=batchnorm), 7)
    model_b = with_random_statistics(mlp(8, batchnorm=batchnorm), 9)
    alphas = [0.0, 0.3, 0.5, 0.8, 1.0, 1.4]
    paths = [interpolate(model_a, model_b, F.cross_entropy, data, alphas=alphas, chunk_size=size)
             for size in (1, 4, 50)]
    assert paths[0].bn_mode == ("interpolated" if batchnorm else "none")
    for alpha_index, alpha in enumerate(alphas):
        loss, accuracy = dense_loss_and_accuracy(by_hand(model_a, model_b, alpha), data)
        for path in paths:
            assert path.loss[alpha_index].item() == pytest.approx(loss, rel=1e-12)
            assert path.accuracy[alpha_index].item() == accuracy


def test_models_are_left_untouched():
    data = batches(10)
    model_a, model_b = mlp(11, batchnorm=True).train(), mlp(12, batchnorm=True).train()
    before = [copy.deepcopy(m.state_dict()) for m in (model_a, model_b)]
    interpolate(model_a, model_b, F.cross_entropy, data, alphas=3, bn_batches=data)
    plane([model_a, model_b, mlp(13, batchnorm=True)], F.cross_entropy, data, grid=2)
    random_directions_slice(model_a, F.cross_entropy, data, grid=2, bn_batches=data)
    for model, state in zip((model_a, model_b), before):
        assert model.training and all(m.training for m in model.modules())
        for name, value in model.state_dict().items():
            assert torch.equal(value, state[name]), name


# -------------------------------------------------------------------------------- BatchNorm reset


def test_reset_statistics_are_the_interpolated_networks_batch_statistics():
    data, statistics_data = batches(20), batches(21, sizes=(6, 11, 3))
    model_a = with_random_statistics(mlp(22, batchnorm=True), 23)
    model_b = with_random_statistics(mlp(24, batchnorm=True), 25)
    alpha = 0.4
    network = interpolated_model(model_a, model_b, alpha, bn_batches=statistics_data)

    weight = (1 - alpha) * model_a[0].weight + alpha * model_b[0].weight
    bias = (1 - alpha) * model_a[0].bias + alpha * model_b[0].bias
    batchnorm_inputs = torch.cat([x for x, _ in statistics_data]) @ weight.T + bias
    torch.testing.assert_close(network[1].running_mean, batchnorm_inputs.mean(0).detach(),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(network[1].running_var, batchnorm_inputs.var(0).detach(),
                               rtol=1e-12, atol=1e-12)

    path = interpolate(model_a, model_b, F.cross_entropy, data, alphas=[alpha, 1.0], bn_batches=statistics_data)
    assert path.bn_mode == "reset"
    loss, accuracy = dense_loss_and_accuracy(network, data)
    assert path.loss[0].item() == pytest.approx(loss, rel=1e-12)
    assert path.accuracy[0].item() == accuracy
    # The reset endpoint is model_b with its statistics recomputed, not model_b's own statistics.
    reset_b = recompute_batchnorm_statistics(model_b, statistics_data)
    assert path.loss[1].item() == pytest.approx(dense_loss_and_accuracy(reset_b, data)[0], rel=1e-12)
    assert path.loss[1].item() != pytest.approx(dense_loss_and_accuracy(model_b, data)[0], rel=1e-6)


def test_reset_statistics_of_a_convolution_pool_over_batch_and_space():
    statistics_data = [x for x, _ in batches(30, sizes=(5, 2, 8), image=True)]  # bare inputs
    model = with_random_statistics(convnet(31), 32)
    network = recompute_batchnorm_statistics(model, statistics_data)
    with torch.no_grad():
        channels_last = model[0](torch.cat(statistics_data)).transpose(0, 1).reshape(4, -1)
    torch.testing.assert_close(network[1].running_mean, channels_last.mean(1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(network[1].running_var, channels_last.var(1), rtol=1e-12, atol=1e-12)
    assert not network.training
    assert not torch.equal(model[1].running_mean, network[1].running_mean)  # the original kept its own


# --------------------------------------------------------------------------------------- barriers


def test_member_with_itself_has_zero_barrier():
    data = batches(40)
    for model in (mlp(41), with_random_statistics(mlp(42, batchnorm=True), 43)):
        barrier = loss_barrier(model, copy.deepcopy(model), F.cross_entropy, data, alphas=11)
        assert abs(barrier.value) < 1e-13
    model32 = mlp(44).float()
    data32 = [(x.float(), y) for x, y in data]
    assert abs(loss_barrier(model32, model32, F.cross_entropy, data32, alphas=11).value) < 1e-6


@settings(max_examples=12, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.1, 5.0))
def test_convex_loss_has_no_barrier(seed, scale):
    """Cross-entropy of a linear model is convex in its weights: the path never rises above the chord."""
    data = batches(seed)
    torch.manual_seed(seed)
    model_a, model_b = nn.Linear(4, 3).to(DTYPE), nn.Linear(4, 3).to(DTYPE)
    with torch.no_grad():
        model_b.weight.mul_(scale)
    barrier = loss_barrier(model_a, model_b, F.cross_entropy, data, alphas=15)
    assert barrier.value <= 1e-7
    assert barrier.value >= -1e-12  # the endpoints sit on the chord


def test_regression_loss_is_convex_and_has_no_accuracy():
    generator = torch.Generator().manual_seed(50)
    data = [(torch.randn(n, 4, generator=generator, dtype=DTYPE),
             torch.randn(n, 2, generator=generator, dtype=DTYPE)) for n in (3, 8)]
    torch.manual_seed(51)
    model_a, model_b = nn.Linear(4, 2).to(DTYPE), nn.Linear(4, 2).to(DTYPE)
    barrier = loss_barrier(model_a, model_b, F.mse_loss, data, alphas=9)
    assert barrier.value <= 1e-7
    assert torch.isnan(barrier.interpolation.accuracy).all()
    inputs, targets = torch.cat([x for x, _ in data]), torch.cat([y for _, y in data])
    with torch.no_grad():
        assert barrier.interpolation.loss[0].item() == pytest.approx(
            F.mse_loss(model_a(inputs), targets).item(), rel=1e-12)


def test_barrier_is_the_largest_excess_over_the_chord_of_hand_built_networks():
    data = batches(60)
    model_a = mlp(61, hidden=8)
    model_b = permuted_hidden_units(model_a, 62)
    alphas = torch.linspace(0, 1, 7, dtype=DTYPE)
    losses = torch.tensor([dense_loss_and_accuracy(by_hand(model_a, model_b, a.item()), data)[0]
                           for a in alphas], dtype=DTYPE)
    excess = losses - ((1 - alphas) * losses[0] + alphas * losses[-1])
    barrier = loss_barrier(model_a, model_b, F.cross_entropy, data, alphas=7)
    assert excess.max().item() > 1e-3  # a real barrier, so the test can tell a wrong peak
    assert barrier.value == pytest.approx(excess.max().item(), rel=1e-10)
    assert barrier.alpha == pytest.approx(alphas[excess.argmax()].item())


def test_barrier_adds_missing_endpoints():
    data = batches(65)
    model_a, model_b = mlp(66), mlp(67)
    barrier = loss_barrier(model_a, model_b, F.cross_entropy, data, alphas=[0.25, 0.5])
    assert barrier.interpolation.alphas.tolist() == [0.0, 0.25, 0.5, 1.0]
    assert barrier.interpolation.loss[-1].item() == pytest.approx(dense_loss_and_accuracy(model_b, data)[0],
                                                                  rel=1e-12)


def test_barrier_matrix_is_symmetric_and_agrees_with_pairwise_barriers():
    data = batches(70)
    members = [mlp(71, hidden=8)]
    members += [permuted_hidden_units(members[0], 72), mlp(73, hidden=8)]
    matrix = barrier_matrix(members, F.cross_entropy, data, alphas=5)
    assert torch.equal(matrix.value, matrix.value.T)
    assert torch.equal(matrix.value.diagonal(), torch.zeros(3, dtype=torch.float64))
    assert torch.isnan(matrix.alpha.diagonal()).all()
    for i in range(3):
        for j in range(i + 1, 3):
            pair = loss_barrier(members[i], members[j], F.cross_entropy, data, alphas=5)
            assert matrix.value[i, j].item() == pytest.approx(pair.value, abs=1e-14)
            assert matrix.alpha[i, j].item() == pair.alpha
            assert matrix.alpha[j, i].item() == pytest.approx(1 - pair.alpha)
            assert torch.equal(matrix.interpolations[(i, j)].loss, pair.interpolation.loss)
    assert matrix.value[0, 1] > 1e-4  # a real barrier, so alpha* is meaningful


# -------------------------------------------------------------------------------------------- planes


def test_plane_uses_garipovs_orthonormal_basis():
    data = batches(80)
    members = [mlp(81), mlp(82), mlp(83)]
    result = plane(members, F.cross_entropy, data, grid=(4, 3), margin=0.25)
    assert result.bn_mode == "none" and result.loss.shape == (4, 3)

    w1, w2, w3 = (parameters_to_vector(m.parameters()).detach() for m in members)
    u = (w2 - w1) / (w2 - w1).norm()
    v = (w3 - w1) - ((w3 - w1) @ u) * u
    v = v / v.norm()
    expected_coordinates = torch.tensor([[0.0, 0.0], [(w2 - w1).norm(), 0.0], [(w3 - w1) @ u, (w3 - w1) @ v]],
                                        dtype=torch.float64)
    torch.testing.assert_close(result.member_coordinates, expected_coordinates, rtol=1e-12, atol=1e-12)
    assert abs(result.basis_info.cosine) < 1e-12

    # The grid covers the members plus a quarter of their extent on each side.
    low, high = expected_coordinates.min(0).values, expected_coordinates.max(0).values
    torch.testing.assert_close(torch.stack([result.u[0], result.v[0]]), low - 0.25 * (high - low))
    torch.testing.assert_close(torch.stack([result.u[-1], result.v[-1]]), high + 0.25 * (high - low))

    for i, j in ((0, 0), (3, 2), (1, 1), (2, 0)):
        network = copy.deepcopy(members[0])
        vector_to_parameters(w1 + result.u[i] * u + result.v[j] * v, network.parameters())
        loss, accuracy = dense_loss_and_accuracy(network, data)
        assert result.loss[i, j].item() == pytest.approx(loss, rel=1e-10)
        assert result.accuracy[i, j].item() == accuracy


def test_plane_member_positions_reproduce_the_members_own_losses():
    data = batches(90, image=True)
    members = [with_random_statistics(convnet(seed), seed + 1) for seed in (91, 93, 95)]
    result = plane(members, F.cross_entropy, data, grid=3, chunk_size=4)  # members share a chunk
    assert result.bn_mode == "interpolated"
    for member, loss, accuracy in zip(members, result.member_loss, result.member_accuracy):
        own_loss, own_accuracy = dense_loss_and_accuracy(member, data)
        assert loss.item() == pytest.approx(own_loss, rel=1e-12)
        assert accuracy.item() == own_accuracy


def test_filter_normalized_directions_have_the_weights_filter_norms():
    model = convnet(100)
    first, second = random_directions(model, 2, seed=3)
    for name, weight in model.named_parameters():
        for direction in (first, second):
            if weight.dim() <= 1:  # biases and BatchNorm parameters stay put
                assert torch.equal(direction[name], torch.zeros_like(weight)), name
                continue
            weight_norms = weight.detach().flatten(1).norm(dim=1)
            torch.testing.assert_close(direction[name].flatten(1).norm(dim=1), weight_norms,
                                       rtol=1e-12, atol=0)
    assert not torch.equal(first["0.weight"], second["0.weight"])
    again = random_directions(model, 2, seed=3)
    assert all(torch.equal(again[0][name], first[name]) for name in first)
    raw = random_directions(model, 1, seed=3, filter_normalized=False)[0]
    assert not torch.allclose(raw["0.weight"].flatten(1).norm(dim=1),
                              model[0].weight.detach().flatten(1).norm(dim=1))


def test_random_slice_matches_hand_built_points():
    data = batches(110, image=True)
    model = with_random_statistics(convnet(111), 112)
    result = random_directions_slice(model, F.cross_entropy, data, grid=3, span=0.5, seed=4, chunk_size=4)
    assert result.bn_mode == "fixed" and result.basis_info.method == "li2018"
    own_loss, own_accuracy = dense_loss_and_accuracy(model, data)
    assert result.loss[1, 1].item() == pytest.approx(own_loss, rel=1e-12)
    assert result.member_loss[0].item() == pytest.approx(own_loss, rel=1e-12)
    assert result.member_accuracy[0].item() == own_accuracy

    first, second = random_directions(model, 2, seed=4)
    for i, j in ((0, 2), (2, 1)):
        network = copy.deepcopy(model)
        with torch.no_grad():
            for name, parameter in network.named_parameters():
                parameter.add_(result.u[i] * first[name] + result.v[j] * second[name])
        assert result.loss[i, j].item() == pytest.approx(dense_loss_and_accuracy(network, data)[0], rel=1e-10)
    weight_norm = torch.cat([p.detach().flatten() for p in model.parameters() if p.dim() > 1]).norm()
    assert result.basis_info.u_norm == pytest.approx(weight_norm.item(), rel=1e-12)


# ------------------------------------------------------------------------------------------- errors


def test_bad_input_is_named():
    data = batches(120)
    with pytest.raises(InputError, match="architecture"):
        interpolate(mlp(121, hidden=6), mlp(122, hidden=5), F.cross_entropy, data)
    with pytest.raises(InputError, match="architecture"):
        barrier_matrix([mlp(121), mlp(122), mlp(123, batchnorm=True)], F.cross_entropy, data)
    with pytest.raises(InputError, match="three"):
        plane([mlp(121), mlp(122)], F.cross_entropy, data)
    with pytest.raises(InputError, match="one-shot"):
        interpolate(mlp(121), mlp(122), F.cross_entropy, iter(data))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        loss_barrier(mlp(121), mlp(122), F.cross_entropy, data, alphas=[-0.5, 0.5])
    first, second = mlp(121), mlp(122)
    third = by_hand(first, second, 2.0)
    with pytest.raises(InputError, match="collinear"):
        plane([first, second, third], F.cross_entropy, data)
    with pytest.raises(InputError, match="scalar"):
        interpolate(first, second, lambda outputs, targets: F.cross_entropy(outputs, targets, reduction="none"),
                    data)


def same(first, second):
    """Equal tensors, floats (NaN equal to NaN) or dataclass fields."""
    if isinstance(first, torch.Tensor):
        return torch.equal(first, second) or bool(torch.allclose(first, second, equal_nan=True, rtol=0, atol=0))
    if isinstance(first, float):
        return first == second or (first != first and second != second)
    return first == second


@pytest.mark.parametrize("function, arguments", [
    ("interpolate", lambda a, b, c: (a, b)),
    ("loss_barrier", lambda a, b, c: (a, b)),
    ("barrier_matrix", lambda a, b, c: ([a, b, c],)),
    ("plane", lambda a, b, c: ([a, b, c],)),
    ("random_directions_slice", lambda a, b, c: (a,)),
])
def test_connectivity_refuses_the_data_where_the_loss_belongs(function, arguments):
    members = arguments(tiny_model(0), tiny_model(1), tiny_model(2))
    measure = getattr(connectivity, function)
    options = {"grid": 2} if function in ("plane", "random_directions_slice") else {"alphas": 3}
    with pytest.raises(InputError, match=r"loss_fn must be callable .*pass \(\.\.\., loss_fn, batches\)"):
        measure(*members, tiny_batches(), F.cross_entropy, **options)
    with pytest.raises(TypeError, match="loader"):
        measure(*members, loss_fn=F.cross_entropy, loader=tiny_batches(), **options)


def test_connectivity_takes_a_loss_module_as_the_loss():
    a, b = tiny_model(0), tiny_model(1)
    batches = tiny_batches()
    module = connectivity.interpolate(a, b, nn.CrossEntropyLoss(), batches, alphas=3, bn_batches=batches)
    function = connectivity.interpolate(a, b, F.cross_entropy, batches, alphas=3, bn_batches=batches)
    assert same(module.loss, function.loss)


# ----------------------------------------------------------------------------------------------
# α: the same double on every machine


@pytest.mark.parametrize("count", [2, 3, 7, 11, 21, 41, 100])
def test_alphas_are_the_doubles_nearest_i_over_count_minus_one(count):
    alphas = evenly_spaced_alphas(count).tolist()
    assert alphas == [float(Fraction(i, count - 1)) for i in range(count)]  # correctly rounded: no CPU in it
    assert alphas == evenly_spaced_alphas(2 * count - 1).tolist()[::2]  # a finer grid shares every point
    assert landscape.connectivity._alpha_grid(count).tolist() == alphas


def test_a_count_below_two_is_refused():
    for count in (1, 0, True):
        with pytest.raises(landscape.connectivity.InputError, match="at least 2"):
            evenly_spaced_alphas(count)
