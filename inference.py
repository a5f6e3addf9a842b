"""Predicts the eval set (or any folder of photos) with one or more trained runs and writes the submission.

    export SM_CHANNEL_EVAL=data/eval SM_CHANNEL_MODEL=model/exp SM_OUTPUT_DATA_DIR=output
    python inference.py                                  # output/output.csv + output/probabilities.csv
    python inference.py --model_dir model/exp model/exp2 --batch_size 128
    python inference.py --fold 0          # the run's held-out fold of data/train/folds.csv: prints its macro F1
    python inference.py --cache off       # decode every photo anew, writing nothing beside the images
    python inference.py --data_dir photos/ --model_dir model/mask --sort_into sorted/ --min_confidence 0.8
    python inference.py --onnx model/exp/model_int8.onnx  # an exported model (export.py), run by onnxruntime
    python inference.py --decision argmax --no-calibrate   # the most probable class, probabilities as predicted
    python inference.py --adapt_prior em --keep_raw       # probabilities re-weighted to the eval set's mix

A folder without info.csv is a folder of photos (any depth): predictions.csv gets one row per photo (its path
under the folder, the predicted class name, the confidence, one prob_<class> column per class), beside the usual
probabilities.csv, and `--sort_into DIR` files every photo under DIR/<predicted class>/ (sorting.py:
`--sort_mode copy|move|symlink`, DIR/uncertain/ under `--min_confidence`, never overwriting).

Each run is rebuilt from its own config.json (model, head, resize), so nothing from training has to be
repeated; `--onnx FILE` runs exported models instead (export.py; each file carries its scheme, size and crop), with
onnxruntime on `--threads` threads. Several runs or models, or a parent folder of runs, are averaged (soft vote).
output.csv is info.csv with `ans` filled, in info.csv's row order. probabilities.csv is the common currency of TTA
and ensembles: `ImageID` followed by one column per class, `prob_0` ... `prob_17`, each row summing to 1.
With `--fold K` the eval set is fold K of the folds CSV (ImageID = the photo's path under `--train_dir`):
the same files are written and the macro F1 on that fold is printed, so TTA views and ensemble weights
are chosen on validation rather than on the leaderboard. Each photo is decoded once at each run's --resize into
a cache beside the images (`--cache disk`, as train.py does; runs of the same size share it, and so do later
calls). Each run sees the photos cropped as it was trained (its config's --crop, --face_margin, --crop_box): the
eval photos' faces are detected on the first inference that needs them and kept in faces.csv beside info.csv
(detected again only for photos added or changed since), those of a held-out fold come from the folds CSV.
inference_tta.py and ensemble.py share these flags and functions.

Each run's probabilities are adjusted (adaptation.py, docs/adaptation.md) by what its best.pth and config.json hold:
`--calibrate` (the default) fits one temperature per task on its validation fold (the fold runs of a
`train.py --fold all` parent: on all their folds together, every training photo once), so that confidences mean what
they say; `--adapt_prior em|bbse` re-weights them to the eval set's class mix, estimated without labels;
`--decision f1` (the default) answers as if every class were equally likely, by per-class weights fitted on the
validation folds (or `--oof FILE`), which raised macro F1 on the sample set where argmax under-called the rare
classes. One line per run says what was done and what could not be (a run saved before train.py recorded its
prior, an exported model away from its run). probabilities.csv holds the adjusted probabilities, output.csv the
decided answers, and `--keep_raw` adds probabilities_raw.csv, the probabilities as predicted.
"""
import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

import cli
from adaptation import DECISIONS, PRIOR_METHODS, Adjuster, HeldOut
from augmentation import create_transform
from dataset import (CACHE_MODES, COMPETITION, ImageDataset, frame_scheme, load_folds,
                     loader_options, open_cache, run_scheme, training_targets)
from evaluation import score
from faces import BOX_COLUMNS, Detection, crop_regions, fallback_face, kept_boxes, run_detection
from fileio import load_checkpoint, read_csv, read_json, utf8_paths
from exported import OnnxClassifier, check_config, read_config
from model import AMP_DTYPES, HEADS, check_amp, create_model, load_weights, place_model, predict
from photos import find_photos
from sorting import SORT_MODES, sort_photos
from submissions import read_probabilities, write_predictions, write_probabilities, write_submission

RUN_CONFIG_CHECKS = {  # what rebuilding a run's model needs from its config.json
    "model": (lambda value: isinstance(value, str) and value != "", "a model name"),
    "head": (lambda value: value in HEADS, f"one of {', '.join(HEADS)}"),
    "resize": (lambda value: isinstance(value, list) and len(value) == 2
               and all(type(side) is int and side > 0 for side in value), "two positive integers"),
}


def add_common_flags(parser, fold_all=False):
    """The flags every inference variant shares; returns the paths group for the variant's model inputs.
    `fold_all`: --fold also takes `all`, every training image (for out-of-fold predictions)."""
    paths = parser.add_argument_group("paths")
    cli.add_flag(paths, "data_dir", default=cli.env_default("SM_CHANNEL_EVAL", "data/eval"),
                 help="eval folder holding info.csv and images/ (env SM_CHANNEL_EVAL)")
    cli.add_flag(paths, "output_dir", default=cli.env_default("SM_OUTPUT_DATA_DIR", "output"),
                 help="where output.csv and probabilities.csv go (env SM_OUTPUT_DATA_DIR)")
    cli.add_flag(paths, "checkpoint", default="best", choices=("best", "last"), help="which checkpoint of each run")
    runtime = parser.add_argument_group("runtime")
    cli.add_flag(runtime, "batch_size", type=cli.positive_int, default=256, help="images per batch")
    cli.add_flag(runtime, "workers", type=cli.non_negative_int, default=max(0, min(8, (os.cpu_count() or 1) - 1)),
                 help="loader worker processes")
    cli.add_flag(runtime, "device", type=cli.device, default="cuda" if torch.cuda.is_available() else "cpu",
                 help="torch device")
    cli.add_flag(runtime, "amp", default="off", choices=list(AMP_DTYPES),
                 help="mixed precision: bf16 (GPU or CPU), fp16 (GPU), off")
    cli.add_flag(runtime, "channels_last", action="store_true", help="model and batches in channels-last format")
    cli.add_flag(runtime, "cache", default="disk", choices=CACHE_MODES,
                 help="decoded photos: disk keeps them in --cache_dir for later calls, ram for this call, off "
                      "decodes each photo for each run")
    cli.add_flag(runtime, "cache_dir", default=None,
                 help="where --cache disk keeps them (default: .cache beside the images folder)")
    held_out = parser.add_argument_group("held-out check (instead of the eval set)")
    cli.add_flag(held_out, "fold", type=fold_or_all if fold_all else cli.non_negative_int, default=None,
                 help="predict this validation fold of the folds CSV and print its macro F1"
                      + ("; all: every training image, from train.py --fold all's oof.csv" if fold_all else ""))
    cli.add_flag(held_out, "train_dir", default=cli.env_default("SM_CHANNEL_TRAIN", "data/train/images"),
                 help="folder of person folders (env SM_CHANNEL_TRAIN)")
    cli.add_flag(held_out, "csv", default=None, help="folds CSV (default: folds.csv beside train_dir)")
    adjust = parser.add_argument_group("adjusting the probabilities (adaptation.py)")
    # the defaults are what measured best: benchmark_recipe.py --adaptation, docs/adaptation.md
    cli.add_flag(adjust, "calibrate", action=argparse.BooleanOptionalAction, default=True,
                 help="one temperature per task of each run, fitted on its validation fold (the fold runs of a "
                      "--fold all parent: on all their folds together)")
    cli.add_flag(adjust, "adapt_prior", default="none", choices=PRIOR_METHODS,
                 help="re-weight each run's probabilities to the eval set's class mix, estimated without labels by "
                      "EM or BBSE from its bias-corrected calibrated posteriors; none: keep the mix they answer to")
    cli.add_flag(adjust, "decision", default="f1", choices=DECISIONS,
                 help="f1: answer as if every class were equally likely, by per-class weights fitted on held-out "
                      "predictions (the runs' validation folds, or --oof): for macro F1; argmax: the most probable "
                      "class, for accuracy")
    cli.add_flag(adjust, "oof", default=None, metavar="FILE",
                 help="held-out predictions for --decision f1, used as written: an oof.csv, or a probabilities.csv "
                      "of --fold K (labels from the folds CSV)")
    cli.add_flag(adjust, "keep_raw", action="store_true",
                 help="also write probabilities_raw.csv: the probabilities before any adjustment")
    return paths


def fold_or_all(text):
    """--fold of ensemble.py: a fold number or `all`."""
    return text if text == "all" else int(text)


def get_args_parser(description="Predict the eval set and write output.csv and probabilities.csv."):
    parser = cli.new_parser(description)
    paths = add_common_flags(parser)
    cli.add_flag(paths, "model_dir", nargs="+", default=[cli.env_default("SM_CHANNEL_MODEL", "model/exp")],
                 help="run directories, or parents of run directories, to average (env SM_CHANNEL_MODEL)")
    cli.add_flag(paths, "onnx", nargs="+", default=None, metavar="FILE",
                 help="exported models (export.py) to average instead of --model_dir's runs, run by onnxruntime")
    cli.add_flag(paths, "threads", type=cli.non_negative_int, default=0,
                 help="--onnx: onnxruntime's intra-op threads (0: its own choice, every core)")
    sort = parser.add_argument_group("sorting a folder of photos")
    cli.add_flag(sort, "sort_into", default=None, metavar="DIR",
                 help="file every photo of a photo folder under DIR/<predicted class>/")
    cli.add_flag(sort, "sort_mode", default="copy", choices=SORT_MODES,
                 help="copy, move (link then remove: never lost) or symlink the photos")
    cli.add_flag(sort, "min_confidence", type=cli.fraction, default=0.0,
                 help="photos predicted with a lower confidence go to DIR/uncertain/")
    return parser


def find_runs(paths):
    """Run directories (holding config.json) among paths, expanding a parent into its runs; a parent's run without
    a checkpoint (one that stopped before its first epoch ended) is skipped with a word."""
    runs = []
    for path in map(Path, paths):
        if (path / "config.json").is_file():
            runs.append(path)
        elif path.is_dir() and (children := sorted(p.parent for p in path.glob("*/config.json"))):
            for child in children:
                if any(child.glob("*.pth")):
                    runs.append(child)
                else:
                    print(f"skipping {child}: no checkpoint (the run stopped before its first epoch ended)")
            if not runs:
                raise cli.UserError(f"no run under {path} has a checkpoint: train one first")
        else:
            raise cli.UserError(f"{path} is not a run directory (no config.json): pass the folder train.py made")
    return runs


def find_models(args):
    """What predicts: the exported models of --onnx, or else the runs of --model_dir (find_runs)."""
    if args.onnx:
        return [Path(path) for path in args.onnx]
    return find_runs(args.model_dir)


def is_onnx(source):
    return Path(source).suffix == ".onnx"


def source_config(source):
    """The config of a run directory (its config.json) or of an exported model (its metadata), checked as
    exported.check_config checks both: what arrives with a model is not trusted."""
    if is_onnx(source):
        return read_config(source)
    if not (Path(source) / "config.json").is_file():
        raise cli.UserError(f"{source} is not a run directory (no config.json): pass the folder train.py made")
    config = read_json(Path(source) / "config.json", RUN_CONFIG_CHECKS)
    check_config(config, Path(source) / "config.json")
    return config


def check_run(source, config, task="all", fold=None):
    """Refuses a run (or exported model) trained for another task than `task` (None: whatever task it predicts),
    and, when scoring fold `fold`, one that trained on it."""
    run_task = config.get("task", "all")
    if task is not None and run_task != task:
        if task == "all":
            raise cli.UserError(f"{source} predicts the {run_task} task alone: compose mask, gender and age runs "
                                "into 18 classes with ensemble.py --mask RUN --gender RUN --age RUN")
        raise cli.UserError(f"{source} was trained with --task {run_task}, not --task {task}: pass it "
                            + ("as an input to vote" if run_task == "all" else f"as --{run_task}"))
    if fold is not None and config.get("fold") != fold:
        raise cli.UserError(f"{source} held out fold {config.get('fold')}, not {fold}: it trained on fold {fold}, "
                            f"so pass --fold {config.get('fold')} or a run that held out fold {fold}")


def load_run(run_dir, device, checkpoint="best", task="all", fold=None, threads=0):
    """(model, config) of a trained run, from its config.json and checkpoint, or of an exported .onnx model
    (OnnxClassifier, on `threads` onnxruntime threads), checked by check_run."""
    config = source_config(run_dir)
    check_run(run_dir, config, task, fold)
    if is_onnx(run_dir):
        model = OnnxClassifier(run_dir, threads)
        return model, model.config
    model = create_model(config, initial_weights=False)
    path = run_dir / f"{checkpoint}.pth"
    load_weights(model, load_checkpoint(path)["model"], path)
    return model.to(device), config


def run_held_out(run_dir, config, checkpoint="best"):
    """(validation probabilities, their true labels) of a run's best epoch, which its adjustments are fitted on, or
    a sentence saying why there are none. Runs saved before best.pth kept the targets get them from the folds CSV."""
    if checkpoint != "best":
        return "only best.pth holds validation predictions"
    state = load_checkpoint(Path(run_dir) / "best.pth")
    if "valid_probabilities" not in state:
        return "its best.pth holds no validation predictions"
    probabilities, labels = state["valid_probabilities"], state.get("valid_targets")
    if labels is None:
        try:
            frame = load_folds(Path(config["csv"]), Path(config["data_dir"]), config["fold"])
        except (cli.UserError, KeyError, TypeError):
            return f"its folds CSV {config.get('csv')} cannot label its validation fold"
        labels = training_targets(frame[frame["fold"] == config["fold"]], config.get("task", "all"))
    labels = np.asarray(labels)
    if len(labels) != len(probabilities) or labels.max(initial=0) >= probabilities.shape[1]:
        return "its validation predictions do not match its folds CSV's validation fold"
    return probabilities, labels


def held_out_of(run_dir, config, checkpoint="best"):
    """What a run's adjustments are fitted on: its held-out predictions (run_held_out), or for a fold run of
    `train.py --fold all` (its parent holds oof.csv) every fold run's together, with their source. The fold runs
    share a recipe, and one temperature fitted on every training photo, each predicted by the run that did not train
    on it, follows the eval set where one fitted on a fifth of them followed its few people (docs/adaptation.md)."""
    own, parent = run_held_out(run_dir, config, checkpoint), Path(run_dir).parent
    if isinstance(own, str) or not (parent / "oof.csv").is_file():
        return own
    folds = [run_held_out(config_file.parent, read_json(config_file), checkpoint)
             for config_file in sorted(parent.glob("fold*/config.json"))]
    if len(folds) < 2 or any(isinstance(fold, str) for fold in folds):
        return own
    return (torch.cat([torch.as_tensor(probabilities) for probabilities, _ in folds]),
            np.concatenate([labels for _, labels in folds]), f"the {len(folds)} fold runs of {parent}")


def fitted_run(source, config):
    """(run directory, its config) whose validation predictions and training prior adjust the predictions of
    `source`: the run itself, or for an exported model the run directory it was exported into (beside it, of the
    same model, classes, fold and size); (None, config) when there is none."""
    if not is_onnx(source):
        return source, config
    run_dir = Path(source).parent
    if not (run_dir / "config.json").is_file():
        return None, config
    run_config = read_json(run_dir / "config.json")
    same = (all(run_config.get(key) == config.get(key) for key in ("model", "task", "fold", "resize"))
            and run_scheme(run_config) == run_scheme(config))
    return (run_dir, run_config) if same else (None, config)


def adjust_run(adjuster, source, config, probabilities, checkpoint="best"):
    """One run's (or exported model's) probabilities adjusted by the Adjuster (None: as predicted)."""
    if adjuster is None:
        return probabilities
    run_dir, config = fitted_run(source, config)
    held_out = ("not needed" if not adjuster.active
                else held_out_of(run_dir, config, "best" if is_onnx(source) else checkpoint) if run_dir
                else "an exported model carries no validation predictions, and no run directory is beside it")
    return adjuster.adjust(str(source), run_scheme(config), config["head"], probabilities, held_out,
                           config.get("training_prior"))


def make_adjuster(args, scheme):
    """The Adjuster of the --calibrate, --adapt_prior, --decision and --oof flags."""
    return Adjuster(args.calibrate, args.adapt_prior, args.decision, read_oof(args, scheme) if args.oof else None)


def read_oof(args, scheme):
    """--oof's held-out predictions and their labels: its label column (an oof.csv), else the folds CSV's labels of
    its ImageIDs (paths under --train_dir, as --fold K names them)."""
    image_ids, probabilities = read_probabilities(args.oof)
    if probabilities.shape[1] != scheme.num_classes:
        raise cli.UserError(f"--oof {args.oof} holds {probabilities.shape[1]} classes, not the {scheme.num_classes} "
                            "the runs predict")
    frame = read_csv(args.oof, dtype={"ImageID": str})
    if "label" in frame.columns:
        labels = pd.to_numeric(frame["label"], errors="coerce")
    else:
        folds = read_folds(args.csv, args.train_dir, "all")
        labels = pd.Series(training_targets(folds), index=folds["path"]).reindex(image_ids)
    if labels.isna().any() or not labels.between(0, scheme.num_classes - 1).all():
        raise cli.UserError(f"--oof {args.oof}: a row has no label (no label column, and an ImageID the folds CSV "
                            "does not list): pass an oof.csv or a probabilities.csv of --fold K")
    return HeldOut(probabilities, labels.to_numpy(dtype=np.int64))


def read_info(eval_dir):
    """info.csv of the eval folder, checked for its ImageID column."""
    info_path = Path(eval_dir) / "info.csv"
    if not info_path.is_file():
        raise cli.UserError(f"{info_path} does not exist: pass --data_dir or set SM_CHANNEL_EVAL (for a folder of "
                            f"photos, pass that folder: {Path(eval_dir) / 'images'})")
    info = read_csv(info_path, dtype={"ImageID": str})
    if "ImageID" not in info.columns:
        raise cli.UserError(f"{info_path} lacks the ImageID column")
    if info.empty:
        raise cli.UserError(f"{info_path} lists no image")
    if (unnamed := info["ImageID"].isna() | (info["ImageID"].str.strip() == "")).any():
        raise cli.UserError(f"{info_path}: row {int(unnamed.argmax()) + 2} has no ImageID")
    return info


def read_eval_set(eval_dir):
    """info.csv of the eval folder and its image paths, checked: every image exists."""
    info, info_path, image_dir = read_info(eval_dir), Path(eval_dir) / "info.csv", Path(eval_dir) / "images"
    paths = [cli.inside(image_dir, image_id, str(info_path)) for image_id in info["ImageID"]]
    absent = [image_id for image_id, path in zip(info["ImageID"], paths) if not path.is_file()]
    if absent:
        raise cli.UserError(f"{len(absent)} images named in {info_path} are not in {image_dir} "
                            f"(first: {absent[0]!r})")
    return info, paths


def read_held_out_fold(train_dir, csv, fold):
    """(info, paths, labels) of a validation fold (`all`: of every training image) as an eval set: ImageID is the
    photo's path under train_dir, labels are the true 18-class labels."""
    train_dir = Path(train_dir)
    frame = read_folds(csv, train_dir, fold)
    held_out = frame if fold == "all" else frame[frame["fold"] == fold]
    info = pd.DataFrame({"ImageID": held_out["path"].to_numpy(), "ans": 0})
    return info, [train_dir / path for path in held_out["path"]], training_targets(held_out)


def read_folds(csv, train_dir, fold):
    return load_folds(Path(csv) if csv else Path(train_dir).parent / "folds.csv", Path(train_dir), fold)


class FaceBoxes:
    """The face boxes of the photos predicted, found when a run first needs them: for --fold K the folds CSV's,
    the photos without a face falling back on the median face of the whole CSV as in training; for the eval set
    detected as the run's training photos were (its face_detection) and kept in faces.csv beside info.csv
    (faces.kept_boxes), falling back on its own median."""

    def __init__(self, args, paths, device):
        self.args, self.paths, self.device = args, paths, device
        self.found = {}  # detection signature: (boxes, fallback)

    def find(self, signature):
        if self.args.fold is None:
            folder = is_photo_folder(self.args)
            images = Path(self.args.data_dir) / ("" if folder else "images")
            store = cache_dir(self.args) / "faces.csv" if folder else Path(self.args.data_dir) / "faces.csv"
            boxes = kept_boxes(self.paths, [os.path.relpath(path, images) for path in self.paths], store,
                               self.device, Detection.from_signature(signature))
            return boxes, fallback_face(boxes)
        frame = read_folds(self.args.csv, self.args.train_dir, self.args.fold)
        if not set(BOX_COLUMNS) <= set(frame.columns):
            raise cli.UserError("the folds CSV has no face boxes: rerun preprocess.py without --faces off")
        return frame.loc[frame["fold"] == self.args.fold, list(BOX_COLUMNS)].reset_index(drop=True), \
            fallback_face(frame)

    def regions(self, config):
        """Each photo's crop region under the run's config (faces.crop_regions); None for the whole photo."""
        crop = config.get("crop", "none")  # runs saved before crops existed saw the whole photo
        if crop != "face":
            return crop_regions(pd.DataFrame(index=range(len(self.paths))), crop, config.get("face_margin", 0.0),
                                config.get("crop_box"))
        signature = run_detection(config)
        if signature not in self.found:
            self.found[signature] = self.find(signature)
        boxes, fallback = self.found[signature]
        return crop_regions(boxes, crop, config.get("face_margin", 0.0), config.get("crop_box"), fallback)


def is_photo_folder(args):
    """Whether the photos predicted are a plain folder of photos: no --fold, no info.csv, and no images/ folder (an
    eval set that lost its info.csv is refused, not predicted as photos)."""
    data_dir = Path(args.data_dir)
    return (args.fold is None and data_dir.is_dir() and not (data_dir / "info.csv").is_file()
            and not (data_dir / "images").is_dir())


def read_photo_folder(folder):
    """(info, paths) of every photo under `folder` (hidden files and folders left out), ImageID its path there."""
    folder = Path(folder)
    paths = utf8_paths(find_photos(folder))  # predictions.csv cannot name the others
    if not paths:
        raise cli.UserError(f"no info.csv and no photos (.jpg, .jpeg, .png) in {folder}: pass an eval folder or "
                            "a folder of photos")
    return pd.DataFrame({"ImageID": [str(path.relative_to(folder)) for path in paths]}), paths


def read_images(args):
    """(info, paths, labels): the eval set or a folder of photos with labels None, or with --fold the held-out
    fold and its labels."""
    if args.fold is not None:
        return read_held_out_fold(args.train_dir, args.csv, args.fold)
    if is_photo_folder(args):
        return *read_photo_folder(args.data_dir), None
    return *read_eval_set(args.data_dir), None


def runs_scheme(run_dirs, args, task="all"):
    """The label scheme the runs predict (narrowed to `task`), checked: the same for every run, and the
    competition's for an eval set of info.csv, the folds CSV's for --fold."""
    schemes = {run_dir: run_scheme(source_config(run_dir)) for run_dir in run_dirs}
    scheme = schemes[run_dirs[0]]
    for run_dir, other in schemes.items():
        if other != scheme:
            raise cli.UserError(f"{run_dir} predicts other classes than {run_dirs[0]} ({', '.join(other.classes)} "
                                f"against {', '.join(scheme.classes)}): combine runs of one label scheme")
    if args.fold is not None:
        expected = frame_scheme(read_folds(args.csv, args.train_dir, args.fold))
    elif not is_photo_folder(args):
        expected = COMPETITION
    else:
        return scheme
    if scheme.name != expected.name or (task == "all" and scheme != expected):
        raise cli.UserError(f"{run_dirs[0]} predicts {', '.join(scheme.classes)}, not the classes of "
                            f"{args.data_dir if args.fold is None else 'the folds CSV'}: use a run of this data set")
    return scheme


def cache_dir(args):
    """--cache_dir, by default .cache beside the folder of the photos predicted (the eval set's or --train_dir)."""
    if args.cache_dir:
        return Path(args.cache_dir)
    return (Path(args.data_dir) if args.fold is None else Path(args.train_dir).parent) / ".cache"


def make_loader(dataset, batch_size, workers, device):
    return DataLoader(dataset, batch_size, shuffle=False, **loader_options(workers, device))


def predict_run(model, config, paths, batch_size, workers, device, cache="off", cache_dir=None, amp="off",
                channels_last=False, regions=None):
    """Class probabilities of the photos at `paths`, each cut to its crop `regions` row (None: whole), decoded at
    the run's --resize (kept as `cache` says) and seen through its evaluation transform; the forward passes under
    `amp` autocast, channels-last if asked."""
    size = tuple(config["resize"])
    dataset = ImageDataset(paths, transform=create_transform("BaseAugmentation", size), size=size,
                           cache=open_cache(paths, size, cache, cache_dir, regions), regions=regions)
    loader = make_loader(dataset, batch_size, workers, device)
    return predict(model, loader, config["head"], run_scheme(config), device, amp=amp, channels_last=channels_last)[0]


def predict_runs(run_dirs, paths, args, device, task="all", predict_one=predict_run, adjuster=None):
    """Mean class probabilities of the runs (a soft vote) over the photos at `paths`, each run's adjusted by the
    `adjuster` first (adaptation.Adjuster; None: as predicted); `predict_one` takes predict_run's arguments
    (inference_tta.py passes its views)."""
    check_amp(args.amp, device)
    faces, total = FaceBoxes(args, paths, device), 0
    for run_dir in run_dirs:
        model, config = load_run(run_dir, device, args.checkpoint, task, args.fold,
                                 getattr(args, "threads", 0))  # ensemble.py votes over runs, never ONNX files
        probabilities = predict_one(place_model(model, device, args.channels_last), config, paths, args.batch_size,
                                    args.workers, device, cache=args.cache, cache_dir=cache_dir(args), amp=args.amp,
                                    channels_last=args.channels_last, regions=faces.regions(config))
        total = total + adjust_run(adjuster, run_dir, config, probabilities, args.checkpoint)
    return total / len(run_dirs)


def predict_adjusted(runs, paths, args, device, scheme, predict_one=predict_run):
    """(the runs' mean adjusted probabilities, the answers of --decision or None for their argmax, the runs' mean
    unadjusted probabilities)."""
    adjuster = make_adjuster(args, scheme)
    probabilities = predict_runs(runs, paths, args, device, predict_one=predict_one, adjuster=adjuster)
    return probabilities, adjuster.decide(scheme), adjuster.raw_mean()


def write_raw(args, info, raw):
    """probabilities_raw.csv: the probabilities before --calibrate, --adapt_prior and --decision (--keep_raw)."""
    if args.keep_raw:
        write_probabilities(info["ImageID"], raw, Path(args.output_dir) / "probabilities_raw.csv")


def write_outputs(args, info, probabilities, scheme, answers=None):
    """The files of what was predicted: output.csv and probabilities.csv for the eval set or a fold, or
    predictions.csv (and the sorted photos with --sort_into) for a folder of photos; returns the answers."""
    if not is_photo_folder(args):
        if args.sort_into:
            raise cli.UserError("--sort_into files the photos of a photo folder (one without info.csv)")
        return write_submission(info, probabilities, args.output_dir, answers)
    predicted, confidences = write_predictions(info, probabilities, scheme, args.output_dir, answers)
    if args.sort_into:
        images = [Path(args.data_dir) / image_id for image_id in info["ImageID"]]
        sort_photos(images, predicted, confidences, args.sort_into, args.sort_mode, args.min_confidence)
        print(f"filed {len(images)} photos under {args.sort_into} by predicted class ({args.sort_mode})")
    return np.asarray(probabilities).argmax(axis=1) if answers is None else np.asarray(answers)


def print_held_out_score(fold, labels, answers, scheme=COMPETITION):
    """The macro F1 (and accuracy, per-task F1) of the answers on a held-out fold."""
    metrics = score(labels, answers, scheme)
    print(f"fold {fold} ({len(labels)} images): " + " ".join(f"{name} {value:.4f}" for name, value in metrics.items()))


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    device = torch.device(args.device)
    info, paths, labels = read_images(args)
    runs = find_models(args)
    scheme = runs_scheme(runs, args)
    probabilities, answers, raw = predict_adjusted(runs, paths, args, device, scheme)
    answers = write_outputs(args, info, probabilities, scheme, answers)
    write_raw(args, info, raw)
    if labels is not None:
        print_held_out_score(args.fold, labels, answers, scheme)


if __name__ == "__main__":
    sys.exit(cli.run(main))
