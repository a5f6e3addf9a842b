"""Where the face is in each photo, and which pixels of the photo the model sees.

Not a script: preprocess.py, inference.py, crop_faces.py and the datasets call it.

Detection is facenet-pytorch's MTCNN, whose three small networks ship inside the wheel (it works offline). On a GPU
it sees batches of same-size photos; on a CPU the photos are spread over the cores, one detector per process.
A photo's face is its most confident detection. Boxes are kept as fractions of the photo's width and height
(x1, y1, x2, y2): the faces of one data set then have a median, the fallback of the photos where none was found,
and `--crop box` names the same region of every photo whatever its size.

The crop, one definition for training, validation, inference and TTA: the face box grown by `margin` times its
width and height on each side is the region the model sees (crop_regions); photos.crop_box_pixels fits it to the
output's aspect ratio and to the photo, and photos.decode_image cuts that box out and resizes it.
"""
import contextlib
import multiprocessing
import os
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from facenet_pytorch import MTCNN
from tqdm import tqdm

from cli import UserError
from fileio import read_csv, write_csv
from photos import decode_image

CROP_MODES = ("face", "box", "none")
BOX_COLUMNS = ("face_x1", "face_y1", "face_x2", "face_y2")  # fractions of the photo's width and height
SCORE_COLUMN = "face_score"
MIN_FACE_SIZE = 40  # pixels: the same faces as MTCNN's default of 20 on these photos, at about half the CPU time
DETECT_CHUNK = 8  # photos per task on the CPU: keeps the progress bar moving
GPU_BATCH = 32
WHOLE_PHOTO = (0.0, 0.0, 1.0, 1.0)


class Face(NamedTuple):
    """One face found in a photo, in fractions of the photo's width and height."""
    box: tuple  # (x1, y1, x2, y2)
    score: float  # the detector's confidence
    landmarks: np.ndarray  # (5, 2) x, y of the left eye, right eye, nose tip, left and right mouth corners


def create_detector(device="cpu", min_face_size=MIN_FACE_SIZE):
    """MTCNN returning every face it finds; this module orders them by confidence."""
    return MTCNN(min_face_size=min_face_size, keep_all=True, select_largest=False, device=device)


def faces_in(detector, images):
    """The faces of each uint8 (H, W, 3) array of `images` (all of one size): a list of Face per image, most
    confident first."""
    boxes, scores, landmarks = detector.detect(images if len(images) > 1 else images[0], landmarks=True)
    if len(images) == 1:
        boxes, scores, landmarks = [boxes], [scores], [landmarks]
    height, width = images[0].shape[:2]
    scale = np.array([width, height], dtype=float)
    found = []
    for photo_boxes, photo_scores, photo_landmarks in zip(boxes, scores, landmarks):
        if photo_boxes is None:
            found.append([])
            continue
        # detect() hands back object arrays: cast before any arithmetic
        photo_boxes = np.asarray(photo_boxes, dtype=float).reshape(-1, 2, 2) / scale
        photo_scores = np.asarray(photo_scores, dtype=float).reshape(-1)
        photo_landmarks = np.asarray(photo_landmarks, dtype=float).reshape(-1, 5, 2) / scale
        found.append([Face(tuple(np.clip(photo_boxes[k].reshape(4), 0, 1)), float(photo_scores[k]),
                           photo_landmarks[k]) for k in np.argsort(-photo_scores)])
    return found


_worker_detector = None


def _start_worker(min_face_size, pooled=True):
    global _worker_detector
    if pooled:
        torch.set_num_threads(1)  # one core per process: the processes share them out
    _worker_detector = create_detector("cpu", min_face_size)


def _detect_chunk(paths):
    return [faces_in(_worker_detector, [decode_image(path)])[0] for path in paths]


def detect_on_cpu(paths, min_face_size, progress):
    chunks = [paths[start:start + DETECT_CHUNK] for start in range(0, len(paths), DETECT_CHUNK)]
    processes = min(os.cpu_count() or 1, len(chunks))
    if processes <= 1:
        _start_worker(min_face_size, pooled=False)
        pool = contextlib.nullcontext()
    else:
        pool = multiprocessing.Pool(processes, _start_worker, (min_face_size,))
    found = []
    with pool:
        for chunk_faces in (pool.imap if processes > 1 else map)(_detect_chunk, chunks):
            found.extend(chunk_faces)
            progress.update(len(chunk_faces))
    return found


def detect_on_gpu(paths, device, min_face_size, progress):
    detector, found, batch = create_detector(device, min_face_size), [], []

    def flush():
        found.extend(faces_in(detector, batch))
        progress.update(len(batch))
        batch.clear()

    for path in paths:
        image = decode_image(path)
        if batch and (image.shape != batch[0].shape or len(batch) == GPU_BATCH):
            flush()
        batch.append(image)
    if batch:
        flush()
    return found


def detect_faces(paths, device="cpu", min_face_size=MIN_FACE_SIZE):
    """Every face of every photo at `paths`: per photo a list of Face, most confident first. With a progress bar; a photo that does not decode stops with the one-line error."""
    paths = [str(path) for path in paths]
    device = torch.device(device)
    with tqdm(total=len(paths), desc="detecting faces", unit="photo") as progress:
        if device.type == "cuda":
            return detect_on_gpu(paths, device, min_face_size, progress)
        return detect_on_cpu(paths, min_face_size, progress)


def box_frame(faces):
    """The most confident face of each photo as a frame of BOX_COLUMNS and SCORE_COLUMN, NaN where none was found."""
    rows = [(*found[0].box, found[0].score) if found else (np.nan,) * 5 for found in faces]
    return pd.DataFrame(rows, columns=[*BOX_COLUMNS, SCORE_COLUMN])


def check_boxes(frame, source, remedy="rerun preprocess.py"):
    """The frame with its face boxes (BOX_COLUMNS, and SCORE_COLUMN) as floats, checked as data from outside: each
    row's box empty (no face) or four finite fractions with 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1, its score empty
    or in [0, 1]. Anything else is refused in one line naming `source`, the row (as the CSV's line) and the column,
    and what to do (`remedy`)."""
    present = [column for column in BOX_COLUMNS if column in frame.columns]
    if not present:
        return frame
    if len(present) < len(BOX_COLUMNS):
        raise UserError(f"{source} has the face column {present[0]} but not "
                        f"{next(column for column in BOX_COLUMNS if column not in present)}: {remedy}")
    frame = frame.copy()
    for column in [*BOX_COLUMNS, *([SCORE_COLUMN] if SCORE_COLUMN in frame.columns else [])]:
        values = pd.to_numeric(frame[column], errors="coerce").astype(float)  # text that is no number: NaN
        bad = (frame[column].notna() & values.isna()) | (values < 0) | (values > 1)  # inf is over 1 or under 0
        if bad.any():
            row = int(bad.to_numpy().argmax())
            raise UserError(f"{source}: row {row + 2}, column {column} is {frame[column].iloc[row]!r}, not a "
                            f"fraction of the photo from 0 to 1 (or empty): {remedy}")
        frame[column] = values
    boxes = frame[list(BOX_COLUMNS)].to_numpy()
    missing = np.isnan(boxes)
    partial = missing.any(axis=1) & ~missing.all(axis=1)
    if partial.any():
        row = int(partial.argmax())
        raise UserError(f"{source}: row {row + 2}, column {BOX_COLUMNS[int(missing[row].argmax())]} is empty while "
                        f"the rest of the face box is not (a box has four numbers or none): {remedy}")
    unordered = ~missing.any(axis=1) & ((boxes[:, 0] >= boxes[:, 2]) | (boxes[:, 1] >= boxes[:, 3]))
    if unordered.any():
        row = int(unordered.argmax())
        x1, y1, x2, y2 = boxes[row]
        column, value, start = (("face_x2", x2, x1) if x1 >= x2 else ("face_y2", y2, y1))
        raise UserError(f"{source}: row {row + 2}, column {column} is {value:g}, not over the box's start {start:g}: "
                        f"a face box has x1 < x2 and y1 < y2: {remedy}")
    return frame


def report_detection(frame, names, missing_path):
    """Writes the photos without a face to `missing_path` (one `path` per row) and prints how many had one."""
    missing = frame[SCORE_COLUMN].isna().to_numpy()
    write_csv(pd.DataFrame({"path": np.asarray(names)[missing]}), missing_path)
    print(f"faces: found in {len(frame) - missing.sum()} of {len(frame)} photos; "
          f"the {missing.sum()} without one are listed in {missing_path}")


def kept_boxes(paths, names, store, device="cpu"):
    """The most confident face of each photo at `paths` (as box_frame gives it), detected only where `store`, a CSV
    of earlier detections, holds no row for the photo as it is now (its name in `names`, its bytes and mtime):
    the first call detects them all, later ones reuse them, a changed or new photo is detected again. `store` is
    rewritten with the result, the photos without a face are listed in no_face.csv beside it, and the count
    printed."""
    stats = [os.stat(path) for path in paths]
    current = pd.DataFrame({"path": list(names), "bytes": [str(stat.st_size) for stat in stats],
                            "mtime_ns": [str(stat.st_mtime_ns) for stat in stats]})  # as text, as the store is read
    try:
        kept = read_csv(store, dtype=str) if store.is_file() else None
    except UserError:
        kept = None  # an unreadable store is detected anew
    columns = [*current.columns, *BOX_COLUMNS, SCORE_COLUMN]
    if kept is None or not set(columns) <= set(kept.columns):
        kept = pd.DataFrame(columns=columns)
    kept = check_boxes(kept, store, "remove it to detect the faces again")  # an edited store, or a link elsewhere
    merged = current.merge(kept[columns].drop_duplicates(["path", "bytes", "mtime_ns"]), how="left",
                           on=["path", "bytes", "mtime_ns"], indicator=True)
    stale = (merged.pop("_merge") == "left_only").to_numpy()
    if stale.any():
        if len(kept):
            print(f"faces: detecting the {stale.sum()} photos that {store} does not hold as they are now")
        detected = box_frame(detect_faces([path for path, new in zip(paths, stale) if new], device))
        merged.loc[stale, [*BOX_COLUMNS, SCORE_COLUMN]] = detected.to_numpy()
        write_csv(merged, store)
    boxes = merged[[*BOX_COLUMNS, SCORE_COLUMN]].astype(float)
    report_detection(boxes, names, store.parent / "no_face.csv")
    return boxes


def grow(boxes, margin):
    """Boxes (N, 4) grown by `margin` times their width and height on each side."""
    boxes = np.asarray(boxes, dtype=float)
    pad = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1) * margin
    return boxes + pad * np.array([-1, -1, 1, 1])


def fallback_face(boxes):
    """The median face box of the photos of `boxes` (a frame of BOX_COLUMNS) with a face; None if none has one."""
    found = boxes[list(BOX_COLUMNS)].dropna()
    return None if found.empty else found.median().to_numpy()


def crop_regions(boxes, crop="face", margin=0.4, crop_box=None, fallback=None):
    """The region of each photo that the model sees, (N, 4) fractions, one per row of the frame `boxes`, or None
    for the whole photo squashed (`none`). `face`: the photo's face box (BOX_COLUMNS) grown by `margin`; a photo
    without one gets `fallback` (default: the median face of `boxes`, as the faces of one data set sit at about
    the same place) grown alike, and the whole photo when the set has no face at all. `box`: `crop_box` for every
    photo."""
    if crop == "none":
        return None
    if crop == "box":
        return np.tile(np.asarray(crop_box, dtype=float), (len(boxes), 1))
    if not set(BOX_COLUMNS) <= set(boxes.columns):
        raise UserError("no face boxes: run preprocess.py without --faces off, or train with --crop box or none")
    fallback = fallback_face(boxes) if fallback is None else fallback
    faces = np.array(boxes[list(BOX_COLUMNS)], dtype=float)
    missing = np.isnan(faces).any(axis=1)
    faces[missing] = fallback if fallback is not None else WHOLE_PHOTO
    regions = grow(faces, margin)
    if fallback is None:
        regions[missing] = WHOLE_PHOTO
    return regions.round(6)  # what the cache's manifest records, so that cached and fresh decodes agree


def check_crop_box(values):
    """--crop_box x1 y1 x2 y2: fractions with x1 < x2 and y1 < y2."""
    x1, y1, x2, y2 = values
    if not (0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1):
        raise UserError(f"--crop_box {x1} {y1} {x2} {y2}: fractions of the photo with 0 <= x1 < x2 <= 1 and "
                        "0 <= y1 < y2 <= 1")
