"""Image transforms, chosen by name with `--augmentation`.

Every transform takes a PIL photo and returns a normalised float tensor of shape (3, H, W).
`BaseAugmentation` (resize + normalise) is the evaluation transform: train-time validation and
inference both use it with the run's saved `--resize`, so the two can never disagree.
"""
import torch
from torchvision.transforms import v2

# Channel statistics of the competition's training photos.
MEAN = (0.548, 0.504, 0.479)
STD = (0.237, 0.247, 0.246)


def to_normalized_tensor(mean, std):
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


class BaseAugmentation:
    """Resize and normalise: the deterministic transform of validation and inference."""

    def __init__(self, resize, mean=MEAN, std=STD):
        self.transform = v2.Compose([v2.Resize(resize, antialias=True), *to_normalized_tensor(mean, std)])

    def __call__(self, image):
        return self.transform(image)


class CustomAugmentation:
    """Training preset: a mild random crop that keeps the face, a mirror flip and colour jitter."""

    def __init__(self, resize, mean=MEAN, std=STD):
        height, width = resize
        aspect = width / height
        self.transform = v2.Compose([
            v2.RandomResizedCrop(resize, scale=(0.75, 1.0), ratio=(aspect * 0.9, aspect * 1.1), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.03),
            *to_normalized_tensor(mean, std),
        ])

    def __call__(self, image):
        return self.transform(image)


AUGMENTATIONS = {cls.__name__: cls for cls in (BaseAugmentation, CustomAugmentation)}


def create_transform(name, resize):
    """The named transform (one of AUGMENTATIONS) at `resize` = (height, width)."""
    return AUGMENTATIONS[name](tuple(resize))
