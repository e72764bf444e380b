"""Reading a checkpoint into a state dict (ensembles.models.checkpoints): DataParallel's ``module.``
prefix is stripped in one place, and only where every key carries it."""
import torch

from ensembles.models import checkpoints, zoo


def test_data_parallel_prefix_is_stripped_in_one_place():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    wrapped = {f"module.{name}": tensor + 1 for name, tensor in model.state_dict().items()}
    zoo.load_weights(model, wrapped)
    assert torch.equal(model[0].bias, wrapped["module.0.bias"])
    assert list(checkpoints.extract_state_dict({"state_dict": wrapped})) == ["0.weight", "0.bias"]
    # a model whose own names start with module. keeps the prefix; mixed keys are left alone
    holder = torch.nn.Module()
    holder.module = torch.nn.Linear(2, 2)
    assert list(checkpoints.without_data_parallel_prefix(holder.state_dict(), holder.state_dict())) \
        == ["module.weight", "module.bias"]
    assert "module.a" in checkpoints.without_data_parallel_prefix({"module.a": 1, "b": 2})
