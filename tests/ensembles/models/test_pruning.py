"""Magnitude pruning (ensembles.models.pruning): global masks remove the smallest weights, and
pruned training keeps the sparsity."""
import torch

from ensembles.models import pruning
from ensembles.runs.run_folder import load_run
from ensembles.training.trainer import TrainingSettings, train

from killed_training import training_states


def test_global_magnitude_masks_remove_the_smallest_weights():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Conv1d(5, 4, 3))
    masks = pruning.global_magnitude_masks(model, 0.6)
    weights = torch.cat([model[0].weight.flatten(), model[2].weight.flatten()]).abs()
    kept = torch.cat([masks["0.weight"].flatten(), masks["2.weight"].flatten()])
    removed = int(0.6 * weights.numel())
    assert int((~kept).sum()) == removed
    assert weights[~kept].max() <= weights[kept].min()  # one global threshold
    assert set(masks) == {"0.weight", "2.weight"}  # biases stay dense


def test_pruned_training_keeps_the_sparsity(tmp_path):
    settings = TrainingSettings(dataset="digits", model="small_cnn", width=4, method="sam", rho=0.1, seeds=(2,),
                                epochs=2, lr=0.05, batch_size=32, train_samples=64, sparsity=0.7, prune_epoch=1,
                                keep="last")
    train(tmp_path / "run", settings)
    state = training_states(tmp_path / "run")[0]
    model = load_run(tmp_path / "run").members[0]
    total = sum(p.numel() for p in pruning.prunable_parameters(model).values())
    assert pruning.measured_sparsity(model) * total >= int(0.7 * total)  # ⌊0.7 P⌋ weights removed
    parameters = dict(model.named_parameters())
    for name, mask in state["masks"].items():
        assert torch.all(parameters[name][~mask] == 0), name
        assert bool((parameters[name][mask] != 0).any())
    assert state["log"][0]["epoch"] == 1
