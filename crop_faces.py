"""Writes the face crops of a folder tree of photos into another, mirroring its folders.

    python crop_faces.py photos/ crops/                         # the most confident face of each photo
    python crop_faces.py photos/ crops/ --all_faces --margin 0.2 --size 224 224
    python crop_faces.py data/train/images data/train_faces --min_score 0.95
    python crop_faces.py photos/ crops/ --resume                # continue a run interrupted or out of space

Every photo under SRC (.jpg, .jpeg, .png; hidden files ignored) goes through the face detector (faces.py, MTCNN);
its face, grown by --margin times the box on each side and kept inside the photo, is written as
DST/<the photo's path>, or with --all_faces every face as <stem>_face0.jpg, <stem>_face1.jpg, ... (the photo's own
extension and format)
(most confident first). Photos without a face (or none above --min_score) are copied to DST/no_face/<the photo's
path>, so that nothing is lost. DST/faces.csv lists every photo with its faces: path, face, box in pixels
(x1, y1, x2, y2), score and the crop written. This is the "detect, crop and segregate into folders" step that turns
any folder of photos into a face-crop data set.

DST appears complete or not at all: everything is written into a hidden work folder beside it (.DST.crop_faces),
which is renamed to DST once every photo is done. A run interrupted (Ctrl-C, a kill, a full disk) keeps that folder
and a journal of the photos done; `--resume` continues it with the same flags, redoing only the photos not done.
Nothing is ever overwritten: a crop or copy whose name is taken (a photo without a face named like a crop of
SRC/no_face/, a photo named like another's <stem>_face0.jpg) gets name_1, name_2, ..., which faces.csv records.
Photos whose names are not valid UTF-8 are skipped and counted.
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

import cli
from faces import CONFIDENT, add_detection_flags, detect_faces, detection_of, grow
from fileio import (atomic_path, copy_new, fitted, make_dir, name_limit, read_json, shown, utf8_paths, write_csv,
                    write_json, write_new, write_problem)
from photos import crop_box_pixels, decode_image, find_photos

NO_FACE_FOLDER = "no_face"
TABLE = "faces.csv"
JOURNAL, SETTINGS = ".crop_faces.journal", ".crop_faces.json"  # hidden: no photo of SRC can take these names
DETECT_CHUNK = 256  # photos detected, cropped and journalled at a time: what a kill can cost
# the flags a resumed run must keep
SETTING_FLAGS = ("all_faces", "margin", "size", "min_score", "detector", "min_face_size")
FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}
COLUMNS = ["path", "face", "x1", "y1", "x2", "y2", "score", "crop"]


def get_args_parser():
    parser = cli.new_parser("Write the face crops of a folder tree of photos, mirroring its folders.")
    paths = parser.add_argument_group("paths")
    paths.add_argument("source", metavar="SRC", help="folder of photos (any depth)")
    paths.add_argument("destination", metavar="DST", help="new or empty folder for the crops")
    cli.add_flag(paths, "resume", action="store_true",
                 help="continue the interrupted run into DST (its work folder beside DST), with the same flags")
    crop = parser.add_argument_group("crop")
    cli.add_flag(crop, "all_faces", action="store_true", help="write every face, not only the most confident")
    cli.add_flag(crop, "margin", type=cli.non_negative_float, default=0.4,
                 help="margin added on each side, as a fraction of the face box's width and height")
    cli.add_flag(crop, "size", type=cli.positive_int, nargs=2, default=None, metavar=("H", "W"),
                 help="resize every crop to this (the crop takes this aspect ratio); default: as cropped")
    cli.add_flag(crop, "min_score", type=cli.fraction, default=CONFIDENT,
                 help="ignore faces detected with a lower confidence")
    detector = parser.add_argument_group("detector")
    add_detection_flags(detector, face_choice=False)
    cli.add_flag(detector, "device", type=cli.device, default="cuda" if torch.cuda.is_available() else "cpu",
                 help="device of the detector (on a CPU the photos are spread over the cores)")
    return parser


def check_paths(args):
    source, destination = Path(args.source), Path(args.destination)
    if not source.is_dir():
        raise cli.UserError(f"{source} is not a folder of photos")
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise cli.UserError(f"{destination} exists and is not an empty folder: pass a new one")
    if destination.resolve() == source.resolve():
        raise cli.UserError("SRC and DST are the same folder: pass a new one for the crops")
    return source, destination


def find_source_photos(source):
    """The photos under SRC whose names a CSV can hold; refused if none, or if SRC has a folder where DST's table
    goes."""
    photos = utf8_paths(find_photos(source))
    if not photos:
        raise cli.UserError(f"no photos (.jpg, .jpeg, .png) under {shown(source)}")
    if (source / TABLE).is_dir():
        raise cli.UserError(f"{source / TABLE} is a folder, where DST's table of faces goes: rename it")
    return photos


def work_folder(destination):
    """The hidden folder beside DST that a run writes into before it becomes DST."""
    resolved = destination.resolve()
    return resolved.parent / fitted(f".{resolved.name}", ".crop_faces", name_limit(resolved.parent))


def read_journal(work):
    """{photo path under SRC: its rows of faces.csv} of the photos an interrupted run finished. The line a kill cut
    short is dropped, and the journal rewritten without it, so that the next line starts afresh."""
    done = {}
    for line in (work / JOURNAL).read_text().splitlines() if (work / JOURNAL).is_file() else []:
        try:
            entry = json.loads(line)
            done[entry["photo"]] = list(entry["rows"])
        except (ValueError, KeyError, TypeError):
            continue
    with atomic_path(work / JOURNAL) as temporary:
        Path(temporary).write_text("".join(json.dumps({"photo": photo, "rows": rows}) + "\n"
                                           for photo, rows in done.items()))
    return done


def prune(work, done):
    """Removes from the work folder every file that no finished photo wrote (what a kill caught halfway, stale
    temporaries) and the folders left empty: those photos are done again."""
    kept = {row["crop"] for rows in done.values() for row in rows if isinstance(row, dict)}
    for path in sorted(work.rglob("*"), reverse=True):  # a folder's files before the folder
        relative = str(path.relative_to(work))
        if path.is_dir() and not path.is_symlink():
            if not any(path.iterdir()):
                path.rmdir()
        elif relative not in kept and relative not in (JOURNAL, SETTINGS):
            path.unlink()


def start_or_resume(work, destination, settings, photos, resume):
    """{photo: rows} of the photos already done: none for a new run (its work folder made), for --resume those of
    `photos` (paths under SRC) that the journal lists, the run's settings checked against `settings`."""
    if work.exists() and not resume:
        raise cli.UserError(f"an interrupted run into {destination} left its work in {shown(work)}: pass --resume to "
                            "continue it, or remove that folder to start over")
    if not (work / SETTINGS).is_file():  # a new run, or one killed before it wrote anything
        make_dir(work, exist_ok=True)
        write_json(settings, work / SETTINGS)
    saved = read_json(work / SETTINGS)
    for key, value in settings.items():
        if saved.get(key) != value:
            raise cli.UserError(f"--resume: {key} was {saved.get(key)!r} in the interrupted run, not {value!r}: pass "
                                "the flags it ran with")
    photos = set(photos)
    done = {photo: rows for photo, rows in read_journal(work).items() if photo in photos}  # SRC may have changed
    prune(work, done)
    return done


def save_crop(image, box, size, folder, name):
    """The pixel `box` of the uint8 `image`, resized to `size` (H, W) if given, as a new file in `folder` named
    `name` or the first free name after it, in its extension's format; returns its path."""
    crop = Image.fromarray(image).crop(tuple(round(side) for side in box))
    if size is not None:
        crop = crop.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return write_new(folder, name, lambda temporary: crop.save(temporary, format=FORMATS[Path(name).suffix.lower()],
                                                               quality=95))


def crop_photo(image, faces, relative, work, args):
    """Writes the crops of one photo's faces; returns its rows of faces.csv."""
    height, width = image.shape[:2]
    rows = []
    for number, (box, score, _) in enumerate(faces):
        region = grow(np.array([box]), args.margin)[0]
        out_size = args.size or ((region[3] - region[1]) * height, (region[2] - region[0]) * width)
        name = f"{relative.stem}_face{number}{relative.suffix}" if args.all_faces else relative.name
        folder = work / relative.parent
        folder.mkdir(parents=True, exist_ok=True)
        written = save_crop(image, crop_box_pixels(region, (width, height), out_size), args.size, folder, name)
        pixels = np.asarray(box) * [width, height, width, height]
        rows.append({"path": str(relative), "face": number, **dict(zip(("x1", "y1", "x2", "y2"),
                                                                       pixels.round(1).tolist())),
                     "score": round(score, 4), "crop": str(written.relative_to(work))})
    return rows


def process_photo(path, relative, faces, work, args):
    """Crops one photo's faces (above --min_score; the first only without --all_faces), or copies a photo without
    one to no_face/; returns its rows of faces.csv."""
    faces = [face for face in faces if face.score >= args.min_score][:None if args.all_faces else 1]
    if faces:
        return crop_photo(decode_image(path), faces, relative, work, args)
    folder = work / NO_FACE_FOLDER / relative.parent
    folder.mkdir(parents=True, exist_ok=True)
    return [{"path": str(relative), "face": None, "crop": str(copy_new(path, folder).relative_to(work))}]


def crop_all(photos, source, work, done, args):
    """Processes the photos not `done` yet, DETECT_CHUNK at a time, journalling each photo once its files are in
    place; `done` gains their rows."""
    todo = [path for path in photos if str(path.relative_to(source)) not in done]
    if done:
        print(f"resuming: {len(done)} of {len(photos)} photos done, {len(todo)} to go")
    with open(work / JOURNAL, "a") as journal:
        for start in range(0, len(todo), DETECT_CHUNK):
            chunk = todo[start:start + DETECT_CHUNK]
            for path, faces in zip(chunk, detect_faces(chunk, args.device, args.min_face_size, args.detector)):
                relative = path.relative_to(source)
                done[str(relative)] = process_photo(path, relative, faces, work, args)
                journal.write(json.dumps({"photo": str(relative), "rows": done[str(relative)]}) + "\n")
                journal.flush()
            os.fsync(journal.fileno())


def finish(work, destination, table):
    """faces.csv into the work folder, which then becomes DST (an empty DST folder is replaced)."""
    write_csv(table, work / TABLE)
    try:
        os.rename(work, destination)
    except OSError as error:
        raise cli.UserError(f"cannot move the finished crops in {shown(work)} to {destination}: "
                            f"{write_problem(error, destination)}") from None
    for bookkeeping in (JOURNAL, SETTINGS):
        (destination / bookkeeping).unlink()


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    args.detector = detection_of(args).detector  # the default resolved: a resumed run keeps what it detected with
    source, destination = check_paths(args)
    photos = find_source_photos(source)
    work = work_folder(destination)
    settings = {"source": str(source.resolve()), **{flag: getattr(args, flag) for flag in SETTING_FLAGS}}
    done = start_or_resume(work, destination, settings, [str(path.relative_to(source)) for path in photos],
                           args.resume)
    try:
        crop_all(photos, source, work, done, args)
    except cli.UserError as error:
        raise cli.UserError(f"{error} ({len(done)} of {len(photos)} photos done are kept in {shown(work)}: rerun "
                            "with --resume to continue)") from None
    except OSError as error:
        raise cli.UserError(f"cannot write in {shown(work)}: {write_problem(error, work)} ({len(done)} of "
                            f"{len(photos)} photos done are kept: rerun with --resume to continue)") from None
    except KeyboardInterrupt:
        print(f"{len(done)} of {len(photos)} photos done are kept in {shown(work)}: rerun with --resume to continue",
              file=sys.stderr)
        raise
    rows = [row for path in photos for row in done[str(path.relative_to(source))]]
    table = pd.DataFrame(rows, columns=COLUMNS).astype({"face": "Int64"})
    finish(work, destination, table)
    without = sum(row["face"] is None for row in rows)
    print(f"wrote {len(rows) - without} face crops of {len(photos) - without} photos to {destination}; "
          f"{without} photos without a face copied to {destination / NO_FACE_FOLDER}; boxes in "
          f"{destination / TABLE}")


if __name__ == "__main__":
    sys.exit(cli.run(main))
