"""Files that survive a kill: atomic writes of CSVs, JSON and checkpoints, and safe checkpoint loading.

CSVs are read with a one-line error for a file that is not one. Everything the toolkit writes goes to a temporary file in the destination's directory and is moved into
place with `os.replace`, so a run killed at any moment leaves either the old file or the new one. Neither step follows
a symlink planted at the destination (the temporary is created exclusively, and a replace swaps the link itself), the
file gets the mode the umask gives, and temporaries a killed write left behind are removed by the next write.
Checkpoints are read with `torch.load(weights_only=True)`: a file that needs arbitrary pickles is refused.
"""
import contextlib
import glob
import json
import os
import pickle
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from cli import UserError, first_line


STARTED = time.time()  # a temporary older than this process is a killed write's, never one in progress here


def umask_mode():
    """0o666 less the umask: the mode open() gives a new file (mkstemp's is 0600, unreadable to a teammate)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def new_temporary(path):
    """A new empty file beside `path`, named .NAME.*.tmp, with the umask's mode; first removes the temporaries of
    `path` that a killed write left behind."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(OSError):  # another process may have removed it already
            if stale.lstat().st_mtime < STARTED:
                stale.unlink()
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(handle, umask_mode())
    os.close(handle)
    return temporary


@contextlib.contextmanager
def atomic_paths(*paths):
    """Yields a temporary path beside each of `paths`; on success moves them onto `paths` in order, on failure
    removes them. With several paths the last one is removed before any is replaced: a kill between the moves leaves
    it missing, never stale, so its presence says the set is complete. A path that cannot be written (a folder in
    its place, no permission, a full disk) is the one-line error."""
    paths, temporaries = [Path(path) for path in paths], []
    try:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporaries.append(new_temporary(path))
        yield temporaries
        if len(paths) > 1:
            with contextlib.suppress(FileNotFoundError):
                os.remove(paths[-1])
        for temporary, path in zip(temporaries, paths):
            os.replace(temporary, path)
    except OSError as error:
        raise UserError(f"cannot write {', '.join(map(str, paths))}: {first_line(error)}") from None
    finally:
        for temporary in temporaries:
            if os.path.exists(temporary):
                os.remove(temporary)


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; on success moves it onto `path`, on failure removes it."""
    with atomic_paths(path) as (temporary,):
        yield temporary


def open_lock(path):
    """A lock file at `path`, opened for flock without following a symlink there and without truncating it."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, umask_mode()), "w")


def make_dir(path, exist_ok=False):
    """Creates the folder `path` and its parents; one that cannot be made (a file in the way, no permission) is the
    one-line error."""
    try:
        Path(path).mkdir(parents=True, exist_ok=exist_ok)
    except OSError as error:
        raise UserError(f"cannot create the folder {path}: {first_line(error)}") from None


def remove_unfinished_runs(run_dir):
    """Removes the run directories in run_dir (itself, or its fold runs) that hold no checkpoint, then run_dir if
    nothing is left in it: a run that failed before its first epoch ended leaves nothing behind."""
    run_dir = Path(run_dir)
    for config in sorted(run_dir.glob("**/config.json")):
        if not any(config.parent.glob("*.pth")):
            shutil.rmtree(config.parent)
    if run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()


def read_csv(path, name=None, **options):
    """pandas.read_csv(path, **options), with a one-line error naming the file (as `name`, by default its path)
    when it is not a readable CSV."""
    try:
        return pd.read_csv(path, **options)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise UserError(f"{name or path} is not a readable CSV: {str(error).splitlines()[0]}") from None


def write_csv(frame, path):
    with atomic_path(path) as temporary:
        frame.to_csv(temporary, index=False)


def write_csvs(frames):
    """Writes {path: frame} as one set (atomic_paths): the last path is there only when every file is new."""
    with atomic_paths(*frames) as temporaries:
        for frame, temporary in zip(frames.values(), temporaries):
            frame.to_csv(temporary, index=False)


def write_json(data, path):
    with atomic_path(path) as temporary:
        Path(temporary).write_text(json.dumps(data, indent=2) + "\n")


def save_checkpoint(state, path):
    with atomic_path(path) as temporary:
        torch.save(state, temporary)


def load_checkpoint(path, keys=("model",)):
    """Loads a checkpoint: a dict holding `keys` (train.py's hold a model). Anything that is not plain tensors and
    values is refused, and so is a file that is not such a dict (empty, truncated, another program's)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}: train a model first or point at a run directory")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" not in str(error):  # not a pickle at all, rather than one with unsafe objects
            raise UserError(f"cannot read checkpoint {path}: it is not a file torch.save wrote") from None
        raise UserError(f"refusing {path}: it needs arbitrary Python objects to load, which is unsafe "
                        f"({first_line(error)})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise UserError(f"cannot read checkpoint {path}: {first_line(error)}") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a checkpoint: it holds a {type(state).__name__}, not a table of tensors")
    missing = [key for key in keys if key not in state]
    if missing:
        raise UserError(f"{path} is not a checkpoint of train.py: it lacks the key {missing[0]!r}")
    return state


def read_json(path, checks=None):
    """The JSON object in `path`; each key of `checks` must be present and pass its check, a (predicate, what the
    value should be) pair. One line naming the file and the key otherwise."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"cannot read {path}: {first_line(error)}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON object of keys and values")
    for key, (valid, expected) in (checks or {}).items():
        if key not in data:
            raise UserError(f"{path} lacks the key {key!r}")
        if not valid(data[key]):
            raise UserError(f"{path}: {key} is {data[key]!r}, not {expected}")
    return data
