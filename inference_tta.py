"""Predicts the eval set with test-time augmentation: each run's probabilities averaged over several views.

    export SM_CHANNEL_EVAL=data/eval SM_CHANNEL_MODEL=model/exp SM_OUTPUT_DATA_DIR=output
    python inference_tta.py                               # --tta default: identity, hflip, shift, scale
    python inference_tta.py --tta hflip,scale --tta_views 4 --seed 0
    python inference_tta.py --tta flip --fold 0           # the run's held-out fold: prints its macro F1

Takes inference.py's flags (the decoded-photo cache included) and writes the same output.csv and
probabilities.csv. Every photo is decoded once at the run's --resize and seen through its own evaluation
transform (BaseAugmentation), exactly as in training's validation; the named views then act on that batch,
as floats in [0, 1] on the device, so the identity view alone reproduces inference.py. Views: `hflip` mirrors
the photo; `shift` moves it 6% of its size right and down, filling with the mean colour; `scale` zooms into
the centre by 10%. Presets: `none` (identity only), `flip` (hflip), `default` (hflip, shift, scale).
`--tta_views N` adds N random views drawn from the decoded photo with the run's training augmentation (or
`--tta_augmentation`), seeded per photo and view from `--seed`: the same seed gives the same probabilities
whatever the batch size or number of workers. These are its per-photo transforms (CustomAugmentation's crop
and flip); the colour jitter that training applies to whole batches is not a view. `--calibrate`, `--adapt_prior`
and `--decision` adjust each run's averaged views as inference.py does (the temperature is fitted on the run's
validation predictions, made without views).
"""
import sys
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import cli
from augmentation import AUGMENTATIONS, MEAN, create_transform, to_unit_float
from dataset import ImageDataset, open_cache, run_scheme, seeded_torch
from inference import get_args_parser as get_inference_args_parser
from inference import (find_models, make_loader, predict_adjusted, print_held_out_score, read_images, runs_scheme,
                       write_outputs, write_raw)
from model import autocast, logits_to_probabilities, to_memory_format

SHIFT = 0.06  # of the height and width: small enough to keep the whole face in view
ZOOM = 1.1


def identity(images):
    return images


def hflip(images):
    return torch.flip(images, dims=[-1])


def shift(images, fraction=SHIFT):
    """Moves the images (floats in [0, 1]) right and down, filling the uncovered band with the mean colour."""
    height, width = images.shape[-2:]
    mean = torch.tensor(MEAN, device=images.device).view(3, 1, 1)
    moved = F.pad(images - mean, (round(width * fraction), 0, round(height * fraction), 0))
    return moved[..., :height, :width] + mean


def scale(images, factor=ZOOM):
    """Zooms into the centre: enlarges by `factor` and crops back to the original size."""
    height, width = images.shape[-2:]
    larger = F.interpolate(images, size=(round(height * factor), round(width * factor)), mode="bilinear",
                           align_corners=False)
    top, left = (larger.shape[-2] - height) // 2, (larger.shape[-1] - width) // 2
    return larger[..., top:top + height, left:left + width]


VIEWS = {"identity": identity, "hflip": hflip, "shift": shift, "scale": scale}
PRESETS = {"none": [], "flip": ["hflip"], "default": ["hflip", "shift", "scale"]}


def parse_views(text):
    """The view functions of a --tta value (names separated by commas, or one preset), the identity first."""
    names = PRESETS[text] if text in PRESETS else [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in VIEWS]
    if unknown:
        raise cli.UserError(f"unknown TTA view {unknown[0]!r}: use {', '.join(VIEWS)} separated by commas, "
                            f"or a preset ({', '.join(PRESETS)})")
    return [VIEWS[name] for name in dict.fromkeys(["identity", *names])]


def view_seed(seed, view, index):
    """An independent seed per (seed, random view, photo), whatever the loader's batching."""
    return int(np.random.SeedSequence([seed, view, index]).generate_state(1)[0])


class ViewsDataset(ImageDataset):
    """Each photo decoded once at `size` (read from `cache` when given): its evaluation view followed by
    `random_views` augmented ones, stacked."""

    def __init__(self, paths, size, cache, transform, augment, random_views, seed, regions=None):
        super().__init__(paths, transform=transform, size=size, cache=cache, regions=regions)
        self.augment, self.random_views, self.seed = augment, random_views, seed

    def __getitem__(self, index):
        image = self.load(index)
        views = [self.transform(image)]
        for view in range(self.random_views):
            with seeded_torch(view_seed(self.seed, view, index)):
                views.append(self.augment(image))
        return torch.stack(views)


@torch.no_grad()
def predict_views(model, config, paths, batch_size, workers, device, views, random_views=0, seed=0,
                  augmentation=None, cache="off", cache_dir=None, amp="off", channels_last=False, regions=None):
    """Class probabilities of the photos at `paths`, averaged over the views of the evaluation view and over
    `random_views` photos augmented by `augmentation` (default: the run's training augmentation); the photos are
    decoded at the run's --resize and crop (`regions`, as inference.predict_run), kept as `cache` says; the forward
    passes under `amp` autocast, channels-last if asked."""
    augmentation = augmentation or config.get("augmentation", "BaseAugmentation")
    if random_views and augmentation not in AUGMENTATIONS:
        raise cli.UserError(f"the run's augmentation {augmentation!r} is unknown here: pass --tta_augmentation "
                            f"({', '.join(AUGMENTATIONS)})")
    size, scheme = tuple(config["resize"]), run_scheme(config)
    dataset = ViewsDataset(paths, size, open_cache(paths, size, cache, cache_dir, regions),
                           create_transform("BaseAugmentation", size),
                           create_transform(augmentation, size) if random_views else None, random_views, seed,
                           regions)
    model.eval()
    probabilities = []
    for batch in tqdm(make_loader(dataset, batch_size, workers, device), desc="tta", unit="batch", leave=False):
        batch = to_unit_float(batch.to(device, non_blocking=True))  # views interpolate and fill: floats
        inputs = [view(batch[:, 0]) for view in views] + list(batch[:, 1:].unbind(dim=1))
        with autocast(device, amp):
            logits = [model(to_memory_format(images, channels_last)).float() for images in inputs]
        total = sum(logits_to_probabilities(part, config["head"], scheme) for part in logits)
        probabilities.append((total / len(inputs)).float().cpu())
    return torch.cat(probabilities)


def get_args_parser():
    parser = get_inference_args_parser("Predict the eval set with test-time augmentation; write output.csv and "
                             "probabilities.csv.")
    tta = parser.add_argument_group("test-time augmentation")
    cli.add_flag(tta, "tta", default="default",
                 help=f"views besides the identity: names from {', '.join(VIEWS)} separated by commas, "
                      f"or a preset ({', '.join(PRESETS)})")
    cli.add_flag(tta, "tta_views", type=cli.non_negative_int, default=0, help="random augmented views added per photo")
    cli.add_flag(tta, "tta_augmentation", default=None, choices=list(AUGMENTATIONS),
                 help="transform of the random views (default: each run's training augmentation)")
    cli.add_flag(tta, "seed", type=cli.non_negative_int, default=42, help="seed of the random views")
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    predict_one = partial(predict_views, views=parse_views(args.tta), random_views=args.tta_views, seed=args.seed,
                          augmentation=args.tta_augmentation)
    device = torch.device(args.device)
    info, paths, labels = read_images(args)
    runs = find_models(args)
    scheme = runs_scheme(runs, args)
    probabilities, answers, raw = predict_adjusted(runs, paths, args, device, scheme, predict_one)
    answers = write_outputs(args, info, probabilities, scheme, answers)
    write_raw(args, info, raw)
    if labels is not None:
        print_held_out_score(args.fold, labels, answers, scheme)


if __name__ == "__main__":
    sys.exit(cli.run(main))
