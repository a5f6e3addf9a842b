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
