"""Checks of landscape.alignment with the zoo's hand-written permutation specs: a model and a
randomly permuted copy of it (every group, batch norm and residual streams included) compute the
same function; weight and activation matching find the original again exactly, and the loss barrier
between them vanishes; on two independently trained MLPs alignment does not raise the barrier; a
spec that forgets a tensor, permutes a wrong axis or fits another width is refused."""
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from ensembles.models import zoo
from ensembles.models.permutation_specs import permutation_spec, zoo_permutation_spec
from landscape.alignment import (PermutationSpec, activation_matching, apply_permutation, check_preserves_function,
                                 match_weights, weight_matching)
from landscape.connectivity import loss_barrier, recompute_batchnorm_statistics
from landscape.errors import InputError

TINY = {
    "mlp": lambda: zoo.build("mlp", 3, input_size=3 * 8 * 8, hidden=(7, 6)),
    "small_cnn": lambda: zoo.build("small_cnn", 3, width=3),
    "resnet18": lambda: zoo.build("resnet18", 3, width=3),
    "resnet18_tin": lambda: zoo.build("resnet18_tin", 3, width=3),
    "wrn40_2": lambda: zoo.WideResNet(3, depth=16, widen_factor=1),  # the wrn40_2 class, fewer blocks
}


def images(seed, count=64):
    return torch.randn(count, 3, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def randomized(name, seed=0):
    """A tiny zoo model whose batch-norm and channel-scale tensors are not all equal, so that a
    permutation that forgot them would show."""
    torch.manual_seed(seed)
    model = TINY[name]().double()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
            elif isinstance(module, zoo.ChannelScale):
                module.weight.uniform_(0.5, 1.5)
    return model.eval()


def shuffle(spec, seed):
    """A random permutation that moves units in every group (never the identity)."""
    generator = torch.Generator().manual_seed(seed)
    permutation = {}
    for group, size in spec.sizes.items():
        p = torch.randperm(size, generator=generator)
        permutation[group] = p.roll(1) if torch.equal(p, torch.arange(size)) else p
    return permutation


def assert_same_weights(a, b, tol):
    for key, value in a.state_dict().items():
        assert torch.allclose(value.double(), b.state_dict()[key].double(), atol=tol, rtol=0), key


@pytest.mark.parametrize("name", sorted(TINY))
def test_permuted_copy_computes_the_same_function(name):
    model = randomized(name)
    spec = zoo_permutation_spec(model)
    shuffled = apply_permutation(model, shuffle(spec, 1), spec).eval()
    x = images(0)
    assert torch.allclose(shuffled(x), model(x), atol=1e-10, rtol=0)
    assert not torch.allclose(shuffled.state_dict()[spec.axes[next(iter(spec.axes))][0][0]],
                              model.state_dict()[spec.axes[next(iter(spec.axes))][0][0]])
    single, single_shuffled = model.float(), shuffled.float()
    assert torch.allclose(single_shuffled(x.float()), single(x.float()), atol=1e-5, rtol=0)


def test_groups_follow_the_residual_stream_and_cover_batch_norm():
    spec = zoo_permutation_spec(zoo.build("resnet18", 10, width=4))
    stem = dict(spec.axes["stream.stem"])
    # stem, both layer1 blocks and every reader of layer1's stream share one permutation
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.bn2.weight", "layer1.1.conv2.weight",
                "layer2.0.conv1.weight", "layer2.0.shortcut.0.weight"):
        assert key in stem
    assert stem["layer2.0.shortcut.0.weight"] == 1 and stem["layer1.1.conv2.weight"] == 0
    assert len([g for g in spec.sizes if g.startswith("stream")]) == 4
    tin = zoo_permutation_spec(zoo.build("resnet18_tin", 10, width=4))
    assert ("conv2_x.1.shortcut.weight", 0) in tin.axes["stream.stem"]
    wrn = zoo_permutation_spec(zoo.build("wrn40_2", 10))
    assert len(wrn.sizes) == 4 + 18 and ("bn1.running_mean", 0) in wrn.axes["stream.block3.layer.0"]


@pytest.mark.parametrize("name", sorted(TINY))
def test_weight_matching_recovers_a_permuted_copy(name):
    model = randomized(name)
    spec = zoo_permutation_spec(model)
    shuffled = apply_permutation(model, shuffle(spec, 2), spec)
    aligned = weight_matching(model, shuffled, spec)
    assert_same_weights(aligned, model, 1e-6)
    x = images(1)
    assert torch.allclose(aligned.eval()(x), shuffled.eval()(x), atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", sorted(TINY))
def test_activation_matching_recovers_a_permuted_copy(name):
    model = randomized(name)
    data = [images(3, 128)]
    # statistics of the data, so no unit is dead on it (dead units are indistinguishable by activity)
    model = recompute_batchnorm_statistics(model, data)
    spec = zoo_permutation_spec(model)
    shuffled = apply_permutation(model, shuffle(spec, 4), spec)
    aligned = activation_matching(model, shuffled, spec, [(x, None) for x in data])
    assert_same_weights(aligned, model, 1e-6)


# ----------------------------------------------------------------------------- trained on digits


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float64)
    y = torch.tensor(data.target)
    return x, y


def train_mlp(digits, seed, steps=300):
    x, y = digits
    torch.manual_seed(seed)
    model = zoo.build("mlp", 10, input_size=64, hidden=(32, 32)).double()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model


def test_a_permuted_trained_copy_has_a_barrier_that_alignment_removes(digits):
    x, y = digits
    model = train_mlp(digits, 0)
    spec = zoo_permutation_spec(model)
    shuffled = apply_permutation(model, shuffle(spec, 5), spec)
    before = loss_barrier(model, shuffled, F.cross_entropy, [(x, y)]).value
    after = loss_barrier(model, weight_matching(model, shuffled, spec), F.cross_entropy, [(x, y)]).value
    by_activations = loss_barrier(model, activation_matching(model, shuffled, spec, [(x, y)]), F.cross_entropy,
                                  [(x, y)]).value
    assert before > 0.1
    assert abs(after) < 1e-10 and abs(by_activations) < 1e-10


def test_alignment_does_not_raise_the_barrier_between_independent_members(digits):
    x, y = digits
    a, b = train_mlp(digits, 1), train_mlp(digits, 2)
    data = [(x, y)]
    spec = zoo_permutation_spec(a)
    matching = match_weights(a, b, spec)
    assert matching.converged and matching.iterations >= 2
    before = loss_barrier(a, b, F.cross_entropy, data).value
    by_weights = loss_barrier(a, apply_permutation(b, matching.permutation, spec), F.cross_entropy, data).value
    by_activations = loss_barrier(a, activation_matching(a, b, spec, data), F.cross_entropy, data).value
    print(f"\ndigits MLP 64-32-32-10, barrier before {before:.4f}, after weight matching {by_weights:.4f}, "
          f"after activation matching {by_activations:.4f} ({matching.iterations} sweeps)")
    assert by_weights <= before and by_activations <= before


# ------------------------------------------------------------------------------------------ refusals


def test_only_the_zoo_classes_as_built_get_the_hand_written_groups():
    """A subclass (whose forward may differ) or a zoo model with a part swapped is traced instead,
    which needs inputs; the traced groups of the changed model are proven on them."""

    class Wider(zoo.MLP):
        pass

    changed = zoo.build("small_cnn", 3, width=2)
    changed.bn2 = nn.GroupNorm(1, 4)  # one group: its statistics do not care about channel order
    for model in (nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)), Wider(3, input_size=4, hidden=(5,)),
                  changed):
        assert zoo_permutation_spec(model) is None
        with pytest.raises(InputError, match=f"{type(model).__name__} is not one of the zoo's models.*batch"):
            permutation_spec(model)
    spec = permutation_spec(changed, torch.randn(2, 3, 8, 8))
    assert ("bn2.weight", 0) in spec.axes["conv2"] and ("conv3.weight", 1) in spec.axes["conv2"]


def test_a_spec_that_forgets_a_per_unit_tensor_is_refused():
    model = zoo.build("small_cnn", 3, width=2)
    spec = zoo_permutation_spec(model)
    forgetful = {group: [pair for pair in pairs if pair != ("bn1.running_var", 0)] for group, pairs in spec.axes.items()}
    with pytest.raises(InputError, match="'bn1.running_var' is in no group and not declared fixed"):
        PermutationSpec.from_axes(model, forgetful, spec.probes, spec.fixed)
    with pytest.raises(InputError, match="does not have group 'conv1'"):
        PermutationSpec.from_axes(model, {**spec.axes, "conv1": [*spec.axes["conv1"], ("conv2.weight", 0)]},
                                  spec.probes, spec.fixed)


def test_a_spec_that_permutes_the_wrong_axis_fails_the_function_check():
    """A spec that passes every bookkeeping check but moves units the function does not allow to
    move (here the class scores of the head) is caught by running the model."""
    model = zoo.build("mlp", 3, input_size=4, hidden=(3,))
    spec = zoo_permutation_spec(model)
    wrong = PermutationSpec.from_axes(model, {**spec.axes, "scores": [("layers.1.weight", 0), ("layers.1.bias", 0)]},
                                      spec.probes)
    check_preserves_function(model, spec, torch.randn(5, 4))
    with pytest.raises(InputError, match="do not preserve its function"):
        check_preserves_function(model, wrong, torch.randn(5, 4))


def test_members_of_different_width_are_refused():
    a, b = zoo.build("small_cnn", 3, width=2), zoo.build("small_cnn", 3, width=3)
    with pytest.raises(InputError, match="different architectures"):
        weight_matching(a, b, zoo_permutation_spec(a))
    with pytest.raises(InputError, match="does not have group"):  # a spec of another width
        weight_matching(b, b, zoo_permutation_spec(a))


def test_non_finite_weights_are_refused():
    model = zoo.build("mlp", 3, input_size=4, hidden=(5,))
    broken = zoo.build("mlp", 3, input_size=4, hidden=(5,))
    with torch.no_grad():
        broken.layers[0].weight[0, 0] = float("nan")
    with pytest.raises(InputError, match="non-finite"):
        weight_matching(model, broken, zoo_permutation_spec(model))


def test_a_network_without_hidden_units_is_its_own_alignment():
    model = zoo.build("mlp", 3, input_size=4, hidden=())
    other = zoo.build("mlp", 3, input_size=4, hidden=())
    spec = zoo_permutation_spec(model)
    assert spec.sizes == {}
    assert match_weights(model, other, spec).converged
    assert_same_weights(weight_matching(model, other, spec), other, 0.0)
