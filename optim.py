"""Optimisation factories of train.py: optimizers, learning-rate schedules, weight EMA and fp16 loss scaling.

Not a script: train.py builds each from its resolved arguments (`--optimizer`, `--lr`, `--scheduler`,
`--warmup_epochs`, `--ema`, `--amp`...), as timm's create_optimizer_v2 and create_scheduler_v2 do.
"""
import torch
from adamp import AdamP, SGDP
from timm.utils import ModelEmaV3
from torch.optim.lr_scheduler import (CosineAnnealingLR, LambdaLR, LinearLR, OneCycleLR, ReduceLROnPlateau,
                                      SequentialLR, StepLR)

import cli
from model import check_amp

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
              "sgdp": SGDP, "adamp": AdamP}
FUSED = ("sgd", "adam", "adamw")  # torch's own, with one fused kernel for all parameters on FUSED_DEVICES
FUSED_DEVICES = ("cpu", "cuda", "mps", "xpu")
SCHEDULERS = ("none", "step", "cosine", "onecycle", "plateau")
WARMUP_START = 0.01  # warmup's first learning rate, as a fraction of --lr


def parameter_groups(model, lr, backbone_lr):
    """The model's parameters in two groups: the backbone's at `backbone_lr` times `lr` (fine-tuning moves
    pretrained weights less than the new head), and the head's at `lr`; one group when both learn alike."""
    if backbone_lr == 1:
        return model.parameters()
    backbone = list(model.backbone.parameters())
    mine = {id(parameter) for parameter in backbone}
    return [{"params": backbone, "lr": lr * backbone_lr},
            {"params": [parameter for parameter in model.parameters() if id(parameter) not in mine], "lr": lr}]


def create_optimizer(args, parameters, fused=True):
    """The --optimizer over `parameters` (or parameter_groups, each with its own lr) with --lr, --weight_decay and
    (sgd, sgdp) --momentum. torch's optimizers
    update every parameter in one fused kernel where the device has one, else with its multi-tensor (foreach)
    kernels (unless not `fused`): on a CPU torch would otherwise loop over the parameters one by one. adamp's loop
    over them always."""
    options = {"lr": args.lr, "weight_decay": args.weight_decay}
    if args.optimizer in ("sgd", "sgdp"):
        options["momentum"] = args.momentum
    if fused and args.optimizer in FUSED:
        options["fused" if torch.device(args.device).type in FUSED_DEVICES else "foreach"] = True
    return OPTIMIZERS[args.optimizer](parameters, **options)


def create_scheduler(args, optimizer, steps_per_epoch):
    """The --scheduler after --warmup_epochs of linear warmup, stepped after every optimisation step; except
    plateau, stepped once per epoch on the validation F1."""
    if args.warmup_epochs and (args.scheduler in ("onecycle", "plateau") or args.warmup_epochs >= args.epochs):
        raise cli.UserError(f"--warmup_epochs {args.warmup_epochs} needs fewer than --epochs {args.epochs} epochs "
                            "and a scheduler other than onecycle (which warms up itself) and plateau")
    if args.scheduler == "plateau":
        return ReduceLROnPlateau(optimizer, mode="max", factor=args.lr_decay, patience=args.plateau_patience)
    warmup_steps = args.warmup_epochs * steps_per_epoch
    steps = args.epochs * steps_per_epoch - warmup_steps
    schedules = {
        "none": lambda: LambdaLR(optimizer, lambda step: 1.0),
        "step": lambda: StepLR(optimizer, args.lr_decay_step * steps_per_epoch, args.lr_decay),
        "cosine": lambda: CosineAnnealingLR(optimizer, steps),
        # onecycle's peak, --max_lr, scales every group's own learning rate alike
        "onecycle": lambda: OneCycleLR(optimizer, [group["lr"] * (args.max_lr or args.lr) / args.lr
                                                   for group in optimizer.param_groups], total_steps=steps),
    }
    if not warmup_steps:
        return schedules[args.scheduler]()
    warmup = LinearLR(optimizer, start_factor=WARMUP_START, total_iters=warmup_steps)
    return SequentialLR(optimizer, [warmup, schedules[args.scheduler]()], milestones=[warmup_steps])


def create_ema(args, model):
    """timm's exponential moving average of the model's weights under --ema DECAY, else None."""
    if not args.ema:
        return None
    if not 0 < args.ema < 1:
        raise cli.UserError(f"--ema {args.ema} is a decay: between 0 and 1, e.g. 0.999")
    return ModelEmaV3(model, decay=args.ema)


def create_grad_scaler(amp, device):
    """The loss scaling that --amp fp16 needs against underflowing gradients (a pass-through otherwise)."""
    check_amp(amp, device)
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")
