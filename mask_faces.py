"""Renders face masks (and sunglasses) onto every face of a folder of real photos, at the face's landmarks: a data set
of masked faces from any photos of people.

    python real_assets.py                                       # real photos and mask photos into ~/.cache/maskcls
    python mask_faces.py ~/.cache/maskcls/people data/real3 --classes correct,incorrect,none --eval_people 0.33
    python mask_faces.py SRC data/real4 --classes face,masked_face,face_sunglasses,masked_face_sunglasses
    python mask_faces.py SRC data/mask --classes mask,no_mask --framing face --renders 3
    python mask_faces.py SRC data/comp --layout competition --labels people.csv     # the competition's layout
    python mask_faces.py SRC data/comp --layout competition --unlabelled
    python preprocess.py --data_dir data/real3/train --group_regex '^(\\d+)_'     # then train as on any class folders

Every face MTCNN finds in SRC (faces.detect_faces, five landmarks) is one person, numbered from 1 in the order of the
photos' paths and, within a photo, from left to right. masks.py draws on it: a surgical, cloth or KN95-like mask in
one of many colours, prints and photo textures (the photos of real masks in --mask_photos), shaded by the photo's
light, with soft edges and ear loops; worn correctly, under the nose (`nose_out`) or on the chin; sunglasses for the
classes that ask for them. Each output photo shows one face (any other face in its frame is blurred out), framed as
the competition's 3:4 portraits (`--framing portrait`: the face 20-35% of the width, in the upper middle) or as a
close face crop (`--framing face`).

Layouts written under DST:
    folders:      train/<class>/<person>_<render>.jpg, and eval/<class>/... for the people held out (--eval_people):
                  preprocess.py --group_regex '^(\\d+)_' keeps a person in one fold
    competition:  train/images/<person>_<gender>_<race>_<age>/{mask1..mask5,incorrect_mask,normal}.jpg and
                  train/train.csv; held-out people as the competition's eval set: eval/images/<sha1>.jpg,
                  eval/info.csv and gt/gt.csv
    renders.csv   every photo written: path, split, class, person, source photo and face box, the mask's kind, colour,
                  pattern and variant, the sunglasses, the framing
    faces.csv     every face found (landmarks included; --faces_csv reuses it instead of detecting again), the person
                  it became or why it was left out
    people.csv    person, split, photo, face, gender, age, race: fill in gender and age and pass it back as --labels
    contact_sheet.png   some renders of every person (of up to SHEET_PEOPLE people), one row each

The same SRC, flags and --seed give byte-identical files; the styles of a person's renders depend only on the seed,
the person and the class, so that both framings of one seed show the same masks.
"""
import argparse
import math
import re
import shutil
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage
from tqdm import tqdm

import cli
import masks
import real_assets
from dataset import GENDER_BY_NAME, MASK_BY_STEM, MAX_AGE, MIN_AGE, MaskLabel, age_band, encode_label
from faces import BOX_COLUMNS, MIN_FACE_SIZE, detect_faces
from fileio import atomic_path, make_dir, read_csv, write_csvs
from generate_sample import eval_image_name
from photos import crop_box_pixels, decode_image, find_photos, upright_size

LAYOUTS = ("folders", "competition")
FRAMINGS = ("portrait", "face")
DEFAULT_SIZES = {"portrait": (512, 384), "face": (224, 224)}  # (height, width): the competition's photos; a face set's
# each class a user may ask for: (the mask's variant, or None for no mask; sunglasses)
CLASS_RENDERS = {
    "correct": ("correct", False), "correct_mask": ("correct", False), "mask": ("correct", False),
    "masked_face": ("correct", False), "incorrect": ("incorrect", False), "incorrect_mask": ("incorrect", False),
    "nose_out": ("nose_out", False), "chin": ("chin", False), "none": (None, False), "no_mask": (None, False),
    "face": (None, False), "normal": (None, False), "sunglasses": (None, True), "face_sunglasses": (None, True),
    "masked_face_sunglasses": ("correct", True),
}
COMPETITION_STEMS = {stem: ("correct" if label == MaskLabel.WEAR else "incorrect" if label == MaskLabel.INCORRECT
                            else None) for stem, label in MASK_BY_STEM.items()}
LANDMARK_COLUMNS = [f"{point}_{axis}" for point in ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
                    for axis in ("x", "y")]
CROP_COLUMNS = ["crop_x1", "crop_y1", "crop_x2", "crop_y2"]  # the box of the source photo shown, pixels
OUTPUT_BOX_COLUMNS = [f"output_{column}" for column in BOX_COLUMNS]  # the face's box in the photo written, fractions
FACES_COLUMNS = ["photo", "face", "score", *BOX_COLUMNS, *LANDMARK_COLUMNS]  # faces.csv
UNLABELLED = {"gender": "male", "age": 30, "race": "unlabelled"}  # placeholders preprocess.py accepts
MIN_EYE_DISTANCE = 14  # pixels: a smaller face is too small to draw a mask on
PORTRAIT_FACE_WIDTH = (0.2, 0.35)  # the face box's share of a portrait's width, as in the competition's photos
FRAMING_TRIES = 8  # framings drawn per portrait; the one that shows least of other faces is kept
SHEET_PEOPLE = 30
SHEET_RENDERS = 2  # per class, on the contact sheet
SHEET_TILE_WIDTH = 96
SPLIT_STREAM, FRAME_STREAM = 0x5E, 0xF7  # rng streams apart from any person's styles


def get_args_parser():
    parser = cli.new_parser("Render masks (and sunglasses) onto every face of a folder of real photos.")
    parser.add_argument("src", help="folder of photos of people (any depth)")
    parser.add_argument("dst", help="folder to write the data set into")
    layout = parser.add_argument_group("layout")
    cli.add_flag(layout, "layout", default="folders", choices=LAYOUTS,
                 help="folders: one folder per class; competition: one folder per person, seven photos each")
    cli.add_flag(layout, "classes", default="correct,incorrect,none",
                 help=f"folders: the classes, comma-separated, from {', '.join(CLASS_RENDERS)}")
    cli.add_flag(layout, "renders", type=cli.positive_int, default=5,
                 help="folders: photos per person and class, each in another style and framing")
    cli.add_flag(layout, "labels", default=None, metavar="CSV",
                 help="competition: gender and age of every person: columns photo (path under SRC), face (its number "
                      "in the photo, left to right from 0; may be left out for a photo of one face), gender "
                      "(male/female), age, and optionally race; people.csv of an earlier run is one")
    cli.add_flag(layout, "unlabelled", action="store_true",
                 help=f"competition without --labels: every person named {UNLABELLED['gender']}, "
                      f"{UNLABELLED['age']}, race {UNLABELLED['race']} (placeholders: train the mask task alone)")
    cli.add_flag(layout, "eval_people", type=people_count, default=0, metavar="N",
                 help="people held out into DST/eval (no person on both sides): a count, or a share under 1")
    cli.add_flag(layout, "overwrite", action="store_true", help="replace an earlier data set in DST")
    render = parser.add_argument_group("rendering")
    cli.add_flag(render, "framing", default="portrait", choices=FRAMINGS,
                 help="portrait: 3:4 around the person, the face 20-35%% of the width; face: a close face crop")
    cli.add_flag(render, "size", type=cli.positive_int, nargs=2, default=None, metavar=("H", "W"),
                 help="output height and width (default: 512 384 for portrait, 224 224 for face)")
    cli.add_flag(render, "mask_kinds", default=",".join(masks.KINDS),
                 help=f"the kinds of mask drawn, comma-separated, from {', '.join(masks.KINDS)}")
    cli.add_flag(render, "nose_out_share", type=cli.fraction, default=0.6,
                 help="share of the incorrect masks worn under the nose; the others sit on the chin")
    cli.add_flag(render, "mask_photos", default=str(real_assets.default_cache() / "masks"), metavar="DIR",
                 help="photos of real flat masks that surgical masks may wear as their texture ('' for none)")
    cli.add_flag(render, "quality", type=cli.int_at_least(50), default=92, help="JPEG quality of the photos written")
    cli.add_flag(render, "seed", type=cli.non_negative_int, default=0,
                 help="seed of the styles, framings and held-out people: the same seed gives identical files")
    cli.add_flag(render, "sheet_width", type=cli.int_at_least(32), default=SHEET_TILE_WIDTH,
                 help="width in pixels of each photo on the contact sheet")
    found = parser.add_argument_group("faces")
    cli.add_flag(found, "faces_csv", default=None, metavar="CSV",
                 help="the faces of an earlier run's faces.csv instead of detecting them again")
    cli.add_flag(found, "min_score", type=cli.fraction, default=0.9,
                 help="faces the detector is less sure of are left out (often a profile or no face)")
    cli.add_flag(found, "min_face_size", type=cli.positive_int, default=MIN_FACE_SIZE,
                 help="the smallest face MTCNN looks for, in pixels")
    cli.add_flag(found, "device", type=cli.device, default="cuda" if torch.cuda.is_available() else "cpu",
                 help="device of the face detector")
    return parser


def people_count(text):
    """An argparse type: a number of people (an integer >= 0) or a share of them (a number in (0, 1))."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0 or (value >= 1 and value != int(value)):
        raise argparse.ArgumentTypeError(f"{text} is neither a count of people nor a share under 1")
    return value if value < 1 else int(value)


# ---------------------------------------------------------------------------------------------------------------
# Input: photos, faces, people


@dataclass
class Person:
    number: int
    photo: str  # path under SRC
    face: int  # number of the face in its photo, left to right
    box: tuple  # fractions of the photo
    landmarks: np.ndarray  # (5, 2) fractions
    split: str = "train"
    gender: str = UNLABELLED["gender"]
    age: int = UNLABELLED["age"]
    race: str = UNLABELLED["race"]

    @property
    def name(self):
        return f"{self.number:04d}"


def parse_classes(text):
    """The --classes list, checked: two or more known names, none twice."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in CLASS_RENDERS]
    if unknown:
        raise cli.UserError(f"--classes: unknown class {unknown[0]!r}; the classes are {', '.join(CLASS_RENDERS)}")
    if len(names) < 2 or len(set(names)) != len(names):
        raise cli.UserError(f"--classes {text!r}: two or more different classes, comma-separated")
    return names


def parse_kinds(text):
    kinds = [kind.strip() for kind in text.split(",") if kind.strip()]
    unknown = [kind for kind in kinds if kind not in masks.KINDS]
    if unknown or not kinds:
        raise cli.UserError(f"--mask_kinds {text!r}: the kinds are {', '.join(masks.KINDS)}, comma-separated")
    return tuple(dict.fromkeys(kinds))


def check_folders(src, dst, overwrite):
    """SRC exists and holds photos; DST is not inside SRC (nor SRC inside DST), and holds no data set unless
    --overwrite."""
    if not src.is_dir():
        raise cli.UserError(f"{src} is not a folder of photos")
    source, target = src.resolve(), dst.resolve()
    if target == source or target.is_relative_to(source) or source.is_relative_to(target):
        raise cli.UserError(f"{dst} and {src} overlap: write the data set outside the photos' folder")
    outputs = [dst / name for name in ("train", "eval", "gt", "renders.csv", "faces.csv", "people.csv")]
    if any(path.exists() for path in outputs) and not overwrite:
        raise cli.UserError(f"{dst} already holds a data set: pass --overwrite to replace it, or another DST")
    photos = find_photos(src)
    if not photos:
        raise cli.UserError(f"{src} holds no photos (.jpg, .jpeg, .png)")
    return photos


def faces_frame(names, found):
    """One row per face (FACES_COLUMNS), faces numbered left to right in each photo; a photo without a face has one
    row whose face is empty."""
    rows = []
    for name, faces in zip(names, found):
        if not faces:
            rows.append({"photo": name})
        for number, face in enumerate(sorted(faces, key=lambda face: face.box[0] + face.box[2])):
            rows.append({"photo": name, "face": number, "score": round(face.score, 6),
                         **dict(zip(BOX_COLUMNS, np.round(face.box, 6))),
                         **dict(zip(LANDMARK_COLUMNS, np.round(np.asarray(face.landmarks).reshape(-1), 6)))})
    frame = pd.DataFrame(rows, columns=FACES_COLUMNS)
    frame["face"] = frame["face"].astype("Int64")
    return frame


def read_faces_csv(path, names):
    """The faces of an earlier run (its faces.csv), checked against the photos of SRC."""
    path = Path(path)
    if not path.is_file():
        raise cli.UserError(f"--faces_csv {path} does not exist")
    frame = read_csv(path, dtype={"photo": str})
    missing = [column for column in FACES_COLUMNS if column not in frame.columns]
    if missing:
        raise cli.UserError(f"--faces_csv {path} lacks the column(s) {', '.join(missing)}: pass a faces.csv of "
                            "mask_faces.py")
    listed = set(frame["photo"])
    absent = [name for name in names if name not in listed]
    stale = sorted(listed - set(names))
    if absent or stale:
        example = absent[0] if absent else stale[0]
        raise cli.UserError(f"--faces_csv {path} does not list the photos of SRC ({example} "
                            f"{'is not in it' if absent else 'is not in SRC'}): detect again without --faces_csv")
    frame = frame[FACES_COLUMNS].copy()
    frame["face"] = frame["face"].astype("Int64")
    return frame


def select_people(faces, photo_sizes, min_score):
    """The people: every face of `faces` sure enough and large enough, numbered from 1; faces gets the columns
    person and left_out (why a face is not one)."""
    people, person_column, left_out = [], [], []
    for row in faces.itertuples(index=False):
        reason = ""
        if pd.isna(row.face):
            reason = "no face found"
        elif row.score < min_score:
            reason = f"score {row.score:.3f} under --min_score"
        else:
            landmarks = np.array([getattr(row, column) for column in LANDMARK_COLUMNS], dtype=float).reshape(5, 2)
            eyes = np.linalg.norm((landmarks[1] - landmarks[0]) * photo_sizes[row.photo])
            if eyes < MIN_EYE_DISTANCE:
                reason = f"eyes {eyes:.0f} pixels apart: too small to draw on"
        if reason:
            person_column.append(pd.NA)
        else:
            people.append(Person(number=len(people) + 1, photo=row.photo, face=int(row.face),
                                 box=tuple(getattr(row, column) for column in BOX_COLUMNS), landmarks=landmarks))
            person_column.append(people[-1].number)
        left_out.append(reason)
    faces = faces.assign(person=pd.array(person_column, dtype="Int64"), left_out=left_out)
    return people, faces


def hold_out(people, eval_people, seed):
    """Marks `eval_people` of the people (a count, or a share) as held out, drawn by the seed."""
    count = round(eval_people * len(people)) if isinstance(eval_people, float) else eval_people
    if count >= len(people):
        raise cli.UserError(f"--eval_people {eval_people}: {count} of {len(people)} people leaves none to train on")
    order = np.random.default_rng([seed, SPLIT_STREAM]).permutation(len(people))
    for index in order[:count]:
        people[index].split = "eval"


def read_labels(path, people):
    """Gender, age and race of every person from the --labels CSV (photo, face, gender, age[, race])."""
    path = Path(path)
    if not path.is_file():
        raise cli.UserError(f"--labels {path} does not exist")
    labels = read_csv(path, dtype=str, keep_default_na=False)
    missing = [column for column in ("photo", "gender", "age") if column not in labels.columns]
    if missing:
        raise cli.UserError(f"--labels {path} lacks the column(s) {', '.join(missing)} (photo, face, gender, age)")
    by_face = {(person.photo, person.face): person for person in people}
    faces_in = pd.Series([person.photo for person in people]).value_counts().to_dict()
    labelled = set()
    for line, row in enumerate(labels.to_dict("records"), 2):
        face = row.get("face", "").strip()
        if not face and faces_in.get(row["photo"], 0) > 1:
            raise cli.UserError(f"--labels line {line}: {row['photo']} shows {faces_in[row['photo']]} people: say "
                                "which in the face column (left to right from 0)")
        key = (row["photo"], int(face) if face.isdigit() else 0 if not face else -1)
        if key not in by_face:
            raise cli.UserError(f"--labels line {line}: no person is face {face or 0} of {row['photo']!r} "
                                "(see people.csv of an --unlabelled run)")
        gender, age = row["gender"].strip().lower(), row["age"].strip()
        if gender not in GENDER_BY_NAME:
            raise cli.UserError(f"--labels line {line}: gender {row['gender']!r} is not male or female")
        if not age.isdigit() or not MIN_AGE <= int(age) <= MAX_AGE:
            raise cli.UserError(f"--labels line {line}: age {row['age']!r} is not a number in {MIN_AGE}-{MAX_AGE}")
        person = by_face[key]
        person.gender, person.age = gender, int(age)
        person.race = re.sub(r"[^A-Za-z0-9.-]+", "-", row.get("race", "").strip()).strip("-") or "unknown"
        labelled.add(key)
    unlabelled = [person for person in people if (person.photo, person.face) not in labelled]
    if unlabelled:
        shown = ", ".join(f"{person.photo} face {person.face}" for person in unlabelled[:3])
        raise cli.UserError(f"--labels {path} has no gender and age for {len(unlabelled)} of the {len(people)} "
                            f"people ({shown}): add their rows, or pass --unlabelled")


# ---------------------------------------------------------------------------------------------------------------
# Framing: which box of the photo a render shows


def region_pixels(region, photo_size, out_size):
    return crop_box_pixels(np.asarray(region, dtype=float), photo_size, out_size)


def overlap(box, other):
    """The share of the face box `other` inside the pixel box `box`."""
    width = max(0.0, min(box[2], other[2]) - max(box[0], other[0]))
    height = max(0.0, min(box[3], other[3]) - max(box[1], other[1]))
    return width * height / max((other[2] - other[0]) * (other[3] - other[1]), 1e-9)


def portrait_box(face, photo_size, out_size, rng, others):
    """A portrait at `out_size`'s aspect around the face (pixels): the face box PORTRAIT_FACE_WIDTH of its width, its
    centre in the upper middle; of FRAMING_TRIES such boxes, the one showing least of the other faces (pixel
    boxes)."""
    width, height = photo_size
    x1, y1, x2, y2 = np.asarray(face) * [width, height, width, height]
    best, least = None, math.inf
    for _ in range(FRAMING_TRIES):
        box_width = (x2 - x1) / rng.uniform(*PORTRAIT_FACE_WIDTH)
        box_height = box_width * out_size[0] / out_size[1]
        left = (x1 + x2) / 2 - rng.uniform(0.42, 0.58) * box_width
        top = (y1 + y2) / 2 - rng.uniform(0.3, 0.4) * box_height
        box = region_pixels([left / width, top / height, (left + box_width) / width, (top + box_height) / height],
                            photo_size, out_size)
        shown = sum(overlap(box, other) for other in others)
        if shown < least:
            best, least = box, shown
    return best


def face_box(face, photo_size, out_size, rng):
    """A close crop of the face (pixels): its box grown by 12-30% on each side, a little jitter."""
    width, height = photo_size
    x1, y1, x2, y2 = np.asarray(face) * [width, height, width, height]
    margin = rng.uniform(0.12, 0.3)
    shift_x, shift_y = rng.uniform(-0.05, 0.05) * (x2 - x1), rng.uniform(0.0, 0.08) * (y2 - y1)
    pad_x, pad_y = margin * (x2 - x1), margin * (y2 - y1)
    region = [(x1 - pad_x + shift_x) / width, (y1 - pad_y + shift_y) / height, (x2 + pad_x + shift_x) / width,
              (y2 + pad_y + shift_y) / height]
    return region_pixels(region, photo_size, out_size)


def blur_faces(pixels, boxes):
    """`pixels` with the heads at the pixel boxes `boxes` blurred out, each in a soft ellipse; and how many."""
    if not boxes:
        return pixels, 0
    blurred = pixels.copy()
    for x1, y1, x2, y2 in boxes:
        size = max(x2 - x1, y2 - y1)
        x0, y0 = max(int(x1 - size), 0), max(int(y1 - size), 0)
        xe, ye = min(int(x2 + size), pixels.shape[1]), min(int(y2 + size), pixels.shape[0])
        if xe <= x0 or ye <= y0:
            continue
        patch = blurred[y0:ye, x0:xe]
        soft = ndimage.gaussian_filter(patch, (0.12 * size, 0.12 * size, 0))
        rows, columns = np.mgrid[y0:ye, x0:xe].astype(np.float32)
        reach = np.hypot((columns - (x1 + x2) / 2) / (0.8 * (x2 - x1)), (rows - (y1 + y2) / 2) / (0.8 * (y2 - y1)))
        weight = np.clip((1.25 - reach) * 3, 0, 1)[..., None]
        blurred[y0:ye, x0:xe] = patch * (1 - weight) + soft * weight
    return blurred, len(boxes)


# ---------------------------------------------------------------------------------------------------------------
# Rendering


def style_rng(seed, person, class_name, render):
    """The styles of one render: the same whatever the framing, the layout or the other classes asked for."""
    return np.random.default_rng([seed, person.number, zlib.crc32(class_name.encode()), render])


def render_photo(photo, person, others, spec, args, class_name, render, mask_photos):
    """One output photo (uint8, args.size) of `person` in the photo's float pixels, with what `spec` = (variant,
    sunglasses) asks for, and the row describing it."""
    variant, sunglasses = spec
    rng = style_rng(args.seed, person, class_name, render)
    framing_rng = np.random.default_rng([args.seed, person.number, zlib.crc32(class_name.encode()), render,
                                         FRAME_STREAM])
    height, width = photo.shape[:2]
    others_pixels = [tuple(np.asarray(box) * [width, height, width, height]) for box in others]
    if args.framing == "portrait":
        box = portrait_box(person.box, (width, height), args.size, framing_rng, others_pixels)
    else:
        box = face_box(person.box, (width, height), args.size, framing_rng)
    x0, y0 = max(int(math.floor(box[0])) - 2, 0), max(int(math.floor(box[1])) - 2, 0)
    x1, y1 = min(int(math.ceil(box[2])) + 2, width), min(int(math.ceil(box[3])) + 2, height)
    hidden = [other for other in others_pixels if overlap(box, other) > 0.02]
    region, blurred = blur_faces(photo[y0:y1, x0:x1], [
        (ox1 - x0, oy1 - y0, ox2 - x0, oy2 - y0) for ox1, oy1, ox2, oy2 in hidden])
    head = masks.head_of(person.landmarks, (width, height)).shifted(x0, y0)
    record = {"variant": "none", "mask_kind": "", "mask_colour": "", "mask_pattern": "", "sunglasses": ""}
    if variant is not None:
        if variant == "incorrect":
            variant = "nose_out" if rng.random() < args.nose_out_share else "chin"
        style = masks.random_style(rng, variant, mask_photos, args.mask_kinds)
        region, _ = masks.draw_mask(region, head, style, rng)
        record.update(style.describe())
    if sunglasses:
        glasses = masks.random_glasses(rng)
        region, _ = masks.draw_sunglasses(region, head, glasses, rng)
        record.update(glasses.describe())
    image = Image.fromarray(np.clip(np.rint(region), 0, 255).astype(np.uint8))
    image = image.resize((args.size[1], args.size[0]), Image.Resampling.LANCZOS,
                         box=(box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0))
    x1, y1, x2, y2 = np.asarray(person.box) * [width, height, width, height]
    shown = np.clip([(x1 - box[0]) / (box[2] - box[0]), (y1 - box[1]) / (box[3] - box[1]),
                     (x2 - box[0]) / (box[2] - box[0]), (y2 - box[1]) / (box[3] - box[1])], 0, 1)
    record.update({"framing": args.framing, **dict(zip(CROP_COLUMNS, np.round(box, 2))),
                   **dict(zip(OUTPUT_BOX_COLUMNS, np.round(shown, 6))), "others_blurred": blurred})
    return image, record


def save_photo(image, path, quality):
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        image.save(temporary, format="JPEG", quality=quality)


def read_mask_photos(folder):
    """(name, masks.mask_texture) of every photo of a real mask in `folder`; none when the folder is '' or
    missing."""
    if not folder or not Path(folder).is_dir():
        return []
    return [(path.stem, masks.mask_texture(decode_image(path))) for path in find_photos(folder)]


def planned_outputs(people, args, classes):
    """(person, class name, spec, render, path under DST, truth) of every photo to write."""
    planned = []
    for person in people:
        if args.layout == "folders":
            for class_name in classes:
                for render in range(args.renders):
                    path = f"{person.split}/{class_name}/{person.name}_{render}.jpg"
                    planned.append((person, class_name, CLASS_RENDERS[class_name], render, path, class_name))
            continue
        folder = f"{person.name}_{person.gender}_{person.race}_{person.age}"
        for stem, variant in COMPETITION_STEMS.items():
            render = int(stem[-1]) - 1 if stem.startswith("mask") else 0
            class_name = {"correct": "mask", "incorrect": "incorrect_mask", None: "normal"}[variant]
            if person.split == "train":
                path = f"train/images/{folder}/{stem}.jpg"
            else:
                path = f"eval/images/{eval_image_name(args.seed, person.number, stem)}"
            label = int(encode_label(MASK_BY_STEM[stem], GENDER_BY_NAME[person.gender], age_band(person.age)))
            planned.append((person, class_name, (variant, False), render, path, label))
    return planned


def render_all(src, dst, people, planned, args, mask_photos):
    """Writes every planned photo; returns the rows of renders.csv."""
    others_of = {}
    for person in people:
        others_of.setdefault(person.photo, []).append(person.box)
    rows, photo_name, photo = [], None, None
    for person, class_name, spec, render, path, truth in tqdm(planned, desc="rendering", unit="photo"):
        if person.photo != photo_name:
            photo_name, photo = person.photo, decode_image(src / person.photo).astype(np.float32)
        others = [box for box in others_of[person.photo] if box != person.box]
        image, record = render_photo(photo, person, others, spec, args, class_name, render, mask_photos)
        save_photo(image, dst / path, args.quality)
        rows.append({"path": path, "split": person.split, "class": class_name, "truth": truth,
                     "person": person.number, "photo": person.photo, "face": person.face,
                     **dict(zip(BOX_COLUMNS, np.round(person.box, 6))), "render": render, **record})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------------
# Outputs beside the photos


def competition_tables(people, renders, seed):
    """train.csv (id, gender, race, age, path) and, with held-out people, eval/info.csv and gt/gt.csv."""
    train = pd.DataFrame([{"id": person.name, "gender": person.gender, "race": person.race, "age": person.age,
                           "path": f"{person.name}_{person.gender}_{person.race}_{person.age}"}
                          for person in people if person.split == "train"],
                         columns=["id", "gender", "race", "age", "path"])
    held_out = renders[renders["split"] == "eval"]
    order = np.random.default_rng([seed, SPLIT_STREAM, 1]).permutation(len(held_out))
    truth = pd.DataFrame({"ImageID": held_out["path"].str.split("/").str[-1].to_numpy()[order],
                          "ans": held_out["truth"].to_numpy()[order].astype(int)})
    return train, truth


def fit_text(text, font, width):
    """`text`, shortened with an ellipsis until it is at most `width` pixels wide in `font`."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def contact_sheet(dst, renders, size, tile_width=SHEET_TILE_WIDTH):
    """Some renders of every person (up to SHEET_PEOPLE, evenly picked): a row each, labelled with the person and
    their split, SHEET_RENDERS per class under the class's name. A mosaic of photos, drawn with PIL: matplotlib
    (reports.save_figure) takes seconds to write one."""
    people = renders["person"].unique()
    if len(people) > SHEET_PEOPLE:
        people = people[np.linspace(0, len(people) - 1, SHEET_PEOPLE).round().astype(int)]
    classes = list(dict.fromkeys(renders["class"]))
    columns = [(name, render) for name in classes for render in sorted(renders["render"].unique())[:SHEET_RENDERS]]
    gap, label_width, header = 4, 84, 22
    tile_height = round(tile_width * size[0] / size[1])
    sheet = Image.new("RGB", (label_width + len(columns) * (tile_width + gap),
                              header + len(people) * (tile_height + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=12)
    paths = renders.groupby(["person", "class", "render"])["path"].first()
    splits = renders.groupby("person")["split"].first()
    for column, (name, _) in enumerate(columns):
        draw.text((label_width + column * (tile_width + gap) + 2, 4), fit_text(name, font, tile_width - 4),
                  fill="black", font=font)
    for row, person in enumerate(people):
        top = header + row * (tile_height + gap)
        draw.text((4, top + tile_height // 2 - 7), f"{person:04d} {splits[person]}", fill="black", font=font)
        for column, (name, render) in enumerate(columns):
            if (person, name, render) in paths.index:
                with Image.open(dst / paths[(person, name, render)]) as photo:
                    tile = photo.convert("RGB").resize((tile_width, tile_height), Image.Resampling.BILINEAR)
                sheet.paste(tile, (label_width + column * (tile_width + gap), top))
    return sheet


def save_sheet(sheet, path):
    with atomic_path(path) as temporary:
        sheet.save(temporary, format="PNG", compress_level=3)


def people_table(people, labelled):
    """people.csv: who is who, and (`labelled`) their gender, age and race, else blanks to fill in for --labels."""
    return pd.DataFrame([{"person": person.number, "split": person.split, "photo": person.photo, "face": person.face,
                          **({"gender": person.gender, "age": person.age, "race": person.race} if labelled else
                             {"gender": "", "age": "", "race": ""})} for person in people])


def remove_earlier(dst):
    """Removes the data set an earlier run wrote into dst (only what this script writes)."""
    for name in ("train", "eval", "gt"):
        if (dst / name).is_dir():
            shutil.rmtree(dst / name)
    for name in ("renders.csv", "faces.csv", "people.csv", "contact_sheet.png"):
        (dst / name).unlink(missing_ok=True)


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    src, dst = Path(args.src).expanduser(), Path(args.dst).expanduser()
    classes = parse_classes(args.classes) if args.layout == "folders" else list(COMPETITION_STEMS)
    if args.layout == "folders" and (args.labels or args.unlabelled):
        raise cli.UserError("--labels and --unlabelled name the people of --layout competition: class folders need "
                            "no gender or age")
    if args.layout == "competition" and not args.labels and not args.unlabelled:
        raise cli.UserError("--layout competition needs every person's gender and age: pass --labels CSV, or "
                            "--unlabelled for placeholders")
    args.size = tuple(args.size or DEFAULT_SIZES[args.framing])
    args.mask_kinds = parse_kinds(args.mask_kinds)
    photos = check_folders(src, dst, args.overwrite)
    names = [path.relative_to(src).as_posix() for path in photos]
    if args.faces_csv:
        faces = read_faces_csv(args.faces_csv, names)
    else:
        # MTCNN's landmarks place the masks: they were measured against it (the masks' tests), and the photos are
        # of bare faces, which it finds
        faces = faces_frame(names, detect_faces(photos, args.device, args.min_face_size, name="mtcnn"))
    sizes = {name: np.array(upright_size(path), dtype=float) for name, path in zip(names, photos)}
    people, faces = select_people(faces, sizes, args.min_score)
    if not people:
        raise cli.UserError(f"no face in {src} to draw on ({len(faces)} rows in faces.csv): add photos of people")
    hold_out(people, args.eval_people, args.seed)
    if args.layout == "competition" and args.labels:
        read_labels(args.labels, people)
    mask_photos = read_mask_photos(args.mask_photos)
    make_dir(dst, exist_ok=True)
    if args.overwrite:
        remove_earlier(dst)
    planned = planned_outputs(people, args, classes)
    renders = render_all(src, dst, people, planned, args, mask_photos)
    tables = {dst / "faces.csv": faces, dst / "people.csv": people_table(people, bool(args.labels))}
    if args.layout == "competition":
        train, truth = competition_tables(people, renders, args.seed)
        tables[dst / "train" / "train.csv"] = train
        if len(truth):
            tables[dst / "eval" / "info.csv"] = truth.assign(ans=0)
            tables[dst / "gt" / "gt.csv"] = truth
    save_sheet(contact_sheet(dst, renders, args.size, args.sheet_width), dst / "contact_sheet.png")
    tables[dst / "renders.csv"] = renders  # written last: its presence says the set is complete
    write_csvs(tables)
    held = sum(person.split == "eval" for person in people)
    left = faces["left_out"].astype(bool).sum()
    print(f"wrote {len(renders)} photos of {len(people)} {'person' if len(people) == 1 else 'people'} "
          f"({len(people) - held} train, {held} held out) into "
          f"{dst}; {left} face(s) left out (faces.csv); renders listed in {dst / 'renders.csv'}, contact sheet "
          f"{dst / 'contact_sheet.png'}")


if __name__ == "__main__":
    sys.exit(cli.run(main))
