"""Image transforms, chosen by name with `--augmentation`, and the batch mixing of `--mixup` / `--cutmix`.

Every transform takes a uint8 image -- a (3, H, W) tensor as the datasets decode it, or a PIL photo -- and
returns a uint8 (3, H, W) tensor at `resize`; the model converts and normalises whole batches on its device
(model.MaskClassifier), so workers move a quarter of the bytes and never touch floats.
`BaseAugmentation` (resize) is the evaluation transform: train-time validation and inference both use it with
the run's saved `--resize`, so the two can never disagree. A training preset that crops at random says so with
`margin`: its photos are decoded that much larger than `resize` (`decode_size`), so its crops are downscaled
rather than blown up.
A preset's colour jitter runs on whole batches instead, on the device of the training step (`BatchColorJitter`,
made by `create_batch_jitter`): per photo, on a loader core, it would cost more than all the rest together.
`BatchMixer` mixes a whole training batch after the transforms and turns its labels into soft targets.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from cli import UserError

# Channel statistics of the competition's training photos, as fractions of 255.
MEAN = (0.548, 0.504, 0.479)
STD = (0.237, 0.247, 0.246)
CROP_MARGIN = 1.15  # decode size over --resize for random crops: a 0.75-area crop still has >= resize pixels
# Grey (luma) weights of RGB, torchvision's; and RGB to YIQ, whose last two axes are the chroma plane.
LUMA = torch.tensor([0.2989, 0.587, 0.114], dtype=torch.float64)
RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                          dtype=torch.float64)


def to_unit_float(images):
    """Float images in [0, 1]: uint8 images divided by 255, float ones unchanged."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images


class BaseAugmentation:
    """Resize: the deterministic transform of validation and inference (a no-op on photos decoded at `resize`)."""

    margin = 1.0
    colour_jitter = None

    def __init__(self, resize):
        self.transform = v2.Compose([v2.ToImage(), v2.Resize(resize, antialias=True), v2.ToPureTensor()])

    def __call__(self, image):
        return self.transform(image)


def face_keeping_crop_and_flip(resize):
    """A mild random crop that keeps the face (and the aspect ratio, within 10%) and a mirror flip."""
    height, width = resize
    aspect = width / height
    return [v2.RandomResizedCrop(resize, scale=(0.75, 1.0), ratio=(aspect * 0.9, aspect * 1.1), antialias=True),
            v2.RandomHorizontalFlip()]


class CustomAugmentation:
    """Training preset: a mild random crop that keeps the face and a mirror flip on each photo, then colour jitter
    of every photo on whole batches (`colour_jitter`, see BatchColorJitter)."""

    margin = CROP_MARGIN
    colour_jitter = {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.03}

    def __init__(self, resize):
        self.transform = v2.Compose([v2.ToImage(), *face_keeping_crop_and_flip(resize), v2.ToPureTensor()])

    def __call__(self, image):
        return self.transform(image)


class StrongAugmentation:
    """Strong training preset: the crop and flip, then TrivialAugmentWide (one random operation per photo --
    colour, contrast, sharpness, posterise, rotation, shear... -- at a random strength)."""

    margin = CROP_MARGIN
    colour_jitter = None

    def __init__(self, resize):
        self.transform = v2.Compose([
            v2.ToImage(),
            *face_keeping_crop_and_flip(resize),
            v2.TrivialAugmentWide(),
            v2.ToPureTensor(),
        ])

    def __call__(self, image):
        return self.transform(image)


AUGMENTATIONS = {cls.__name__: cls for cls in (BaseAugmentation, CustomAugmentation, StrongAugmentation)}
CUTMIX_MODES = ("box", "vertical")


def create_transform(name, resize):
    """The named transform (one of AUGMENTATIONS) at `resize` = (height, width)."""
    return AUGMENTATIONS[name](tuple(resize))


def decode_size(name, resize):
    """(height, width) at which the named transform wants its photos decoded: `resize` times its margin."""
    margin = AUGMENTATIONS[name].margin
    return tuple(round(side * margin) for side in resize)


def create_batch_jitter(name):
    """The named transform's colour jitter of training batches (a BatchColorJitter), or None if it has none."""
    amounts = AUGMENTATIONS[name].colour_jitter
    return None if amounts is None else BatchColorJitter(**amounts)


class BatchColorJitter:
    """Colour jitter of every photo of a batch, each with its own factors, in one pass on the batch's device.

    Brightness, contrast and saturation factors are drawn uniformly in 1 +- their amount and the hue shift in
    +- its amount (a fraction of a turn), as torchvision's ColorJitter draws them, and applied in that order:
    brightness scales the photo, contrast blends it with its mean grey, saturation with its own grey, and the hue
    shift turns its chroma about the grey axis in YIQ space (the linear approximation of NVIDIA DALI's hsv
    operator). All four are linear, so each photo's jitter is one 3x3 colour matrix and an offset, clamped to
    [0, 1] once at the end. torchvision's and kornia's jitters go through HSV pixel by pixel and clamp after each
    step: about 1 ms per 128x96 photo on a CPU core, against well under 0.1 ms here. Returns float images in [0, 1].
    """

    def __init__(self, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, rng=None):
        if not (0 <= brightness < 1 and 0 <= contrast < 1 and 0 <= saturation < 1 and 0 <= hue <= 0.5):
            raise UserError("colour jitter amounts: brightness, contrast and saturation in [0, 1), hue in [0, 0.5]")
        self.amounts = torch.tensor([brightness, contrast, saturation, hue], dtype=torch.float64)
        self.rng = np.random.default_rng() if rng is None else rng

    def factors(self, count):
        """(count, 4) float64 draws: brightness, contrast, saturation factors and the hue shift of each photo."""
        centre = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
        return centre + self.amounts * torch.from_numpy(self.rng.uniform(-1, 1, (count, 4)))

    def __call__(self, images):
        images = to_unit_float(images)
        matrices, grey_weights = (part.to(images) for part in colour_transforms(self.factors(len(images))))
        offsets = grey_weights * (images.mean(dim=(2, 3)) @ LUMA.to(images))
        jittered = torch.einsum("nij,njhw->nihw", matrices, images)
        return jittered.add_(offsets.view(-1, 1, 1, 1)).clamp_(0, 1)


def colour_transforms(factors):
    """Per photo, brightness, contrast, saturation and hue applied in turn as out = matrix @ rgb + weight * grey,
    grey being the photo's mean grey (towards which contrast blends): (matrices (N, 3, 3), weights (N,)) for
    `factors` (N, 4) as BatchColorJitter.factors draws them."""
    brightness, contrast, saturation, hue = factors.unbind(dim=1)
    identity = torch.eye(3, dtype=torch.float64)
    saturate = saturation.view(-1, 1, 1) * identity + (1 - saturation).view(-1, 1, 1) * LUMA.expand(3, 3)
    angle = -2 * math.pi * hue  # YIQ's chroma angle turns against HSV's hue: red goes to orange as in torchvision
    rotate = identity.repeat(len(factors), 1, 1)
    rotate[:, 1, 1], rotate[:, 1, 2], rotate[:, 2, 1], rotate[:, 2, 2] = (angle.cos(), -angle.sin(), angle.sin(),
                                                                          angle.cos())
    shift_hue = torch.linalg.inv(RGB_TO_YIQ) @ rotate @ RGB_TO_YIQ
    # Saturation and the hue turn keep greys grey, so contrast's grey offset passes through them unchanged.
    return (brightness * contrast).view(-1, 1, 1) * shift_hue @ saturate, (1 - contrast) * brightness


class BatchMixer:
    """Mixup and cutmix of training batches, with soft targets mixed in the ratio of the areas.

    Each batch is cutmixed with probability `cutmix`, otherwise mixed up with probability `mixup`, otherwise
    returned as it is (integer targets). Every image is paired with a partner from the same batch (a random
    permutation). Mixup blends the two photos with a weight drawn from Beta(alpha, alpha). Cutmix pastes part
    of the partner: in `box` mode a random box covering 1 - Beta(alpha, alpha) of the photo (standard CutMix);
    in `vertical` mode the right part, from a column drawn uniformly in `cutmix_ratio` of the width, so that
    each person keeps half a face (mask, gender and age stay visible on both sides). Targets become
    `kept * one_hot(own) + (1 - kept) * one_hot(partner)`, kept being the fraction of the photo still its own.
    """

    def __init__(self, num_classes, mixup=0.0, cutmix=0.0, alpha=1.0, cutmix_mode="box", cutmix_ratio=(0.46, 0.54),
                 rng=None):
        if not (0 <= mixup <= 1 and 0 <= cutmix <= 1 and mixup + cutmix <= 1):
            raise UserError(f"--mixup {mixup} and --cutmix {cutmix} are probabilities per batch: each in 0-1, "
                            "summing to at most 1")
        low, high = cutmix_ratio
        if not 0 < low <= high < 1:
            raise UserError(f"--cutmix_ratio {low} {high} must satisfy 0 < low <= high < 1")
        if alpha <= 0:
            raise UserError(f"--mix_alpha {alpha} must be positive")
        self.num_classes, self.mixup, self.cutmix, self.alpha = num_classes, mixup, cutmix, alpha
        self.cutmix_mode, self.cutmix_ratio = cutmix_mode, (low, high)
        self.rng = np.random.default_rng() if rng is None else rng

    def __call__(self, images, targets):
        """(images, targets): integer targets (N,) in, soft targets (N, num_classes) out when the batch was mixed."""
        draw = self.rng.random()
        if draw >= self.cutmix + self.mixup:
            return images, targets
        partner = torch.as_tensor(self.rng.permutation(len(images)), device=images.device)
        if draw < self.cutmix:
            images, kept = self.cut(images, partner)
        else:
            kept = float(self.rng.beta(self.alpha, self.alpha))
            images = to_unit_float(images)  # a blend of uint8 photos is no longer uint8
            images = kept * images + (1 - kept) * images[partner]
        one_hot = F.one_hot(targets, self.num_classes).to(images.dtype)
        return images, kept * one_hot + (1 - kept) * one_hot[partner]

    def cut(self, images, partner):
        """The images with a region taken from their partners, and the fraction of each image left its own."""
        height, width = images.shape[-2:]
        if self.cutmix_mode == "vertical":
            top, bottom, right = 0, height, width
            left = round(self.rng.uniform(*self.cutmix_ratio) * width)
        else:
            side = math.sqrt(1 - self.rng.beta(self.alpha, self.alpha))
            centre_y, centre_x = self.rng.integers(height), self.rng.integers(width)
            top, bottom = max(centre_y - round(side * height / 2), 0), min(centre_y + round(side * height / 2), height)
            left, right = max(centre_x - round(side * width / 2), 0), min(centre_x + round(side * width / 2), width)
        mixed = images.clone()
        mixed[..., top:bottom, left:right] = images[partner, ..., top:bottom, left:right]
        return mixed, 1 - (bottom - top) * (right - left) / (height * width)
