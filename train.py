"""Trains a mask / gender / age classifier on one fold of the folds CSV written by preprocess.py.

    export SM_CHANNEL_TRAIN=data/train/images SM_MODEL_DIR=model
    python preprocess.py
    python train.py --name exp                                  # run directory model/exp (exp2, ... if taken)
    python train.py --model efficientnet_b4 --pretrained --resize 380 380 --head multi --epochs 30

A run directory holds what reproduces it: config.json (every resolved argument), best.pth (the best
validation macro F1), last.pth (the latest epoch), summary.csv (one row per epoch) and TensorBoard logs
(`tensorboard --logdir model`). Each epoch trains with a progress bar, validates on the held-out fold and
prints train loss, validation loss, macro F1 over the 18 classes, the per-task F1 and accuracy.
"""
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from adamp import AdamP, SGDP
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

import cli
from augmentation import AUGMENTATIONS, create_transform
from dataset import TASK_CLASSES, ImageDataset, training_targets
from evaluation import score, score_task
from fileio import save_checkpoint, write_csv, write_json
from loss import CRITERIA, MultiTaskLoss, create_criterion
from model import HEADS, create_model, predict

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
              "sgdp": SGDP, "adamp": AdamP}
SCHEDULERS = ("none", "step", "cosine", "onecycle")
FOLDS_COLUMNS = ("path", "id", "age", "mask_label", "gender_label", "label", "fold")


def get_args_parser():
    parser = cli.new_parser("Train a mask / gender / age classifier on one fold.")
    data = parser.add_argument_group("data")
    cli.add_flag(data, "data_dir", default=cli.env_default("SM_CHANNEL_TRAIN", "data/train/images"),
                 help="folder of person folders (env SM_CHANNEL_TRAIN)")
    cli.add_flag(data, "csv", default=None, help="folds CSV from preprocess.py (default: folds.csv beside data_dir)")
    cli.add_flag(data, "fold", type=int, default=0, help="fold held out for validation")
    cli.add_flag(data, "resize", type=int, nargs=2, default=[128, 96], metavar=("H", "W"),
                 help="input height and width, the same at validation and inference")
    cli.add_flag(data, "augmentation", default="CustomAugmentation", choices=list(AUGMENTATIONS),
                 help="training transform (validation always uses BaseAugmentation)")
    cli.add_flag(data, "batch_size", type=int, default=64, help="training batch size")
    cli.add_flag(data, "valid_batch_size", type=int, default=256, help="validation batch size")
    cli.add_flag(data, "workers", type=int, default=max(0, min(8, (os.cpu_count() or 1) - 1)),
                 help="loader worker processes (default: the cores but one, at most 8)")

    model = parser.add_argument_group("model")
    cli.add_flag(model, "model", default="resnet18", help="timm, torchvision or efficientnet-pytorch name")
    cli.add_flag(model, "head", default="single", choices=HEADS,
                 help="single: 18 logits; multi: mask 3 + gender 2 + age 3 heads")
    cli.add_flag(model, "task", default="all", choices=["all", *TASK_CLASSES],
                 help="all: the 18 classes; mask, gender or age: that task alone (single head)")
    cli.add_flag(model, "pretrained", action="store_true", help="start from the hub's ImageNet weights")
    cli.add_flag(model, "pretrained_path", default=None, help="start from a local weights file instead")

    optimisation = parser.add_argument_group("optimisation")
    cli.add_flag(optimisation, "epochs", type=int, default=10, help="number of epochs")
    cli.add_flag(optimisation, "optimizer", default="adamw", choices=list(OPTIMIZERS), help="optimizer")
    cli.add_flag(optimisation, "lr", type=float, default=1e-3, help="learning rate (OneCycle's peak)")
    cli.add_flag(optimisation, "momentum", type=float, default=0.9, help="momentum of sgd and sgdp")
    cli.add_flag(optimisation, "weight_decay", type=float, default=1e-4, help="weight decay")
    cli.add_flag(optimisation, "scheduler", default="cosine", choices=SCHEDULERS, help="learning-rate schedule")
    cli.add_flag(optimisation, "lr_decay_step", type=int, default=5, help="step scheduler: epochs between decays")
    cli.add_flag(optimisation, "lr_decay", type=float, default=0.5, help="step scheduler: factor of each decay")
    cli.add_flag(optimisation, "criterion", default="cross_entropy", choices=CRITERIA, help="training criterion")
    cli.add_flag(optimisation, "focal_gamma", type=float, default=2.0, help="focal criterion's gamma")
    cli.add_flag(optimisation, "smoothing", type=float, default=0.1, help="label_smoothing criterion's epsilon")
    cli.add_flag(optimisation, "patience", type=int, default=0,
                 help="stop after this many epochs without a better validation F1 (0: never)")

    run = parser.add_argument_group("run")
    cli.add_flag(run, "model_dir", default=cli.env_default("SM_MODEL_DIR", "model"),
                 help="parent of run directories (env SM_MODEL_DIR)")
    cli.add_flag(run, "name", default="exp", help="run directory name; exp2, exp3, ... when taken")
    cli.add_flag(run, "seed", type=int, default=42, help="seed of weights, order and augmentation")
    cli.add_flag(run, "device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    return parser


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_worker(worker_id):
    """Gives each loader worker its own numpy and python seed, derived from the loader's generator."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def next_run_dir(model_dir, name):
    """model_dir/name, or name2, name3, ... when taken: runs are never overwritten."""
    candidate, number = Path(model_dir) / name, 2
    while candidate.exists():
        candidate, number = Path(model_dir) / f"{name}{number}", number + 1
    return candidate


def load_folds(csv_path, data_dir, fold):
    """The folds CSV, checked against data_dir and the requested fold."""
    if not csv_path.is_file():
        raise cli.UserError(f"{csv_path} does not exist: run preprocess.py first or pass --csv")
    frame = pd.read_csv(csv_path, dtype={"id": str})
    missing = [column for column in FOLDS_COLUMNS if column not in frame.columns]
    if missing:
        raise cli.UserError(f"{csv_path} is not a folds CSV (no {', '.join(missing)}): run preprocess.py")
    absent = [path for path in frame["path"] if not (data_dir / path).is_file()]
    if absent:
        raise cli.UserError(f"{len(absent)} of {len(frame)} images in {csv_path} are not under {data_dir} "
                            f"(first: {absent[0]}): rerun preprocess.py for this data directory")
    if fold not in set(frame["fold"]):
        raise cli.UserError(f"fold {fold} is not in {csv_path} (folds {sorted(set(frame['fold']))})")
    return frame


def build_loaders(args, frame, data_dir, device):
    train_frame, valid_frame = frame[frame["fold"] != args.fold], frame[frame["fold"] == args.fold]
    train_set = ImageDataset([data_dir / p for p in train_frame["path"]], training_targets(train_frame, args.task),
                             create_transform(args.augmentation, args.resize))
    valid_set = ImageDataset([data_dir / p for p in valid_frame["path"]], training_targets(valid_frame, args.task),
                             create_transform("BaseAugmentation", args.resize))
    common = {"num_workers": args.workers, "pin_memory": device.type == "cuda", "worker_init_fn": seed_worker}
    generator = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(train_set, args.batch_size, shuffle=True, drop_last=len(train_set) > args.batch_size,
                              generator=generator, **common)
    valid_loader = DataLoader(valid_set, args.valid_batch_size, shuffle=False, **common)
    return train_loader, valid_loader


def create_training_criterion(args):
    if args.head == "multi":
        return MultiTaskLoss([create_criterion(args.criterion, None, args.focal_gamma, args.smoothing)
                              for _ in range(3)])
    return create_criterion(args.criterion, None, args.focal_gamma, args.smoothing)


def create_optimizer(args, parameters):
    options = {"lr": args.lr, "weight_decay": args.weight_decay}
    if args.optimizer in ("sgd", "sgdp"):
        options["momentum"] = args.momentum
    return OPTIMIZERS[args.optimizer](parameters, **options)


def create_scheduler(args, optimizer, steps_per_epoch):
    """A scheduler stepped after every optimisation step."""
    total_steps = args.epochs * steps_per_epoch
    if args.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, args.lr_decay_step * steps_per_epoch, args.lr_decay)
    if args.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total_steps)
    if args.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


class DivergedError(Exception):
    """The training loss stopped being a finite number."""


def train_one_epoch(model, loader, criterion, optimizer, scheduler, device, epoch):
    """One pass over the training loader; returns the mean training loss."""
    model.train()
    total_loss, seen = 0.0, 0
    progress = tqdm(loader, desc=f"epoch {epoch}", unit="batch", leave=False)
    for images, targets in progress:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        loss = criterion(model(images), targets)
        if not torch.isfinite(loss):
            raise DivergedError(f"loss became {loss.item()} at epoch {epoch}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(images)  # item() syncs with the device once per step
        seen += len(images)
        progress.set_postfix(loss=f"{total_loss / seen:.4f}")
    return total_loss / seen


def validate(model, loader, criterion, head, task, device):
    """Validation loss and F1: over the 18 classes and per task, or over one task's classes."""
    probabilities, loss = predict(model, loader, head, device, criterion)
    predicted = probabilities.argmax(dim=1).numpy()
    if task == "all":
        metrics = score(loader.dataset.targets, predicted)
    else:
        metrics = score_task(loader.dataset.targets, predicted, task)
    return {"val_loss": loss, **{f"val_{name}": value for name, value in metrics.items()}}


def log_epoch(run_dir, writer, history, row):
    history.append(row)
    write_csv(pd.DataFrame(history), run_dir / "summary.csv")
    for name, value in row.items():
        if name != "epoch":
            writer.add_scalar(name, value, row["epoch"])
    print(" ".join(f"{name} {value:.4f}" if isinstance(value, float) else f"{name} {value}"
                   for name, value in row.items()), flush=True)


def main():
    args = get_args_parser().parse_args()
    data_dir = Path(args.data_dir)
    csv_path = Path(args.csv) if args.csv else data_dir.parent / "folds.csv"
    frame = load_folds(csv_path, data_dir, args.fold)
    seed_everything(args.seed)
    device = torch.device(args.device)
    model = create_model(vars(args)).to(device)
    train_loader, valid_loader = build_loaders(args, frame, data_dir, device)
    criterion = create_training_criterion(args).to(device)
    optimizer = create_optimizer(args, model.parameters())
    scheduler = create_scheduler(args, optimizer, len(train_loader))

    run_dir = next_run_dir(args.model_dir, args.name)
    run_dir.mkdir(parents=True)
    write_json({**vars(args), "csv": str(csv_path), "run_dir": str(run_dir)}, run_dir / "config.json")
    print(f"run {run_dir}: {len(train_loader.dataset)} training and {len(valid_loader.dataset)} validation "
          f"images, {args.model} ({args.head} head, task {args.task}) on {device}")

    writer, history = SummaryWriter(run_dir), []
    best_f1, epochs_without_improvement = -math.inf, 0
    for epoch in range(1, args.epochs + 1):
        started = time.time()
        try:
            train_loss = train_one_epoch(model, train_loader, criterion, optimizer, scheduler, device, epoch)
        except DivergedError as error:
            raise cli.UserError(f"{error}: stopped; {run_dir / 'last.pth'} keeps the last good epoch; "
                                "lower --lr or change --criterion") from None
        metrics = validate(model, valid_loader, criterion, args.head, args.task, device)
        improved = metrics["val_f1"] > best_f1
        best_f1 = max(best_f1, metrics["val_f1"])
        epochs_without_improvement = 0 if improved else epochs_without_improvement + 1
        row = {"epoch": epoch, "train_loss": train_loss, **metrics, "lr": scheduler.get_last_lr()[0],
               "seconds": time.time() - started}
        state = {"model": model.state_dict(), "epoch": epoch, "metrics": metrics, "config": vars(args)}
        if improved:
            save_checkpoint(state, run_dir / "best.pth")
        save_checkpoint({**state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                        run_dir / "last.pth")
        log_epoch(run_dir, writer, history, row)
        if args.patience and epochs_without_improvement >= args.patience:
            print(f"early stop: no better validation F1 in {args.patience} epochs")
            break
    writer.close()
    print(f"best val_f1 {best_f1:.4f}; checkpoints in {run_dir}")


if __name__ == "__main__":
    cli.run(main)
