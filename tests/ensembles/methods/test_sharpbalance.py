"""SharpBalance's sets on hand-worked scores (paper and released-code rules) and its mixed
objective's gradient against a direct torch.func computation."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call, grad

from ensembles.models.zoo import MLP
from ensembles.methods.sam import SAM
from ensembles.methods.sharpbalance import (leftover_rule, reference_sharpness_aware_sets, select_sets,
                                    sharpness_aware_sets, top_fraction, training_step)
from landscape.errors import InputError

# Three members, eight samples; k = 0.25 keeps two samples per member.
SCORES = torch.tensor([
    [0., 1., 2., 3., 4., 5., 6., 7.],   # top {6, 7}, lowest {0, 1}
    [7., 6., 5., 4., 3., 2., 1., 0.],   # top {0, 1}, lowest {6, 7}
    [5., 0., 4., 4., 1., 7., 6., 3.],   # top {5, 6}, lowest {1, 4}
])


def as_mask(rows, n=8):
    mask = torch.zeros(len(rows), n, dtype=torch.bool)
    for i, row in enumerate(rows):
        mask[i, list(row)] = True
    return mask


def test_paper_sets_are_the_union_of_the_other_members_top_k():
    # member 0: top of 1 ∪ top of 2 = {0, 1} ∪ {5, 6}; member 1: {6, 7} ∪ {5, 6}; member 2: {6, 7} ∪ {0, 1}
    expected = as_mask([{0, 1, 5, 6}, {5, 6, 7}, {0, 1, 6, 7}])
    assert torch.equal(sharpness_aware_sets(SCORES, 0.25), expected)
    assert torch.equal(select_sets(SCORES, 0.25), expected)


def test_reference_sets_take_the_lowest_and_share_the_leftovers():
    # lowest: {0, 1}, {6, 7}, {1, 4}; in no set: 2, 3, 5; shares leftover[i::3] = [2], [3], [5]
    others = [{1, 4, 6, 7}, {0, 1, 4}, {0, 1, 6, 7}]
    own_share = as_mask([others[0] | {2}, others[1] | {3}, others[2] | {5}])
    all_but_own = as_mask([others[0] | {3, 5}, others[1] | {2, 5}, others[2] | {2, 3}])
    assert torch.equal(reference_sharpness_aware_sets(SCORES, 0.25, "own-share"), own_share)
    assert torch.equal(reference_sharpness_aware_sets(SCORES, 0.25, "all-but-own-share"), all_but_own)
    # per dataset, as the released code decides it
    assert torch.equal(select_sets(SCORES, 0.25, reference_compatible=True, dataset="cifar10"), all_but_own)
    for dataset in ("cifar100", "tinyimagenet", "digits"):
        assert torch.equal(select_sets(SCORES, 0.25, reference_compatible=True, dataset=dataset), own_share)
    assert leftover_rule("CIFAR-10") == "all-but-own-share"


def test_ties_go_to_the_lower_index_and_k_is_floored():
    scores = torch.tensor([[1., 1., 1., 1., 0.]])
    assert top_fraction(scores, 0.5).tolist() == [[True, True, False, False, False]]  # ⌊2.5⌋ = 2
    assert top_fraction(scores, 0.5, largest=False).tolist() == [[True, False, False, False, True]]


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 5), st.integers(1, 30), st.floats(0.01, 1.0), st.integers(0, 2 ** 31 - 1))
def test_sets_match_a_loop_over_members(members, samples, k, seed):
    scores = torch.randn(members, samples, generator=torch.Generator().manual_seed(seed))
    count = int(k * samples)
    tops = [set(sorted(range(samples), key=lambda j: -scores[m, j].item())[:count]) for m in range(members)]
    sets = sharpness_aware_sets(scores, k)
    for i in range(members):
        union = set().union(*(tops[m] for m in range(members) if m != i))
        assert set(torch.nonzero(sets[i]).flatten().tolist()) == union


def test_bad_scores_and_k():
    with pytest.raises(InputError):
        sharpness_aware_sets(SCORES[:1], 0.25)  # one member has no others
    with pytest.raises(InputError):
        sharpness_aware_sets(SCORES, 0.0)
    with pytest.raises(InputError):
        sharpness_aware_sets(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]), 0.5)


@pytest.mark.parametrize("mask", [[1, 0, 1, 1, 0, 0], [1] * 6, [0] * 6])
def test_mixed_step_gradient_equals_the_hand_computed_combination(mask):
    torch.manual_seed(0)
    model = MLP(3, input_size=5, hidden=()).double()
    inputs = torch.randn(6, 5, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 2, 1, 0])
    in_sam_set = torch.tensor(mask, dtype=torch.bool)
    rho = 0.4
    theta = {name: p.detach().clone() for name, p in model.named_parameters()}

    def loss(parameters, x, y):
        return F.cross_entropy(functional_call(model, parameters, (x,)), y)

    batch, n_sam = len(targets), int(in_sam_set.sum())
    expected = {name: torch.zeros_like(t) for name, t in theta.items()}
    if n_sam:
        g_sam = grad(loss)(theta, inputs[in_sam_set], targets[in_sam_set])
        norm = torch.sqrt(sum(g.pow(2).sum() for g in g_sam.values()))
        perturbed = {name: theta[name] + rho * g_sam[name] / norm for name in theta}
        g = grad(loss)(perturbed, inputs[in_sam_set], targets[in_sam_set])
        expected = {name: expected[name] + n_sam / batch * g[name] for name in theta}
    if n_sam < batch:
        g = grad(loss)(theta, inputs[~in_sam_set], targets[~in_sam_set])
        expected = {name: expected[name] + (batch - n_sam) / batch * g[name] for name in theta}

    optimizer = SAM(torch.optim.SGD(model.parameters(), lr=1.0), rho=rho)
    outcome = training_step(model, optimizer, inputs, targets, in_sam_set)
    for name, parameter in model.named_parameters():  # lr = 1: the step is minus the gradient
        torch.testing.assert_close(theta[name] - parameter.detach(), expected[name], rtol=1e-12, atol=1e-12)
    # the reported objective is the mixed loss at θ
    value = sum(n / batch * loss(theta, inputs[part], targets[part])
                for n, part in ((n_sam, in_sam_set), (batch - n_sam, ~in_sam_set)) if n)
    torch.testing.assert_close(outcome.loss.double(), value.float().double(), rtol=1e-6, atol=1e-7)
