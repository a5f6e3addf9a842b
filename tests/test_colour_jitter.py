"""Colour jitter of whole training batches: torchvision's adjustments as one colour matrix per photo."""
import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

import train
from augmentation import AUGMENTATIONS, LUMA, BatchColorJitter, create_batch_jitter, create_transform
from cli import UserError


class FixedJitter(BatchColorJitter):
    """The jitter with chosen factors (brightness, contrast, saturation, hue) for every photo."""

    def __init__(self, brightness=1.0, contrast=1.0, saturation=1.0, hue=0.0):
        super().__init__()
        self.fixed = torch.tensor([brightness, contrast, saturation, hue], dtype=torch.float64)

    def factors(self, count):
        return self.fixed.expand(count, 4)


def mid_range_photos(count=3, seed=0):
    """Photos whose channels stay inside (0.3, 0.7): no adjustment below clips them."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, 16, 12, generator=generator) * 0.4 + 0.3


def test_neutral_factors_return_the_photos_as_unit_floats():
    photos = torch.randint(0, 256, (2, 3, 8, 6), dtype=torch.uint8)
    out = FixedJitter()(photos)
    assert out.dtype == torch.float32 and torch.allclose(out, photos.float() / 255, atol=1e-6)


@pytest.mark.parametrize(("factors", "reference"), [
    ({"brightness": 1.15}, lambda photos: TF.adjust_brightness(photos, 1.15)),
    ({"contrast": 0.8}, lambda photos: TF.adjust_contrast(photos, 0.8)),
    ({"saturation": 1.2}, lambda photos: TF.adjust_saturation(photos, 1.2)),
    ({"brightness": 0.9, "contrast": 1.1, "saturation": 0.85},
     lambda photos: TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(photos, 0.9), 1.1), 0.85)),
])
def test_brightness_contrast_and_saturation_match_torchvision(factors, reference):
    photos = mid_range_photos()
    assert torch.allclose(FixedJitter(**factors)(photos), reference(photos), atol=1e-5)


def test_a_hue_shift_keeps_greys_and_brightness_and_turns_red_towards_orange_as_torchvision_does():
    photos = mid_range_photos()
    shifted = FixedJitter(hue=0.05)(photos)
    assert not torch.allclose(shifted, photos, atol=1e-3)
    assert torch.allclose(shifted.movedim(1, -1) @ LUMA.float(), photos.movedim(1, -1) @ LUMA.float(), atol=1e-5)
    grey = torch.full((1, 3, 4, 4), 0.5)
    assert torch.allclose(FixedJitter(hue=0.2)(grey), grey, atol=1e-5)
    red = torch.tensor([0.8, 0.2, 0.2]).view(1, 3, 1, 1)
    ours, theirs = FixedJitter(hue=0.05)(red) - red, TF.adjust_hue(red, 0.05) - red
    assert ours[0, 1] > 0.05 and theirs[0, 1] > 0.05  # green rises in both: the same turn


def test_every_photo_gets_its_own_factors_and_a_seed_repeats_them():
    photos = torch.full((4, 3, 8, 6), 128, dtype=torch.uint8)
    jitter = create_batch_jitter("CustomAugmentation")
    jitter.rng = np.random.default_rng(0)
    out = jitter(photos)
    assert len({tuple(photo[:, 0, 0].tolist()) for photo in out}) == 4  # four identical photos, four colours
    assert out.min() >= 0 and out.max() <= 1
    jitter.rng = np.random.default_rng(0)
    assert torch.equal(jitter(photos), out)
    factors = jitter.factors(1000)
    amounts = torch.tensor(list(AUGMENTATIONS["CustomAugmentation"].colour_jitter.values()), dtype=torch.float64)
    assert torch.all((factors - torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)).abs() <= amounts)


def test_the_loader_transform_keeps_colours_and_only_the_jittering_preset_jitters_batches():
    red = torch.zeros(3, 74, 55, dtype=torch.uint8)
    red[0] = 200
    cropped = create_transform("CustomAugmentation", (64, 48))(red)
    assert cropped.shape == (3, 64, 48) and torch.equal(cropped.unique(), torch.tensor([0, 200], dtype=torch.uint8))
    assert create_batch_jitter("BaseAugmentation") is None and create_batch_jitter("StrongAugmentation") is None
    with pytest.raises(UserError, match="colour jitter"):
        BatchColorJitter(brightness=1.5)


def test_a_training_step_jitters_the_batch_on_the_device_before_the_model():
    seen = []

    class Recorder(torch.nn.Module):
        """A classifier of mean colours that keeps what it is fed."""

        def __init__(self):
            super().__init__()
            self.backbone, self.head = torch.nn.Identity(), torch.nn.Linear(3, 18)

        def forward(self, images):
            seen.append(images)
            return self.head(self.backbone(images).mean(dim=(2, 3)))

    model = Recorder()
    photos = torch.full((2, 3, 8, 6), 128, dtype=torch.uint8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    jitter = FixedJitter(brightness=1.2)
    train.train_one_epoch(model, [(photos, torch.tensor([0, 1]))], torch.nn.CrossEntropyLoss(), optimizer, scheduler,
                          torch.device("cpu"), 1, jitter=jitter)
    assert torch.allclose(seen[0], torch.full((2, 3, 8, 6), 128 * 1.2 / 255))
