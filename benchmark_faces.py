"""Measures the face detectors on masked faces: how often each finds the person's face, per class, where its box
sits, and its CPU time.

    python real_assets.py && python mask_faces.py ~/.cache/maskcls/people data/real3 --layout folders \
        --classes correct,incorrect,none --eval_people 9
    python benchmark_faces.py data/real3                      # every detector of faces.py, the table printed
    python benchmark_faces.py data/real3 --detectors mtcnn:40 yunet:20 --group_photos ~/.cache/maskcls/people

DATA is a set mask_faces.py rendered (its renders.csv says where each photo's face is: the box of the face in the
unmasked source photo, mapped into the rendered photo). For every detector (`name:min_face_size`, the names of
faces.DETECTORS) each photo is detected on one CPU thread, its face chosen as preprocess.py chooses it
(`--face_choice`), and the photo counts as found when that box overlaps the true face by IoU >= --min_iou. The
table gives the found rate of every class, the largest gap between two classes (a gap is a label leak: the crop
differs by class), the mean IoU of the boxes found, and milliseconds per photo. `--group_photos DIR` also counts
the faces each detector finds in the photos of a folder (group photos, crowds) at --min_score.
"""
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

import cli
from faces import BOX_COLUMNS, DETECTORS, FACE_CHOICES, DEFAULT_FACE_CHOICE, box_frame, create_detector, faces_in
from fileio import read_csv, write_csv
from photos import decode_image, find_photos

DEFAULT_VARIANTS = ["mtcnn:40", "mtcnn:20", "yunet:20", "yunet+mtcnn:20", "mtcnn+yunet:20"]
TRUE_COLUMNS = ["output_face_x1", "output_face_y1", "output_face_x2", "output_face_y2"]  # renders.csv


def get_args_parser():
    parser = cli.new_parser("Measure the face detectors on a rendered set of masked faces.")
    parser.add_argument("data_dir", metavar="DATA", help="a set mask_faces.py wrote (renders.csv, class folders)")
    cli.add_flag(parser, "detectors", nargs="+", default=DEFAULT_VARIANTS, metavar="NAME:MIN_FACE_SIZE",
                 help=f"detectors to measure, each {', '.join(DETECTORS)} with its smallest face in pixels")
    cli.add_flag(parser, "face_choice", default=DEFAULT_FACE_CHOICE, choices=FACE_CHOICES,
                 help="the face kept when several are found, as preprocess.py keeps it")
    cli.add_flag(parser, "min_iou", type=cli.fraction, default=0.5, help="overlap with the true face that counts")
    cli.add_flag(parser, "group_photos", default=None, metavar="DIR",
                 help="also count the faces found in each photo of this folder")
    cli.add_flag(parser, "min_score", type=cli.fraction, default=0.9, help="--group_photos: faces counted")
    cli.add_flag(parser, "output", default=None, help="CSV of the table (default: benchmark_faces.csv in DATA)")
    return parser


def parse_variant(text):
    name, _, size = text.partition(":")
    if name not in DETECTORS or not size.isdigit() or int(size) < 1:
        raise cli.UserError(f"--detectors {text}: NAME:MIN_FACE_SIZE with NAME one of {', '.join(DETECTORS)}")
    return name, int(size)


def true_boxes(data_dir):
    """renders.csv's photos with the box of each one's face in the rendered photo (fractions), as mask_faces.py
    placed it from the unmasked source photo."""
    if not (data_dir / "renders.csv").is_file():
        raise cli.UserError(f"{data_dir} has no renders.csv: pass a set mask_faces.py rendered")
    renders = read_csv(data_dir / "renders.csv", dtype={"path": str})
    if not set(TRUE_COLUMNS) <= set(renders.columns):
        raise cli.UserError(f"{data_dir / 'renders.csv'} has no {', '.join(TRUE_COLUMNS)}: render DATA with "
                            "mask_faces.py")
    return renders


def iou(first, second):
    """Intersection over union of two (N, 4) arrays of boxes, row by row; 0 where either is missing."""
    low, high = np.maximum(first[:, :2], second[:, :2]), np.minimum(first[:, 2:], second[:, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=1)
    union = np.prod(first[:, 2:] - first[:, :2], axis=1) + np.prod(second[:, 2:] - second[:, :2], axis=1) - inter
    return np.nan_to_num(inter / union)


def measure(name, min_face_size, images, truth, choice, min_iou):
    """One detector's row: found rate per class, the largest gap, mean IoU of the found boxes, ms per photo."""
    detector = create_detector("cpu", min_face_size, name)
    faces_in(detector, images[:1])  # warm up
    started = time.perf_counter()
    faces = [faces_in(detector, [image])[0] for image in tqdm(images, desc=f"{name}:{min_face_size}", leave=False)]
    milliseconds = (time.perf_counter() - started) / len(images) * 1000
    overlap = iou(box_frame(faces, choice)[list(BOX_COLUMNS)].to_numpy(float), truth[TRUE_COLUMNS].to_numpy(float))
    found = pd.Series(overlap >= min_iou, index=truth.index)
    rates = found.groupby(truth["class"]).mean()
    return {"detector": f"{name}:{min_face_size}", **{f"found {cls}": rate for cls, rate in rates.items()},
            "found all": found.mean(), "gap": rates.max() - rates.min(),
            "mean IoU found": overlap[found.to_numpy()].mean() if found.any() else np.nan, "ms/photo": milliseconds}


def markdown(frame, index=False):
    """A frame as a markdown table, numbers to three decimals."""
    frame = frame.reset_index() if index else frame
    cells = [[f"{value:.3f}" if isinstance(value, float) else str(value) for value in row] for row in frame.values]
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def count_group_faces(variants, folder, min_score):
    """Faces found at `min_score` in each photo of `folder`, per detector: a frame, photos as rows."""
    photos = find_photos(folder)
    images = [decode_image(path) for path in photos]
    counts = {}
    for name, size in variants:
        detector = create_detector("cpu", size, name)
        counts[f"{name}:{size}"] = [sum(face.score >= min_score for face in faces_in(detector, [image])[0])
                                    for image in images]
    return pd.DataFrame(counts, index=[path.name for path in photos])


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    data_dir = Path(args.data_dir)
    variants = [parse_variant(text) for text in args.detectors]
    truth = true_boxes(data_dir)
    images = [decode_image(data_dir / path) for path in tqdm(truth["path"], desc="decoding", leave=False)]
    with cli.torch_threads(1):  # milliseconds of one core, whatever the machine
        table = pd.DataFrame([measure(name, size, images, truth, args.face_choice, args.min_iou)
                              for name, size in variants])
    write_csv(table, Path(args.output or data_dir / "benchmark_faces.csv"))
    print(f"{len(images)} photos of {truth['person'].nunique()} people; found: the {args.face_choice} face overlaps "
          f"the true face by IoU >= {args.min_iou}")
    print(markdown(table))
    if args.group_photos:
        print(markdown(count_group_faces(variants, Path(args.group_photos), args.min_score), index=True))


if __name__ == "__main__":
    sys.exit(cli.run(main))
