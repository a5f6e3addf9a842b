"""Training criteria, chosen by name with `--criterion`: cross_entropy, focal, label_smoothing, f1.

Each criterion takes logits (N, C) and either integer targets (N,) or soft targets (N, C) -- class
probabilities, as mixup and cutmix produce -- and returns a scalar. `MultiTaskLoss` trains the multi
head: the weighted sum of one criterion per task of the label scheme (the competition's mask, gender and age).
"""
import torch
import torch.nn.functional as F
from torch import nn

import cli
from dataset import inverse_frequency


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
    """Weighted sum of per-task criteria over the multi head's logits, one part per task of the label `scheme`
    (the competition's mask, gender and age).

    Targets are class labels (N,) or soft targets (N, C); each task gets its own part.
    """

    def __init__(self, criteria, scheme, task_weights=None):
        super().__init__()
        self.criteria = nn.ModuleList(criteria)
        self.scheme = scheme
        self.task_weights = task_weights or [1.0] * len(criteria)

    def forward(self, logits, targets):
        task_logits = self.scheme.split(logits)
        task_targets = self.scheme.decode(targets) if targets.dim() == 1 else self.scheme.marginals(targets)
        return sum(weight * criterion(part, target) for weight, criterion, part, target
                   in zip(self.task_weights, self.criteria, task_logits, task_targets))


def weighted_criterion(args, name, targets, num_classes):
    """The named criterion, with inverse-frequency class weights of `targets` under --class_weights auto."""
    weights = None
    if args.class_weights == "auto":
        weights = torch.as_tensor(inverse_frequency(targets, num_classes), dtype=torch.float32)
    return create_criterion(name, weights, args.focal_gamma, args.smoothing)


def create_training_criterion(args, targets, scheme):
    """The criterion for the training targets of the classes of `scheme`: one over the outputs, or for --head multi
    the weighted sum of one criterion per task (--task_criteria, --task_weights)."""
    tasks = len(scheme.tasks)
    if args.head == "multi":
        names = args.task_criteria or [args.criterion] * tasks
        weights = args.task_weights or [1.0] * tasks
        if len(names) != tasks or len(weights) != tasks:
            raise cli.UserError(f"--task_criteria and --task_weights take one value per task ({', '.join(scheme.tasks)})")
        return MultiTaskLoss([weighted_criterion(args, name, task_targets, size) for name, task_targets, size
                              in zip(names, scheme.decode(targets), scheme.sizes)], scheme, weights)
    if args.task_criteria or set(args.task_weights or [1.0]) != {1.0}:
        raise cli.UserError("--task_criteria and --task_weights weigh the task heads of --head multi")
    return weighted_criterion(args, args.criterion, targets, scheme.num_classes)
