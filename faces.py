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
from PIL import Image
from tqdm import tqdm

from cli import UserError
from fileio import read_csv, write_csv
from photos import DECODING, decode_image

CROP_MODES = ("face", "box", "none")
BOX_COLUMNS = ("face_x1", "face_y1", "face_x2", "face_y2")  # fractions of the photo's width and height
SCORE_COLUMN = "face_score"
MIN_FACE_SIZE = 40  # pixels: the same faces as MTCNN's default of 20 on these photos, at about half the CPU time
DETECTORS = ("mtcnn", "yunet", "yunet+mtcnn", "mtcnn+yunet")
DEFAULT_DETECTOR = "mtcnn"
FACE_DETECTOR_COLUMN = "face_detector"  # the detector_signature of the boxes beside it
MTCNN_THRESHOLDS = (0.6, 0.7, 0.7)  # facenet-pytorch's defaults
YUNET_MIN_SCORE = 0.5  # yuface's default
YUNET_SIDE = 960  # yuface warns that larger photos degrade its detection
DETECT_CHUNK = 8  # photos per task on the CPU: keeps the progress bar moving
GPU_BATCH = 32
WHOLE_PHOTO = (0.0, 0.0, 1.0, 1.0)


class Face(NamedTuple):
    """One face found in a photo, in fractions of the photo's width and height."""
    box: tuple  # (x1, y1, x2, y2)
    score: float  # the detector's confidence
    landmarks: np.ndarray  # (5, 2) x, y of the left eye, right eye, nose tip, left and right mouth corners


class MtcnnDetector:
    """facenet-pytorch's MTCNN, whose three small networks ship inside its wheel: boxes and five landmarks, batches
    of same-size photos at once (on a GPU too). `thresholds` are its three stages' minimum confidences."""

    def __init__(self, device="cpu", min_face_size=MIN_FACE_SIZE, thresholds=MTCNN_THRESHOLDS):
        self.min_face_size = min_face_size
        self.network = MTCNN(min_face_size=min_face_size, thresholds=list(thresholds), keep_all=True,
                             select_largest=False, device=device)

    def detect(self, images):
        if min(images[0].shape[:2]) < self.min_face_size:  # smaller than the smallest face looked for: none
            return [[] for _ in images]
        boxes, scores, landmarks = self.network.detect(images if len(images) > 1 else images[0], landmarks=True)
        if len(images) == 1:
            boxes, scores, landmarks = [boxes], [scores], [landmarks]
        scale = np.array(images[0].shape[1::-1], dtype=float)  # (width, height)
        found = []
        for photo_boxes, photo_scores, photo_landmarks in zip(boxes, scores, landmarks):
            if photo_boxes is None:
                found.append([])
                continue
            # detect() hands back object arrays: cast before any arithmetic
            found.append(faces_of(np.asarray(photo_boxes, dtype=float).reshape(-1, 2, 2) / scale,
                                  np.asarray(photo_scores, dtype=float).reshape(-1),
                                  np.asarray(photo_landmarks, dtype=float).reshape(-1, 5, 2) / scale))
        return found


class YunetDetector:
    """YuNet, the CNN of libfacedetection (BSD), compiled into the yuface wheel: boxes and five landmarks, one photo
    at a time on the CPU. Photos larger than YUNET_SIDE are seen reduced to it, as yuface advises."""

    def __init__(self, min_face_size=MIN_FACE_SIZE, min_score=YUNET_MIN_SCORE):
        try:
            import yuface
        except ImportError:
            raise UserError("the yunet detector needs the yuface package (pip install yuface; wheels for Linux and "
                            "Windows): install it, or use --detector mtcnn") from None
        self.yuface, self.min_face_size, self.min_score = yuface, min_face_size, min_score

    def detect(self, images):
        return [self.detect_one(image) for image in images]

    def detect_one(self, image):
        height, width = image.shape[:2]
        reduce = min(1.0, YUNET_SIDE / max(height, width))
        if reduce < 1:
            image = np.asarray(Image.fromarray(image).resize((round(width * reduce), round(height * reduce)),
                                                             Image.Resampling.BILINEAR))
        shown = np.array(image.shape[1::-1], dtype=float)
        scores, boxes, landmarks = self.yuface.detect(np.ascontiguousarray(image[:, :, ::-1]), self.min_score)  # BGR
        boxes, scores = boxes.astype(float).reshape(-1, 2, 2), scores.astype(float) / 100
        boxes[:, 1] += boxes[:, 0]  # (x, y, width, height) -> corners
        large = (boxes[:, 1] - boxes[:, 0]).min(axis=1) >= self.min_face_size * reduce
        return faces_of(boxes[large] / shown, scores[large], landmarks[large].astype(float).reshape(-1, 5, 2) / shown)


class FallbackDetector:
    """One detector, then another on the photos where the first found no face."""

    def __init__(self, first, second):
        self.first, self.second = first, second

    def detect(self, images):
        found = self.first.detect(images)
        missed = [k for k, faces in enumerate(found) if not faces]
        for k, faces in zip(missed, self.second.detect([images[k] for k in missed]) if missed else []):
            found[k] = faces
        return found


def faces_of(boxes, scores, landmarks):
    """Face records, most confident first, of (N, 2, 2) corner boxes, (N,) scores and (N, 5, 2) landmarks in
    fractions of the photo."""
    return [Face(tuple(np.clip(boxes[k].reshape(4), 0, 1)), float(scores[k]), landmarks[k])
            for k in np.argsort(-scores, kind="stable")]


def create_detector(device="cpu", min_face_size=MIN_FACE_SIZE, name=DEFAULT_DETECTOR):
    """The face detector `name` (one of DETECTORS; `a+b`: a, then b where a found nothing) looking for faces of at
    least `min_face_size` pixels."""
    if name not in DETECTORS:
        raise UserError(f"--detector {name}: one of {', '.join(DETECTORS)}")
    makers = {"mtcnn": lambda: MtcnnDetector(device, min_face_size),
              "yunet": lambda: YunetDetector(min_face_size)}
    first, _, second = name.partition("+")
    return FallbackDetector(makers[first](), makers[second]()) if second else makers[first]()


def detector_signature(name=DEFAULT_DETECTOR, min_face_size=MIN_FACE_SIZE):
    """What made a set of boxes, kept beside them (FACE_DETECTOR_COLUMN): boxes of another signature are detected
    again. It names the decoding too: boxes of photos decoded otherwise are fractions of another picture."""
    return f"{name}:{min_face_size}:{DECODING}"


def faces_in(detector, images):
    """The faces of each uint8 (H, W, 3) array of `images` (all of one size): a list of Face per image, most
    confident first."""
    return detector.detect(images)


_worker_detector = None


def _start_worker(min_face_size, name, pooled=True):
    global _worker_detector
    if pooled:
        torch.set_num_threads(1)  # one core per process: the processes share them out
    _worker_detector = create_detector("cpu", min_face_size, name)


def _detect_chunk(paths):
    return [faces_in(_worker_detector, [decode_image(path)])[0] for path in paths]


def detect_on_cpu(paths, min_face_size, name, progress):
    chunks = [paths[start:start + DETECT_CHUNK] for start in range(0, len(paths), DETECT_CHUNK)]
    processes = min(os.cpu_count() or 1, len(chunks))
    if processes <= 1:
        _start_worker(min_face_size, name, pooled=False)
        pool = contextlib.nullcontext()
    else:
        pool = multiprocessing.Pool(processes, _start_worker, (min_face_size, name))
    found = []
    with pool:
        for chunk_faces in (pool.imap if processes > 1 else map)(_detect_chunk, chunks):
            found.extend(chunk_faces)
            progress.update(len(chunk_faces))
    return found


def detect_on_gpu(paths, device, min_face_size, name, progress):
    detector, found, batch = create_detector(device, min_face_size, name), [], []

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


def detect_faces(paths, device="cpu", min_face_size=MIN_FACE_SIZE, name=DEFAULT_DETECTOR):
    """Every face of every photo at `paths` found by the detector `name`: per photo a list of Face, most confident
    first. With a progress bar; a photo that does not decode stops with the one-line error. MTCNN batches photos on
    a GPU; otherwise the photos are spread over the CPU's cores, one detector per process."""
    paths = [str(path) for path in paths]
    device = torch.device(device)
    with tqdm(total=len(paths), desc=f"detecting faces ({name})", unit="photo") as progress:
        if device.type == "cuda" and name.startswith("mtcnn"):
            return detect_on_gpu(paths, device, min_face_size, name, progress)
        return detect_on_cpu(paths, min_face_size, name, progress)


def box_frame(faces):
    """The most confident face of each photo as a frame of BOX_COLUMNS and SCORE_COLUMN, NaN where none was found."""
    rows = [(*found[0].box, found[0].score) if found else (np.nan,) * 5 for found in faces]
    return pd.DataFrame(rows, columns=[*BOX_COLUMNS, SCORE_COLUMN])


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
    current = pd.DataFrame({"path": list(names), "bytes": [stat.st_size for stat in stats],
                            "mtime_ns": [stat.st_mtime_ns for stat in stats]})
    try:
        kept = read_csv(store, dtype={"path": str}) if store.is_file() else None
    except UserError:
        kept = None  # an unreadable store is detected anew
    columns = [*current.columns, *BOX_COLUMNS, SCORE_COLUMN]
    if kept is None or not set(columns) <= set(kept.columns):
        kept = pd.DataFrame(columns=columns)
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
