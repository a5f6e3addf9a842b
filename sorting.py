"""Files photos into folders named after their predicted class: inference.py --sort_into DIR.

Not a script. Every photo goes to DIR/<predicted class>/ (DIR/uncertain/ when its confidence is under
--min_confidence) under its own file name, or name_1, name_2, ... when that name is taken: nothing is ever
overwritten. `copy` and `symlink` leave the photos where they are; `move` first links (or, across file systems,
copies) the photo into place and only then removes the original, so a move interrupted at any point leaves every
photo in at least one of the two places.

A class name comes from a run's config or a model's metadata: the scheme has checked it (dataset.class_name_problem),
and sorting checks again that each folder it joins under DIR is a folder directly inside DIR once resolved (no `..`,
no separator, no link planted out of DIR), one per class, before a single photo is filed. A file name too long for
a numbered copy is cut to fit; a copy that fails (a full disk) is the one-line error saying how many photos are
already filed.
"""
import errno
import os
from pathlib import Path

from tqdm import tqdm

import cli
from fileio import copy_new, create_new, shown, write_problem

SORT_MODES = ("copy", "move", "symlink")
UNCERTAIN = "uncertain"


def folder_name(class_name):
    """A class name as one folder name (the competition's names hold `/`)."""
    return class_name.replace(os.sep, "-")


def class_folders(destination, names):
    """{folder name: destination/<folder name>} of each of `names` (and of UNCERTAIN), each refused unless it is a
    folder directly inside `destination` once resolved, and no two classes share one."""
    destination, folders = Path(destination).resolve(), {}
    classes = {folder_name(name): name for name in names}
    if len(classes) < len(set(names)):
        raise cli.UserError("two predicted classes would share one folder under --sort_into (their names differ "
                            "only by '/' and '-'): nothing filed")
    if UNCERTAIN in classes:
        raise cli.UserError(f"a predicted class is named {UNCERTAIN!r}, the folder of the unsure photos: nothing filed")
    for folder in [*classes, UNCERTAIN]:
        path = None if "\0" in folder else (destination / folder).resolve()
        if path is None or path.parent != destination:
            raise cli.UserError(f"the class {classes.get(folder, folder)!r} names the folder {folder!r}, which is not "
                                f"a folder directly inside {shown(destination)}: nothing filed")
        folders[folder] = path
    return folders


def claim(source, folder, mode):
    """Puts `source` into `folder` under the first free name, without ever replacing a file; returns the path.
    Each attempt creates the name atomically (link, symlink), so two photos never take the same name."""
    if mode == "symlink":
        return create_new(folder, source.name, lambda target: os.symlink(source.resolve(), target))
    if mode == "move":
        try:
            return create_new(folder, source.name, lambda target: os.link(source, target))
        except OSError as error:
            if error.errno != errno.EXDEV:  # across file systems: a full copy, moved there by a link
                raise
    return copy_new(source, folder)  # copied to a temporary there first, then linked into place


def sort_photos(paths, predicted, confidences, destination, mode="copy", min_confidence=0.0):
    """Files each photo of `paths` under destination/<its predicted class name>/ (or uncertain/); returns the
    target of each photo."""
    destination = Path(destination)
    if destination.exists() and not destination.is_dir():
        raise cli.UserError(f"--sort_into {destination} is a file: pass a folder")
    folders = class_folders(destination, set(predicted))
    targets = []
    for path, name, confidence in tqdm(list(zip(paths, predicted, confidences)), desc=f"{mode} into folders",
                                       unit="photo"):
        folder = folders[UNCERTAIN if confidence < min_confidence else folder_name(name)]
        try:
            folder.mkdir(parents=True, exist_ok=True)
            target = claim(Path(path), folder, mode)
            if mode == "move":
                os.remove(path)  # only now: the photo is already in its folder
        except OSError as error:
            raise cli.UserError(f"cannot {mode} {shown(path)} into {shown(folder)}: {write_problem(error, folder)} "
                                f"({len(targets)} of {len(paths)} photos filed before it)") from None
        targets.append(target)
    return targets
