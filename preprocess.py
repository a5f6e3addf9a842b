"""Scans the training photos and writes a leakage-safe folds CSV: one row per image, folds by person (or group).

    export SM_CHANNEL_TRAIN=data/train/images
    python preprocess.py                          # writes data/train/folds.csv
    python preprocess.py --data_dir data/mask/train --group_regex '^(\\d+)_'      # a folder of class folders
    python preprocess.py --kfold 5 --seed 42 --skip_bad --output data/train/folds.csv
    python preprocess.py --corrections corrections.csv    # fixes known label errors before the split
    python preprocess.py --faces off                      # no face detection (train.py --crop box or none)

Every person folder must be named `{id}_{gender}_{race}_{age}` and hold the seven photos
mask1..mask5, incorrect_mask and normal (.jpg/.jpeg/.png). Hidden files (`._mask1.jpg`, `.DS_Store`) are
ignored. Anything else -- a malformed name, a stray file, a photo that does not decode, a missing photo,
a duplicate person id -- is listed in one message and stops the run, or with `--skip_bad` is skipped and
counted. Folds come from scikit-learn's StratifiedGroupKFold: grouped by person (no person on both sides
of a split) and stratified on the person's gender x age class.

`--corrections FILE` fixes known label errors before the split, printing one line per change: a CSV with
the columns id, field, value, one fix per row. field `gender` sets the person's gender to value (male or
female), `age` sets their age to value, `mask_swap` swaps the labels of their incorrect_mask and normal
photos (value ignored). An unknown id or field stops the run.

A folder of class folders (any classifier: mask / no mask, helmet, ...) is detected by its folder names (none is
a person folder) or forced with `--layout folders`: every photo under a class folder (any depth, hidden files
ignored) is one row (path, class, label = the class's index among the sorted folder names, group, fold). Folds
are stratified by class and grouped by `--group_regex`, a regular expression whose first group (or whole match)
in the file name names the subject (photos of one subject stay in one fold); without it every photo is its own
group. Files that are not photos, photos that do not decode, and empty class folders are problems as above; a
single class folder stops the run.

Every photo's face is detected once here (faces.py, `--detector`): the box of the face the photo is of
(`--face_choice`; typical: the one nearest where this set's faces sit), as fractions of the photo, and its score
go into the folds CSV (face_x1, face_y1, face_x2, face_y2, face_score; empty where none was found) with the
detection that made them (face_detector), and the photos without a face are listed in no_face.csv beside it.
How often a face was found for each class (each mask state, gender and age band) is printed and written to
faces_found.csv, with a warning where the rates differ: the crop would then tell the classes apart by itself.
train.py crops to these boxes, and inference detects the eval photos' faces the same way.
"""
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import StratifiedGroupKFold
from tqdm import tqdm

import cli
from dataset import (COMPETITION, GENDER_BY_NAME, MASK_BY_STEM, MAX_AGE, MIN_AGE, PERSON_FOLDER, MaskLabel,
                     age_band, encode_label, parse_person_folder, person_column)
from faces import FACE_DETECTOR_COLUMN, add_detection_flags, detection_of, find_boxes, report_detection, \
    report_found_rates
from fileio import is_utf8, read_csv, shown, write_csv
from photos import IMAGE_EXTENSIONS, decode_image

TRAIN_CSV_COLUMNS = ("id", "gender", "race", "age", "path")
LAYOUTS = ("auto", "competition", "folders")
CORRECTIONS_COLUMNS = ("id", "field", "value")
SHOWN_PROBLEMS = 10  # problems listed in full; the rest are counted


def get_args_parser():
    parser = cli.new_parser("Write the folds CSV (one row per image, folds by person).")
    data = parser.add_argument_group("data")
    cli.add_flag(data, "data_dir", default=cli.env_default("SM_CHANNEL_TRAIN", "data/train/images"),
                 help="folder of person folders, or of class folders (env SM_CHANNEL_TRAIN)")
    cli.add_flag(data, "layout", default="auto", choices=LAYOUTS,
                 help="competition: person folders; folders: class folders; auto: folders unless a subfolder is "
                      "named like a person folder")
    cli.add_flag(data, "group_regex", default=None, metavar="REGEX",
                 help="class folders: the subject of a photo, from its file name (first group or whole match), "
                      "kept in one fold (default: every photo its own group)")
    cli.add_flag(data, "output", default=None, help="folds CSV to write (default: folds.csv beside data_dir)")
    cli.add_flag(data, "skip_bad", action="store_true",
                 help="skip malformed folders, stray files and undecodable photos instead of stopping")
    cli.add_flag(data, "corrections", default=None, metavar="FILE",
                 help="CSV of label fixes (id, field, value; field gender, age or mask_swap) applied before the split")
    faces = parser.add_argument_group("faces")
    cli.add_flag(faces, "faces", default="on", choices=("on", "off"),
                 help="detect the face of every photo and write its box into the folds CSV")
    add_detection_flags(faces)
    cli.add_flag(faces, "device", type=cli.device, default="cuda" if torch.cuda.is_available() else "cpu",
                 help="device of the face detector (on a CPU the photos are spread over the cores)")
    split = parser.add_argument_group("split")
    cli.add_flag(split, "kfold", type=cli.int_at_least(2), default=5, help="number of folds")
    cli.add_flag(split, "seed", type=cli.non_negative_int, default=42, help="seed of the fold assignment")
    return parser


def is_hidden(path):
    return path.name.startswith(".")


def photo_decodes(path):
    """True when the whole photo decodes as training will decode it; at the smallest size a JPEG decodes at 1/8
    scale, still reading every byte."""
    try:
        decode_image(path, (1, 1))
        return True
    except cli.UserError:
        return False


def scan_person(folder):
    """Rows for one person folder and the problems found in it."""
    try:
        person = parse_person_folder(folder.name)
    except ValueError as error:
        return [], [f"{folder.name}: {error}"]
    rows, problems, seen_stems = [], [], set()
    for photo in sorted(p for p in folder.iterdir() if not is_hidden(p)):
        stem, extension = photo.stem, photo.suffix.lower()
        if stem not in MASK_BY_STEM or extension not in IMAGE_EXTENSIONS or not photo.is_file():
            problems.append(f"{folder.name}/{photo.name}: not one of the seven photos "
                            f"({', '.join(MASK_BY_STEM)} as {'/'.join(IMAGE_EXTENSIONS)})")
        elif stem in seen_stems:
            problems.append(f"{folder.name}/{photo.name}: a second {stem} photo")
        else:
            seen_stems.add(stem)
            rows.append({"path": f"{folder.name}/{photo.name}", **person, "mask_label": int(MASK_BY_STEM[stem])})
    missing = [stem for stem in MASK_BY_STEM if stem not in seen_stems]
    if missing:
        problems.append(f"{folder.name}: missing {', '.join(missing)}")
    return rows, problems


def check_train_csv(data_dir, folders):
    """Problems between train.csv (beside data_dir) and the person folders on disk."""
    csv_path = data_dir.parent / "train.csv"
    if not csv_path.is_file():
        raise cli.UserError(f"{csv_path} is missing: the competition ships it beside images/")
    people = read_csv(csv_path, dtype=str)
    missing_columns = [column for column in TRAIN_CSV_COLUMNS if column not in people.columns]
    if missing_columns:
        raise cli.UserError(f"{csv_path} lacks the column(s) {', '.join(missing_columns)}")
    on_disk = {folder.name for folder in folders}
    return [f"train.csv: person {path} has no folder" for path in people["path"] if path not in on_disk]


def scan(data_dir):
    """All image rows under data_dir and every problem found, in a stable order."""
    if not data_dir.is_dir():
        raise cli.UserError(f"{data_dir} is not a folder: pass --data_dir or set SM_CHANNEL_TRAIN")
    entries = sorted(entry for entry in data_dir.iterdir() if not is_hidden(entry))
    folders = [entry for entry in entries if entry.is_dir()]
    problems = [f"{entry.name}: a file where person folders are expected" for entry in entries if not entry.is_dir()]
    problems += check_train_csv(data_dir, folders)
    rows, folder_of_id = [], {}
    for folder in tqdm(folders, desc="scan", unit="person"):
        person_rows, person_problems = scan_person(folder)
        problems += person_problems
        if person_rows:
            person_id = person_rows[0]["id"]
            if person_id in folder_of_id:
                problems.append(f"{folder.name}: person id {person_id} also used by {folder_of_id[person_id]}")
                continue
            folder_of_id[person_id] = folder.name
        for row in person_rows:
            if photo_decodes(data_dir / row["path"]):
                rows.append(row)
            else:
                problems.append(f"{row['path']}: the photo does not decode (corrupt or truncated)")
    return rows, problems


def report_problems(problems, data_dir, skip_bad):
    if not problems:
        return
    listed = "; ".join(shown(problem) for problem in problems[:SHOWN_PROBLEMS])
    more = f" (and {len(problems) - SHOWN_PROBLEMS} more)" if len(problems) > SHOWN_PROBLEMS else ""
    if not skip_bad:
        raise cli.UserError(f"{len(problems)} problem(s) in {data_dir}: {listed}{more}; "
                            "fix them or pass --skip_bad to skip them")
    print(f"skipped {len(problems)} problem(s): {listed}{more}")


def set_person_value(frame, rows, column, value):
    """Sets a person's column; describes the change (or that there was none)."""
    old = frame.loc[rows, column].iloc[0]
    frame.loc[rows, column] = value
    return f"{column} {old} -> {value}" if old != value else f"{column} already {value}"


def correct_gender(frame, rows, value):
    gender = value.strip().lower()
    if gender not in GENDER_BY_NAME:
        raise ValueError(f"gender {value!r} is not male or female")
    return set_person_value(frame, rows, "gender", gender)


def correct_age(frame, rows, value):
    if not value.strip().isdigit() or not MIN_AGE <= int(value) <= MAX_AGE:
        raise ValueError(f"age {value!r} is not a number in {MIN_AGE}-{MAX_AGE}")
    return set_person_value(frame, rows, "age", int(value))


def swap_masks(frame, rows, value):
    swapped = {MaskLabel.INCORRECT: MaskLabel.NOT_WEAR, MaskLabel.NOT_WEAR: MaskLabel.INCORRECT}
    frame.loc[rows, "mask_label"] = frame.loc[rows, "mask_label"].map(lambda mask: int(swapped.get(mask, mask)))
    return "incorrect_mask and normal labels swapped"


CORRECTIONS = {"gender": correct_gender, "age": correct_age, "mask_swap": swap_masks}


def read_corrections(path):
    """The corrections CSV as strings (id, field, value), its columns checked."""
    path = Path(path)
    if not path.is_file():
        raise cli.UserError(f"corrections file {path} does not exist")
    corrections = read_csv(path, dtype=str, keep_default_na=False)
    missing = [column for column in CORRECTIONS_COLUMNS if column not in corrections.columns]
    if missing:
        raise cli.UserError(f"{path} lacks the column(s) {', '.join(missing)} (expected id, field, value)")
    return corrections


def apply_corrections(frame, corrections):
    """The image rows with every correction applied in file order, and one line describing each change."""
    frame, changes = frame.copy(), []
    for line, (person, field, value) in enumerate(corrections[list(CORRECTIONS_COLUMNS)].itertuples(index=False), 2):
        rows = frame["id"] == person.strip()
        if not rows.any():
            raise cli.UserError(f"corrections line {line}: no person with id {person!r}")
        if field not in CORRECTIONS:
            raise cli.UserError(f"corrections line {line}: unknown field {field!r} (expected {', '.join(CORRECTIONS)})")
        try:
            changes.append(f"{person.strip()}: {CORRECTIONS[field](frame, rows, value)}")
        except ValueError as error:
            raise cli.UserError(f"corrections line {line}: {error}") from None
    return frame, changes


def label_rows(rows):
    frame = pd.DataFrame(rows)
    frame["gender_label"] = frame["gender"].map(lambda name: int(GENDER_BY_NAME[name]))
    frame["age_label"] = age_band(frame["age"].to_numpy()).astype(int)
    frame["label"] = encode_label(frame["mask_label"], frame["gender_label"], frame["age_label"])
    return frame


def assign_folds(frame, kfold, seed):
    """Fold of each row: grouped by person, stratified on the person's gender x age class."""
    people = frame["id"].nunique()
    if people < kfold:
        raise cli.UserError(f"{people} people cannot fill {kfold} folds: add data or lower --kfold")
    return split_folds(frame, frame["gender_label"] * 3 + frame["age_label"], frame["id"], kfold, seed)


def split_folds(frame, strata, groups, kfold, seed):
    """`frame` with the column fold: StratifiedGroupKFold's, a group never on both sides, each fold's mix of
    `strata` as close to the whole's as the groups allow."""
    if (counts := strata.value_counts()).max() < kfold:
        raise cli.UserError(f"no class has {kfold} photos to spread over {kfold} folds (the most: {counts.max()}): "
                            "add photos or lower --kfold")
    splitter = StratifiedGroupKFold(n_splits=kfold, shuffle=True, random_state=seed)
    frame["fold"] = -1
    with warnings.catch_warnings():
        # Small data sets have classes rarer than kfold; the split is still by group, only less even.
        warnings.filterwarnings("ignore", message="The least populated class")
        for fold, (_, held_out) in enumerate(splitter.split(frame, strata, groups=groups)):
            frame.loc[frame.index[held_out], "fold"] = fold
    return frame


def detect_layout(data_dir, layout):
    """competition or folders: as asked, or (auto) competition when a subfolder is named like a person folder."""
    if layout != "auto":
        return layout
    if not data_dir.is_dir():
        raise cli.UserError(f"{data_dir} is not a folder: pass --data_dir or set SM_CHANNEL_TRAIN")
    names = [entry.name for entry in data_dir.iterdir() if entry.is_dir() and not is_hidden(entry)]
    return "competition" if any(PERSON_FOLDER.match(name) for name in names) else "folders"


def subject_of(name, pattern):
    """The group of a photo's file name under --group_regex (its first group, or the whole match); None if none."""
    match = pattern.search(name)
    return None if match is None else (match.group(1) if pattern.groups else match.group(0))


def scan_class_folders(data_dir, group_regex=None):
    """All photo rows under the class folders of data_dir (path, class, group) and every problem found."""
    if not data_dir.is_dir():
        raise cli.UserError(f"{data_dir} is not a folder: pass --data_dir or set SM_CHANNEL_TRAIN")
    try:
        pattern = re.compile(group_regex) if group_regex else None
    except re.error as error:
        raise cli.UserError(f"--group_regex {group_regex!r} is not a regular expression: {error}") from None
    entries = sorted(entry for entry in data_dir.iterdir() if not is_hidden(entry))
    folders = [entry for entry in entries if entry.is_dir()]
    problems = [f"{entry.name}: a file where class folders are expected" for entry in entries if not entry.is_dir()]
    if len(folders) < 2:
        raise cli.UserError(f"{data_dir} holds {len(folders)} class folder(s): a classifier needs two or more")
    rows = []
    for folder in tqdm(folders, desc="scan", unit="class"):
        files = sorted(path for path in folder.rglob("*") if path.is_file()
                       and not any(is_hidden(Path(part)) for part in path.relative_to(data_dir).parts))
        photos = [path for path in files if path.suffix.lower() in IMAGE_EXTENSIONS]
        problems += [f"{path.relative_to(data_dir)}: not a photo (.jpg, .jpeg, .png)" for path in files
                     if path.suffix.lower() not in IMAGE_EXTENSIONS]
        if not photos:
            problems.append(f"{folder.name}: an empty class folder")
        for photo in photos:
            relative = str(photo.relative_to(data_dir))
            group = relative if pattern is None else subject_of(photo.name, pattern)
            if not is_utf8(relative):
                problems.append(f"{relative}: its name is not UTF-8, as the folds CSV must be: rename it")
            elif group is None:
                problems.append(f"{relative}: --group_regex finds no subject in the file name")
            elif not photo_decodes(photo):
                problems.append(f"{relative}: the photo does not decode (corrupt or truncated)")
            else:
                rows.append({"path": relative, "class": folder.name, "group": group})
    return rows, problems


def class_folder_frame(rows, kfold, seed):
    """The folds of class-folder rows: label = the class's index among the sorted class names, folds stratified
    by class and grouped by subject."""
    frame = pd.DataFrame(rows)
    classes = sorted(frame["class"].unique())
    if len(classes) < 2:
        raise cli.UserError(f"only the class {classes[0]} has usable photos: a classifier needs two or more")
    frame["label"] = frame["class"].map({name: label for label, name in enumerate(classes)})
    groups = frame["group"].nunique()
    if groups < kfold:
        raise cli.UserError(f"{groups} subjects cannot fill {kfold} folds: add data or lower --kfold")
    return split_folds(frame, frame["label"], frame["group"], kfold, seed)


def competition_frame(args, data_dir):
    """The folds of the competition's person folders, label corrections applied."""
    rows, problems = scan(data_dir)
    report_problems(problems, data_dir, args.skip_bad)
    if not rows:
        raise cli.UserError(f"no usable photos under {data_dir}")
    frame = pd.DataFrame(rows)
    if args.corrections:
        frame, changes = apply_corrections(frame, read_corrections(args.corrections))
        for change in changes:
            print(f"corrected {change}")
    return assign_folds(label_rows(frame), args.kfold, args.seed)


def folders_frame(args, data_dir):
    """The folds of a folder of class folders."""
    if args.corrections:
        raise cli.UserError("--corrections fixes the competition's person labels; fix a class folder by moving "
                            "its photos")
    rows, problems = scan_class_folders(data_dir, args.group_regex)
    report_problems(problems, data_dir, args.skip_bad)
    if not rows:
        raise cli.UserError(f"no usable photos under {data_dir}")
    return class_folder_frame(rows, args.kfold, args.seed)


def task_values(frame, layout):
    """Each photo's value of every task, by name: the competition's mask, gender and age band, or the class."""
    if layout != "competition":
        return frame[["class"]]
    labels = {"mask": frame["mask_label"], "gender": frame["gender_label"], "age": frame["age_label"]}
    return pd.DataFrame({task: np.asarray(COMPETITION.tasks[task])[labels[task].to_numpy()] for task in labels})


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    data_dir = Path(args.data_dir)
    output = Path(args.output) if args.output else data_dir.parent / "folds.csv"
    layout = detect_layout(data_dir, args.layout)
    frame = competition_frame(args, data_dir) if layout == "competition" else folders_frame(args, data_dir)
    if args.faces == "on":
        detection = detection_of(args)
        boxes = find_boxes([data_dir / path for path in frame["path"]], detection, args.device)
        frame = pd.concat([frame.reset_index(drop=True), boxes.assign(**{FACE_DETECTOR_COLUMN: detection.signature})],
                          axis=1)
        report_detection(boxes, frame["path"], output.parent / "no_face.csv")
        report_found_rates(boxes.notna().all(axis=1).to_numpy(), task_values(frame, layout),
                           output.parent / "faces_found.csv")
    write_csv(frame, output)
    group = person_column(frame)
    sizes = frame.groupby("fold")[group].nunique().tolist()
    classes = "" if layout == "competition" else f" in {frame['class'].nunique()} classes"
    print(f"wrote {output}: {len(frame)} images of {frame[group].nunique()} "
          f"{'people' if layout == 'competition' else 'subjects'}{classes}, per fold {sizes}")


if __name__ == "__main__":
    sys.exit(cli.run(main))
