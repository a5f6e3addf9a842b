"""Labels, their 18-class encoding, and the dataset that reads the competition's photos.

The one place that knows the label scheme: label = mask * 6 + gender * 3 + age, with
mask 0 wear / 1 incorrect / 2 not worn, gender 0 male / 1 female, age 0 (<30) / 1 (30-59) / 2 (60+).
Every other file encodes, decodes and composes labels through the functions below.

Photos are decoded once: `DecodedCache` holds a whole list of them, resized, in one uint8 array that later
epochs, runs and loader workers read instead of decoding JPEGs again (`--cache`, `--cache_dir`).
"""
import contextlib
import fcntl
import functools
import hashlib
import json
import multiprocessing
import os
import re
import warnings
from enum import IntEnum
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

from cli import UserError, first_line, inside
from fileio import atomic_path, open_lock, read_csv, write_json


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
FOLDS_RANGES = {"age": (MIN_AGE, MAX_AGE), "mask_label": (0, len(MaskLabel) - 1),  # the integer columns' bounds
                "gender_label": (0, len(GenderLabel) - 1), "label": (0, NUM_CLASSES - 1), "fold": (0, np.inf)}
CACHE_MODES = ("off", "disk", "ram")
CACHE_CHUNK = 64  # photos per task of the pool that builds a cache: amortises the pickling, keeps the bar moving


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
    frame = read_csv(csv_path, dtype=str)  # as text: True, 1.5 or an empty cell is no label, not 1, 1 or NaN
    missing = [column for column in FOLDS_COLUMNS if column not in frame.columns]
    if missing or frame.empty:
        raise UserError(f"{csv_path} is not a folds CSV (no {', '.join(missing) or 'rows'}): run preprocess.py")
    for column, (low, high) in FOLDS_RANGES.items():
        values = pd.to_numeric(frame[column], errors="coerce")
        if (bad := values.isna() | (values % 1 != 0) | (values < low) | (values > high)).any():
            raise UserError(f"{csv_path}: row {int(bad.argmax()) + 2} has {column} {frame[column][bad].iloc[0]!r}, "
                            f"not an integer in [{low}, {high}]: run preprocess.py")
        frame[column] = values.astype(np.int64)
    absent = [path for path in frame["path"] if not inside(data_dir, path, str(csv_path)).is_file()]
    if absent:
        raise UserError(f"{len(absent)} of {len(frame)} images in {csv_path} are not under {data_dir} "
                            f"(first: {absent[0]}): rerun preprocess.py for this data directory")
    if fold != "all" and fold not in set(frame["fold"]):
        raise UserError(f"fold {fold} is not in {csv_path} (folds {sorted(set(frame['fold']))})")
    return frame


def read_image(path):
    """The photo at `path` as an RGB PIL image, decoded as decode_image does."""
    return Image.fromarray(decode_image(path))


def to_rgb(photo):
    """A PIL image of any mode as 8-bit RGB: 16- and 32-bit integer pixels scaled from 0-65535 and float pixels from
    0-1 (PIL would clip them to white or black; values outside are refused), a palette's transparency dropped as
    PIL asks (through RGBA), every other mode converted by PIL."""
    if photo.mode.startswith("I") or photo.mode == "F":
        pixels, full_scale = np.asarray(photo, dtype=np.float64), 1.0 if photo.mode == "F" else 65535.0
        if not (np.isfinite(pixels).all() and pixels.min() >= 0 and pixels.max() <= full_scale):
            raise ValueError(f"its {photo.mode} pixels are outside 0-{full_scale:g}")
        return Image.fromarray(np.round(pixels * (255 / full_scale)).astype(np.uint8)).convert("RGB")
    if photo.mode == "P" and "transparency" in photo.info:
        photo = photo.convert("RGBA")
    return photo.convert("RGB")


def decode_image(path, size=None):
    """The photo at `path` as a uint8 (H, W, 3) array, resized to `size` = (height, width) unless None.

    The one place photos are decoded: any failure of PIL on the file's bytes (truncation, a decompression bomb,
    a malformed header, a mode it cannot convert) is the one-line error naming the photo."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # a likely bomb is refused, not decoded
            with Image.open(path) as photo:
                if size is not None:
                    # A JPEG decodes straight at 1/2, 1/4 or 1/8 scale when that still covers `size`: several times
                    # faster.
                    photo.draft("RGB", (size[1], size[0]))
                image = to_rgb(photo)
    except Exception as error:  # noqa: BLE001 -- only PIL runs here, on bytes from outside: every failure is the file's
        raise UserError(f"cannot decode {path}: {first_line(error)}") from None
    if size is not None and image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.array(image)


def decode_chunk(paths, size):
    return np.stack([decode_image(path, size) for path in paths])


def decode_into(array, paths, size):
    """Decodes the photos at `paths` into the rows of `array` on every core, with a progress bar."""
    chunks = [paths[start:start + CACHE_CHUNK] for start in range(0, len(paths), CACHE_CHUNK)]
    processes = min(os.cpu_count() or 1, len(chunks))
    with (multiprocessing.Pool(processes) if processes > 1 else contextlib.nullcontext()) as pool:
        decoded = (pool.imap if pool else map)(functools.partial(decode_chunk, size=size), chunks)
        with tqdm(total=len(paths), desc=f"decoding photos at {size[0]}x{size[1]}", unit="photo") as progress:
            for start, pixels in zip(range(0, len(paths), CACHE_CHUNK), decoded):
                array[start:start + len(pixels)] = pixels
                progress.update(len(pixels))


class DecodedCache:
    """Every photo of a list decoded once at `size` = (height, width) into one uint8 array (N, H, W, 3), by path.

    `disk` keeps it in `directory` as <key>.u8, the raw pixels that numpy.memmap maps, and <key>.json, its manifest
    (the size, and every photo's path, bytes and mtime_ns), key being a hash of the sorted paths and the size: later
    epochs, runs and loader workers map the file (the OS page cache shares it) instead of decoding. A cache whose
    manifest no longer matches the photos is rebuilt. A build writes the pixels under a temporary name, moves them
    into place, and only then writes the manifest: a build killed halfway leaves no cache that is used. `ram` builds
    the array in this process's memory for this run alone (loader workers share it by fork).
    """

    def __init__(self, paths, size, mode="disk", directory=None):
        self.paths = sorted({os.path.abspath(path) for path in paths})
        self.rows = {path: row for row, path in enumerate(self.paths)}
        self.size = tuple(size)
        self.shape = (len(self.paths), *self.size, 3)
        self.file = self.array = None
        if mode == "ram":
            self.array = np.empty(self.shape, np.uint8)
            decode_into(self.array, self.paths, self.size)
        else:
            key = hashlib.sha1(json.dumps([self.paths, self.size]).encode()).hexdigest()[:16]
            self.file = Path(directory) / f"{key}.u8"
            self.build_unless_fresh()

    @property
    def manifest_file(self):
        return self.file.with_suffix(".json")

    def manifest(self):
        """What a cache of the photos as they are now records: the size and each photo's path, bytes and mtime."""
        stats = [os.stat(path) for path in self.paths]
        return {"size": list(self.size),
                "files": [[path, stat.st_size, stat.st_mtime_ns] for path, stat in zip(self.paths, stats)]}

    def is_fresh(self, manifest):
        try:
            return (self.manifest_file.is_file() and self.file.is_file()
                    and self.file.stat().st_size == np.prod(self.shape)
                    and json.loads(self.manifest_file.read_text()) == manifest)
        except (OSError, ValueError):  # a manifest that does not read vouches for nothing: rebuild
            return False

    def build_unless_fresh(self):
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            lock = open_lock(self.file.with_suffix(".lock"))  # a data folder's symlink there is refused, not followed
        except OSError as error:
            raise UserError(f"cannot write the decoded-image cache in {self.file.parent} ({error.strerror}): "
                            "pass a writable --cache_dir, or --cache ram") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time (torchrun ranks, runs started together)
            manifest = self.manifest()  # taken before decoding: a photo rewritten meanwhile shows as stale next time
            if self.is_fresh(manifest):
                return
            if self.manifest_file.exists():
                print(f"{self.file} is stale (photos or size changed): rebuilding it")
                self.manifest_file.unlink()  # the pixels are about to change: nothing may vouch for them meanwhile
            with atomic_path(self.file) as temporary:
                pixels = np.memmap(temporary, np.uint8, "w+", shape=self.shape)
                decode_into(pixels, self.paths, self.size)
                pixels.flush()
                del pixels
            write_json(manifest, self.manifest_file)

    def pixels(self, path):
        """The photo at `path` as a uint8 (H, W, 3) array."""
        if self.array is None:
            self.array = np.memmap(self.file, np.uint8, "r", shape=self.shape)  # mapped once per process
        return np.array(self.array[self.rows[os.path.abspath(path)]])

    def __getstate__(self):
        # spawn and forkserver pickle the dataset into each loader worker: a worker maps the file itself
        return {**self.__dict__, "array": None} if self.file is not None else self.__dict__


def open_cache(paths, size, mode, directory):
    """The DecodedCache of the photos at `paths` at `size` for --cache disk or ram; None for off (decode per item)."""
    if mode == "off" or not paths:
        return None
    return DecodedCache(paths, size, mode, directory)


def loader_options(workers, device, persistent=False):
    """DataLoader options: worker processes (kept between epochs if `persistent`), pinned batches on CUDA for
    non_blocking copies, and four batches in flight per worker (uint8 batches are small; a deeper queue rides out
    slow ones)."""
    options = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers > 0:
        options.update(persistent_workers=persistent, prefetch_factor=4)
    return options


@contextlib.contextmanager
def seeded_torch(seed):
    """torch's global generator (torchvision's transforms draw from it) seeded with `seed` inside the block and
    restored after it; untouched when `seed` is None."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class SeededSampler(Sampler):
    """Pairs each index another sampler draws with a seed for that item's augmentation, both drawn from `generator`:
    an epoch's augmentations then depend on the generator's seed alone, not on which loader worker, how many of
    them, or which epoch's worker processes load the item (so training workers can persist between epochs).
    The seed goes with the position, so an index drawn twice is augmented twice over."""

    def __init__(self, sampler, generator):
        self.sampler, self.generator = sampler, generator

    def __len__(self):
        return len(self.sampler)

    def __iter__(self):
        indices = list(self.sampler)
        seeds = torch.randint(2**62, (len(indices),), generator=self.generator).tolist()
        return zip(indices, seeds)


class ImageDataset(Dataset):
    """Photos by path as uint8 (3, H, W) tensors, decoded at `size` = (H, W) (None: as stored) -- read from `cache`,
    a DecodedCache holding them, or decoded per item without one -- then `transform`ed; with integer targets for
    training and validation or none for the eval set."""

    def __init__(self, paths, targets=None, transform=None, size=None, cache=None):
        self.paths = [Path(path) for path in paths]
        self.targets = None if targets is None else np.asarray(targets, dtype=np.int64)
        self.transform, self.size, self.cache = transform, size, cache

    def __len__(self):
        return len(self.paths)

    def load(self, index):
        """The photo at `index` as decoded, before the transform: a uint8 (3, H, W) tensor."""
        path = self.paths[index]
        pixels = decode_image(path, self.size) if self.cache is None else self.cache.pixels(path)
        return torch.from_numpy(pixels).permute(2, 0, 1)

    def __getitem__(self, item):
        """The transformed photo (and its target) at `item`: an index, or (index, seed) from a SeededSampler, the
        random transform then drawing from that seed alone."""
        index, seed = item if isinstance(item, tuple) else (item, None)
        image = self.load(index)
        if self.transform is not None:
            with seeded_torch(seed):
                image = self.transform(image)
        if self.targets is None:
            return image
        return image, int(self.targets[index])

    def get_labels(self):
        """The targets, as torchsampler's ImbalancedDatasetSampler expects them."""
        return self.targets.tolist()
