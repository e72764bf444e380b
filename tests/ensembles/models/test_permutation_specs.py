"""The zoo's hand-written permutation groups (ensembles.models.permutation_specs): they follow the
residual streams and cover batch norm, and only the zoo's own classes as built get them."""
import pytest
import torch
from torch import nn

from ensembles.models import zoo
from ensembles.models.permutation_specs import permutation_spec, zoo_permutation_spec
from landscape.errors import InputError


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
