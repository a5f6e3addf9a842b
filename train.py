"""Trains a classifier on one fold of the folds CSV written by preprocess.py: the competition's mask / gender / age
classes, or the classes of a folder of class folders.

    export SM_CHANNEL_TRAIN=data/train/images SM_MODEL_DIR=model
    python preprocess.py
    python train.py --name exp                                  # run directory model/exp (exp2, ... if taken)
    python train.py --model efficientnet_b4 --pretrained --resize 380 380 --epochs 30
    python train.py --data_dir data/mask --select accuracy      # a class-folder set, best epoch by top-1 accuracy

A run directory holds what reproduces it: config.json (every resolved argument, the label scheme included, and
training_prior: the class mix the training loader draws, after --old_age, --drop_ages and --sampler, which
inference's --adapt_prior adapts), best.pth (the best validation macro F1, or accuracy with --select accuracy;
with the validation fold's probabilities and targets, which inference's --calibrate and --decision fit on), last.pth
(the latest epoch), summary.csv (one row per epoch) and TensorBoard logs (`tensorboard --logdir model`, with each
epoch's confusion matrix), and what shows it: curves.png (redrawn every epoch) and report/, the best epoch's validation
pictures (reports.py). Each epoch trains with a progress bar, validates on the held-out fold and prints train
loss, validation loss, macro F1 over the scheme's classes, accuracy and the competition's per-task F1, then each
class's F1.
"""
import argparse
import copy
import math
import os
import random
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

import cli
import distributed
import reports
from adaptation import training_mix
from augmentation import (AUGMENTATIONS, CUTMIX_MODES, BatchMixer, create_batch_jitter, create_transform,
                          decode_size)
from dataset import (CACHE_MODES, SAMPLERS, ImageDataset, LabelScheme, SeededSampler, create_sampler,
                     frame_scheme, load_folds, loader_options, open_cache, parse_age_range, person_column, run_scheme,
                     target_scheme, training_targets)
from evaluation import class_f1, collapsed_tasks, score
from faces import CROP_MODES, boxes_detection, check_crop_box, crop_regions
from fileio import (load_checkpoint, make_dir, read_json, remove_unfinished_runs, save_checkpoint, write_csv,
                    write_json)
from loss import CRITERIA, create_training_criterion
from model import AMP_DTYPES, HEADS, autocast, create_model, freeze_backbone, load_weights, place_model, predict, \
    to_memory_format
from optim import (OPTIMIZERS, SCHEDULERS, create_ema, create_grad_scaler, create_optimizer, create_scheduler,
                   parameter_groups)

SELECT = {"f1": "val_f1", "accuracy": "val_accuracy"}  # --select: the validation metric that picks best.pth
FEW_VALIDATION_PEOPLE = 10  # a validation fold of fewer people decides for them, not for the task (small_fold_warning)
# The defaults are the recipe that scored best on the sample set's held-out eval people (benchmark_recipe.py,
# docs/defaults.md): face crop, multi head, weighted sampler, ages 58+ trained as 60+, focal loss, vertical cutmix,
# onecycle at 3e-3, batch 32, 8 epochs.
TRAINING_OLD_AGE = 58
# What a flag left unset means, from scratch and fine-tuning pretrained weights (docs/defaults.md): measured on real
# faces with rendered masks, held-out people, three seeds (benchmark_recipe.py --data_dir).
SCRATCH = {"lr": 3e-3, "backbone_lr": 1.0, "freeze_epochs": 0}
FINE_TUNING = {"lr": 1e-3, "backbone_lr": 1.0, "freeze_epochs": 0}



def get_args_parser():
    parser = cli.new_parser("Train a classifier (competition or class folders) on one fold.")
    data = parser.add_argument_group("data")
    cli.add_flag(data, "data_dir", default=cli.env_default("SM_CHANNEL_TRAIN", "data/train/images"),
                 help="folder of person folders, or of class folders (env SM_CHANNEL_TRAIN)")
    cli.add_flag(data, "csv", default=None, help="folds CSV from preprocess.py (default: folds.csv beside data_dir)")
    cli.add_flag(data, "fold", type=fold_number, default=0,
                 help="fold held out for validation; all: one run per fold in run_dir/fold0, fold1, ... "
                      "and the out-of-fold predictions in run_dir/oof.csv (inference votes the runs and calibrates "
                      "and decides on every fold: the recipe for a few dozen people)")
    cli.add_flag(data, "resize", type=cli.positive_int, nargs=2, default=[128, 96], metavar=("H", "W"),
                 help="input height and width, the same at validation and inference")
    cli.add_flag(data, "crop", default="face", choices=CROP_MODES,
                 help="face: the face box of the folds CSV grown by --face_margin (photos without a face: the median "
                      "box), at --resize's aspect ratio; box: --crop_box of every photo; none: the whole photo resized")
    cli.add_flag(data, "face_margin", type=cli.non_negative_float, default=0.4,
                 help="--crop face: the margin added on each side, as a fraction of the face box's width and height")
    cli.add_flag(data, "crop_box", type=cli.fraction, nargs=4, default=None, metavar=("X1", "Y1", "X2", "Y2"),
                 help="--crop box: the region shown, as fractions of the photo's width and height")
    cli.add_flag(data, "augmentation", default="CustomAugmentation", choices=list(AUGMENTATIONS),
                 help="training transform (validation always uses BaseAugmentation)")
    cli.add_flag(data, "batch_size", type=cli.positive_int, default=32,
                 help="training batch size (per process under torchrun)")
    cli.add_flag(data, "valid_batch_size", type=cli.positive_int, default=256, help="validation batch size")
    cli.add_flag(data, "workers", type=cli.non_negative_int, default=max(0, min(8, (os.cpu_count() or 1) - 1)),
                 help="loader worker processes (default: the cores but one, at most 8)")
    cli.add_flag(data, "sampler", default="weighted", choices=SAMPLERS,
                 help="none: shuffle; weighted: draw each class equally often (inverse frequency); "
                      "imbalanced: torchsampler's ImbalancedDatasetSampler on the training targets")
    cli.add_flag(data, "old_age", type=cli.positive_int, default=TRAINING_OLD_AGE,
                 help="competition: training targets count ages >= this as 60+ (validation always uses 60)")
    cli.add_flag(data, "drop_ages", default=None, metavar="A-B",
                 help="leave people of these ages (a range A-B or one age) out of training, never of validation")

    mixing = parser.add_argument_group("mixing")
    cli.add_flag(mixing, "mixup", type=cli.fraction, default=0.0, metavar="P", help="probability of mixup per batch")
    cli.add_flag(mixing, "cutmix", type=cli.fraction, default=0.5, metavar="P", help="probability of cutmix per batch")
    cli.add_flag(mixing, "mix_alpha", type=cli.positive_float, default=1.0,
                 help="Beta(alpha, alpha) of mixup's weight and of box cutmix's area")
    cli.add_flag(mixing, "cutmix_mode", default="vertical", choices=CUTMIX_MODES,
                 help="box: a random box of the partner (standard); vertical: the partner's right part")
    cli.add_flag(mixing, "cutmix_ratio", type=cli.fraction, nargs=2, default=[0.46, 0.54], metavar=("LOW", "HIGH"),
                 help="vertical cutmix: range of the split column, as a fraction of the width")

    model = parser.add_argument_group("model")
    cli.add_flag(model, "model", default="resnet18", help="timm, torchvision or efficientnet-pytorch name")
    cli.add_flag(model, "head", default="auto", choices=["auto", *HEADS],
                 help="single: one logit per class; multi: one head per task of the scheme (the competition's mask 3 "
                      "+ gender 2 + age 3); auto: multi where the scheme has several tasks, else single")
    cli.add_flag(model, "task", default="all",
                 help="all: every class of the scheme; mask, gender or age: that competition task alone")
    cli.add_flag(model, "pretrained", action="store_true", help="start from the hub's ImageNet weights")
    cli.add_flag(model, "pretrained_path", default=None, help="start from a local weights file instead")

    optimisation = parser.add_argument_group("optimisation")
    cli.add_flag(optimisation, "epochs", type=cli.positive_int, default=8, help="number of epochs")
    cli.add_flag(optimisation, "optimizer", default="adamw", choices=list(OPTIMIZERS), help="optimizer")
    cli.add_flag(optimisation, "lr", type=cli.positive_float, default=None,
                 help=f"learning rate (default: {SCRATCH['lr']:g} from scratch, {FINE_TUNING['lr']:g} fine-tuning "
                      "--pretrained or --pretrained_path weights)")
    cli.add_flag(optimisation, "backbone_lr", type=cli.fraction, default=None, metavar="FRACTION",
                 help=f"the backbone's learning rate as a fraction of --lr (default: {SCRATCH['backbone_lr']:g} from "
                      f"scratch, {FINE_TUNING['backbone_lr']:g} fine-tuning)")
    cli.add_flag(optimisation, "max_lr", type=cli.positive_float, default=None,
                 help="onecycle's peak learning rate (default: --lr)")
    cli.add_flag(optimisation, "warmup_epochs", type=cli.non_negative_int, default=0,
                 help="epochs of linear warmup from 1%% of --lr before the schedule (not with onecycle or plateau)")
    cli.add_flag(optimisation, "momentum", type=cli.fraction, default=0.9, help="momentum of sgd and sgdp")
    cli.add_flag(optimisation, "weight_decay", type=cli.non_negative_float, default=1e-4, help="weight decay")
    cli.add_flag(optimisation, "scheduler", default="onecycle", choices=SCHEDULERS, help="learning-rate schedule")
    cli.add_flag(optimisation, "lr_decay_step", type=cli.positive_int, default=5,
                 help="step scheduler: epochs between decays")
    cli.add_flag(optimisation, "lr_decay", type=cli.positive_float, default=0.5,
                 help="step and plateau: factor of each decay")
    cli.add_flag(optimisation, "plateau_patience", type=cli.non_negative_int, default=2,
                 help="plateau scheduler: epochs without a better validation F1 before a decay")
    cli.add_flag(optimisation, "clip_grad", type=cli.non_negative_float, default=0.0, metavar="NORM",
                 help="clip the gradient norm to this (0: off)")
    cli.add_flag(optimisation, "ema", type=cli.fraction, default=0.0, metavar="DECAY",
                 help="keep an exponential moving average of the weights (e.g. 0.999), validated and saved "
                      "instead of the raw weights (0: off)")
    cli.add_flag(optimisation, "freeze_epochs", type=cli.non_negative_int, default=None,
                 help="train only the head, backbone frozen, for this many first epochs (default: "
                      f"{SCRATCH['freeze_epochs']} from scratch, {FINE_TUNING['freeze_epochs']} fine-tuning)")
    cli.add_flag(optimisation, "criterion", default="focal", choices=CRITERIA, help="training criterion")
    cli.add_flag(optimisation, "class_weights", default="none", choices=["none", "auto"],
                 help="auto: weigh the criterion's classes by inverse training frequency (mean 1; f1 ignores it)")
    cli.add_flag(optimisation, "task_criteria", nargs="+", default=None, choices=CRITERIA, metavar="CRITERION",
                 help="--head multi: one criterion per task, e.g. mask gender age (default: --criterion)")
    cli.add_flag(optimisation, "task_weights", type=cli.non_negative_float, nargs="+", default=None, metavar="WEIGHT",
                 help="--head multi: weight of each task's criterion (default: 1 each)")
    cli.add_flag(optimisation, "focal_gamma", type=cli.non_negative_float, default=2.0, help="focal criterion's gamma")
    cli.add_flag(optimisation, "smoothing", type=cli.fraction, default=0.1, help="label_smoothing criterion's epsilon")
    cli.add_flag(optimisation, "patience", type=cli.non_negative_int, default=0,
                 help="stop after this many epochs without a better validation F1 (0: never)")
    cli.add_flag(optimisation, "select", default="f1", choices=list(SELECT),
                 help="the validation metric that picks best.pth and drives --patience: macro F1 or top-1 accuracy")

    run = parser.add_argument_group("run")
    cli.add_flag(run, "model_dir", default=cli.env_default("SM_MODEL_DIR", "model"),
                 help="parent of run directories (env SM_MODEL_DIR)")
    cli.add_flag(run, "name", type=cli.plain_name, default="exp", help="run directory name; exp2, exp3, ... when taken")
    cli.add_flag(run, "seed", type=cli.non_negative_int, default=42, help="seed of weights, order and augmentation")
    cli.add_flag(run, "resume", default=None, metavar="RUN_DIR",
                 help="continue an interrupted run (or --fold all parent) from its last.pth; its config.json "
                      "supplies every other flag")
    cli.add_flag(run, "deterministic", action="store_true",
                 help="deterministic cuDNN algorithms on GPU (slower); CPU runs are deterministic anyway")
    cli.add_flag(run, "device", type=cli.device, default="cuda" if torch.cuda.is_available() else "cpu",
                 help="torch device")

    speed = parser.add_argument_group("speed")
    cli.add_flag(speed, "cache", default="disk", choices=CACHE_MODES,
                 help="decode each photo once: disk keeps the pixels in --cache_dir for later epochs and runs, ram "
                      "for this run; off decodes every photo every epoch")
    cli.add_flag(speed, "cache_dir", default=None, help="where --cache disk keeps them (default: .cache beside "
                 "data_dir, i.e. beside folds.csv)")
    cli.add_flag(speed, "amp", default="off", choices=list(AMP_DTYPES),
                 help="mixed precision: bf16 (GPU or CPU), fp16 (GPU, with loss scaling), off")
    cli.add_flag(speed, "channels_last", action="store_true",
                 help="model and batches in channels-last memory format (faster convolutions on tensor cores)")
    cli.add_flag(speed, "compile", action="store_true",
                 help="torch.compile the training model (minutes of compiling first, then faster steps)")
    return parser


def resolve_mode_defaults(args):
    """Fills the flags left unset with their defaults for this run: from scratch, or fine-tuning --pretrained or
    --pretrained_path weights (FINE_TUNING), and says so when fine-tuning."""
    fine_tuning = bool(args.pretrained or args.pretrained_path)
    defaults = FINE_TUNING if fine_tuning else SCRATCH
    unset = {name: value for name, value in defaults.items() if getattr(args, name) is None}
    for name, value in unset.items():
        setattr(args, name, value)
    if fine_tuning and unset:
        print("fine-tuning pretrained weights: " + " ".join(f"--{name} {value:g}" for name, value in unset.items())
              + " (train.py's fine-tuning defaults; flags override them)")


def fold_number(text):
    """--fold: a fold number or `all`."""
    return text if text == "all" else int(text)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def configure_determinism(deterministic):
    """Deterministic cuDNN and algorithms when asked; otherwise let cuDNN pick the fastest kernels."""
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def next_run_dir(model_dir, name):
    """model_dir/name, or name2, name3, ... when taken: runs are never overwritten."""
    candidate, number = Path(model_dir) / name, 2
    while candidate.exists():
        candidate, number = Path(model_dir) / f"{name}{number}", number + 1
    return candidate


def training_frame(frame, fold, drop_ages=None):
    """The rows trained on: every fold but `fold`, less the people of the ages --drop_ages names."""
    train_frame = frame[frame["fold"] != fold]
    if drop_ages is None:
        return train_frame
    try:
        low, high = parse_age_range(drop_ages)
    except ValueError as error:
        raise cli.UserError(f"--drop_ages: {error}") from None
    kept = train_frame[~train_frame["age"].between(low, high)]
    if kept.empty:
        raise cli.UserError(f"--drop_ages {drop_ages} leaves no training image")
    return kept


def run_crop_regions(args, frame):
    """Each row's crop region under --crop, --face_margin and --crop_box (faces.crop_regions), None for none."""
    if args.crop == "box":
        if args.crop_box is None:
            raise cli.UserError("--crop box needs --crop_box X1 Y1 X2 Y2 (fractions of the photo)")
        check_crop_box(args.crop_box)
    if args.face_margin < 0:
        raise cli.UserError(f"--face_margin {args.face_margin} must be 0 or more")
    return crop_regions(frame, args.crop, args.face_margin, args.crop_box)


def build_loaders(args, frame, data_dir, device):
    """Training loader (--old_age targets, --drop_ages left out, --sampler) and validation loader (true labels)."""
    if args.old_age <= 30:
        raise cli.UserError(f"--old_age {args.old_age} must be over 30, the lower bound of the 30-59 band")
    train_frame, valid_frame = training_frame(frame, args.fold, args.drop_ages), frame[frame["fold"] == args.fold]
    # Photos decoded once per size and crop (random crops want a margin) into caches of every fold, which each fold
    # reuses; the crop of a photo without a face comes from the faces of the whole set.
    regions = run_crop_regions(args, frame)
    train_size, valid_size = decode_size(args.augmentation, args.resize), tuple(args.resize)
    train_zoom = AUGMENTATIONS[args.augmentation].margin
    all_photos, cache_dir = [data_dir / p for p in frame["path"]], Path(args.cache_dir or data_dir.parent / ".cache")
    caches = {(size, zoom): open_cache(all_photos, size, args.cache, cache_dir, regions, zoom)
              for size, zoom in {(train_size, train_zoom), (valid_size, 1.0)}}

    def image_set(rows, targets, transform, size, zoom):
        rows_regions = None if regions is None else regions[frame.index.get_indexer(rows.index)]
        return ImageDataset([data_dir / p for p in rows["path"]], targets, transform, size, caches[size, zoom],
                            rows_regions, zoom)

    train_set = image_set(train_frame, training_targets(train_frame, args.task, args.old_age),
                          create_transform(args.augmentation, args.resize), train_size, train_zoom)
    valid_set = image_set(valid_frame, training_targets(valid_frame, args.task),
                          create_transform("BaseAugmentation", args.resize), valid_size, 1.0)
    # Every random draw of the training loader comes from `draws`, which seed_epoch re-seeds each epoch: the order,
    # the sampler's draws and a seed per item for its augmentation (SeededSampler), whichever worker loads it. So
    # workers persist between epochs, and a resumed run replays the epochs it continues. The loader's own generator
    # seeds its workers, which draw nothing from their seeds: it keeps that draw off torch's global generator.
    draws = torch.Generator().manual_seed(args.seed)
    labels, classes = training_targets(train_frame, "all", args.old_age), frame_scheme(frame).num_classes
    sampler = create_sampler(args.sampler, train_set, labels, classes, draws)
    # the prior the posteriors learn: inference adapts it to the eval set's mix (adaptation.py)
    args.training_prior = training_mix(sampler, train_set.targets, run_scheme(vars(args)).num_classes)
    sampler = distributed.shard(SeededSampler(sampler, draws), draws)
    options = loader_options(args.workers, device, persistent=True)
    train_loader = DataLoader(train_set, args.batch_size, sampler=sampler, drop_last=len(sampler) > args.batch_size,
                              generator=torch.Generator().manual_seed(args.seed), **options)
    valid_loader = DataLoader(valid_set, args.valid_batch_size, shuffle=False, **options)
    return train_loader, valid_loader


class DivergedError(Exception):
    """The training loss stopped being a finite number."""


def train_one_epoch(model, loader, criterion, optimizer, scheduler, device, epoch, mixer=None, clip_grad=0.0,
                    ema=None, frozen=False, amp="off", scaler=None, channels_last=False, jitter=None):
    """One pass over the training loader, batches colour-jittered by `jitter` and mixed by `mixer` on the device,
    gradients clipped to the norm `clip_grad` (0: not), `ema` updated after every step and the backbone `frozen`
    or not; the forward pass under `amp` autocast, the loss scaled by `scaler` (create_grad_scaler), batches in
    channels-last format if asked. Returns the mean training loss."""
    scaler = create_grad_scaler(amp, device) if scaler is None else scaler
    model.train()
    freeze_backbone(distributed.unwrap(model), frozen)
    total_loss, seen = 0.0, 0
    progress = tqdm(loader, desc=f"epoch {epoch}", unit="batch", leave=False)
    for images, targets in progress:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if jitter is not None:
            images = jitter(images)
        images = to_memory_format(images, channels_last)
        if mixer is not None:
            images, targets = mixer(images, targets)
        with autocast(device, amp):
            logits = model(images)
        loss = criterion(logits.float(), targets)  # the loss in float32 whatever the autocast
        step_loss = loss.item()  # the step's one wait for the device
        mean_loss = distributed.mean(step_loss)  # over the ranks: one rank's NaN stops them all at this step
        if not math.isfinite(mean_loss):
            raise DivergedError(f"loss became {mean_loss} at epoch {epoch}")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if clip_grad:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        scaler.step(optimizer)  # skips the step when fp16 gradients overflowed
        scaler.update()
        if ema is not None:
            ema.update(model)
        if not isinstance(scheduler, ReduceLROnPlateau):
            scheduler.step()
        total_loss += step_loss * len(images)
        seen += len(images)
        progress.set_postfix(loss=f"{total_loss / seen:.4f}")
    return total_loss / seen


def validate(model, loader, criterion, head, scheme, device, amp="off", channels_last=False):
    """Validation metrics (loss, macro F1 over the classes of `scheme`, accuracy, the competition's per-task F1,
    each class's F1) and probabilities, the forward passes as fast as training's (`amp`, `channels_last`)."""
    probabilities, loss = predict(model, loader, head, scheme, device, criterion, amp, channels_last)
    targets, predicted = loader.dataset.targets, probabilities.argmax(dim=1).numpy()
    metrics = {**score(targets, predicted, scheme), **class_f1(targets, predicted, scheme)}
    return {"val_loss": loss, **{f"val_{name}": value for name, value in metrics.items()}}, probabilities


def log_epoch(run_dir, writer, history, row):
    """summary.csv rewritten from the whole history (the latest row is history's last), TensorBoard, one line."""
    write_csv(pd.DataFrame(history), run_dir / "summary.csv")
    for name, value in row.items():
        if name != "epoch":
            writer.add_scalar(name, value, row["epoch"])
    headline = {name: value for name, value in row.items() if "/" not in name}
    print(" ".join(f"{name} {value:.4f}" if isinstance(value, float) else f"{name} {value}"
                   for name, value in headline.items()))
    print("  f1 per class: " + ", ".join(f"{name.split('/', 1)[1]} {value:.3f}" for name, value in row.items()
                                         if "/" in name), flush=True)


def collapse_warning(collapsed, epoch):
    """The line that says the validation predictions collapsed onto one value (collapsed_tasks), and what to try."""
    what = "; ".join(f"{task} {name!r} for {share:.0%} of the fold (truth {truth:.0%})"
                     for task, (name, share, truth) in collapsed.items())
    return (f"warning: epoch {epoch}'s validation predictions collapsed onto one value: {what}. Try starting from "
            "pretrained weights (--pretrained, --pretrained_path), a lower --lr, more --epochs, or another --model")


def small_fold_warning(frame, fold):
    """The line that says the validation fold holds too few people to choose on, and what to do instead, or None.
    best.pth's epoch and inference's temperature and macro-F1 decision are fitted on that fold: on the real 3-class
    set (4 validation people) they followed those people and lost held-out F1 (docs/real_photos.md)."""
    held_out = frame[frame["fold"] == fold]
    people = held_out[person_column(frame)].nunique()
    if people >= FEW_VALIDATION_PEOPLE:
        return None
    return (f"warning: the validation fold holds {len(held_out)} photos of {people} people, too few to choose on: "
            "best.pth's epoch, and inference's temperature and macro-F1 decision, are fitted on them alone. Train "
            "with --fold all (its fold runs are predicted together, calibrated and decided on every training photo), "
            "or predict with --decision argmax")


def draw_epoch(run_dir, writer, history, targets, probabilities, scheme):
    """curves.png redrawn from the whole history, and the epoch's confusion matrix in TensorBoard."""
    reports.save_figure(reports.curves_figure({run_dir.name: pd.DataFrame(history)}), run_dir / "curves.png")
    figure = reports.confusion_figure(targets, probabilities.argmax(dim=1).numpy(), scheme.classes)
    writer.add_figure("confusion", figure, history[-1]["epoch"])


def write_validation_report(report_dir, valid_set, image_ids, best, scheme):
    """The pictures of the best epoch's validation predictions, photos as the validation loader gave them."""
    probabilities = best["valid_probabilities"].numpy()
    reports.write_report(report_dir, valid_set.targets, probabilities.argmax(axis=1), scheme, probabilities,
                         image_ids, valid_set.load)
    print(f"pictures of epoch {best['epoch']}'s validation in {report_dir}")


def seed_epoch(seed, epoch, loader, mixer, jitter=None, rank=0):
    """Derives every random draw of an epoch (order, sampler, augmentation, jitter, mixing) from (seed, epoch)
    alone, so a run resumed at an epoch boundary continues exactly as the uninterrupted run. Under torchrun the
    loader's draws (its sampler's generator) are the same on every rank: each rank takes its shard of one draw,
    items and their augmentation seeds alike (distributed.ShardSampler). The other draws fold in the `rank`."""
    seed_everything(int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0]))
    loader.sampler.generator.manual_seed(seed * 10_000 + epoch)
    mixer.rng = np.random.default_rng([seed, epoch, rank])
    if jitter is not None:
        jitter.rng = mixer.rng


def configure_scheme(args, frame):
    """Records the folds CSV's label scheme in the arguments (and so in config.json), checks --task against it and
    resolves --head auto: multi where the classes are several tasks, single otherwise."""
    scheme = frame_scheme(frame)
    if getattr(args, "scheme", None) and LabelScheme.from_dict(args.scheme) != scheme:
        raise cli.UserError(f"the run's classes {LabelScheme.from_dict(args.scheme).classes} are not those of "
                            f"{args.csv} ({scheme.classes}): resume on the data it was trained on")
    args.scheme = scheme.to_dict()
    target = target_scheme(scheme, args.task)
    if args.head == "auto":
        args.head = "multi" if len(target.tasks) > 1 else "single"
    if args.task != "all" and args.head != "single":
        raise cli.UserError(f"--task {args.task} trains one task and needs --head single")


def configure_face_detection(args, frame):
    """Records how the folds CSV's face boxes were detected (config.json's face_detection), so that inference finds
    the eval photos' faces the same way; a resumed run refuses boxes of another detection."""
    if args.crop != "face":
        return
    detection = boxes_detection(frame, args.csv)
    saved = getattr(args, "face_detection", None)
    if saved and saved != detection:
        raise cli.UserError(f"the run's face boxes were detected as {saved}, those of {args.csv} as {detection}: "
                            "resume on the data it was trained on")
    args.face_detection = detection


def build_training(args, frame, device):
    """Everything a fold's training loop works with, built from its arguments: the model (and `trained`, the same
    model in DistributedDataParallel under torchrun), loaders, criterion, optimizer, scheduler, loss scaler, EMA
    (or None), colour jitter of the batches (or None) and batch mixer."""
    configure_scheme(args, frame)
    scaler = create_grad_scaler(args.amp, device)  # first: a refused --amp builds nothing
    model = place_model(create_model(vars(args)), device, args.channels_last)
    train_loader, valid_loader = build_loaders(args, frame, Path(args.data_dir), device)
    optimizer = create_optimizer(args, parameter_groups(model, args.lr, args.backbone_lr))
    training = SimpleNamespace(
        model=model, train_loader=train_loader, valid_loader=valid_loader, optimizer=optimizer, scaler=scaler,
        criterion=create_training_criterion(args, train_loader.dataset.targets, run_scheme(vars(args))).to(device),
        scheduler=create_scheduler(args, optimizer, len(train_loader)), ema=create_ema(args, model),
        jitter=create_batch_jitter(args.augmentation),
        mixer=BatchMixer(run_scheme(vars(args)).num_classes, args.mixup, args.cutmix, args.mix_alpha,
                         args.cutmix_mode, args.cutmix_ratio))
    if args.compile:
        model.compile()  # in place, after the EMA's copy: the state_dict keys, and so the checkpoints, stay the same
    training.trained = distributed.wrap(model, find_unused_parameters=args.freeze_epochs > 0)  # gradients averaged
    return training


def evaluated_model(training):
    """The weights validated and saved: with --ema the averaged ones, otherwise the trained ones."""
    return training.model if training.ema is None else training.ema.module


def save_epoch(run_dir, args, training, progress, metrics, probabilities, improved):
    """best.pth if the epoch improved on the best validation F1, then last.pth: everything a resume needs."""
    state = {"model": evaluated_model(training).state_dict(), "epoch": progress["epoch"], "metrics": metrics,
             "config": vars(args)}
    if improved:
        save_checkpoint({**state, "valid_probabilities": probabilities,
                         "valid_targets": torch.tensor(training.valid_loader.dataset.targets)}, run_dir / "best.pth")
    save_checkpoint({**state, "optimizer": training.optimizer.state_dict(),
                     "scheduler": training.scheduler.state_dict(), "scaler": training.scaler.state_dict(),
                     "progress": progress,
                     **({"training_model": training.model.state_dict()} if training.ema is not None else {})},
                    run_dir / "last.pth")


def restore_progress(path, training):
    """Loads last.pth into the model, optimizer, scheduler, loss scaler and EMA; returns the loop's progress."""
    state = load_checkpoint(path, keys=("model", "epoch", "optimizer", "scheduler", "progress"))
    load_weights(training.model, state.get("training_model", state["model"]), path)
    if training.ema is not None:
        load_weights(training.ema.module, state["model"], path)
    training.optimizer.load_state_dict(state["optimizer"])
    planned, saved = getattr(training.scheduler, "total_steps", None), state["scheduler"].get("total_steps")
    if planned != saved:  # onecycle's schedule ends with the run it was made for
        raise cli.UserError(f"{path} holds a onecycle schedule of {saved} steps, but the run now takes {planned}: "
                            "resume with the run's own epochs and batch size")
    training.scheduler.load_state_dict(state["scheduler"])
    training.scaler.load_state_dict(state.get("scaler", {}))  # fp16's loss scale; runs saved before it had none
    print(f"resumed {path} after epoch {state['epoch']}")
    progress = state["progress"]
    progress.setdefault("best_score", progress.pop("best_f1", -math.inf))  # the name before --select
    return progress


def run_epoch(args, training, epoch, device):
    """Trains one epoch and validates it; returns (mean training loss, validation metrics, probabilities)."""
    seed_epoch(args.seed, epoch, training.train_loader, training.mixer, training.jitter, distributed.rank())
    train_loss = train_one_epoch(training.trained, training.train_loader, training.criterion, training.optimizer,
                                 training.scheduler, device, epoch, training.mixer, args.clip_grad, training.ema,
                                 frozen=epoch <= args.freeze_epochs, amp=args.amp, scaler=training.scaler,
                                 channels_last=args.channels_last, jitter=training.jitter)
    # Rank 0 validates the weights it saves, on the whole fold, and hands every rank its metrics: the other ranks'
    # batch-norm statistics differ (each saw its own batches), and the same metrics give every rank the same
    # plateau step and early stop.
    metrics, probabilities = distributed.run_on_main(validate, evaluated_model(training), training.valid_loader,
                                                     training.criterion, args.head, run_scheme(vars(args)), device,
                                                     args.amp,
                                                     args.channels_last)
    if not math.isfinite(metrics["val_loss"]):  # the step's loss was finite but the weights it made are not
        raise DivergedError(f"validation loss became {metrics['val_loss']} at epoch {epoch}")
    return distributed.mean(train_loss), metrics, probabilities


def train_fold(args, frame, run_dir, fold, resume=False):
    """Trains on every fold but `fold` into run_dir; returns the validation probabilities of the best epoch.

    With `resume`, continues from run_dir/last.pth when there is one.
    """
    args = copy.copy(args)
    args.fold = fold
    seed_everything(args.seed)
    device = torch.device(args.device)
    training = build_training(args, frame, device)
    if distributed.is_main():
        make_dir(run_dir, exist_ok=resume)
        write_json({**vars(args), "run_dir": str(run_dir)}, run_dir / "config.json")
    print(f"run {run_dir}: {len(training.train_loader.dataset)} training and {len(training.valid_loader.dataset)} "
          f"validation images, {args.model} ({args.head} head, task {args.task}) on {device}")

    writer = SummaryWriter(run_dir) if distributed.is_main() else None
    progress = {"epoch": 0, "best_score": -math.inf, "epochs_without_improvement": 0, "history": []}
    if resume and (run_dir / "last.pth").is_file():
        progress = restore_progress(run_dir / "last.pth", training)
    for epoch in range(progress["epoch"] + 1, args.epochs + 1):
        if args.patience and progress["epochs_without_improvement"] >= args.patience:
            print(f"early stop: no better validation F1 in {args.patience} epochs")
            break
        started = time.time()
        try:
            train_loss, metrics, probabilities = run_epoch(args, training, epoch, device)
        except DivergedError as error:
            kept = (f"{run_dir / 'last.pth'} keeps epoch {progress['epoch']}" if progress["epoch"]
                    else "no epoch had finished, so no checkpoint was written")
            raise cli.UserError(f"{error}: stopped; {kept}; lower --lr or change --criterion") from None
        if isinstance(training.scheduler, ReduceLROnPlateau):
            training.scheduler.step(metrics["val_f1"])
        selected = metrics[SELECT[args.select]]
        improved = selected > progress["best_score"]
        collapsed = collapsed_tasks(training.valid_loader.dataset.targets, probabilities.argmax(dim=1).numpy(),
                                    run_scheme(vars(args)))
        row = {"epoch": epoch, "train_loss": train_loss, **metrics, "val_collapsed": float(bool(collapsed)),
               "lr": training.scheduler.get_last_lr()[0], "seconds": time.time() - started}
        progress = {"epoch": epoch, "best_score": max(progress["best_score"], selected),
                    "epochs_without_improvement": 0 if improved else progress["epochs_without_improvement"] + 1,
                    "history": progress["history"] + [row]}
        if distributed.is_main():  # rank 0 alone writes checkpoints and logs
            save_epoch(run_dir, args, training, progress, metrics, probabilities, improved)
            log_epoch(run_dir, writer, progress["history"], row)  # after last.pth: the logs show no lost epoch
            if collapsed:
                print(collapse_warning(collapsed, epoch), flush=True)
            draw_epoch(run_dir, writer, progress["history"], training.valid_loader.dataset.targets, probabilities,
                       run_scheme(vars(args)))
    if writer is not None:
        writer.close()
    best_row = max(progress["history"], key=lambda row: row[SELECT[args.select]], default={})
    collapsed = " (its validation predictions collapsed onto one value: see the warning)" if best_row.get(
        "val_collapsed") else ""
    print(f"best {SELECT[args.select]} {progress['best_score']:.4f}{collapsed}; checkpoints in {run_dir}")
    distributed.barrier()  # rank 0 has written best.pth
    best = load_checkpoint(run_dir / "best.pth")
    if distributed.is_main():
        write_validation_report(run_dir / "report", training.valid_loader.dataset,
                                frame[frame["fold"] == fold]["path"].tolist(), best, run_scheme(vars(args)))
    return best["valid_probabilities"]


def train_all_folds(args, frame, run_dir, resume=False):
    """One run per fold in run_dir/fold0, fold1, ...; then every image's prediction by the model that did not
    train on it in run_dir/oof.csv, and their metrics over the whole training set in run_dir/oof_metrics.json.
    oof.csv starts as probabilities.csv does (ImageID: the path under data_dir, as `inference.py --fold K` names it;
    prob_0, prob_1, ...), so ensemble.py reads it; fold, label and predicted follow."""
    parts = []
    for fold in sorted(set(frame["fold"])):
        probabilities = train_fold(args, frame, run_dir / f"fold{fold}", fold, resume)
        held_out = frame[frame["fold"] == fold]  # validation rows, in the validation loader's order
        parts.append(pd.DataFrame({
            "ImageID": held_out["path"].to_numpy(),
            **{f"prob_{k}": probabilities[:, k].numpy() for k in range(probabilities.shape[1])},
            "fold": fold, "label": training_targets(held_out, args.task),
            "predicted": probabilities.argmax(dim=1).numpy()}))
    oof = pd.concat(parts, ignore_index=True)
    if not distributed.is_main():
        return  # rank 0 alone writes the out-of-fold files
    write_csv(oof, run_dir / "oof.csv")
    scheme = run_scheme(vars(args))
    metrics = score(oof["label"].to_numpy(), oof["predicted"].to_numpy(), scheme)
    metrics["fold_f1"] = [score(part["label"], part["predicted"], scheme)["f1"] for part in parts]
    write_json(metrics, run_dir / "oof_metrics.json")
    fold_f1 = ", ".join(f"{f1:.4f}" for f1 in metrics["fold_f1"])
    print(f"out-of-fold f1 {metrics['f1']:.4f} over {len(oof)} images (per fold {fold_f1}); "
          f"oof.csv, oof_metrics.json and the fold runs in {run_dir}")


# what runs saved before a flag existed did, where its default differs
LEGACY_DEFAULTS = {"crop": "none", "backbone_lr": 1.0}


def resumed_args(run_dir):
    """The saved arguments of an interrupted run: a single-fold run, or a --fold all parent of fold runs."""
    for config_path, fold in ((run_dir / "config.json", None), (run_dir / "fold0" / "config.json", "all")):
        if config_path.is_file():
            parser = get_args_parser()
            saved = read_json(config_path)
            cli.check_values(parser, saved, config_path)
            defaults = vars(parser.parse_args([]))  # for flags added since the run was saved
            args = argparse.Namespace(**{**defaults, **LEGACY_DEFAULTS, **saved})
            args.fold = fold if fold is not None else args.fold
            return args
    raise cli.UserError(f"{run_dir} is not a run directory (no config.json): pass the folder train.py made")


def parse_args(argv=None):
    """train.py's arguments, each flag left unset given its default for the run (resolve_mode_defaults)."""
    args = get_args_parser().parse_args(argv)
    resolve_mode_defaults(args)
    return args


def main(argv=None):
    args = parse_args(argv)
    resume, run_dir = args.resume is not None, None
    if resume:
        run_dir, args = Path(args.resume), resumed_args(Path(args.resume))
        resolve_mode_defaults(args)
    args.device = distributed.setup(args.device)  # under torchrun: join the other ranks, one GPU per local rank
    try:
        configure_determinism(args.deterministic)
        data_dir = Path(args.data_dir)
        args.csv = str(Path(args.csv) if args.csv else data_dir.parent / "folds.csv")
        frame = load_folds(Path(args.csv), data_dir, args.fold)
        configure_scheme(args, frame)
        configure_face_detection(args, frame)
        if not resume:
            run_dir = distributed.run_on_main(next_run_dir, args.model_dir, args.name)  # rank 0's choice, for all
        if args.fold == "all":
            train_all_folds(args, frame, run_dir, resume)
        else:
            if distributed.is_main() and (warning := small_fold_warning(frame, args.fold)):
                print(warning, flush=True)
            train_fold(args, frame, run_dir, args.fold, resume)
    except BaseException:
        if run_dir is not None and not resume and distributed.is_main():
            remove_unfinished_runs(run_dir)  # a run with no checkpoint would only stand in inference's way
        raise
    finally:
        distributed.teardown()


if __name__ == "__main__":
    sys.exit(cli.run(main))
