"""Writes the face crops of a folder tree of photos into another, mirroring its folders.

    python crop_faces.py photos/ crops/                         # the most confident face of each photo
    python crop_faces.py photos/ crops/ --all_faces --margin 0.2 --size 224 224
    python crop_faces.py data/train/images data/train_faces --min_score 0.95

Every photo under SRC (.jpg, .jpeg, .png; hidden files ignored) goes through the face detector (faces.py, MTCNN);
its face, grown by --margin times the box on each side and kept inside the photo, is written as
DST/<the photo's path>, or with --all_faces every face as <stem>_face0.jpg, <stem>_face1.jpg, ... (the photo's own
extension and format)
(most confident first). Photos without a face (or none above --min_score) are copied to DST/no_face/<the photo's
path>, so that nothing is lost. DST/faces.csv lists every photo with its faces: path, face, box in pixels
(x1, y1, x2, y2), score and the crop written. This is the "detect, crop and segregate into folders" step that turns
any folder of photos into a face-crop data set.
"""
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

import cli
from faces import MIN_FACE_SIZE, detect_faces, grow
from fileio import atomic_path, write_csv
from photos import crop_box_pixels, decode_image, find_photos

NO_FACE_FOLDER = "no_face"


def get_args_parser():
    parser = cli.new_parser("Write the face crops of a folder tree of photos, mirroring its folders.")
    paths = parser.add_argument_group("paths")
    paths.add_argument("source", metavar="SRC", help="folder of photos (any depth)")
    paths.add_argument("destination", metavar="DST", help="new or empty folder for the crops")
    crop = parser.add_argument_group("crop")
    cli.add_flag(crop, "all_faces", action="store_true", help="write every face, not only the most confident")
    cli.add_flag(crop, "margin", type=cli.non_negative_float, default=0.4,
                 help="margin added on each side, as a fraction of the face box's width and height")
    cli.add_flag(crop, "size", type=cli.positive_int, nargs=2, default=None, metavar=("H", "W"),
                 help="resize every crop to this (the crop takes this aspect ratio); default: as cropped")
    cli.add_flag(crop, "min_score", type=cli.fraction, default=0.0, help="ignore faces detected with a lower confidence")
    detector = parser.add_argument_group("detector")
    cli.add_flag(detector, "min_face_size", type=cli.positive_int, default=MIN_FACE_SIZE, help="smallest face looked for, pixels")
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
    if not 0 <= args.min_score <= 1 or args.margin < 0:
        raise cli.UserError("--min_score is a confidence in 0-1 and --margin a fraction of 0 or more")
    return source, destination


FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}


def save_crop(image, box, size, path):
    """The pixel `box` of the uint8 `image`, resized to `size` (H, W) if given, at `path` in its extension's format."""
    crop = Image.fromarray(image).crop(tuple(round(side) for side in box))
    if size is not None:
        crop = crop.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    with atomic_path(path) as temporary:
        crop.save(temporary, format=FORMATS[path.suffix.lower()], quality=95)


def crop_photo(image, faces, relative, destination, args):
    """Writes the crops of one photo's faces; returns its rows of faces.csv."""
    height, width = image.shape[:2]
    rows = []
    for number, (box, score, _) in enumerate(faces):
        region = grow(np.array([box]), args.margin)[0]
        out_size = args.size or ((region[3] - region[1]) * height, (region[2] - region[0]) * width)
        name = relative.with_name(f"{relative.stem}_face{number}{relative.suffix}") if args.all_faces else relative
        save_crop(image, crop_box_pixels(region, (width, height), out_size), args.size, destination / name)
        pixels = np.asarray(box) * [width, height, width, height]
        rows.append({"path": str(relative), "face": number, **dict(zip(("x1", "y1", "x2", "y2"), pixels.round(1))),
                     "score": round(score, 4), "crop": str(name)})
    return rows


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    source, destination = check_paths(args)
    photos = find_photos(source)
    if not photos:
        raise cli.UserError(f"no photos (.jpg, .jpeg, .png) under {source}")
    found = detect_faces(photos, args.device, args.min_face_size)
    rows, without = [], 0
    for path, faces in zip(photos, found):
        relative = path.relative_to(source)
        faces = [face for face in faces if face.score >= args.min_score][:None if args.all_faces else 1]
        if faces:
            rows += crop_photo(decode_image(path), faces, relative, destination, args)
        else:
            without += 1
            (destination / NO_FACE_FOLDER / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination / NO_FACE_FOLDER / relative)
            rows.append({"path": str(relative), "face": None, "crop": str(Path(NO_FACE_FOLDER) / relative)})
    table = pd.DataFrame(rows, columns=["path", "face", "x1", "y1", "x2", "y2", "score", "crop"])
    write_csv(table.astype({"face": "Int64"}), destination / "faces.csv")
    print(f"wrote {len(rows) - without} face crops of {len(photos) - without} photos to {destination}; "
          f"{without} photos without a face copied to {destination / NO_FACE_FOLDER}; boxes in "
          f"{destination / 'faces.csv'}")


if __name__ == "__main__":
    sys.exit(cli.run(main))
