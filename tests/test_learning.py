"""The pipeline learns, not just runs: a small model learns the mask state of generated people."""
import pandas as pd
import pytest

from conftest import run_script
from generate_sample import generate

pytestmark = pytest.mark.slow  # long end to end: `make test-fast` leaves it out


def test_small_model_reaches_mask_f1_of_0_9(tmp_path):
    generate(tmp_path, people=60, eval_people=0, seed=0)
    images = tmp_path / "train/images"
    assert run_script("preprocess.py", "--data_dir", images).returncode == 0
    result = run_script("train.py", "--data_dir", images, "--model_dir", tmp_path / "model", "--task", "mask",
                        "--model", "test_resnet", "--augmentation", "BaseAugmentation", "--epochs", "12",
                        "--batch_size", "16", "--lr", "3e-3", "--scheduler", "onecycle")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = pd.read_csv(tmp_path / "model/exp/summary.csv")
    assert summary["val_mask_f1"].max() >= 0.9, summary.to_string()
