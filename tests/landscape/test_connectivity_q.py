"""The pair connectivity q (landscape.connectivity.pair_connectivity, our reconstruction of Lion et
al. 2024's q_pair): hand computations on a given path and on a tiny linear model, exactly 1 between
identical members, low between a trained network and a permuted copy of it and 1 again after weight
matching, and its refusals."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from ensembles.models import zoo
from ensembles.models.permutation_specs import zoo_permutation_spec
from landscape.alignment import apply_permutation, weight_matching
from landscape.connectivity import Interpolation, interpolate, loss_barrier, pair_connectivity
from landscape.errors import InputError


def path_of(alphas, loss, accuracy):
    as64 = lambda values: torch.tensor(values, dtype=torch.float64)  # noqa: E731
    return Interpolation(alphas=as64(alphas), loss=as64(loss), accuracy=as64(accuracy), bn_mode="none")


def test_q_is_the_worst_fraction_of_the_chord_the_path_keeps():
    # accuracy chord 1, .85, .7, .55, .4: kept .7/.85, .65/.7, .5/.55 -> the worst is at α = .25,
    # not where the accuracy is lowest (a min-accuracy-over-mean-endpoints form would give .5/.7)
    # loss chord .1, .15, .2, .25, .3: kept .15/.5, .2/.3, and 1 at α = .75 (below its chord)
    result = pair_connectivity(path_of([0, 0.25, 0.5, 0.75, 1], loss=[0.1, 0.5, 0.3, 0.2, 0.3],
                                       accuracy=[1.0, 0.7, 0.65, 0.5, 0.4]))
    assert result.q == pytest.approx(0.7 / 0.85, rel=1e-15) and result.alpha == 0.25
    assert result.q_loss == pytest.approx(0.15 / 0.5, rel=1e-15) and result.loss_alpha == 0.25


def test_a_path_never_below_its_chord_has_q_one_and_the_ends_count_one():
    result = pair_connectivity(path_of([0, 0.5, 1], loss=[0.4, 0.1, 0.2], accuracy=[0.6, 0.95, 0.8]))
    assert (result.q, result.q_loss) == (1.0, 1.0)
    # endpoints of accuracy 0: the chord is 0 there and nothing is below it (no 0/0)
    assert pair_connectivity(path_of([0, 0.5, 1], loss=[2, 3, 2], accuracy=[0, 0, 0])).q == 1.0
    # the alphas need not be sorted
    shuffled = pair_connectivity(path_of([1, 0.25, 0, 0.75, 0.5], loss=[0.3, 0.5, 0.1, 0.2, 0.3],
                                         accuracy=[0.4, 0.7, 1.0, 0.5, 0.65]))
    assert shuffled.q == pytest.approx(0.7 / 0.85, rel=1e-15) and shuffled.alpha == 0.25


def test_q_matches_a_hand_computation_on_a_tiny_linear_model():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, -1.0]], dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0])
    a, b = torch.nn.Linear(2, 2, bias=False).double(), torch.nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        a.weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.2]]))  # all four points right
        b.weight.copy_(torch.tensor([[-1.0, 1.0], [1.0, -0.5]]))  # one right; at α = 0.75 the path has 1/4
    alphas = [0.0, 0.25, 0.5, 0.75, 1.0]
    path = interpolate(a, b, F.cross_entropy, [(x, y)], alphas=alphas)

    accuracy, loss = [], []
    for alpha in alphas:  # by hand: the weights on the line, then plain arithmetic
        w = (1 - alpha) * a.weight.detach() + alpha * b.weight.detach()
        logits = x @ w.T
        accuracy.append(sum(int(row.argmax()) == int(t) for row, t in zip(logits, y)) / 4)
        loss.append(float(F.cross_entropy(logits, y)))
    kept = [1.0 if accuracy[k] >= (c := (1 - al) * accuracy[0] + al * accuracy[-1]) else accuracy[k] / c
            for k, al in enumerate(alphas)]
    kept_loss = [1.0 if loss[k] <= (c := (1 - al) * loss[0] + al * loss[-1]) else c / loss[k]
                 for k, al in enumerate(alphas)]
    assert path.accuracy.tolist() == accuracy
    result = pair_connectivity(path)
    assert result.q == min(kept) and result.alpha == alphas[kept.index(min(kept))]
    assert result.q_loss == pytest.approx(min(kept_loss), rel=1e-12)
    assert result.q == 0.25 / 0.4375 and result.alpha == 0.75  # the chord is 0.25·1 + 0.75·0.25 there


# ------------------------------------------------------------------------------ on trained networks


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return torch.tensor(data.data / 16.0, dtype=torch.float64), torch.tensor(data.target)


@pytest.fixture(scope="module")
def trained(digits):
    x, y = digits
    torch.manual_seed(0)
    model = zoo.build("mlp", 10, input_size=64, hidden=(32, 32)).double()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


def test_identical_members_have_q_exactly_one(trained, digits):
    result = pair_connectivity(interpolate(trained, copy.deepcopy(trained), F.cross_entropy, [digits], alphas=11))
    assert result.q == 1.0
    assert result.q_loss == pytest.approx(1.0, abs=1e-12)  # (1 − α)θ + αθ may round in the last bit


def test_a_permuted_copy_has_low_q_until_weight_matching_finds_the_basin_again(trained, digits):
    spec = zoo_permutation_spec(trained)
    generator = torch.Generator().manual_seed(3)
    permutation = {group: torch.randperm(size, generator=generator).roll(1) for group, size in spec.sizes.items()}
    shuffled = apply_permutation(trained, permutation, spec)
    accuracy = interpolate(trained, shuffled, F.cross_entropy, [digits], alphas=2).accuracy
    assert accuracy[0] == accuracy[1] > 0.95  # the same function: the ends are equally accurate

    before = pair_connectivity(loss_barrier(trained, shuffled, F.cross_entropy, [digits], alphas=21).interpolation)
    aligned = weight_matching(trained, shuffled, spec)
    after = pair_connectivity(loss_barrier(trained, aligned, F.cross_entropy, [digits], alphas=21).interpolation)
    print(f"\ndigits MLP and a permuted copy: q {before.q:.3f} (q_loss {before.q_loss:.3f}) before, "
          f"{after.q:.6f} after weight matching")
    assert before.q < 0.6 and before.q_loss < 0.5
    assert after.q == 1.0 and after.q_loss == pytest.approx(1.0, abs=1e-9)


# ------------------------------------------------------------------------------------------ refusals


def test_a_non_finite_path_gives_nan_and_bad_paths_are_refused():
    nan_accuracy = pair_connectivity(path_of([0, 0.5, 1], loss=[0.1, 0.2, 0.1], accuracy=[math.nan] * 3))
    assert math.isnan(nan_accuracy.q) and math.isnan(nan_accuracy.alpha) and nan_accuracy.q_loss < 1
    assert math.isnan(pair_connectivity(path_of([0, 0.5, 1], loss=[0.1, math.inf, 0.1],
                                                accuracy=[1, 1, 1])).q_loss)
    with pytest.raises(InputError, match="include both ends"):
        pair_connectivity(path_of([0, 0.5], loss=[0.1, 0.2], accuracy=[1, 1]))
    with pytest.raises(InputError, match="lie in \\[0, 1\\]"):
        pair_connectivity(path_of([0, 1, 1.5], loss=[0.1, 0.2, 0.3], accuracy=[1, 1, 1]))
    with pytest.raises(InputError, match="non-negative losses"):
        pair_connectivity(path_of([0, 0.5, 1], loss=[0.1, -0.2, 0.1], accuracy=[1, 1, 1]))
    with pytest.raises(InputError, match="needs an Interpolation"):
        pair_connectivity((torch.zeros(3), torch.zeros(3)))
