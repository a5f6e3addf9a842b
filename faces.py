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
import ctypes
import multiprocessing
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from facenet_pytorch import MTCNN
from PIL import Image
from tqdm import tqdm

import cli
from cli import UserError
from fileio import read_csv, write_csv
from photos import DECODING, decode_image

CROP_MODES = ("face", "box", "none")
BOX_COLUMNS = ("face_x1", "face_y1", "face_x2", "face_y2")  # fractions of the photo's width and height
SCORE_COLUMN = "face_score"
MIN_FACE_SIZE = 20  # pixels: MTCNN's own default, for the small faces of group photos; YuNet's time does not change
DETECTORS = ("mtcnn", "yunet", "yunet+mtcnn", "mtcnn+yunet")
# Measured on real faces with rendered masks (benchmark_faces.py, docs/face_crops.md): MTCNN misses one correctly
# masked face in eight, YuNet one in a hundred and fifty, and in a third of MTCNN's time.
DEFAULT_DETECTOR = "yunet+mtcnn"
CONFIDENT = 0.7  # the --min_score of crop_faces.py, stream.py and the server: YuNet scores real faces from 0.74
FACE_DETECTOR_COLUMN = "face_detector"  # the Detection signature of the boxes beside it
FACE_CHOICES = ("typical", "score", "largest", "central")
DEFAULT_FACE_CHOICE = "typical"
FOUND_RATE_GAP = 0.05  # faces found this much more often for one class than another: the crop tells them apart
MTCNN_THRESHOLDS = (0.6, 0.7, 0.7)  # facenet-pytorch's defaults
YUNET_MIN_SCORE = 0.35  # under yuface's 0.5: finds a fifth more faces under a mask and sunglasses (benchmark_faces.py)
YUNET_SIDE = 960  # yuface warns that larger photos degrade its detection
YUNET_BUFFER_BYTES = 0x9000  # libfacedetection's result buffer (its DETECT_BUFFER_SIZE)
YUFACE = "yuface==2023.5.1"  # the wheels whose libfacedetection these names are read from (requirements.txt)
YUNET_LIBRARIES = ("libfacedetection.so", "facedetection.dll")  # in the yuface wheels for Linux and for Windows
YUNET_SYMBOLS = ("_Z14facedetect_cnnPhS_iii", "?facedetect_cnn@@YAPEAHPEAE0HHH@Z")  # its C++ name by GCC, by MSVC
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


def facedetect_cnn(folder):
    """libfacedetection's `int *facedetect_cnn(uchar *result, uchar *bgr, int width, int height, int step)`, from the
    library the yuface wheel ships in `folder` (Linux's or Windows')."""
    for name in YUNET_LIBRARIES:
        if (folder / name).is_file():
            try:
                library = ctypes.CDLL(str(folder / name))
            except OSError as error:
                raise UserError(f"the yunet detector cannot load {folder / name} ({error}): reinstall yuface "
                                f"(pip install {YUFACE}), or use --detector mtcnn") from None
            function = next((library[symbol] for symbol in YUNET_SYMBOLS if hasattr(library, symbol)), None)
            if function is not None:
                function.restype = ctypes.POINTER(ctypes.c_int)
                function.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
                return function
    raise UserError(f"the yunet detector found no libfacedetection with facedetect_cnn in {folder}: reinstall yuface "
                    f"(pip install {YUFACE}), or use --detector mtcnn")


class YunetDetector:
    """YuNet, the CNN of libfacedetection (BSD), compiled into the yuface wheel: boxes and five landmarks, one photo
    at a time on the CPU. Photos larger than YUNET_SIDE are seen reduced to it, as yuface advises."""

    def __init__(self, min_face_size=MIN_FACE_SIZE, min_score=YUNET_MIN_SCORE):
        try:
            import yuface
        except ImportError:
            raise UserError("the yunet detector needs the yuface package (pip install yuface; wheels for Linux and "
                            "Windows): install it, or use --detector mtcnn") from None
        # libfacedetection's own entry point, facedetect_cnn(result buffer, BGR pixels, width, height, step), called
        # with a buffer Python owns: yuface's binding mallocs its 36 KB result buffer on every call and never frees
        # it (the server grew by 36 KB a photo); the results are the same
        self.facedetect_cnn = facedetect_cnn(Path(yuface.__file__).parent)
        self.min_face_size, self.min_score = min_face_size, min_score

    def detect(self, images):
        return [self.detect_one(image) for image in images]

    def detect_one(self, image):
        height, width = image.shape[:2]
        reduce = min(1.0, YUNET_SIDE / max(height, width))
        if reduce < 1:
            image = np.asarray(Image.fromarray(image).resize((round(width * reduce), round(height * reduce)),
                                                             Image.Resampling.BILINEAR))
        shown = np.array(image.shape[1::-1], dtype=float)
        found = self.yunet(np.ascontiguousarray(image[:, :, ::-1]))  # BGR
        found = found[found[:, 0] > self.min_score * 100]
        scores, boxes, landmarks = found[:, 0] / 100, found[:, 1:5].reshape(-1, 2, 2), found[:, 5:15]
        boxes[:, 1] += boxes[:, 0]  # (x, y, width, height) -> corners
        large = (boxes[:, 1] - boxes[:, 0]).min(axis=1) >= self.min_face_size * reduce
        return faces_of(boxes[large] / shown, scores[large], landmarks[large].reshape(-1, 5, 2) / shown)

    def yunet(self, bgr):
        """(N, 16) floats, a row per face: score (0-100), x, y, width, height, the five landmarks' x, y, and a pad."""
        height, width = bgr.shape[:2]
        buffer = np.empty(YUNET_BUFFER_BYTES, np.uint8)  # one per call: the server's batch threads share a detector
        results = self.facedetect_cnn(buffer.ctypes.data, bgr.ctypes.data, width, height, width * 3)
        count = results[0] if results else 0
        rows = buffer[ctypes.sizeof(ctypes.c_int):].view(np.int16)[:count * 16]  # after the count, 16 shorts a face
        return rows.reshape(count, 16).astype(float)


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


def yunet_installed():
    try:
        import yuface  # noqa: F401 -- wheels for Linux and Windows, Python <= 3.11
    except ImportError:
        return False
    return True


def default_detector():
    """DEFAULT_DETECTOR, or MTCNN alone (said once) where the yuface package cannot be installed."""
    if "yunet" in DEFAULT_DETECTOR and not yunet_installed():
        print("faces: yuface (YuNet) is not installed on this platform: detecting with mtcnn alone, which misses "
              "more masked faces (docs/face_crops.md)")
        return "mtcnn"
    return DEFAULT_DETECTOR


def create_detector(device="cpu", min_face_size=MIN_FACE_SIZE, name=DEFAULT_DETECTOR):
    """The face detector `name` (one of DETECTORS; `a+b`: a, then b where a found nothing) looking for faces of at
    least `min_face_size` pixels."""
    if name not in DETECTORS:
        raise UserError(f"--detector {name}: one of {', '.join(DETECTORS)}")
    makers = {"mtcnn": lambda: MtcnnDetector(device, min_face_size),
              "yunet": lambda: YunetDetector(min_face_size)}
    first, _, second = name.partition("+")
    return FallbackDetector(makers[first](), makers[second]()) if second else makers[first]()


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


class Detection(NamedTuple):
    """How the face of each photo is found: the detector, the smallest face it looks for, and which face is the
    photo's when it finds several (FACE_CHOICES). Kept beside the boxes it made as its signature."""
    detector: str = DEFAULT_DETECTOR
    min_face_size: int = MIN_FACE_SIZE
    face_choice: str = DEFAULT_FACE_CHOICE

    @property
    def signature(self):
        """The settings and the decoding that made a set of boxes: boxes of photos decoded otherwise (before EXIF
        orientation was applied) are fractions of another picture."""
        return f"{self.detector}:{self.min_face_size}:{self.face_choice}:{DECODING}"

    @classmethod
    def from_signature(cls, signature):
        """The settings of a signature; a set of boxes saved before signatures were kept has LEGACY_SIGNATURE."""
        parts = str(signature).split(":")
        if (len(parts) != 4 or parts[0] not in DETECTORS or not parts[1].isdigit() or int(parts[1]) < 1
                or parts[2] not in FACE_CHOICES):
            raise UserError(f"face detection {signature!r} is not detector:min_face_size:face_choice:decoding "
                            f"(detectors {', '.join(DETECTORS)}; choices {', '.join(FACE_CHOICES)})")
        return cls(parts[0], int(parts[1]), parts[2])


LEGACY_SIGNATURE = "mtcnn:40:score:stored"  # boxes and runs made before the choice of detectors


def boxes_detection(frame, source):
    """The signature of the detection that made a folds CSV's boxes: its FACE_DETECTOR_COLUMN, one value."""
    if FACE_DETECTOR_COLUMN not in frame.columns:
        return LEGACY_SIGNATURE
    signatures = frame[FACE_DETECTOR_COLUMN].dropna().unique()
    if len(signatures) > 1:
        raise UserError(f"{source} holds boxes of several detections ({', '.join(map(str, signatures))}): "
                        "rerun preprocess.py")
    return Detection.from_signature(signatures[0]).signature if len(signatures) else LEGACY_SIGNATURE


def run_detection(config):
    """The signature of the detection a run's training boxes came from (train.py records it): the eval photos'
    faces are found the same way."""
    return config.get("face_detection") or LEGACY_SIGNATURE


def add_detection_flags(group, face_choice=True, min_face_size=MIN_FACE_SIZE):
    """--detector, --min_face_size and (where one face per photo is kept) --face_choice, in a script's group."""
    cli.add_flag(group, "detector", default=None, choices=DETECTORS,
                 help=f"face detector: mtcnn, yunet, or one backed by the other where it finds no face (default: "
                      f"{DEFAULT_DETECTOR}; mtcnn where yuface is not installed)")
    cli.add_flag(group, "min_face_size", type=cli.positive_int, default=min_face_size,
                 help="the smallest face looked for, in pixels")
    if face_choice:
        cli.add_flag(group, "face_choice", default=DEFAULT_FACE_CHOICE, choices=FACE_CHOICES,
                     help="the face a photo is of when several are found: typical (nearest the set's usual place "
                          "and size), score (most confident), largest, central")


def detection_of(args):
    """The Detection of a script's --detector, --min_face_size and --face_choice."""
    return Detection(args.detector or default_detector(), args.min_face_size,
                     getattr(args, "face_choice", DEFAULT_FACE_CHOICE))


def usual_face(faces):
    """The median box (4,) of the most confident face of each photo that has one: where this set's faces sit."""
    boxes = [found[0].box for found in faces if found]
    return np.median(np.array(boxes), axis=0) if boxes else None


def choose_face(found, choice, usual=None):
    """The face a photo is of among `found` (its Face list, most confident first): `score` the most confident,
    `largest` the largest, `central` the nearest the photo's centre, `typical` the nearest the set's `usual` face
    in place and size (centre distance over the usual box's diagonal, plus the log of the area ratio)."""
    if not found:
        return None
    boxes = np.array([face.box for face in found])
    centres, areas = (boxes[:, :2] + boxes[:, 2:]) / 2, np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    if choice == "score" or (choice == "typical" and usual is None):
        return found[0]
    if choice == "largest":
        return found[int(np.argmax(areas))]
    if choice == "central":
        return found[int(np.argmin(np.linalg.norm(centres - 0.5, axis=1)))]
    usual_centre, usual_size = (usual[:2] + usual[2:]) / 2, usual[2:] - usual[:2]
    cost = (np.linalg.norm(centres - usual_centre, axis=1) / np.linalg.norm(usual_size)
            + np.abs(np.log(np.maximum(areas, 1e-9) / np.prod(usual_size))))
    return found[int(np.argmin(cost))]


def box_frame(faces, choice=DEFAULT_FACE_CHOICE):
    """The face each photo is of (choose_face) as a frame of BOX_COLUMNS and SCORE_COLUMN, NaN where none was
    found."""
    usual = usual_face(faces) if choice == "typical" else None
    chosen = [choose_face(found, choice, usual) for found in faces]
    rows = [(*face.box, face.score) if face else (np.nan,) * 5 for face in chosen]
    return pd.DataFrame(rows, columns=[*BOX_COLUMNS, SCORE_COLUMN])


def find_boxes(paths, detection=Detection(), device="cpu"):
    """The box of each photo's face under `detection` (box_frame of detect_faces)."""
    faces = detect_faces(paths, device, detection.min_face_size, detection.detector)
    return box_frame(faces, detection.face_choice)


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


def found_rates(found, labels):
    """The share of photos with a face for each value of each labelling: `found` a bool per photo, `labels` a frame
    of one column per task (mask, gender, age; or class) holding each photo's value. A frame of task, value, photos,
    found, rate."""
    rows = [{"task": task, "value": value, "photos": int(len(rows)), "found": int(rows.sum()),
             "rate": float(rows.mean())}
            for task in labels.columns for value, rows in pd.Series(found).groupby(labels[task].to_numpy(), sort=True)]
    return pd.DataFrame(rows, columns=["task", "value", "photos", "found", "rate"])


def report_found_rates(found, labels, path):
    """Prints the face-found rate of every task value (found_rates), writes them to `path`, and warns where one
    task's rates lie more than FOUND_RATE_GAP apart: the crop then differs by class, a shortcut a model can learn
    here that fails wherever the detector behaves otherwise."""
    rates = found_rates(found, labels)
    write_csv(rates, path)
    for task, rows in rates.groupby("task", sort=False):
        shown = ", ".join(f"{value} {rate:.0%}" for value, rate in zip(rows["value"], rows["rate"]))
        print(f"faces found by {task}: {shown}")
        if len(rows) > 1 and rows["rate"].max() - rows["rate"].min() > FOUND_RATE_GAP:
            print(f"warning: faces are found more often for some {task} values than others ({shown}): their crops "
                  "differ by class, a shortcut a model can learn. Try another --detector or a smaller "
                  "--min_face_size (benchmark_faces.py measures them)")
    return rates


def kept_boxes(paths, names, store, device="cpu", detection=Detection()):
    """The face box of each photo at `paths` under `detection` (find_boxes), detected only where `store`, a CSV
    of earlier detections, holds no row for the photo as it is now (its name in `names`, its bytes and mtime) and
    the same detection (its signature): the first call detects them all, later ones reuse them, a changed or new
    photo, or another detection, is detected again. `store` is rewritten with the result, the photos without a face
    are listed in no_face.csv beside it, and the count printed."""
    stats = [os.stat(path) for path in paths]
    key = ["path", "bytes", "mtime_ns", FACE_DETECTOR_COLUMN]
    current = pd.DataFrame({"path": list(names), "bytes": [str(stat.st_size) for stat in stats],
                            "mtime_ns": [str(stat.st_mtime_ns) for stat in stats],  # as text, as the store is read
                            FACE_DETECTOR_COLUMN: detection.signature})
    try:
        kept = read_csv(store, dtype=str) if store.is_file() else None
    except UserError:
        kept = None  # an unreadable store is detected anew
    columns = [*key, *BOX_COLUMNS, SCORE_COLUMN]
    if kept is not None:  # an edited store, or a link elsewhere: its boxes are data from outside
        kept = check_boxes(kept, store, "remove it to detect the faces again")
    if kept is None or not set(columns) <= set(kept.columns):
        kept = pd.DataFrame(columns=columns)
    merged = current.merge(kept[columns].drop_duplicates(key), how="left", on=key, indicator=True)
    stale = (merged.pop("_merge") == "left_only").to_numpy()
    if stale.any():
        if len(kept):
            print(f"faces: detecting the {stale.sum()} photos that {store} does not hold as they are now "
                  f"(detection {detection.signature})")
        detected = find_boxes([path for path, new in zip(paths, stale) if new], detection, device)
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
