"""Hinton et al.'s distillation loss: the formula by hand, no pull toward a teacher equal to the
student, and a pull that brings a student's predictions to a different teacher's."""
import pytest
import torch
import torch.nn.functional as F

from ensembles.methods.distillation import distillation_loss, ensemble_soft_targets, soft_targets


def test_the_loss_is_the_weighted_cross_entropy_plus_tau_squared_kl_by_hand():
    student = torch.tensor([[1.0, -0.5, 0.2], [0.1, 0.3, -1.2]])
    teacher_logits = torch.tensor([[0.4, 0.9, -0.3], [2.0, -1.0, 0.0]])
    labels = torch.tensor([2, 0])
    w, tau = 0.3, 2.5
    p_teacher = torch.softmax(teacher_logits / tau, dim=1)
    p_student = torch.softmax(student / tau, dim=1)
    kl = (p_teacher * (p_teacher.log() - p_student.log())).sum(1).mean()
    cross_entropy = -torch.log_softmax(student, dim=1)[torch.arange(2), labels].mean()
    expected = (1 - w) * cross_entropy + w * tau ** 2 * kl
    got = distillation_loss(student, labels, soft_targets(teacher_logits, tau), weight=w, temperature=tau)
    assert float(got) == pytest.approx(float(expected), rel=1e-6)
    # w = 0 is the cross-entropy exactly; w = 1 the soft term alone
    assert torch.equal(distillation_loss(student, labels, p_teacher, weight=0.0, temperature=tau),
                       F.cross_entropy(student, labels))
    assert float(distillation_loss(student, labels, p_teacher, weight=1.0, temperature=tau)) == pytest.approx(
        float(tau ** 2 * kl), rel=1e-6)


def test_a_teacher_certain_of_a_class_gives_a_finite_loss():
    certain = torch.tensor([[1.0, 0.0, 0.0]])
    loss = distillation_loss(torch.tensor([[3.0, 0.0, -2.0]]), torch.tensor([0]), certain, 1.0, 1.0)
    assert torch.isfinite(loss) and float(loss) > 0


def test_a_teacher_equal_to_the_student_exerts_no_pull():
    torch.manual_seed(0)
    logits = torch.randn(16, 10, requires_grad=True)
    labels = torch.randint(0, 10, (16,))
    same = soft_targets(logits.detach(), 3.0)
    (gradient,) = torch.autograd.grad(distillation_loss(logits, labels, same, 1.0, 3.0), logits)
    assert float(gradient.abs().max()) < 1e-7
    other = soft_targets(torch.randn(16, 10), 3.0)
    (gradient,) = torch.autograd.grad(distillation_loss(logits, labels, other, 1.0, 3.0), logits)
    assert float(gradient.abs().max()) > 1e-3  # a different teacher does pull


def _kl(student_logits, teacher_probabilities, tau):
    return float(F.kl_div(F.log_softmax(student_logits / tau, 1), teacher_probabilities, reduction="batchmean"))


def test_distillation_brings_the_student_to_a_different_teacher():
    torch.manual_seed(1)
    inputs, labels = torch.randn(64, 5), torch.randint(0, 3, (64,))
    teacher = soft_targets(torch.nn.Linear(5, 3)(inputs).detach() * 3, 2.0)
    students = {}
    for weight in (0.0, 0.9):
        torch.manual_seed(2)
        model = torch.nn.Linear(5, 3)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        before = _kl(model(inputs).detach(), teacher, 2.0)
        for _ in range(200):
            optimizer.zero_grad()
            distillation_loss(model(inputs), labels, teacher, weight, 2.0).backward()
            optimizer.step()
        students[weight] = _kl(model(inputs).detach(), teacher, 2.0)
    assert students[0.9] < 0.5 * before
    assert students[0.9] < 0.5 * students[0.0]  # the labels alone do not get there


def test_the_ensemble_target_is_the_mean_of_the_members_softened_predictions():
    member_logits = torch.randn(3, 4, 5)
    mean = ensemble_soft_targets(member_logits, 2.0)
    assert mean.shape == (4, 5)
    assert torch.allclose(mean, torch.stack([torch.softmax(z / 2.0, 1) for z in member_logits]).mean(0))
    assert torch.allclose(mean.sum(1), torch.ones(4))
