"""Files that survive a kill: atomic writes of CSVs, JSON and checkpoints, and safe checkpoint loading.

CSVs are read with a one-line error for a file that is not one. Everything the toolkit writes goes to a temporary file in the destination's directory and is moved into
place with `os.replace`, so a run killed at any moment leaves either the old file or the new one.
Checkpoints are read with `torch.load(weights_only=True)`: a file that needs arbitrary pickles is refused.
"""
import contextlib
import json
import os
import pickle
import tempfile
from pathlib import Path

import pandas as pd
import torch

from cli import UserError


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; on success moves it onto `path`, on failure removes it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


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


def write_json(data, path):
    with atomic_path(path) as temporary:
        Path(temporary).write_text(json.dumps(data, indent=2) + "\n")


def save_checkpoint(state, path):
    with atomic_path(path) as temporary:
        torch.save(state, temporary)


def load_checkpoint(path):
    """Loads a checkpoint written by train.py; anything that is not plain tensors and values is refused."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}: train a model first or point at a run directory")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise UserError(f"refusing {path}: it needs arbitrary Python objects to load, which is unsafe "
                        f"({first_line})") from None
    except (RuntimeError, EOFError, OSError) as error:
        raise UserError(f"cannot read checkpoint {path}: {str(error).splitlines()[0]}") from None
