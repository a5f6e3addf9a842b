"""Nothing lost: a run killed mid-epoch and resumed ends exactly like the run that was never interrupted."""
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest
import torch

from conftest import REPO_ROOT, run_script

pytestmark = pytest.mark.slow  # long end to end: `make test-fast` leaves it out

TRAINING = ["--model", "test_resnet", "--resize", "64", "48", "--epochs", "3", "--batch_size", "16", "--workers", "0",
            "--sampler", "weighted", "--cutmix", "0.5", "--ema", "0.9"]


def train_until_killed(data_dir, model_dir):
    """Starts a run and SIGKILLs it as soon as its first epoch is logged, i.e. during the second."""
    process = subprocess.Popen([sys.executable, str(REPO_ROOT / "train.py"), "--data_dir", data_dir,
                                "--model_dir", model_dir, "--name", "cut", *TRAINING],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in process.stdout:
        if line.startswith("epoch 1 "):
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    return process.returncode


@pytest.fixture(scope="module")
def runs(sample_data, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("resume")
    data_dir = sample_data / "train/images"
    full = run_script("train.py", "--data_dir", data_dir, "--model_dir", model_dir, "--name", "full", *TRAINING)
    assert full.returncode == 0, full.stderr[-2000:]
    assert train_until_killed(data_dir, model_dir) == -signal.SIGKILL
    interrupted_epoch = torch.load(model_dir / "cut/last.pth", weights_only=True)["epoch"]
    resumed = run_script("train.py", "--resume", model_dir / "cut")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    return model_dir, interrupted_epoch


def test_the_kill_landed_before_the_end(runs):
    _, interrupted_epoch = runs
    assert interrupted_epoch < 3


def test_resumed_run_ends_with_the_same_metrics(runs):
    model_dir, _ = runs
    full = pd.read_csv(model_dir / "full/summary.csv").drop(columns="seconds")
    resumed = pd.read_csv(model_dir / "cut/summary.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(full, resumed)


def test_resumed_run_ends_with_the_same_weights_and_predictions(runs, sample_data, tmp_path):
    model_dir, _ = runs
    full, resumed = (torch.load(model_dir / run / "last.pth", weights_only=True) for run in ("full", "cut"))
    for key, tensor in full["model"].items():
        assert torch.equal(tensor, resumed["model"][key]), key
    outputs = []
    for run in ("full", "cut"):
        result = run_script("inference.py", "--data_dir", sample_data / "eval", "--model_dir", model_dir / run,
                            "--output_dir", tmp_path / run, "--workers", "0")
        assert result.returncode == 0, result.stderr[-2000:]
        outputs.append((tmp_path / run / "output.csv").read_bytes())
    assert outputs[0] == outputs[1]
