"""Backbones and heads: any timm, efficientnet-pytorch or torchvision model with a head for a run's label scheme.

`--model` is resolved in this order: `efficientnet-b0`..`efficientnet-b8` and `efficientnet-l2` come from
efficientnet-pytorch; a `timm:` or `torchvision:` prefix picks the library; otherwise timm's name wins
(`resnet18`, `efficientnet_b4`, `convnext_tiny`, ...) and torchvision's list is tried next.
`--head single` is one linear layer over the scheme's classes; `--head multi` is one head per task of the scheme
(the competition's mask 3, gender 2, age 3) whose softmaxes multiply into the class probabilities.
The model normalises its own input: it takes uint8 batches (or floats in [0, 1]) and converts them on its device,
so loaders move a quarter of the bytes and the GPU, not the loader's cores, does the arithmetic.
"""
import re

import timm
import torch
import torch.nn.functional as F
import torchvision
from efficientnet_pytorch import EfficientNet
from torch import nn
from tqdm import tqdm

from augmentation import MEAN, STD, to_unit_float
from cli import UserError
from dataset import run_scheme
from fileio import load_checkpoint

HEADS = ("single", "multi")
EFFICIENTNET_PYTORCH = re.compile(r"^efficientnet-(b[0-8]|l2)$")
AMP_DTYPES = {"off": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def output_size(head, scheme):
    """Number of logits: one per class of the scheme, or for the multi head one per class of each task."""
    return scheme.num_classes if head == "single" else sum(scheme.sizes)


def resolve_library(name):
    """(library, model name) for a --model value."""
    if EFFICIENTNET_PYTORCH.match(name):
        return "efficientnet_pytorch", name
    library, _, bare = name.partition(":")
    if bare and library in ("timm", "torchvision"):
        return library, bare
    if timm.is_model(name):
        return "timm", name
    if name in torchvision.models.list_models():
        return "torchvision", name
    raise UserError(f"unknown model {name!r}: use a timm name (timm.list_models()), a torchvision name "
                    "or efficientnet-b0..b7")


def build_classifier_network(library, name, pretrained):
    """The library's network with its own ImageNet classifier, downloading weights if asked."""
    if library == "efficientnet_pytorch":
        return EfficientNet.from_pretrained(name) if pretrained else EfficientNet.from_name(name)
    if library == "timm":
        return timm.create_model(name, pretrained=pretrained)
    return torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None)


def key_prefixes(keys, depth):
    """Every prefix of dotted `keys` of at most `depth` parts, each ending in a dot, and the empty prefix."""
    return {""} | {".".join(parts[:n]) + "." for parts in (key.split(".") for key in keys)
                   for n in range(1, min(depth, len(parts) - 1) + 1)}


def matching_prefixes(state, own):
    """The renaming of a weights file's keys onto a network's that maps the most tensors of the same shape: (the
    prefix taken off the file's keys, the prefix put on, {network key: tensor}). It finds torchvision's
    `features.` under another program's `bottom.`, a run checkpoint's `backbone.`, DataParallel's `module.`."""
    best = ("", "", {})
    for removed in sorted(key_prefixes(state, 2)):
        for added in sorted(key_prefixes(own, 1)):
            renamed = {added + key[len(removed):]: value for key, value in state.items() if key.startswith(removed)}
            matching = {key: value for key, value in renamed.items()
                        if key in own and own[key].shape == value.shape}
            if len(matching) > len(best[2]):
                best = (removed, added, matching)
    return best


def load_pretrained_file(network, path):
    """Loads a local weights file into the network and says what it loaded: a library's state_dict (one under
    `state_dict` or `model` too), another program's (its keys under another prefix, found by matching_prefixes) or a
    checkpoint of this toolkit, whose `backbone.` weights start the new run. Tensors of another shape (a classifier
    of other classes) are skipped; a file that fits less than half the network is refused."""
    state = load_checkpoint(path, keys=())  # any weights file: a bare state_dict, or one under state_dict or model
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
    state = {key: value for key, value in state.items() if isinstance(key, str) and isinstance(value, torch.Tensor)}
    own = network.state_dict()
    removed, added, matching = matching_prefixes(state, own)
    if len(matching) < len(own) // 2:
        raise UserError(f"{path} does not hold weights of this model: at most {len(matching)} of its "
                        f"{len(own)} tensors match, whatever the key prefix")
    network.load_state_dict(matching, strict=False)
    renamed = f" (keys {removed or '(none)'}* as {added or ''}*)" if removed != added else ""
    untouched = [key for key in own if key not in matching]
    print(f"pretrained weights: {len(matching)} of the network's {len(own)} tensors loaded from {path}{renamed}; "
          f"{len(state) - len(matching)} of the file's tensors skipped; left as initialised: "
          f"{', '.join(untouched[:3]) or 'none'}{' ...' if len(untouched) > 3 else ''}")


def remove_classifier(network, library):
    """Turns the network into a feature extractor; returns the feature size, measured on the network itself (timm's
    num_features is not what some models pool, e.g. mobilenetv3's head_hidden_size)."""
    if library == "timm":
        network.reset_classifier(0)
    else:
        last = None
        for module_name, module in network.named_modules():
            if isinstance(module, nn.Linear):
                last = module_name
        if last is None:
            raise UserError("this model has no linear classifier to replace")
        *path, attribute = last.split(".")
        parent = network.get_submodule(".".join(path)) if path else network
        setattr(parent, attribute, nn.Identity())
    return feature_size(network)


def feature_size(network):
    """The size of the features a network outputs, from one small forward pass at its default input size."""
    input_size = getattr(network, "pretrained_cfg", {}).get("input_size", (3, 224, 224))
    was_training = network.training
    network.eval()
    with torch.no_grad():
        features = network(torch.zeros(1, *input_size))
    network.train(was_training)
    return features.flatten(1).shape[1]


def create_backbone(name, pretrained=False, pretrained_path=None):
    """(feature extractor, feature size) for a --model name."""
    library, bare_name = resolve_library(name)
    try:
        network = build_classifier_network(library, bare_name, pretrained and not pretrained_path)
    except Exception as error:  # noqa: BLE001 -- hubs fail offline with many exception types
        if not pretrained:
            raise
        raise UserError(f"cannot download pretrained weights for {name} ({type(error).__name__}); "
                        "offline? pass a local weights file with --pretrained_path FILE") from None
    if pretrained_path:
        load_pretrained_file(network, pretrained_path)
    return network, remove_classifier(network, library)


class MaskClassifier(nn.Module):
    """A backbone's pooled features followed by one linear layer of `output_size(head, scheme)` logits.

    Takes (N, 3, H, W) images, uint8 or float in [0, 1], and normalises them with the channel statistics it
    holds as buffers (saved with the weights)."""

    def __init__(self, name, head, scheme, pretrained=False, pretrained_path=None):
        super().__init__()
        self.head_type = head
        self.backbone, features = create_backbone(name, pretrained, pretrained_path)
        self.head = nn.Linear(features, output_size(head, scheme))
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, images):
        return self.head(self.backbone((to_unit_float(images) - self.mean) / self.std))


def freeze_backbone(model, frozen=True):
    """Freezes the backbone (no gradients, batch-norm statistics kept) so that only the head trains, or unfreezes it."""
    model.backbone.requires_grad_(not frozen)
    model.backbone.train(model.training and not frozen)


def logits_to_probabilities(logits, head, scheme):
    """Class probabilities: a softmax, or for the multi head the product of the scheme's task softmaxes."""
    if head == "multi":
        return scheme.compose(*(F.softmax(part, dim=1) for part in scheme.split(logits)))
    return F.softmax(logits, dim=1)


class WithProbabilities(nn.Module):
    """A trained classifier whose output is its class probabilities (N, C), whatever its head: what export and
    deployment run."""

    def __init__(self, model, config):
        super().__init__()
        self.model, self.head, self.scheme = model, config["head"], run_scheme(config)

    def forward(self, images):
        return logits_to_probabilities(self.model(images), self.head, self.scheme)


def create_model(config, initial_weights=True):
    """The model a run's config (train.py's resolved arguments) describes.

    `initial_weights=False` skips the pretrained download or file: for loading a trained checkpoint.
    """
    return MaskClassifier(config["model"], config["head"], run_scheme(config),
                          initial_weights and config.get("pretrained", False),
                          config.get("pretrained_path") if initial_weights else None)


def load_weights(model, state_dict, source):
    """Loads a checkpoint's weights, naming the first mismatch in one line instead of a traceback."""
    own = model.state_dict()
    if not isinstance(state_dict, dict) or not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise UserError(f"{source} holds no weights: its model entry is not a table of tensors")
    missing = [key for key in own if key not in state_dict]
    unexpected = [key for key in state_dict if key not in own]
    if missing or unexpected:
        raise UserError(f"{source} is for another architecture: {len(missing)} tensors missing "
                        f"(first {missing[:1]}), {len(unexpected)} unexpected (first {unexpected[:1]})")
    for key, tensor in own.items():
        if state_dict[key].shape != tensor.shape:
            raise UserError(f"{source} does not fit this model: {key} is {tuple(state_dict[key].shape)} "
                            f"there but {tuple(tensor.shape)} here (another head or class count?)")
    model.load_state_dict(state_dict)


def check_amp(amp, device):
    """Refuses --amp fp16 on a CPU, which lacks fast float16 arithmetic."""
    if amp == "fp16" and device.type == "cpu":
        raise UserError("--amp fp16 is for GPUs (CPUs lack fast float16 arithmetic): use --amp bf16 on CPU")


def place_model(model, device, channels_last=False):
    """The model on the device, its weights in channels-last memory format if asked."""
    return model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)


def autocast(device, amp):
    """The mixed precision of `--amp` (off, bf16 or fp16) for forward passes on `device`."""
    return torch.autocast(device.type, AMP_DTYPES[amp], enabled=amp != "off")


def to_memory_format(images, channels_last):
    """A batch in channels-last memory format if asked (done on the device, not by the loader's cores)."""
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


@torch.no_grad()
def predict_batch(model, images, head, scheme, device):
    """Class probabilities (N, C) of one batch of images (uint8 or floats in [0, 1]), on the CPU."""
    model.eval()
    return logits_to_probabilities(model(images.to(device)).float(), head, scheme).cpu()


@torch.no_grad()
def predict(model, loader, head, scheme, device, criterion=None, amp="off", channels_last=False):
    """Class probabilities (N, C) of every image in loader order, the forward pass under `amp` autocast and in
    channels-last format if asked; with a criterion (and a loader that yields targets) also the mean loss."""
    model.eval()
    probabilities, total_loss, seen = [], 0.0, 0
    for batch in tqdm(loader, desc="predict", unit="batch", leave=False):
        images = (batch[0] if criterion is not None else batch).to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(to_memory_format(images, channels_last)).float()
        if criterion is not None:
            total_loss += criterion(logits, batch[1].to(device)).item() * len(images)
            seen += len(images)
        probabilities.append(logits_to_probabilities(logits, head, scheme).float().cpu())
    return torch.cat(probabilities), total_loss / max(seen, 1)
