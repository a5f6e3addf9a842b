"""Training criteria, chosen by name with `--criterion`: cross_entropy, focal, label_smoothing, f1.

Each criterion takes logits (N, C) and either integer targets (N,) or soft targets (N, C) -- class
probabilities, as mixup and cutmix produce -- and returns a scalar. `MultiTaskLoss` trains the multi
head: the weighted sum of one criterion per task on the mask, gender and age logits.
"""
import torch.nn.functional as F
from torch import nn

from dataset import decode_label, split_tasks, task_marginals

CRITERIA = ("cross_entropy", "focal", "label_smoothing", "f1")


def as_probabilities(targets, num_classes):
    """Soft targets (N, C) from integer targets; soft targets pass through."""
    if targets.dim() == 1:
        return F.one_hot(targets, num_classes).float()
    return targets


class FocalLoss(nn.Module):
    """Focal loss: cross-entropy scaled by (1 - p)^gamma so that easy examples count less.

    `weight` (one per class) makes it the weighted focal loss used for rare classes; with gamma = 0 and
    no weight it is exactly cross-entropy.
    """

    def __init__(self, gamma=2.0, weight=None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight)

    def forward(self, logits, targets):
        log_probs = F.log_softmax(logits, dim=1)
        targets = as_probabilities(targets, logits.shape[1])
        focal = (1 - log_probs.exp()) ** self.gamma * -(targets * log_probs)
        if self.weight is not None:
            focal = focal * self.weight
        return focal.sum(dim=1).mean()


class F1Loss(nn.Module):
    """1 - macro soft-F1: the competition's metric made differentiable by using probabilities as counts."""

    def __init__(self, epsilon=1e-7):
        super().__init__()
        self.epsilon = epsilon

    def forward(self, logits, targets):
        probs = F.softmax(logits, dim=1)
        targets = as_probabilities(targets, logits.shape[1])
        true_positive = (targets * probs).sum(dim=0)
        false_positive = ((1 - targets) * probs).sum(dim=0)
        false_negative = (targets * (1 - probs)).sum(dim=0)
        f1 = 2 * true_positive / (2 * true_positive + false_positive + false_negative + self.epsilon)
        return 1 - f1.mean()


def create_criterion(name, class_weights=None, focal_gamma=2.0, smoothing=0.1):
    """The named criterion; `class_weights` (a tensor, one per class) where the criterion takes them."""
    if name == "cross_entropy":
        return nn.CrossEntropyLoss(weight=class_weights)
    if name == "label_smoothing":
        return nn.CrossEntropyLoss(weight=class_weights, label_smoothing=smoothing)
    if name == "focal":
        return FocalLoss(focal_gamma, class_weights)
    if name == "f1":
        return F1Loss()
    raise ValueError(f"unknown criterion {name!r}; choose from {', '.join(CRITERIA)}")


class MultiTaskLoss(nn.Module):
    """Weighted sum of per-task criteria over the multi head's mask, gender and age logits.

    Targets are 18-class labels (N,) or 18-class soft targets (N, 18); each task gets its own part.
    """

    def __init__(self, criteria, task_weights=(1.0, 1.0, 1.0)):
        super().__init__()
        self.criteria = nn.ModuleList(criteria)
        self.task_weights = task_weights

    def forward(self, logits, targets):
        task_logits = split_tasks(logits)
        task_targets = decode_label(targets) if targets.dim() == 1 else task_marginals(targets)
        return sum(weight * criterion(part, target) for weight, criterion, part, target
                   in zip(self.task_weights, self.criteria, task_logits, task_targets))
