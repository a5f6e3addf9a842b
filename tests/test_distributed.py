"""Scale-out with torchrun: rank shards of every sampler, one run directory written by rank 0, and validation
metrics equal to a single process's evaluation of the saved weights."""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

import train
from augmentation import BatchMixer, create_batch_jitter
from conftest import REPO_ROOT, TINY_TRAINING
from dataset import COMPETITION, NUM_CLASSES, ImageDataset, SeededSampler, create_sampler, load_folds
from distributed import ShardSampler, shard
from fileio import load_checkpoint
from loss import create_training_criterion
from model import create_model, load_weights

WORLD_SIZE = 2


def torchrun(*args):
    """train.py under `torchrun --standalone` (a free port of its own) with two CPU processes (gloo)."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={WORLD_SIZE}", str(REPO_ROOT / "train.py"), *map(str, args)],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)


def rank_draw(name, size, rank, world_size=WORLD_SIZE):
    """What rank `rank` iterates: its ShardSampler of train.py's sampler over `size` images, after seed_epoch has
    seeded the loader's generator alike on every rank and torch's global generator per rank."""
    labels = np.arange(size) % 4 * 5  # four classes, for the weighted and imbalanced samplers
    dataset = ImageDataset([f"{k}.jpg" for k in range(size)], labels)
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(rank)
    return list(ShardSampler(create_sampler(name, dataset, labels, NUM_CLASSES, generator), rank, world_size, generator))


@pytest.mark.parametrize("size", [10, 11])
@pytest.mark.parametrize("name", ["none", "weighted", "imbalanced"])
def test_ranks_take_alternate_positions_of_one_identical_draw(name, size):
    draw = rank_draw(name, size, rank=0, world_size=1)  # the whole draw, as one process would take it
    shards = [rank_draw(name, size, rank) for rank in range(WORLD_SIZE)]
    assert [len(part) for part in shards] == [math.ceil(size / WORLD_SIZE)] * WORLD_SIZE  # as many steps each
    interleaved = [index for step in zip(*shards) for index in step]
    assert interleaved == draw + draw[:len(interleaved) - len(draw)]  # the draw, padded with its beginning


def test_shuffle_shards_are_disjoint_and_cover_every_image():
    shards = [rank_draw("none", 10, rank) for rank in range(WORLD_SIZE)]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(10))
    assert set().union(*(rank_draw("none", 11, rank) for rank in range(WORLD_SIZE))) == set(range(11))


def test_a_single_process_keeps_the_whole_sampler():
    sampler = create_sampler("none", ImageDataset(["0.jpg", "1.jpg"]), np.zeros(2, dtype=int), NUM_CLASSES)
    assert shard(sampler, torch.Generator()) is sampler


def test_ranks_augment_differently_from_the_same_seeds():
    """Every rank seeds alike from (seed, epoch): the loader's draws are shared (each rank its shard of items and
    item seeds), the rank folded into the others gives each rank its own jitter, mixing and main-process draws."""
    def draws(rank):
        loader = SimpleNamespace(sampler=SimpleNamespace(generator=torch.Generator()))
        mixer, jitter = BatchMixer(NUM_CLASSES), create_batch_jitter("CustomAugmentation")
        train.seed_epoch(42, 3, loader, mixer, jitter, rank)
        return torch.rand(4), jitter.factors(2), loader.sampler.generator.initial_seed()

    first, second, again = draws(0), draws(1), draws(1)
    for own, other, same in zip(first[:2], second[:2], again[:2]):
        assert not torch.equal(own, other) and torch.equal(other, same)
    assert first[2] == second[2]

    def item_seeds(rank):
        generator = torch.Generator().manual_seed(0)
        sampler = SeededSampler(torch.utils.data.RandomSampler(range(10), generator=generator), generator)
        return list(ShardSampler(sampler, rank, WORLD_SIZE, generator))

    shards = [item_seeds(rank) for rank in range(WORLD_SIZE)]
    assert sorted(index for shard in shards for index, _ in shard) == list(range(10))
    assert len({seed for shard in shards for _, seed in shard}) == 10  # no two items of any rank share a seed


@pytest.fixture(scope="module")
def distributed_run(sample_data, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("distributed")
    # cosine: the resume test extends this run by an epoch, which onecycle's schedule (it ends with the run) refuses
    result = torchrun("--data_dir", sample_data / "train/images", "--model_dir", model_dir, *TINY_TRAINING,
                      "--scheduler", "cosine")
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir, result


@pytest.mark.slow
def test_torchrun_writes_exactly_one_run_directory(distributed_run):
    model_dir, result = distributed_run
    assert [path.name for path in model_dir.iterdir()] == ["exp"]
    files = [path.name for path in (model_dir / "exp").iterdir()]
    assert {"config.json", "best.pth", "last.pth", "summary.csv"} <= set(files)
    assert sum(name.startswith("events.out.tfevents") for name in files) == 1  # one TensorBoard writer
    assert result.stdout.count("best val_f1") == 1  # rank 0 alone prints


@pytest.mark.slow
def test_distributed_validation_f1_equals_a_single_process_evaluation_of_best_pth(distributed_run):
    run = distributed_run[0] / "exp"
    args = train.resumed_args(run)  # the run's own arguments
    frame = load_folds(Path(args.csv), Path(args.data_dir), args.fold)
    train_loader, valid_loader = train.build_loaders(args, frame, Path(args.data_dir), torch.device("cpu"))
    best = load_checkpoint(run / "best.pth")
    model = create_model(vars(args), initial_weights=False)
    load_weights(model, best["model"], run / "best.pth")
    criterion = create_training_criterion(args, train_loader.dataset.targets, COMPETITION)
    metrics, probabilities = train.validate(model, valid_loader, criterion, args.head, COMPETITION, torch.device("cpu"))
    summary = pd.read_csv(run / "summary.csv").set_index("epoch")
    assert metrics["val_f1"] == pytest.approx(summary.loc[best["epoch"], "val_f1"], abs=1e-9)
    assert metrics["val_loss"] == pytest.approx(summary.loc[best["epoch"], "val_loss"], rel=1e-5)
    assert torch.allclose(probabilities, best["valid_probabilities"], atol=1e-6)  # every image, in order


@pytest.mark.slow
def test_torchrun_resumes_a_run_in_its_own_directory(distributed_run, tmp_path):
    run = tmp_path / "exp"
    shutil.copytree(distributed_run[0] / "exp", run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "epochs": 2}))  # as if killed after epoch 1 of 2
    result = torchrun("--resume", run)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [path.name for path in tmp_path.iterdir()] == ["exp"]
    assert result.stdout.count("resumed") == 1
    summary, first = pd.read_csv(run / "summary.csv"), pd.read_csv(distributed_run[0] / "exp/summary.csv")
    assert list(summary["epoch"]) == [1, 2]
    pd.testing.assert_frame_equal(summary.iloc[:1], first)
