"""The winning recipe's tools: samplers, class weights, the age boundary, label corrections, batch mixing,
multi-task weights, single-task heads, k-fold out-of-fold predictions, schedules and the flags end to end."""
import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import RandomSampler

import preprocess
import train
from augmentation import BatchMixer, StrongAugmentation
from cli import UserError
from conftest import run_script
from dataset import (COMPETITION, NUM_CLASSES, TASK_CLASSES, ImageDataset, create_sampler, decode_label, encode_label,
                     inverse_frequency, run_scheme)
from fileio import load_checkpoint
from generate_sample import generate_classes
from loss import create_training_criterion
from model import create_model
from optim import create_optimizer, create_scheduler, parameter_groups

TINY = ["--model", "test_resnet", "--resize", "64", "48", "--batch_size", "16", "--workers", "0", "--epochs", "1"]


def parse(*flags):
    return train.parse_args(list(flags))


def run_main(module, monkeypatch, *flags):
    """Runs a script's main() in this process, as `python module.py flags` would."""
    monkeypatch.setattr(sys, "argv", [f"{module.__name__}.py", *map(str, flags)])
    module.main()


def rare_share(sampler, labels, rare):
    draws = Counter(labels[index] for _ in range(5) for index in sampler)
    return draws[rare] / sum(draws.values())


@pytest.mark.parametrize("name", ["weighted", "imbalanced"])
def test_samplers_draw_rare_classes_more_often(name):
    labels = np.array([0] * 90 + [17] * 10)  # 60+ is rare: here 10%
    dataset = ImageDataset([f"{k}.jpg" for k in range(100)], labels)
    torch.manual_seed(0)
    sampler = create_sampler(name, dataset, labels, NUM_CLASSES, torch.Generator().manual_seed(0))
    assert len(sampler) == 100
    assert 0.4 < rare_share(sampler, labels, 17) < 0.6
    assert isinstance(create_sampler("none", dataset, labels, NUM_CLASSES), RandomSampler)  # a plain shuffle


def test_class_weights_are_inverse_frequency_with_mean_one():
    weights = inverse_frequency([0, 0, 0, 1], 3)
    assert weights == pytest.approx([0.5, 1.5, 0.0])  # 1/3 : 1, mean 1 over present classes; absent weighs 0
    targets = np.array([0] * 6 + [5] * 3 + [17])
    criterion = create_training_criterion(parse("--class_weights", "auto", "--criterion", "focal"), targets, COMPETITION)
    expected = np.zeros(NUM_CLASSES)
    expected[[0, 5, 17]] = np.array([1 / 6, 1 / 3, 1.0]) / np.mean([1 / 6, 1 / 3, 1.0])
    assert criterion.weight.numpy() == pytest.approx(expected)
    assert create_training_criterion(parse(), targets, COMPETITION).weight is None


def test_multi_head_class_weights_are_per_task():
    targets = encode_label(np.array([0, 0, 0, 2]), np.array([0, 1, 1, 1]), np.array([0, 0, 2, 2]))
    criterion = create_training_criterion(parse("--head", "multi", "--class_weights", "auto"), targets, COMPETITION)
    for task_criterion, labels, classes in zip(criterion.criteria, decode_label(targets), TASK_CLASSES.values()):
        assert task_criterion.weight.numpy() == pytest.approx(inverse_frequency(labels, classes))


AGES = [25, 56, 57, 58, 59, 60, 61]


def people_frame():
    """One photo per person, named {fold}_{age}: ages around the boundary in both folds, fold 0 validates."""
    return pd.DataFrame({"path": [f"{fold}_{age}/mask1.jpg" for fold in (0, 1) for age in AGES],
                         "id": [f"{fold}_{age}" for fold in (0, 1) for age in AGES],
                         "age": AGES * 2, "mask_label": 0, "gender_label": 0, "fold": [0] * 7 + [1] * 7})


def loader_ages_and_bands(loader):
    return ([int(path.parent.name.split("_")[1]) for path in loader.dataset.paths],
            [int(decode_label(target)[2]) for target in loader.dataset.targets])


def test_old_age_and_drop_ages_change_training_people_only_never_validation():
    frame = people_frame()

    def build_loaders(*flags):  # --cache off: the frame's photos do not exist, and nothing here decodes them
        return train.build_loaders(parse(*flags, "--fold", "0", "--cache", "off", "--crop", "none"), frame, Path(),
                                   torch.device("cpu"))

    train_loader, valid_loader = build_loaders("--old_age", "58")
    assert loader_ages_and_bands(train_loader) == (AGES, [0, 1, 1, 2, 2, 2, 2])
    assert loader_ages_and_bands(valid_loader) == (AGES, [0, 1, 1, 1, 1, 2, 2])

    train_loader, valid_loader = build_loaders("--drop_ages", "57-59")
    assert loader_ages_and_bands(train_loader)[0] == [25, 56, 60, 61]
    assert loader_ages_and_bands(valid_loader)[0] == AGES
    train_loader, _ = build_loaders("--drop_ages", "58")
    assert loader_ages_and_bands(train_loader)[0] == [25, 56, 57, 59, 60, 61]


@pytest.mark.parametrize("value", ["59-57", "old", "57-", "-3"])
def test_a_malformed_drop_ages_is_a_user_error(value):
    with pytest.raises(UserError, match="--drop_ages"):
        train.training_frame(people_frame(), 0, value)


def image_rows():
    stems = ["mask1", "incorrect_mask", "normal"]
    return pd.DataFrame([{"path": f"{person}_{gender}_Asian_{age}/{stem}.jpg", "id": person, "gender": gender,
                          "race": "Asian", "age": age, "mask_label": mask}
                         for person, gender, age in [("000001", "male", 30), ("000002", "female", 45)]
                         for mask, stem in enumerate(stems)])


def test_corrections_are_applied_and_listed():
    corrections = pd.DataFrame({"id": ["000001", "000002", "000002", "000002"],
                                "field": ["gender", "age", "mask_swap", "gender"], "value": ["female", "62", "", "female"]})
    corrected, changes = preprocess.apply_corrections(image_rows(), corrections)
    assert changes == ["000001: gender male -> female", "000002: age 45 -> 62",
                       "000002: incorrect_mask and normal labels swapped", "000002: gender already female"]
    assert set(corrected.loc[corrected["id"] == "000001", "gender"]) == {"female"}
    assert set(corrected.loc[corrected["id"] == "000002", "age"]) == {62}
    masks = dict(zip(corrected["path"].str.split("/").str[1], corrected["mask_label"].where(corrected["id"] == "000002")))
    assert (masks["mask1.jpg"], masks["incorrect_mask.jpg"], masks["normal.jpg"]) == (0, 2, 1)
    assert list(image_rows()["mask_label"]) == [0, 1, 2] * 2  # the input is left alone


@pytest.mark.parametrize("person, field, value, message", [
    ("000009", "gender", "female", "no person with id '000009'"),
    ("000001", "race", "Asian", "unknown field 'race'"),
    ("000001", "age", "old", "age 'old' is not a number"),
    ("000001", "gender", "robot", "not male or female"),
])
def test_bad_corrections_are_rejected_in_one_line(person, field, value, message):
    corrections = pd.DataFrame({"id": [person], "field": [field], "value": [value]})
    with pytest.raises(UserError, match=message) as error:
        preprocess.apply_corrections(image_rows(), corrections)
    assert "line 2" in str(error.value) and "\n" not in str(error.value)


def numbered_batch(n=6, height=8, width=50):
    """Image k is filled with the value k, so every pixel says which image it came from."""
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, height, width).clone()
    return images, torch.arange(n) % NUM_CLASSES


def test_vertical_cutmix_takes_the_left_part_from_one_image_the_right_from_another_and_mixes_labels_by_area():
    images, targets = numbered_batch()
    mixer = BatchMixer(NUM_CLASSES, cutmix=1.0, cutmix_mode="vertical", cutmix_ratio=(0.46, 0.54),
                       rng=np.random.default_rng(0))
    for _ in range(5):
        mixed, soft = mixer(images, targets)
        for k in range(len(images)):
            row = mixed[k, 0, 0]
            partner = int(row[-1])
            left = len(row) if partner == k else int((row == k).sum())  # columns still the image's own
            assert (row[:left] == k).all() and (row[left:] == partner).all()
            assert (mixed[k] == mixed[k, :, :1]).all()  # every row of the photo is split at the same column
            kept = left / images.shape[-1]
            assert 0.46 <= kept <= 0.54 or partner == k
            expected = kept * F.one_hot(targets[k], NUM_CLASSES) + (1 - kept) * F.one_hot(targets[partner], NUM_CLASSES)
            assert torch.allclose(soft[k], expected.float())


def test_box_cutmix_and_mixup_mix_labels_in_the_ratio_of_the_areas():
    images, targets = numbered_batch(height=40)
    for mixer in (BatchMixer(NUM_CLASSES, cutmix=1.0, rng=np.random.default_rng(1)),
                  BatchMixer(NUM_CLASSES, mixup=1.0, rng=np.random.default_rng(1))):
        mixed, soft = mixer(images, targets)
        assert soft.shape == (len(images), NUM_CLASSES)
        assert torch.allclose(soft.sum(dim=1), torch.ones(len(images)))
        # each image's mean pixel value is its soft label's expected image number
        assert torch.allclose(mixed.mean(dim=(1, 2, 3)), soft @ torch.arange(NUM_CLASSES, dtype=torch.float32),
                              atol=1e-4)
    unmixed, same = BatchMixer(NUM_CLASSES, rng=np.random.default_rng(0))(images, targets)
    assert unmixed is images and same is targets


def test_mixing_probabilities_out_of_range_are_user_errors():
    with pytest.raises(UserError, match="--mixup"):
        BatchMixer(NUM_CLASSES, mixup=0.6, cutmix=0.6)
    with pytest.raises(UserError, match="--cutmix_ratio"):
        BatchMixer(NUM_CLASSES, cutmix=1.0, cutmix_ratio=(0.6, 0.4))


def test_multi_task_loss_with_task_weights_equals_the_weighted_sum():
    args = parse("--head", "multi", "--task_criteria", "label_smoothing", "cross_entropy", "focal",
                 "--task_weights", "1", "0.5", "2", "--smoothing", "0.1", "--focal_gamma", "2")
    torch.manual_seed(0)
    logits, targets = torch.randn(5, 8), torch.tensor([0, 7, 11, 13, 17])
    mask, gender, age = decode_label(targets)
    age_log_probs = F.log_softmax(logits[:, 5:], dim=1).gather(1, age[:, None]).squeeze(1)
    expected = (1 * F.cross_entropy(logits[:, :3], mask, label_smoothing=0.1)
                + 0.5 * F.cross_entropy(logits[:, 3:5], gender)
                + 2 * (-(1 - age_log_probs.exp()) ** 2 * age_log_probs).mean())
    criterion = create_training_criterion(args, targets.numpy(), COMPETITION)
    assert criterion(logits, targets).item() == pytest.approx(expected.item(), rel=1e-5)
    soft = F.one_hot(targets, NUM_CLASSES).float()  # mixed batches: 18-class soft targets
    assert criterion(logits, soft).item() == pytest.approx(expected.item(), rel=1e-5)


def test_task_options_need_the_multi_head():
    with pytest.raises(UserError, match="--head multi"):
        create_training_criterion(parse("--head", "single", "--task_weights", "1", "2", "1"), np.array([0, 1]), COMPETITION)


@pytest.mark.parametrize("task, outputs", [("mask", 3), ("gender", 2), ("age", 3)])
def test_single_task_runs_have_3_2_3_outputs_and_mix_into_task_soft_targets(task, outputs):
    args = parse("--task", task, "--class_weights", "auto", "--criterion", "label_smoothing")
    model = create_model(vars(args) | {"model": "test_resnet"}).eval()
    images, targets = torch.randn(4, 3, 64, 48), torch.tensor([0, 1, 0, 1])
    assert model(images).shape == (4, outputs)
    mixed, soft = BatchMixer(outputs, cutmix=1.0, cutmix_mode="vertical", rng=np.random.default_rng(0))(images, targets)
    assert soft.shape == (4, outputs)
    criterion = create_training_criterion(args, np.array([0, 0, 1]), run_scheme(vars(args)))
    assert criterion.weight.shape == (outputs,) and torch.isfinite(criterion(model(mixed), soft))


def test_strong_augmentation_keeps_the_input_size():
    image = Image.new("RGB", (96, 128), (120, 80, 60))
    assert StrongAugmentation((64, 48))(image).shape == (3, 64, 48)


def scheduler_lrs(*flags, steps=4, f1=None):
    args = parse("--lr", "0.1", *flags)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.lr)
    scheduler = create_scheduler(args, optimizer, steps_per_epoch=steps)
    lrs = []
    for epoch in range(args.epochs):
        for _ in range(steps):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            if f1 is None:
                scheduler.step()
        if f1 is not None:
            scheduler.step(f1[epoch])
    return lrs


def test_warmup_rises_linearly_to_lr_then_the_schedule_runs():
    lrs = scheduler_lrs("--epochs", "3", "--warmup_epochs", "1", "--scheduler", "cosine")
    assert lrs[:5] == pytest.approx([0.001, 0.02575, 0.0505, 0.07525, 0.1])
    assert lrs[5] < lrs[4] and lrs[-1] < 0.01


def test_plateau_decays_after_epochs_without_a_better_f1_and_onecycle_peaks_at_max_lr():
    lrs = scheduler_lrs("--epochs", "4", "--scheduler", "plateau", "--plateau_patience", "1", "--lr_decay", "0.5",
                        f1=[0.5, 0.4, 0.4, 0.4])
    assert lrs[::4] == pytest.approx([0.1, 0.1, 0.1, 0.05])
    onecycle = scheduler_lrs("--epochs", "2", "--scheduler", "onecycle", "--max_lr", "0.3", steps=5)
    assert max(onecycle) == pytest.approx(0.3) and onecycle[0] == pytest.approx(0.3 / 25)
    with pytest.raises(UserError, match="--warmup_epochs"):
        scheduler_lrs("--epochs", "2", "--warmup_epochs", "1", "--scheduler", "onecycle")


def test_frozen_backbone_trains_only_the_head():
    args = parse("--model", "test_resnet", "--head", "single")
    model = create_model(vars(args))
    before = {name: value.clone() for name, value in model.state_dict().items()}
    batches = [(torch.randn(4, 3, 64, 48), torch.tensor([0, 5, 9, 17]))] * 2
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = create_scheduler(parse("--scheduler", "none"), optimizer, 2)
    train.train_one_epoch(model, batches, torch.nn.CrossEntropyLoss(), optimizer, scheduler, torch.device("cpu"), 1,
                          clip_grad=1.0, frozen=True)
    changed = {name for name, value in model.state_dict().items() if not torch.equal(value, before[name])}
    assert changed == {"head.weight", "head.bias"}


@pytest.mark.slow
def test_fold_all_predicts_every_training_image_once_by_the_model_that_did_not_train_on_it(sample_data, tmp_path,
                                                                                          monkeypatch):
    images, folds_csv = sample_data / "train/images", tmp_path / "folds2.csv"
    run_main(preprocess, monkeypatch, "--data_dir", images, "--kfold", 2, "--output", folds_csv)
    run_main(train, monkeypatch, "--data_dir", images, "--csv", folds_csv, "--model_dir", tmp_path, "--fold", "all",
             *TINY)
    run, folds = tmp_path / "exp", pd.read_csv(folds_csv, dtype={"id": str})
    oof = pd.read_csv(run / "oof.csv")
    assert sorted(oof["ImageID"]) == sorted(folds["path"])  # one prediction per training image
    assert (oof.set_index("ImageID").loc[folds["path"], "fold"].to_numpy() == folds["fold"].to_numpy()).all()
    for fold in (0, 1):
        fold_run = run / f"fold{fold}"
        config = json.loads((fold_run / "config.json").read_text())
        assert config["fold"] == fold and {"best.pth", "last.pth", "summary.csv"} <= {p.name for p in fold_run.iterdir()}
        trained_on = set(train.training_frame(folds, fold)["path"])
        predicted = oof[oof["fold"] == fold]
        assert not trained_on & set(predicted["ImageID"])
        # the probabilities are this fold model's own
        model = create_model(config, initial_weights=False)
        model.load_state_dict(load_checkpoint(fold_run / "best.pth")["model"])
        loader = train.build_loaders(parse(*TINY, "--fold", str(fold)), folds, images, torch.device("cpu"))[1]
        criterion = create_training_criterion(argparse.Namespace(**config), loader.dataset.targets, COMPETITION)
        _, probabilities = train.validate(model, loader, criterion, config["head"], COMPETITION, torch.device("cpu"))
        columns = [f"prob_{k}" for k in range(NUM_CLASSES)]
        assert np.allclose(predicted[columns].to_numpy(), probabilities.numpy(), atol=1e-5)
    metrics = json.loads((run / "oof_metrics.json").read_text())
    assert 0 <= metrics["f1"] <= 1 and len(metrics["fold_f1"]) == 2


def test_a_tiny_run_with_the_recipe_flags_succeeds_and_records_them(sample_data, tmp_path, monkeypatch):
    flags = {"--sampler": "weighted", "--class_weights": "auto", "--cutmix": "0.5", "--cutmix_mode": "vertical",
             "--ema": "0.9", "--warmup_epochs": "1", "--clip_grad": "1.0", "--freeze_epochs": "1",
             "--old_age": "58", "--drop_ages": "57-59", "--criterion": "focal", "--augmentation": "StrongAugmentation",
             "--scheduler": "cosine"}  # warmup is for the schedules that do not warm up themselves
    run_main(train, monkeypatch, "--data_dir", sample_data / "train/images", "--model_dir", tmp_path, *TINY,
             "--epochs", "2", *[part for pair in flags.items() for part in pair])
    config = json.loads((tmp_path / "exp/config.json").read_text())
    for flag, value in flags.items():
        assert str(config[flag[2:]]) == value, flag
    assert list(pd.read_csv(tmp_path / "exp/summary.csv")["epoch"]) == [1, 2]
    last = load_checkpoint(tmp_path / "exp/last.pth")
    assert not all(torch.equal(last["model"][key], last["training_model"][key]) for key in last["model"])  # EMA saved


def test_unset_flags_take_the_defaults_of_scratch_or_fine_tuning(capsys):
    scratch = train.parse_args([])
    assert {name: getattr(scratch, name) for name in train.SCRATCH} == train.SCRATCH
    tuned = train.parse_args(["--pretrained_path", "weights.pth"])
    assert {name: getattr(tuned, name) for name in train.FINE_TUNING} == train.FINE_TUNING
    assert "fine-tuning pretrained weights: --lr" in capsys.readouterr().out
    chosen = train.parse_args(["--pretrained", "--lr", "0.02", "--freeze_epochs", "3"])
    assert (chosen.lr, chosen.freeze_epochs) == (0.02, 3)


def test_the_backbone_learns_at_its_fraction_of_the_heads_rate_through_onecycle():
    args = parse("--backbone_lr", "0.1", "--lr", "0.01", "--epochs", "2")
    model = create_model({"model": "test_resnet", "head": "single", "scheme": COMPETITION.to_dict()})
    optimizer = create_optimizer(args, parameter_groups(model, args.lr, args.backbone_lr))
    backbone, head = optimizer.param_groups
    assert len(backbone["params"]) == len(list(model.backbone.parameters()))
    assert len(backbone["params"]) + len(head["params"]) == len(list(model.parameters()))
    scheduler = create_scheduler(args, optimizer, steps_per_epoch=4)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
        assert backbone["lr"] == pytest.approx(head["lr"] * 0.1)
    assert len(create_optimizer(args, parameter_groups(model, args.lr, 1.0)).param_groups) == 1


@pytest.mark.slow
def test_benchmark_recipe_scores_variants_on_held_out_people_of_class_folders(tmp_path):
    generate_classes(tmp_path / "data", "mask", people=6, eval_people=2, seed=0)
    result = run_script("benchmark_recipe.py", "--data_dir", tmp_path / "data", "--out", tmp_path / "work",
                        "--seeds", "0", "--epochs", "1", "--resize", "64", "48", "--workers", "0",
                        "--variant", "tiny=--model test_resnet --crop none")
    assert result.returncode == 0, result.stderr[-2000:]
    [row] = json.loads((tmp_path / "work/results.json").read_text())
    eval_photos = len(list((tmp_path / "data/eval").rglob("*.jpg")))
    predicted = pd.read_csv(tmp_path / "work/output/tiny_seed0/predictions.csv")
    assert len(predicted) == eval_photos and row["variant"] == "tiny" and 0 <= row["eval_f1"] <= 1
    assert "tiny" in result.stdout and "eval_accuracy" in result.stdout
