"""Files that survive a kill and writes that fail cleanly: atomic writes of CSVs, JSON and checkpoints, new files that
never replace one, scratch folders, file names, and safe checkpoint loading.

CSVs are read with a one-line error for a file that is not one. Everything the toolkit writes goes to a temporary file
in the destination's directory and is moved into place with `os.replace`, so a run killed at any moment leaves either
the old file or the new one. Neither step follows a symlink planted at the destination (the temporary is created
exclusively, and a replace swaps the link itself), the file gets the mode the umask gives, and temporaries a killed
write left behind are removed by the next write. A temporary's name is cut to fit the file system's name limit, so a
name that fits has a temporary that fits. A write that fails (a full disk or quota, a name too long, no permission) is
the one-line error naming the path and what it needs, and leaves nothing half-written. Checkpoints are read with
`torch.load(weights_only=True)`: a file that needs arbitrary pickles is refused.
"""
import contextlib
import errno
import glob
import itertools
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
NAME_MAX = 255  # bytes in a file name, where the file system does not say (ext4, xfs, btrfs, tmpfs, APFS alike)
FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a write that needs more room than the disk, quota or limit leaves
ZEROS_CHUNK = 1 << 24  # bytes written at a time where space cannot be allocated ahead


def shown(path):
    """A path as text that any terminal, message and CSV takes: the bytes of a name that are not UTF-8 as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_utf8(path):
    """Whether the path's name is valid UTF-8 (Python holds the other bytes as surrogates, which no CSV takes)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def utf8_paths(paths, what="photos"):
    """The paths whose names are valid UTF-8; the others, which no CSV or message can hold as they are, are skipped,
    counted in one printed line."""
    kept = [path for path in paths if is_utf8(path)]
    if len(kept) < len(paths):
        first = next(path for path in paths if not is_utf8(path))
        print(f"skipping {len(paths) - len(kept)} {what} whose names are not valid UTF-8 (first: {shown(first)}): "
              "rename them to include them")
    return kept


def megabytes(size):
    return f"{size / 1e6:.1f} MB"


def free_space(folder):
    """The bytes free on the file system of `folder` (or of its nearest existing parent)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def write_problem(error, folder, needed=None):
    """Why a write into `folder` failed, in words, and what it needs: for a full disk or quota the space free there
    (and `needed` bytes, when known), for a name too long a shorter one."""
    if error.errno in FULL:
        what = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is used up",
                errno.EFBIG: "the file is larger than the file system or the size limit allows"}[error.errno]
        free = free_space(folder)
        room = ", ".join([*([f"{megabytes(needed)} needed"] if needed else []),
                          *([f"{megabytes(free)} free there"] if free is not None else [])])
        return f"{what}{f' ({room})' if room else ''}: free space there or write elsewhere"
    if error.errno == errno.ENAMETOOLONG:
        return "a name in it is longer than the file system allows: use a shorter name or folder"
    return first_line(error)


def name_limit(folder):
    """The longest file name, in bytes, that the file system of `folder` takes."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return NAME_MAX


def fitted(stem, suffix, limit):
    """stem + suffix, the stem cut by whole characters so that the name takes at most `limit` bytes."""
    while stem and len(os.fsencode(stem + suffix)) > limit:
        stem = stem[:-1]
    return stem + suffix


def free_names(folder, name):
    """folder/name, then name_1, name_2, ...: the names a new file may take, each cut to the file system's name
    limit; the caller creates one exclusively (create_new)."""
    folder = Path(folder)
    stem, suffix = os.path.splitext(name)
    limit = name_limit(folder)
    yield folder / fitted(stem, suffix, limit)
    for number in itertools.count(1):
        yield folder / fitted(stem, f"_{number}{suffix}", limit)


def create_new(folder, name, create):
    """Calls `create(path)` (a link, a symlink: anything that fails on an existing path) on folder/name, then on the
    free names after it, until one was not taken; returns that path. Nothing is ever replaced."""
    for target in free_names(folder, name):
        try:
            create(target)
            return target
        except FileExistsError:
            continue


def place_new(temporary, folder, name):
    """Moves the finished file `temporary` into `folder` under `name`, or the first free name after it, by a hard
    link that fails rather than replace a file; returns the path it took. The temporary is removed either way."""
    try:
        return create_new(folder, name, lambda target: os.link(temporary, target))
    finally:
        os.remove(temporary)


def write_new(folder, name, write):
    """A new file in `folder` under `name` or the first free name after it (never replacing one), which
    `write(temporary path)` writes in full first; returns its path. A failed write leaves nothing."""
    temporary = new_temporary(Path(folder) / name)
    try:
        write(temporary)
    except BaseException:
        os.remove(temporary)
        raise
    return place_new(temporary, folder, name)


def copy_new(source, folder, name=None):
    """A copy of the file `source` in `folder` (write_new), under its own name unless `name` is given."""
    return write_new(folder, name or Path(source).name, lambda temporary: shutil.copy2(source, temporary))


def umask_mode():
    """0o666 less the umask: the mode open() gives a new file (mkstemp's is 0600, unreadable to a teammate)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def new_temporary(path):
    """A new empty file beside `path`, named .NAME.*.tmp (NAME cut to fit the file system's name limit), with the
    umask's mode; first removes the temporaries of that name that a killed write left behind."""
    path = Path(path)
    prefix = fitted(f".{path.name}", ".", name_limit(path.parent) - len("XXXXXXXX.tmp"))  # mkstemp adds 8 letters
    for stale in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        with contextlib.suppress(OSError):  # another process may have removed it already
            if stale.lstat().st_mtime < STARTED:
                stale.unlink()
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    os.fchmod(handle, umask_mode())
    os.close(handle)
    return temporary


@contextlib.contextmanager
def atomic_paths(*paths, needed=None):
    """Yields a temporary path beside each of `paths`; on success moves them onto `paths` in order, on failure
    removes them. With several paths the last one is removed before any is replaced: a kill between the moves leaves
    it missing, never stale, so its presence says the set is complete. A path that cannot be written (a folder in
    its place, no permission, a full disk, a name too long) is the one-line error, which says how much room the write
    needs (`needed` bytes, when the caller knows) and how much is free."""
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
        raise UserError(f"cannot write {', '.join(map(shown, paths))}: "
                        f"{write_problem(error, paths[0].parent, needed)}") from None
    finally:
        for temporary in temporaries:
            if os.path.exists(temporary):
                os.remove(temporary)


@contextlib.contextmanager
def atomic_path(path, needed=None):
    """Yields a temporary path beside `path`; on success moves it onto `path`, on failure removes it."""
    with atomic_paths(path, needed=needed) as (temporary,):
        yield temporary


def reserve(path, size):
    """Gives the file at `path` its `size` bytes on disk before a memory map writes them: a full disk is then an
    OSError here, where the map would die of SIGBUS on the first page the disk has no room for."""
    with open(path, "r+b") as file:
        try:
            os.posix_fallocate(file.fileno(), 0, size)
            return
        except AttributeError:  # macOS has no posix_fallocate
            pass
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system that cannot allocate ahead
                raise
        for start in range(0, size, ZEROS_CHUNK):
            file.write(bytes(min(ZEROS_CHUNK, size - start)))
        file.flush()
        os.fsync(file.fileno())


@contextlib.contextmanager
def scratch_folder(folder, name):
    """A new hidden folder inside `folder`, .NAME.*.tmp, for the intermediate files of one job, removed when the
    block ends, however it ends; those a killed job left (older than this process) are removed first. Inside the
    output's folder a killed job's large files stay where the user looks and are cleared by the next job, never
    left in /tmp. A full disk or quota inside the block is the one-line error."""
    folder = Path(folder)
    make_dir(folder, exist_ok=True)
    for stale in folder.glob(f".{glob.escape(name)}.*.tmp"):
        with contextlib.suppress(OSError):
            if stale.is_dir() and stale.lstat().st_mtime < STARTED:
                shutil.rmtree(stale)
    try:
        scratch = Path(tempfile.mkdtemp(dir=folder, prefix=f".{name}.", suffix=".tmp"))
    except OSError as error:
        raise UserError(f"cannot write in {shown(folder)}: {write_problem(error, folder)}") from None
    try:
        yield scratch
    except OSError as error:
        if error.errno not in FULL:
            raise
        raise UserError(f"cannot write in {shown(folder)}: {write_problem(error, folder)}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


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


def to_csv(frame, path):
    """RFC 4180's CRLF line ends: the csv module then quotes a text holding a lone CR too (a file may be named so),
    which a reader would otherwise take for the end of its row."""
    frame.to_csv(path, index=False, lineterminator="\r\n")


def write_csv(frame, path):
    with atomic_path(path) as temporary:
        to_csv(frame, temporary)


def write_csvs(frames):
    """Writes {path: frame} as one set (atomic_paths): the last path is there only when every file is new."""
    with atomic_paths(*frames) as temporaries:
        for frame, temporary in zip(frames.values(), temporaries):
            to_csv(frame, temporary)


def write_json(data, path):
    with atomic_path(path) as temporary:
        Path(temporary).write_text(json.dumps(data, indent=2) + "\n")


def tensor_bytes(value):
    """The bytes of the tensors in a (nested) checkpoint state: about what torch.save writes."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(map(tensor_bytes, value.values()))
    if isinstance(value, (list, tuple)):
        return sum(map(tensor_bytes, value))
    return 0


def save_checkpoint(state, path):
    """torch.save of `state` to `path`, atomically; a full disk is the one-line error saying how much it needs."""
    with atomic_path(path, needed=tensor_bytes(state)) as temporary, open(temporary, "wb") as file:
        try:
            torch.save(state, file)
        except RuntimeError as error:  # torch's writer reports a failed write as its own error, the OSError inside
            if isinstance(error.__context__, OSError):
                raise error.__context__ from None
            raise


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
