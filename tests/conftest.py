"""Shared fixtures: a tiny synthetic data set in the competition layout, generated once per session."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from generate_sample import generate  # noqa: E402


def run_script(script, *args, env=None, cwd=None):
    """Runs one of the repository's scripts as a user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, str(REPO_ROOT / script), *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def assert_one_line_error(result, message):
    """The script failed as a user should see it: exit code 2, one `error:` line naming the problem."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory):
    """A small generated and preprocessed data set: train (with folds.csv), eval and gt under one folder."""
    root = tmp_path_factory.mktemp("data")
    generate(root, people=20, eval_people=4, seed=0)
    assert run_script("preprocess.py", "--data_dir", root / "train/images").returncode == 0
    return root


TINY_TRAINING = ["--model", "test_resnet", "--resize", "64", "48", "--epochs", "1", "--batch_size", "16",
                 "--workers", "0"]
QUICK_EXPORT = ["--latency_runs", "3", "--warmup", "1", "--throughput_runs", "1", "--calibration", "16"]


@pytest.fixture(scope="session")
def exported(sample_data, tmp_path_factory):
    """A tiny run trained on the sample set and exported by export.py in all three precisions into its directory:
    (run directory, export.py's CompletedProcess)."""
    model_dir = tmp_path_factory.mktemp("exported")
    result = run_script("train.py", "--data_dir", sample_data / "train/images", "--model_dir", model_dir,
                        *TINY_TRAINING)
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_script("export.py", model_dir / "exp", *QUICK_EXPORT)
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir / "exp", result
