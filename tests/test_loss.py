import math

import pytest
import torch
import torch.nn.functional as F

from dataset import COMPETITION, encode_label
from loss import F1Loss, FocalLoss, MultiTaskLoss, create_criterion

LOGITS = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
TARGETS = torch.tensor([0, 2])


def softmax_row(row):
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def test_cross_entropy_by_hand():
    expected = -(math.log(softmax_row([2, 0, 0])[0]) + math.log(softmax_row([0, 1, 0])[2])) / 2
    assert create_criterion("cross_entropy")(LOGITS, TARGETS).item() == pytest.approx(expected, rel=1e-6)


def test_focal_by_hand_and_equal_to_cross_entropy_at_gamma_zero():
    p0, p1 = softmax_row([2, 0, 0])[0], softmax_row([0, 1, 0])[2]
    expected = -((1 - p0) ** 2 * math.log(p0) + (1 - p1) ** 2 * math.log(p1)) / 2
    assert FocalLoss(gamma=2.0)(LOGITS, TARGETS).item() == pytest.approx(expected, rel=1e-6)
    assert FocalLoss(gamma=0.0)(LOGITS, TARGETS).item() == pytest.approx(F.cross_entropy(LOGITS, TARGETS).item())


def test_weighted_focal_scales_each_example_by_its_class_weight():
    weight = torch.tensor([1.0, 1.0, 3.0])
    unweighted = FocalLoss(0.0, None)(LOGITS, TARGETS)
    per_example = F.cross_entropy(LOGITS, TARGETS, reduction="none")
    assert FocalLoss(0.0, weight)(LOGITS, TARGETS).item() == pytest.approx(
        ((per_example[0] + 3 * per_example[1]) / 2).item())
    assert FocalLoss(0.0, weight)(LOGITS, TARGETS) > unweighted


def test_label_smoothing_by_hand():
    epsilon = 0.1
    log_p = torch.log_softmax(LOGITS, dim=1)
    smoothed = torch.full((2, 3), epsilon / 3)
    smoothed[0, 0] += 1 - epsilon
    smoothed[1, 2] += 1 - epsilon
    expected = -(smoothed * log_p).sum(dim=1).mean().item()
    assert create_criterion("label_smoothing", smoothing=epsilon)(LOGITS, TARGETS).item() == pytest.approx(expected)


def test_f1_loss_by_hand():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # probabilities (.5, .5) and (.75, .25)
    targets = torch.tensor([0, 1])
    # class 0: tp .5, fp .75, fn .5 -> f1 1/2.25; class 1: tp .25, fp .5, fn .75 -> f1 .5/1.75
    expected = 1 - (1 / 2.25 + 0.5 / 1.75) / 2
    assert F1Loss()(logits, targets).item() == pytest.approx(expected, rel=1e-5)
    perfect = torch.tensor([[20.0, -20.0], [-20.0, 20.0]])
    assert F1Loss()(perfect, targets).item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("name", ["cross_entropy", "focal", "label_smoothing", "f1"])
def test_soft_targets_equal_hard_targets_when_one_hot(name):
    criterion = create_criterion(name)
    assert criterion(LOGITS, F.one_hot(TARGETS, 3).float()).item() == pytest.approx(
        criterion(LOGITS, TARGETS).item(), rel=1e-5)


def test_multi_task_loss_is_the_weighted_sum_of_task_losses():
    logits = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([encode_label(0, 1, 2), encode_label(2, 0, 0), encode_label(1, 1, 1), 0])
    weights = (1.0, 0.5, 2.0)
    loss = MultiTaskLoss([create_criterion("cross_entropy")] * 3, COMPETITION, weights)(logits, labels)
    expected = (1.0 * F.cross_entropy(logits[:, :3], torch.tensor([0, 2, 1, 0]))
                + 0.5 * F.cross_entropy(logits[:, 3:5], torch.tensor([1, 0, 1, 0]))
                + 2.0 * F.cross_entropy(logits[:, 5:], torch.tensor([2, 0, 1, 0])))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
