"""Files photos into folders named after their predicted class: inference.py --sort_into DIR.

Not a script. Every photo goes to DIR/<predicted class>/ (DIR/uncertain/ when its confidence is under
--min_confidence) under its own file name, or name_1, name_2, ... when that name is taken: nothing is ever
overwritten. `copy` and `symlink` leave the photos where they are; `move` first links (or, across file systems,
copies) the photo into place and only then removes the original, so a move interrupted at any point leaves every
photo in at least one of the two places.
"""
import errno
import os
import shutil
import tempfile
from pathlib import Path

from tqdm import tqdm

import cli

SORT_MODES = ("copy", "move", "symlink")
UNCERTAIN = "uncertain"


def folder_name(class_name):
    """A class name as one folder name (the competition's names hold `/`)."""
    return class_name.replace(os.sep, "-")


def free_names(folder, name):
    """name, name_1, name_2, ... in `folder`: candidates, the caller claiming one atomically."""
    stem, suffix = os.path.splitext(name)
    yield folder / name
    number = 1
    while True:
        yield folder / f"{stem}_{number}{suffix}"
        number += 1


def claim(source, folder, mode):
    """Puts `source` into `folder` under the first free name, without ever replacing a file; returns the path.
    Each attempt creates the name atomically (link, symlink), so two photos never take the same name."""
    for target in free_names(folder, source.name):
        try:
            if mode == "symlink":
                os.symlink(source.resolve(), target)
            elif mode == "move":
                link_or_copy(source, target)
            else:
                copy_new(source, target)
            return target
        except FileExistsError:
            continue


def link_or_copy(source, target):
    """A hard link of `source` at `target`, or across file systems a full copy moved there by a link."""
    try:
        os.link(source, target)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        copy_new(source, target)


def copy_new(source, target):
    """Copies `source` to a temporary file beside `target`, then links it at `target` (failing if taken)."""
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    try:
        shutil.copy2(source, temporary)
        os.link(temporary, target)
    finally:
        os.remove(temporary)


def sort_photos(paths, predicted, confidences, destination, mode="copy", min_confidence=0.0):
    """Files each photo of `paths` under destination/<its predicted class name>/ (or uncertain/); returns the
    target of each photo."""
    destination = Path(destination)
    if destination.exists() and not destination.is_dir():
        raise cli.UserError(f"--sort_into {destination} is a file: pass a folder")
    targets = []
    for path, name, confidence in tqdm(list(zip(paths, predicted, confidences)), desc=f"{mode} into folders",
                                       unit="photo"):
        folder = destination / (UNCERTAIN if confidence < min_confidence else folder_name(name))
        folder.mkdir(parents=True, exist_ok=True)
        target = claim(Path(path), folder, mode)
        if mode == "move":
            os.remove(path)  # only now: the photo is already in its folder
        targets.append(target)
    return targets
