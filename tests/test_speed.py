"""Decode once, keep the model busy: the decoded-image cache, mixed precision, channels-last and the benchmark."""
import json
import os
import re
import shutil
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

import benchmark
import cli
import dataset
import train
from augmentation import BatchMixer, create_transform, decode_size
from cli import UserError
from conftest import run_script
from dataset import (COMPETITION, CACHE_MODES, NUM_CLASSES, DecodedCache, ImageDataset, load_folds,
                     open_cache)
from model import MaskClassifier
from optim import create_optimizer, create_scheduler
from photos import decode_image

RESIZE = (64, 48)
TINY = ["--model", "test_resnet", "--resize", "64", "48", "--batch_size", "16", "--workers", "0", "--epochs", "1"]


def some_photos(sample_data, count, folder=None):
    """The first `count` training photos, copied into `folder` when the test changes them."""
    photos = sorted((sample_data / "train/images").glob("*/*.jpg"))[:count]
    if folder is None:
        return photos
    folder.mkdir()
    return [shutil.copy(photo, folder / f"{k}.jpg") for k, photo in enumerate(photos)]


def rewrite(path, colour):
    """A new photo under the same name: other bytes and a later modification time."""
    Image.new("RGB", (384, 512), colour).save(path)


def run_main(monkeypatch, *flags):
    monkeypatch.setattr(sys, "argv", ["train.py", *map(str, flags)])
    train.main()


@pytest.mark.parametrize("augmentation", ["BaseAugmentation", "CustomAugmentation"])
def test_cached_and_uncached_loaders_yield_identical_tensors(sample_data, tmp_path, augmentation):
    paths, size = some_photos(sample_data, 8), decode_size(augmentation, RESIZE)
    batches = {}
    for mode in CACHE_MODES:
        images = ImageDataset(paths, range(len(paths)), create_transform(augmentation, RESIZE), size,
                              open_cache(paths, size, mode, tmp_path))
        torch.manual_seed(0)  # the same draws for the random preset
        batches[mode] = torch.cat([batch for batch, _ in DataLoader(images, batch_size=4)])
    assert batches["off"].dtype == torch.uint8 and batches["off"].shape == (len(paths), 3, *RESIZE)
    assert torch.equal(batches["disk"], batches["off"]) and torch.equal(batches["ram"], batches["off"])


def test_a_rewritten_photo_or_another_resize_rebuilds_the_cache(sample_data, tmp_path, capsys):
    paths = some_photos(sample_data, 3, tmp_path / "photos")
    first = DecodedCache(paths, RESIZE, "disk", tmp_path / "cache")
    assert np.array_equal(first.pixels(paths[0]), decode_image(paths[0], RESIZE))
    rewrite(paths[0], (250, 20, 20))
    again = DecodedCache(paths, RESIZE, "disk", tmp_path / "cache")
    assert again.file == first.file and "stale" in capsys.readouterr().out
    assert np.array_equal(again.pixels(paths[0]), decode_image(paths[0], RESIZE))
    assert again.pixels(paths[0])[..., 0].min() > 200  # the new, red photo

    stat = os.stat(paths[1])
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: same bytes, later mtime
    DecodedCache(paths, RESIZE, "disk", tmp_path / "cache")
    assert "stale" in capsys.readouterr().out
    DecodedCache(paths, RESIZE, "disk", tmp_path / "cache")
    assert "stale" not in capsys.readouterr().out  # fresh now: mapped, not rebuilt

    smaller = DecodedCache(paths, (32, 24), "disk", tmp_path / "cache")
    assert smaller.file != first.file and smaller.pixels(paths[2]).shape == (32, 24, 3)


def test_an_interrupted_build_leaves_no_cache_that_is_used(sample_data, tmp_path, monkeypatch):
    paths = some_photos(sample_data, 3, tmp_path / "photos")
    stale = DecodedCache(paths, RESIZE, "disk", tmp_path / "cache")
    rewrite(paths[0], (20, 250, 20))
    decode = dataset.decode_image

    def killed_on_the_last_photo(path, size=None, region=None, zoom=1.0):
        if path == stale.paths[-1]:
            raise KeyboardInterrupt
        return decode(path, size, region, zoom)

    monkeypatch.setattr(dataset, "decode_image", killed_on_the_last_photo)
    with pytest.raises(KeyboardInterrupt):
        DecodedCache(paths, RESIZE, "disk", tmp_path / "cache")
    monkeypatch.undo()
    assert not stale.manifest_file.exists()  # the old pixels lost their manifest before the rebuild began
    assert not [path for path in (tmp_path / "cache").iterdir() if path.suffix == ".tmp"]
    rebuilt = DecodedCache(paths, RESIZE, "disk", tmp_path / "cache")
    assert np.array_equal(rebuilt.pixels(paths[0]), decode_image(paths[0], RESIZE))


def test_the_model_takes_uint8_and_unit_float_batches_alike():
    model = MaskClassifier("test_resnet", "single", COMPETITION).eval()
    images = torch.randint(0, 256, (2, 3, *RESIZE), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(model(images), model(images.float() / 255), atol=1e-5)
    assert {"mean", "std"} <= set(model.state_dict())  # the statistics travel with the weights


@pytest.mark.parametrize("sampler", ["none", "imbalanced"])
def test_a_training_epoch_replays_identically_whatever_the_loader_workers(sample_data, sampler):
    """What resuming needs: epoch 2 draws the same batches after epoch 1 (persistent workers) as from a fresh
    start, and as with another number of workers."""
    data_dir = sample_data / "train/images"
    frame = load_folds(sample_data / "train/folds.csv", data_dir, 0)

    def training_loader(workers):
        args = train.parse_args([*TINY, "--workers", str(workers), "--sampler", sampler,
                                                   "--augmentation", "StrongAugmentation"])
        return train.build_loaders(args, frame, data_dir, torch.device("cpu"))[0]

    def epoch_images(loader, epoch):
        train.seed_epoch(42, epoch, loader, BatchMixer(NUM_CLASSES))
        return torch.cat([images for images, _ in loader])

    continued = training_loader(workers=2)
    first = epoch_images(continued, 1)
    second = epoch_images(continued, 2)
    assert continued.persistent_workers and not torch.equal(first, second)
    assert torch.equal(epoch_images(training_loader(workers=2), 2), second)
    assert torch.equal(epoch_images(training_loader(workers=0), 2), second)


def test_bf16_and_channels_last_train_on_cpu_and_are_recorded(sample_data, tmp_path, monkeypatch):
    run_main(monkeypatch, "--data_dir", sample_data / "train/images", "--model_dir", tmp_path, *TINY,
             "--amp", "bf16", "--channels_last")
    config = json.loads((tmp_path / "exp/config.json").read_text())
    assert config["amp"] == "bf16" and config["channels_last"] is True and config["cache"] == "disk"
    assert (tmp_path / "exp/best.pth").is_file()


def test_fp16_on_cpu_is_a_one_line_error(sample_data, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="--amp fp16") as error:
        run_main(monkeypatch, "--data_dir", sample_data / "train/images", "--model_dir", tmp_path, *TINY,
                 "--amp", "fp16", "--device", "cpu")
    assert "\n" not in str(error.value) and not (tmp_path / "exp").exists()


def test_benchmark_ends_with_two_numbers():
    result = run_script("benchmark.py", "--photos", "32", "--steps", "2", "--resize", "64", "48", "--model",
                        "test_resnet", "--batch_size", "16")
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.fullmatch(r"loader_speedup \d+\.\d+ e2e_ratio \d+\.\d+", result.stdout.strip().splitlines()[-1])


def test_benchmark_optimizer_loop_times_the_unfused_optimizer(monkeypatch):
    created = []

    def recording(args, parameters, fused=True):
        optimizer = create_optimizer(args, parameters, fused)
        created.append(optimizer.defaults.get("foreach") or optimizer.defaults.get("fused") or False)
        return optimizer

    monkeypatch.setattr(benchmark, "create_optimizer", recording)
    benchmark.main(["--photos", "16", "--steps", "1", "--resize", "32", "32", "--model", "test_resnet",
                    "--batch_size", "8", "--workers", "0", "--onnx_variants", "--optimizer_loop"])
    assert created and not any(created)


def test_validation_runs_under_the_training_autocast_and_memory_format():
    seen = []

    class Recorder(MaskClassifier):
        def forward(self, images):
            autocast = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
            seen.append((autocast, images.is_contiguous(memory_format=torch.channels_last)))
            return super().forward(images)

    model = Recorder("test_resnet", "single", COMPETITION)
    targets = torch.tensor([0, 3, 7, 17])
    photos = TensorDataset(torch.randint(0, 256, (4, 3, *RESIZE), dtype=torch.uint8), targets)
    photos.targets = targets.numpy()  # what validate() scores against
    loader = DataLoader(photos, batch_size=4)
    criterion, cpu = torch.nn.CrossEntropyLoss(), torch.device("cpu")
    plain, plain_probabilities = train.validate(model, loader, criterion, "single", COMPETITION, cpu)
    fast, fast_probabilities = train.validate(model, loader, criterion, "single", COMPETITION, cpu, "bf16", True)
    assert seen == [(None, False), (torch.bfloat16, True)]
    assert fast_probabilities.dtype == torch.float32
    assert torch.allclose(fast_probabilities, plain_probabilities, atol=0.05)  # bf16 keeps ~3 significant digits


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "sgdp", "adamp"])
def test_torchs_optimizers_update_in_one_fused_kernel_and_match_the_loop(name):
    args = train.parse_args([*TINY, "--optimizer", name, "--device", "cpu"])
    torch.manual_seed(0)
    model = MaskClassifier("test_resnet", "single", COMPETITION)
    optimizer = create_optimizer(args, model.parameters())
    assert optimizer.defaults.get("fused", False) is (name in ("sgd", "adam", "adamw"))
    looped_model = MaskClassifier("test_resnet", "single", COMPETITION)
    looped_model.load_state_dict(model.state_dict())
    looped = create_optimizer(args, looped_model.parameters(), fused=False)  # torch's loop, parameter by parameter
    assert not looped.defaults.get("fused") and not looped.defaults.get("foreach")
    images, targets = torch.randint(0, 256, (4, 3, 64, 48), dtype=torch.uint8), torch.tensor([0, 5, 9, 17])
    for network, step in ((model, optimizer), (looped_model, looped)):
        for _ in range(2):
            step.zero_grad()
            torch.nn.functional.cross_entropy(network(images), targets).backward()
            step.step()
    for fused, plain in zip(model.parameters(), looped_model.parameters()):
        # Adam's step divides by sqrt(v) + eps: where a gradient is ~eps the two orders of arithmetic part by up to
        # a fraction of the learning rate; a wrong update would part by the whole of it
        torch.testing.assert_close(fused, plain, rtol=1e-4, atol=0.05 * args.lr)


def test_last_pth_keeps_the_fp16_loss_scale_for_a_resume(tmp_path):
    args = train.parse_args(TINY)

    def training(scale):
        model = MaskClassifier("test_resnet", "single", COMPETITION)
        optimizer = create_optimizer(args, model.parameters())
        return SimpleNamespace(model=model, optimizer=optimizer, ema=None,
                               scheduler=create_scheduler(args, optimizer, 2),
                               scaler=torch.amp.GradScaler("cpu", init_scale=scale))

    interrupted = training(scale=1024.0)  # as fp16 training backs its scale off from 65536 after overflows
    progress = {"epoch": 1, "best_score": 0.5, "epochs_without_improvement": 0, "history": []}
    train.save_epoch(tmp_path, args, interrupted, progress, {"val_f1": 0.5}, torch.zeros(2, NUM_CLASSES), False)
    resumed = training(scale=65536.0)
    assert train.restore_progress(tmp_path / "last.pth", resumed) == progress
    assert resumed.scaler.get_scale() == 1024.0


def test_a_script_run_in_process_leaves_torchs_thread_count_alone():
    before = torch.get_num_threads()
    with cli.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
