import os

import pytest
import torch
from huggingface_hub import constants as hub_constants

from cli import UserError
from conftest import assert_one_line_error, run_script
from dataset import COMPETITION, NUM_CLASSES, decode_label, folder_scheme, target_scheme
from model import MaskClassifier, create_backbone, logits_to_probabilities, resolve_library

IMAGES = torch.randn(2, 3, 64, 48)


@pytest.mark.parametrize("head, task, outputs", [
    ("single", "all", 18), ("multi", "all", 8), ("single", "mask", 3), ("single", "gender", 2), ("single", "age", 3),
])
def test_head_output_sizes(head, task, outputs):
    model = MaskClassifier("test_resnet", head, target_scheme(COMPETITION, task)).eval()
    assert model(IMAGES).shape == (2, outputs)


def test_multi_head_decodes_to_18_class_probabilities():
    logits = torch.tensor([[5.0, 0.0, 0.0, 0.0, 5.0, 0.0, 0.0, 5.0]])  # wear, female, 60+
    probabilities = logits_to_probabilities(logits, "multi", COMPETITION)
    assert probabilities.shape == (1, NUM_CLASSES)
    assert probabilities.sum().item() == pytest.approx(1.0)
    assert [int(part) for part in decode_label(probabilities.argmax(dim=1))] == [0, 1, 2]


@pytest.mark.parametrize("name, library", [
    ("resnet18", "timm"), ("efficientnet-b0", "efficientnet_pytorch"), ("mobilenet_v3_small", "torchvision"),
    ("torchvision:resnet18", "torchvision"),
])
def test_model_names_resolve_to_their_library(name, library):
    assert resolve_library(name)[0] == library


@pytest.mark.parametrize("name", ["efficientnet-b0", "torchvision:mobilenet_v3_small"])
def test_every_library_builds_an_18_class_model(name):
    model = MaskClassifier(name, "single", COMPETITION).eval()
    assert model(IMAGES).shape == (2, NUM_CLASSES)


def test_unknown_model_is_a_user_error():
    with pytest.raises(UserError, match="unknown model"):
        resolve_library("no_such_net")


def test_pretrained_path_loads_local_weights(tmp_path):
    import timm
    reference = timm.create_model("test_resnet")
    torch.save(reference.state_dict(), tmp_path / "weights.pth")
    backbone, _ = create_backbone("test_resnet", pretrained_path=tmp_path / "weights.pth")
    first = next(iter(reference.state_dict()))
    assert torch.equal(backbone.state_dict()[first], reference.state_dict()[first])


def test_pretrained_path_takes_the_backbone_of_another_runs_checkpoint(tmp_path):
    trained = MaskClassifier("test_resnet", "multi", COMPETITION)
    torch.save({"model": trained.state_dict(), "epoch": 3}, tmp_path / "best.pth")
    started = MaskClassifier("test_resnet", "single", folder_scheme(["mask", "no_mask"]),
                             pretrained_path=tmp_path / "best.pth")
    backbone = {key: value for key, value in started.state_dict().items() if key.startswith("backbone.")}
    assert backbone and all(torch.equal(value, trained.state_dict()[key]) for key, value in backbone.items())
    assert started.head.weight.shape[0] == 2  # the head is the new scheme's, not the checkpoint's


def test_pretrained_path_finds_the_prefix_of_another_programs_keys(tmp_path, capsys):
    import timm
    reference = timm.create_model("test_resnet")
    torch.save({"state_dict": {f"module.encoder.{key}": value for key, value in reference.state_dict().items()}},
               tmp_path / "wrapped.pth")
    backbone, _ = create_backbone("test_resnet", pretrained_path=tmp_path / "wrapped.pth")
    assert all(torch.equal(value, reference.state_dict()[key]) for key, value in backbone.state_dict().items())
    assert "module.encoder.* as *" in capsys.readouterr().out


def test_real_imagenet_weights_load_into_torchvisions_mobilenet_v2(imagenet_mobilenet_v2, capsys):
    """mask-recognition's file holds torchvision's ImageNet MobileNetV2 body as `bottom.*`: it starts `features.*`."""
    weights = torch.load(imagenet_mobilenet_v2, map_location="cpu", weights_only=True)
    model = MaskClassifier("torchvision:mobilenet_v2", "single", folder_scheme(["mask", "no_mask"]),
                           pretrained_path=imagenet_mobilenet_v2)
    features = model.backbone.features.state_dict()
    assert len(features) == 312 and all(torch.equal(value, weights[f"bottom.{key}"]) for key, value in features.items())
    printed = capsys.readouterr().out
    assert "312 of the network's 314 tensors loaded" in printed and "bottom.* as features.*" in printed


def test_a_weights_file_of_another_network_is_refused_in_one_line(imagenet_mobilenet_v2):
    with pytest.raises(UserError, match="does not hold weights of this model"):
        create_backbone("test_resnet", pretrained_path=imagenet_mobilenet_v2)


def test_pretrained_offline_fails_with_a_one_line_hint(sample_data, tmp_path, monkeypatch):
    # the hub offline with empty caches, as HF_HUB_OFFLINE=1 HF_HOME=empty make it when it is imported
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty_hf"))
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "empty_cache")}
    result = run_script("train.py", "--data_dir", sample_data / "train/images", "--model_dir", tmp_path,
                        "--model", "resnet18", "--pretrained", "--epochs", "1", env=env)
    assert_one_line_error(result, "--pretrained_path")
