"""Labels, their 18-class encoding, and the dataset that reads the competition's photos.

The one place that knows the label scheme: label = mask * 6 + gender * 3 + age, with
mask 0 wear / 1 incorrect / 2 not worn, gender 0 male / 1 female, age 0 (<30) / 1 (30-59) / 2 (60+).
Every other file encodes, decodes and composes labels through the functions below.
"""
import re
from enum import IntEnum
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from cli import UserError


class MaskLabel(IntEnum):
    WEAR = 0
    INCORRECT = 1
    NOT_WEAR = 2


class GenderLabel(IntEnum):
    MALE = 0
    FEMALE = 1


class AgeLabel(IntEnum):
    YOUNG = 0   # under 30
    MIDDLE = 1  # 30 to 59
    OLD = 2     # 60 and over


NUM_CLASSES = 18
TASK_CLASSES = {"mask": 3, "gender": 2, "age": 3}  # the three tasks, in encoding order
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
MASK_BY_STEM = {
    "mask1": MaskLabel.WEAR, "mask2": MaskLabel.WEAR, "mask3": MaskLabel.WEAR,
    "mask4": MaskLabel.WEAR, "mask5": MaskLabel.WEAR,
    "incorrect_mask": MaskLabel.INCORRECT,
    "normal": MaskLabel.NOT_WEAR,
}
GENDER_BY_NAME = {"male": GenderLabel.MALE, "female": GenderLabel.FEMALE}
PERSON_FOLDER = re.compile(r"^(?P<id>\d+)_(?P<gender>[^_]+)_(?P<race>[^_]+)_(?P<age>[^_]+)$")
MIN_AGE, MAX_AGE = 1, 120  # anything outside is a typo in the folder name, not a person
OLD_AGE = 60               # the competition's 60+ boundary
FOLDS_COLUMNS = ("path", "id", "age", "mask_label", "gender_label", "label", "fold")  # what preprocess.py writes


def age_band(age, old_age=OLD_AGE):
    """Age band of an age (or an array of ages); `old_age` moves the 60+ boundary for training."""
    age = np.asarray(age)
    return np.where(age < 30, AgeLabel.YOUNG, np.where(age < old_age, AgeLabel.MIDDLE, AgeLabel.OLD))


def encode_label(mask, gender, age):
    """18-class label from the three task labels; works on ints and on arrays."""
    return mask * 6 + gender * 3 + age


def decode_label(label):
    """(mask, gender, age) task labels of an 18-class label or an array of them."""
    return label // 6, (label // 3) % 2, label % 3


def compose_probabilities(mask_probs, gender_probs, age_probs):
    """18-class probabilities as the product of the three task distributions, shape (N, 18)."""
    joint = torch.einsum("nm,ng,na->nmga", mask_probs, gender_probs, age_probs)
    return joint.reshape(joint.shape[0], NUM_CLASSES)


def split_tasks(values):
    """Splits the last dimension laid out as [mask 3 | gender 2 | age 3] into the three tasks."""
    return torch.split(values, list(TASK_CLASSES.values()), dim=-1)


def task_marginals(probs):
    """Splits (N, 18) class probabilities into the three task distributions (N, 3), (N, 2), (N, 3)."""
    joint = probs.reshape(probs.shape[0], 3, 2, 3)
    return joint.sum(dim=(2, 3)), joint.sum(dim=(1, 3)), joint.sum(dim=(1, 2))


def parse_person_folder(name):
    """Person attributes from a folder name `{id}_{gender}_{race}_{age}`; ValueError says what is wrong."""
    match = PERSON_FOLDER.match(name)
    if not match:
        raise ValueError("folder name is not {id}_{gender}_{race}_{age}")
    gender = match["gender"].lower()
    if gender not in GENDER_BY_NAME:
        raise ValueError(f"unknown gender {match['gender']!r} (expected male or female)")
    if not match["age"].isdigit():
        raise ValueError(f"age {match['age']!r} is not a number")
    age = int(match["age"])
    if not MIN_AGE <= age <= MAX_AGE:
        raise ValueError(f"age {age} is out of range {MIN_AGE}-{MAX_AGE}")
    return {"id": match["id"], "gender": gender, "race": match["race"], "age": age}


def training_targets(frame, task="all", old_age=OLD_AGE):
    """Targets of a folds-CSV frame for a task; `old_age` relabels ages at or over it as 60+."""
    mask = frame["mask_label"].to_numpy()
    gender = frame["gender_label"].to_numpy()
    age = age_band(frame["age"].to_numpy(), old_age)
    targets = {"all": encode_label(mask, gender, age), "mask": mask, "gender": gender, "age": age}[task]
    return targets.astype(np.int64)


def num_target_classes(task="all"):
    """Number of target classes: the 18 classes, or one task's classes."""
    return NUM_CLASSES if task == "all" else TASK_CLASSES[task]


def inverse_frequency(labels, num_classes):
    """Per-class weights proportional to 1 / count, with mean 1 over the classes present; absent classes weigh 0."""
    counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(float)
    weights = np.divide(1.0, counts, out=np.zeros(num_classes), where=counts > 0)
    return weights / weights[counts > 0].mean()


def parse_age_range(text):
    """(low, high) of an inclusive age range "A-B" or a single age "A"; ValueError when it is neither."""
    bounds = text.split("-")
    if len(bounds) > 2 or not all(bound.isdigit() for bound in bounds) or int(bounds[0]) > int(bounds[-1]):
        raise ValueError(f"age range {text!r} is not A-B (A <= B) or a single age A")
    return int(bounds[0]), int(bounds[-1])


def load_folds(csv_path, data_dir, fold):
    """The folds CSV, checked against data_dir and the requested fold."""
    if not csv_path.is_file():
        raise UserError(f"{csv_path} does not exist: run preprocess.py first or pass --csv")
    frame = pd.read_csv(csv_path, dtype={"id": str})
    missing = [column for column in FOLDS_COLUMNS if column not in frame.columns]
    if missing:
        raise UserError(f"{csv_path} is not a folds CSV (no {', '.join(missing)}): run preprocess.py")
    absent = [path for path in frame["path"] if not (data_dir / path).is_file()]
    if absent:
        raise UserError(f"{len(absent)} of {len(frame)} images in {csv_path} are not under {data_dir} "
                            f"(first: {absent[0]}): rerun preprocess.py for this data directory")
    if fold != "all" and fold not in set(frame["fold"]):
        raise UserError(f"fold {fold} is not in {csv_path} (folds {sorted(set(frame['fold']))})")
    return frame


def read_image(path):
    with Image.open(path) as image:
        return image.convert("RGB")


class ImageDataset(Dataset):
    """Photos by path, with integer targets for training and validation or none for the eval set."""

    def __init__(self, paths, targets=None, transform=None):
        self.paths = [Path(path) for path in paths]
        self.targets = None if targets is None else np.asarray(targets, dtype=np.int64)
        self.transform = transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        image = read_image(self.paths[index])
        if self.transform is not None:
            image = self.transform(image)
        if self.targets is None:
            return image
        return image, int(self.targets[index])

    def get_labels(self):
        """The targets, as torchsampler's ImbalancedDatasetSampler expects them."""
        return self.targets.tolist()
