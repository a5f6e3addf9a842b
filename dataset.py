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
import itertools
import json
import math
import multiprocessing
import os
import re
from enum import IntEnum
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, RandomSampler, Sampler, WeightedRandomSampler
from torchsampler import ImbalancedDatasetSampler
from tqdm import tqdm

from cli import UserError, inside
from faces import check_boxes
from fileio import atomic_path, megabytes, open_lock, read_csv, reserve, write_json, write_problem
from photos import DECODING, decode_image
from sorting import UNCERTAIN


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


RESERVED_CLASS_NAMES = {UNCERTAIN: "sorting's folder of the unsure photos"}  # names the toolkit gives folders itself
MAX_CLASSES = 10_000  # a scheme of more is no classifier's: a config or metadata that says so is refused, not built
NAME_BYTES = 255  # a class name is a folder name under --sort_into


def class_name_problem(name):
    """What keeps `name` from being a class name, or None: a class name is the name of a folder (inference.py
    --sort_into, a class-folder data set) and of a column (prob_<name>), so it is plain text, one path component,
    visible, and not a folder name the toolkit uses itself."""
    if not isinstance(name, str):
        return "is not text"
    if not name.strip():
        return "is empty"
    if name in (".", "..") or "/" in name or "\\" in name:
        return "is a path, not a name"
    if not name.isprintable():  # control characters, NUL, line breaks, bytes that are not UTF-8
        return "holds a control character or a byte that is not text"
    if name.startswith("."):
        return "is hidden (the toolkit skips names that start with '.')"
    if name.casefold() in RESERVED_CLASS_NAMES:
        return f"is the name of {RESERVED_CLASS_NAMES[name.casefold()]}"
    if len(name.encode()) > NAME_BYTES:
        return f"is longer than a folder name may be ({NAME_BYTES} bytes)"
    return None


def check_scheme(name, tasks, source):
    """Refuses, in one line naming `source`, a scheme that is not a name and tasks of unique, valid class names."""
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{source}: its label scheme has no name")
    if not isinstance(tasks, dict) or not tasks:
        raise UserError(f"{source}: its label scheme has no tasks (a table of each task's class names)")
    for task, names in tasks.items():
        if not isinstance(task, str) or not task.strip() or not task.isprintable():
            raise UserError(f"{source}: its label scheme has a task named {task!r}, not a name")
        if not isinstance(names, (list, tuple)) or not names:
            raise UserError(f"{source}: the task {task!r} of its label scheme lists no class names")
        for class_name in names:
            if problem := class_name_problem(class_name):
                raise UserError(f"{source}: the class name {class_name!r} {problem}: class names are plain, unique "
                                "folder names")
        if len(set(names)) < len(names):
            twice = next(class_name for class_name in names if names.count(class_name) > 1)
            raise UserError(f"{source}: the class name {twice!r} is listed twice in the task {task!r}")
    if math.prod(len(names) for names in tasks.values()) > MAX_CLASSES:
        raise UserError(f"{source}: its label scheme has more than {MAX_CLASSES} classes")


class LabelScheme:
    """The classes a run predicts and the tasks they factor into, saved in every run's config.json.

    `tasks` maps each task to its class names, in encoding order; the classes are every combination of one class
    per task, the last task varying fastest, so that label = sum of task label * the product of the later tasks'
    sizes (the competition's mask * 6 + gender * 3 + age). A class-folder data set has one task, `class`, whose
    classes are its folder names, sorted. Every scheme is checked where it is made (check_scheme): what a config,
    an exported model or a folds CSV says is refused in one line naming `source` unless its class names can be
    folder names.
    """

    def __init__(self, name, tasks, source="the label scheme"):
        check_scheme(name, tasks, source)
        self.name = name
        self.tasks = {task: list(names) for task, names in tasks.items()}
        self.sizes = [len(names) for names in self.tasks.values()]
        self.num_classes = math.prod(self.sizes)
        self.strides = [math.prod(self.sizes[k + 1:]) for k in range(len(self.sizes))]

    @property
    def classes(self):
        """The name of every class in label order: its tasks' class names joined by `/`."""
        return ["/".join(names) for names in itertools.product(*self.tasks.values())]

    def to_dict(self):
        return {"name": self.name, "tasks": self.tasks}

    @classmethod
    def from_dict(cls, data, source="the label scheme"):
        if not isinstance(data, dict):
            raise UserError(f"{source}: its label scheme is {data!r}, not a name and tasks")
        return cls(data.get("name"), data.get("tasks"), source)

    def __eq__(self, other):
        return isinstance(other, LabelScheme) and self.to_dict() == other.to_dict()

    def encode(self, *task_labels):
        """The class label from one label per task; works on ints and on arrays."""
        return sum(label * stride for label, stride in zip(task_labels, self.strides))

    def decode(self, labels):
        """One label per task of class labels (an int or an array)."""
        return tuple((labels // stride) % size for stride, size in zip(self.strides, self.sizes))

    def compose(self, *task_probabilities):
        """Class probabilities (N, C) as the product of one distribution (N, size) per task."""
        joint = task_probabilities[0]
        for probabilities in task_probabilities[1:]:
            joint = (joint[:, :, None] * probabilities[:, None, :]).flatten(1)
        return joint

    def split(self, values):
        """Splits the last dimension laid out as [task 1 | task 2 | ...] (the multi head's logits) into the tasks."""
        return torch.split(values, self.sizes, dim=-1)

    def marginals(self, probabilities):
        """One distribution (N, size) per task of class probabilities (N, C)."""
        joint = probabilities.reshape(probabilities.shape[0], *self.sizes)
        return tuple(joint.sum(dim=[axis + 1 for axis in range(len(self.sizes)) if axis != task])
                     if len(self.sizes) > 1 else joint for task in range(len(self.sizes)))


COMPETITION = LabelScheme("competition", {"mask": ["wear", "incorrect", "not_wear"], "gender": ["male", "female"],
                                          "age": ["<30", "30-59", "60+"]})
NUM_CLASSES = COMPETITION.num_classes
TASK_CLASSES = dict(zip(COMPETITION.tasks, COMPETITION.sizes))  # the three tasks, in encoding order


def scheme_of(config, source="the run's config"):
    """The label scheme of a run's config (train.py's resolved arguments), checked; runs saved before schemes were
    the competition's."""
    return LabelScheme.from_dict(config["scheme"], source) if config.get("scheme") is not None else COMPETITION


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
FOLDER_FOLDS_COLUMNS = ("path", "class", "label", "group", "fold")  # ... for a folder of class folders
# the integer columns' bounds; a folder set's labels are bounded by its classes
FOLDS_RANGES = {"age": (MIN_AGE, MAX_AGE), "mask_label": (0, len(MaskLabel) - 1),
                "gender_label": (0, len(GenderLabel) - 1), "label": (0, np.inf), "fold": (0, np.inf)}
CACHE_MODES = ("off", "disk", "ram")
SAMPLERS = ("none", "weighted", "imbalanced")
CACHE_CHUNK = 64  # photos per task of the pool that builds a cache: amortises the pickling, keeps the bar moving


def age_band(age, old_age=OLD_AGE):
    """Age band of an age (or an array of ages); `old_age` moves the 60+ boundary for training."""
    age = np.asarray(age)
    return np.where(age < 30, AgeLabel.YOUNG, np.where(age < old_age, AgeLabel.MIDDLE, AgeLabel.OLD))


# The competition's scheme, spelt out where the competition's layout is read (preprocess.py) and in its tests.
encode_label, decode_label = COMPETITION.encode, COMPETITION.decode
compose_probabilities, task_marginals = COMPETITION.compose, COMPETITION.marginals


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


def folder_scheme(class_names, source="the class folders"):
    """The scheme of a class-folder data set: one task, `class`, whose classes are the folder names, sorted."""
    class_names = list(class_names)
    check_scheme("folders", {"class": class_names}, source)  # before sorting: an empty cell is no name to sort
    return LabelScheme("folders", {"class": sorted(class_names)}, source)


def frame_scheme(frame, source="the folds CSV"):
    """The label scheme of a folds CSV: the competition's, or its class folders'."""
    return COMPETITION if "mask_label" in frame.columns else folder_scheme(frame["class"].unique(), source)


def person_column(frame):
    """The folds CSV's column naming the person (or subject) of each photo, whom the folds keep together."""
    return "id" if "mask_label" in frame.columns else "group"


def target_scheme(scheme, task="all"):
    """The classes a run predicts: the whole scheme, or one of its tasks alone (train.py --task)."""
    if task == "all":
        return scheme
    if task not in scheme.tasks or len(scheme.tasks) == 1:
        raise UserError(f"--task {task}: the {scheme.name} scheme has no such separate task "
                        f"({', '.join(scheme.tasks)}); use --task all")
    return LabelScheme(scheme.name, {task: scheme.tasks[task]})


def run_scheme(config, source="the run's config"):
    """The classes a trained run predicts, from its config: its data's scheme narrowed to its --task, both
    checked."""
    scheme, task = scheme_of(config, source), config.get("task", "all")
    if task != "all" and (not isinstance(task, str) or task not in scheme.tasks or len(scheme.tasks) == 1):
        raise UserError(f"{source}: task is {task!r}, which is neither all nor a task of its label scheme "
                        f"({', '.join(scheme.tasks)})")
    return target_scheme(scheme, task)


def training_targets(frame, task="all", old_age=OLD_AGE):
    """Targets of a folds-CSV frame for a task; for the competition `old_age` relabels ages at or over it as 60+."""
    if "mask_label" not in frame.columns:
        return frame["label"].to_numpy(dtype=np.int64)
    mask = frame["mask_label"].to_numpy()
    gender = frame["gender_label"].to_numpy()
    age = age_band(frame["age"].to_numpy(), old_age)
    targets = {"all": encode_label(mask, gender, age), "mask": mask, "gender": gender, "age": age}[task]
    return targets.astype(np.int64)


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
    required = FOLDS_COLUMNS if "mask_label" in frame.columns or "class" not in frame.columns else FOLDER_FOLDS_COLUMNS
    missing = [column for column in required if column not in frame.columns]
    if missing or frame.empty:
        raise UserError(f"{csv_path} is not a folds CSV (no {', '.join(missing) or 'rows'}): run preprocess.py")
    for column, (low, high) in FOLDS_RANGES.items():
        if column not in required:
            continue
        values = pd.to_numeric(frame[column], errors="coerce")
        if (bad := values.isna() | (values % 1 != 0) | (values < low) | (values > high)).any():
            raise UserError(f"{csv_path}: row {int(bad.argmax()) + 2} has {column} {frame[column][bad].iloc[0]!r}, "
                            f"not an integer in [{low}, {high}]: run preprocess.py")
        frame[column] = values.astype(np.int64)
    scheme = frame_scheme(frame, str(csv_path))
    if (frame["label"] >= scheme.num_classes).any():
        raise UserError(f"{csv_path}: a label is not one of the {scheme.num_classes} classes: run preprocess.py")
    if "class" in frame.columns and "mask_label" not in frame.columns:
        wrong = frame["label"] != frame["class"].map({name: label for label, name in enumerate(scheme.classes)})
        if wrong.any():
            row = int(wrong.argmax())
            raise UserError(f"{csv_path}: row {row + 2} labels the class {frame['class'].iloc[row]!r} "
                            f"{frame['label'].iloc[row]}, not {scheme.classes.index(frame['class'].iloc[row])} "
                            "(its place among the sorted classes): run preprocess.py")
    frame = check_boxes(frame, csv_path)
    absent = [path for path in frame["path"] if not inside(data_dir, path, str(csv_path)).is_file()]
    if absent:
        raise UserError(f"{len(absent)} of {len(frame)} images in {csv_path} are not under {data_dir} "
                            f"(first: {absent[0]}): rerun preprocess.py for this data directory")
    if fold != "all" and fold not in set(frame["fold"]):
        raise UserError(f"fold {fold} is not in {csv_path} (folds {sorted(set(frame['fold']))})")
    return frame


def decode_chunk(items, size, zoom):
    return np.stack([decode_image(path, size, region, zoom) for path, region in items])


def decode_into(array, paths, size, regions=None, zoom=1.0):
    """Decodes the photos at `paths` (each cut to its region when `regions` are given) into the rows of `array` on
    every core, with a progress bar."""
    items = list(zip(paths, regions if regions is not None else [None] * len(paths)))
    chunks = [items[start:start + CACHE_CHUNK] for start in range(0, len(items), CACHE_CHUNK)]
    processes = min(os.cpu_count() or 1, len(chunks))
    with (multiprocessing.Pool(processes) if processes > 1 else contextlib.nullcontext()) as pool:
        decoded = (pool.imap if pool else map)(functools.partial(decode_chunk, size=size, zoom=zoom), chunks)
        with tqdm(total=len(paths), desc=f"decoding photos at {size[0]}x{size[1]}", unit="photo") as progress:
            for start, pixels in zip(range(0, len(paths), CACHE_CHUNK), decoded):
                array[start:start + len(pixels)] = pixels
                progress.update(len(pixels))


class DecodedCache:
    """Every photo of a list decoded once at `size` = (height, width) into one uint8 array (N, H, W, 3), by path;
    with `regions` (one per path, fractions of the photo) each photo cut to its crop first, enlarged by `zoom`.

    `disk` keeps it in `directory` as <key>.u8, the raw pixels that numpy.memmap maps, and <key>.json, its manifest
    (the size, the crop, photos.DECODING and every photo's path, bytes and mtime_ns), key being a hash of the sorted
    paths, the size, the crop and the decoding: later epochs, runs and loader workers map the file (the OS page
    cache shares it) instead of decoding, and another crop or margin is another cache. A cache whose manifest no
    longer matches the photos is rebuilt. A build writes the pixels under a temporary name, moves them into place,
    and only then writes the manifest: a build killed halfway leaves no cache that is used. `ram` builds the array
    in this process's memory for this run alone (loader workers share it by fork).
    """

    def __init__(self, paths, size, mode="disk", directory=None, regions=None, zoom=1.0):
        region_of = dict(zip((os.path.abspath(path) for path in paths),
                             regions if regions is not None else [None] * len(paths)))
        self.paths = sorted(region_of)
        self.regions = None if regions is None else [[float(v) for v in region_of[path]] for path in self.paths]
        self.zoom = zoom
        self.rows = {path: row for row, path in enumerate(self.paths)}
        self.size = tuple(size)
        self.shape = (len(self.paths), *self.size, 3)
        self.file = self.array = None
        if mode == "ram":
            self.array = np.empty(self.shape, np.uint8)
            self.decode(self.array)
        else:
            key = hashlib.sha1(json.dumps([self.paths, self.size, self.crop(), DECODING]).encode()).hexdigest()[:16]
            self.file = Path(directory) / f"{key}.u8"
            self.build_unless_fresh()

    def crop(self):
        """What the pixels are cut to: nothing, or every photo's region and the zoom."""
        return None if self.regions is None else {"regions": self.regions, "zoom": self.zoom}

    def decode(self, array):
        decode_into(array, self.paths, self.size, self.regions, self.zoom)

    @property
    def manifest_file(self):
        return self.file.with_suffix(".json")

    def manifest(self):
        """What a cache of the photos as they are now records: the size and each photo's path, bytes and mtime."""
        stats = [os.stat(path) for path in self.paths]
        return {"size": list(self.size), "crop": self.crop(), "decoding": DECODING,
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
                self.reserve(temporary)
                pixels = np.memmap(temporary, np.uint8, "w+", shape=self.shape)
                self.decode(pixels)
                pixels.flush()
                del pixels
            write_json(manifest, self.manifest_file)

    def reserve(self, temporary):
        """The cache's bytes allocated on disk before the map writes them: a full disk is the one-line error saying
        how much the cache needs, not a bus error halfway through decoding."""
        size = int(np.prod(self.shape))
        try:
            reserve(temporary, size)
        except OSError as error:
            raise UserError(f"cannot write the decoded-image cache {self.file}: "
                            f"{write_problem(error, self.file.parent, size)}; or pass --cache_dir on another disk, "
                            f"or --cache ram (it needs {megabytes(size)} of memory) or off") from None

    def pixels(self, path):
        """The photo at `path` as a uint8 (H, W, 3) array."""
        if self.array is None:
            self.array = np.memmap(self.file, np.uint8, "r", shape=self.shape)  # mapped once per process
        return np.array(self.array[self.rows[os.path.abspath(path)]])

    def __getstate__(self):
        # spawn and forkserver pickle the dataset into each loader worker: a worker maps the file itself
        return {**self.__dict__, "array": None} if self.file is not None else self.__dict__


def open_cache(paths, size, mode, directory, regions=None, zoom=1.0):
    """The DecodedCache of the photos at `paths` at `size` (cut to `regions`) for --cache disk or ram; None for off
    (decode per item)."""
    if mode == "off" or not paths:
        return None
    return DecodedCache(paths, size, mode, directory, regions, zoom)


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


def create_sampler(name, dataset, labels, num_classes, generator=None):
    """A shuffle (what DataLoader's shuffle=True would draw), or a sampler that draws with replacement, rare classes
    as often as common ones: weighted by the inverse frequency of the class `labels` (of `num_classes`), imbalanced
    by the dataset's own targets."""
    if name == "weighted":
        weights = inverse_frequency(labels, num_classes)[labels]
        return WeightedRandomSampler(weights, len(labels), generator=generator)
    if name == "imbalanced":
        return ImbalancedDatasetSampler(dataset)
    return RandomSampler(dataset, generator=generator)


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
    """Photos by path as uint8 (3, H, W) tensors, decoded at `size` = (H, W) (None: as stored), each cut to its
    crop `regions` row (None: the whole photo) enlarged by `zoom` -- read from `cache`, a DecodedCache holding
    them, or decoded per item without one -- then `transform`ed; with integer targets for training and validation
    or none for the eval set."""

    def __init__(self, paths, targets=None, transform=None, size=None, cache=None, regions=None, zoom=1.0):
        self.paths = [Path(path) for path in paths]
        self.targets = None if targets is None else np.asarray(targets, dtype=np.int64)
        self.transform, self.size, self.cache = transform, size, cache
        self.regions, self.zoom = regions, zoom

    def __len__(self):
        return len(self.paths)

    def load(self, index):
        """The photo at `index` as decoded and cropped, before the transform: a uint8 (3, H, W) tensor."""
        path = self.paths[index]
        if self.cache is not None:
            pixels = self.cache.pixels(path)
        else:
            pixels = decode_image(path, self.size, None if self.regions is None else self.regions[index], self.zoom)
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
