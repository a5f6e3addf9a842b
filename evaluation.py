"""Scores predictions against the ground truth: the competition's submission (macro F1 over its classes, accuracy,
per-task F1), or a folder's predictions.csv against its true classes.

    export SM_GROUND_TRUTH_DIR=data/gt SM_OUTPUT_DATA_DIR=output
    python evaluation.py                                   # gt.csv vs output/output.csv
    python evaluation.py --submission other.csv --gt_dir data/gt
    python evaluation.py --truth data/mask/eval            # output/predictions.csv vs the class folders' names
    python evaluation.py --truth labels.csv --predictions out/predictions.csv   # labels.csv: path,class
    python evaluation.py --report report                  # + pictures: confusion matrices, per class, mistakes

Prints the organisers' JSON ({"accuracy": {...}, "f1": {...}}), then one line with the per-task F1 and, when
the probabilities.csv written with the submission is beside it (or `--probabilities`), the expected calibration
error of those probabilities (`ece`, 15 confidence bins: how far "confidence 0.9" is from being right 9 times in
10).
A submission whose ImageIDs do not match gt.csv one to one, or whose labels are not integers 0-17, is
refused with a one-line error and exit code 2. With `--truth` (a folder of class folders, or a CSV of path and
class), inference.py's predictions.csv (path, predicted) is scored instead: accuracy, macro F1 over the true
classes, and a per-class table of precision, recall, F1 and support; its paths must match the truth's one to one.

`--report DIR` also writes reports.py's pictures: the confusion matrices (18 classes and per task), the
per-class scores and, from the probabilities.csv beside the submission (the confidence of each answer), the
reliability diagram reliability.png, mistakes.csv, every wrong answer most confident first, and mistakes.png, the
most confident ones among the eval photos (`--images`). Without probabilities.csv, or without the photos, that
part is skipped and said so.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

import cli
import reports
from adaptation import expected_calibration_error
from dataset import COMPETITION, NUM_CLASSES, ImageDataset, folder_scheme
from fileio import read_csv, utf8_paths
from photos import find_photos
from submissions import read_labels, read_predictions, read_probabilities


def get_args_parser():
    parser = cli.new_parser("Score a submission CSV against gt.csv.")
    paths = parser.add_argument_group("paths")
    cli.add_flag(paths, "gt_dir", default=cli.env_default("SM_GROUND_TRUTH_DIR", "data/gt"),
                 help="folder holding gt.csv (env SM_GROUND_TRUTH_DIR)")
    cli.add_flag(paths, "output_dir", default=cli.env_default("SM_OUTPUT_DATA_DIR", "output"),
                 help="folder holding output.csv (env SM_OUTPUT_DATA_DIR)")
    cli.add_flag(paths, "submission", default=None, help="submission CSV (default: output_dir/output.csv)")
    folders = parser.add_argument_group("a folder's predictions (instead of the competition's submission)")
    cli.add_flag(folders, "truth", default=None, metavar="DIR_OR_CSV",
                 help="true classes: a folder of class folders, or a CSV with the columns path and class")
    cli.add_flag(folders, "predictions", default=None,
                 help="inference.py's predictions.csv (default: output_dir/predictions.csv)")
    report = parser.add_argument_group("report (pictures of the predictions)")
    cli.add_flag(report, "report", default=None, metavar="DIR",
                 help="write confusion matrices, per-class scores and the most confident mistakes into DIR")
    cli.add_flag(report, "probabilities", default=None,
                 help="the submission's probabilities, for the mistakes (default: probabilities.csv beside it)")
    cli.add_flag(report, "images", default=None,
                 help="the photos gt.csv names, for the mistakes grid (default: images/ of $SM_CHANNEL_EVAL, "
                      "else data/eval/images)")
    cli.add_flag(report, "mistakes", type=cli.positive_int, default=16, help="photos in the mistakes grid")
    cli.add_flag(report, "resize", type=cli.positive_int, nargs=2, default=[128, 96], metavar=("H", "W"),
                 help="the grid's photos at this size: the model's --resize, as it saw them")
    return parser


COLLAPSED_SHARE = 0.95  # predictions this much of one value, when the truth is not, say the model learned nothing else


def macro_f1(true_labels, predicted_labels, num_classes):
    """Macro F1 over all `num_classes` labels: a class never predicted nor present counts as 0."""
    return float(f1_score(true_labels, predicted_labels, labels=np.arange(num_classes), average="macro",
                          zero_division=0))


def score(true_labels, predicted_labels, scheme=COMPETITION):
    """Macro F1 over the classes of the label scheme, accuracy, and for the competition's tasks each task's macro
    F1 (a run of one task scores that task twice: as its classes and by its name)."""
    true_labels, predicted_labels = np.asarray(true_labels), np.asarray(predicted_labels)
    metrics = {"f1": macro_f1(true_labels, predicted_labels, scheme.num_classes),
               "accuracy": float(accuracy_score(true_labels, predicted_labels))}
    if scheme.name == COMPETITION.name:
        for task, size, true_task, predicted_task in zip(scheme.tasks, scheme.sizes, scheme.decode(true_labels),
                                                         scheme.decode(predicted_labels)):
            metrics[f"{task}_f1"] = macro_f1(true_task, predicted_task, size)
    return metrics


def collapsed_tasks(true_labels, predicted_labels, scheme):
    """The tasks of the scheme (its classes, for one task) whose predictions collapsed onto one value: it takes at
    least COLLAPSED_SHARE of the predictions while no value takes that share of the truth. {task: (the value's
    name, its share of the predictions, its share of the truth)}."""
    collapsed = {}
    for (task, names), truth, predicted in zip(scheme.tasks.items(), scheme.decode(np.asarray(true_labels)),
                                               scheme.decode(np.asarray(predicted_labels))):
        counts = np.bincount(predicted, minlength=len(names))
        share, truth_top = counts.max() / len(predicted), np.bincount(truth).max() / len(truth)
        if len(names) > 1 and share >= COLLAPSED_SHARE and truth_top < COLLAPSED_SHARE:
            collapsed[task] = (names[counts.argmax()], float(share), float(np.mean(truth == counts.argmax())))
    return collapsed


def class_f1(true_labels, predicted_labels, scheme):
    """Each class's F1, as `class_f1/<class name>`."""
    values = f1_score(true_labels, predicted_labels, labels=np.arange(scheme.num_classes), average=None,
                      zero_division=0)
    return {f"class_f1/{name}": float(value) for name, value in zip(scheme.classes, values)}


def align(ground_truth, submission):
    """The submission's labels in gt order; refuses missing or extra ids."""
    missing = ground_truth["ImageID"][~ground_truth["ImageID"].isin(submission["ImageID"])]
    if len(missing):
        raise cli.UserError(f"the submission has no prediction for {missing.iloc[0]} "
                            f"({len(missing)} ImageIDs of gt.csv missing)")
    extra = submission["ImageID"][~submission["ImageID"].isin(ground_truth["ImageID"])]
    if len(extra):
        raise cli.UserError(f"the submission predicts {extra.iloc[0]}, which gt.csv does not have "
                            f"({len(extra)} unknown ImageIDs)")
    return submission.set_index("ImageID").loc[ground_truth["ImageID"], "ans"].to_numpy()


def read_report_probabilities(args, submission_path, image_ids):
    """The probabilities of the submission in gt order (--probabilities, or probabilities.csv beside it); None
    when the default file is absent."""
    path = Path(args.probabilities or Path(submission_path).parent / "probabilities.csv")
    if args.probabilities is None and not path.is_file():
        return None
    ids, probabilities = read_probabilities(path)
    row_of = {image_id: row for row, image_id in enumerate(ids)}
    missing = [image_id for image_id in image_ids if image_id not in row_of]
    if missing:
        raise cli.UserError(f"{path} has no row for {missing[0]} of gt.csv ({len(missing)} missing): pass the "
                            "probabilities.csv written with the submission (--probabilities)")
    if probabilities.shape[1] != NUM_CLASSES:
        raise cli.UserError(f"{path} holds {probabilities.shape[1]} classes, not {NUM_CLASSES}")
    return probabilities.numpy()[[row_of[image_id] for image_id in image_ids]]


def report_photos(args, image_ids):
    """The dataset of the photos gt.csv names (--images) at --resize, or None when the default folder lacks them."""
    folder = Path(args.images or Path(cli.env_default("SM_CHANNEL_EVAL", "data/eval")) / "images")
    absent = [image_id for image_id in image_ids if not (folder / image_id).is_file()]
    if absent and args.images:
        raise cli.UserError(f"--images {folder} lacks {absent[0]} ({len(absent)} of the {len(image_ids)} photos of "
                            "gt.csv): pass the eval set's images folder")
    return None if absent else ImageDataset([folder / image_id for image_id in image_ids], size=tuple(args.resize))


def read_report_inputs(args, submission_path, image_ids):
    """(probabilities or None, photos or None) for --report, every input checked before anything is written."""
    if Path(args.report).exists() and not Path(args.report).is_dir():
        raise cli.UserError(f"--report {args.report} is a file: pass a folder for the pictures")
    if args.mistakes < 1:
        raise cli.UserError(f"--mistakes {args.mistakes}: show at least 1 photo")
    probabilities = read_report_probabilities(args, submission_path, image_ids)
    return probabilities, None if probabilities is None else report_photos(args, image_ids)


def write_report(directory, ground_truth, predicted, probabilities, photos, shown):
    """reports.py's pictures of the submission into `directory`; says which part lacked its input."""
    written = reports.write_report(Path(directory), ground_truth["ans"].to_numpy(), predicted, COMPETITION,
                                   probabilities,
                                   ground_truth["ImageID"].tolist(), None if photos is None else photos.load, shown)
    skipped = ("; reliability.png, mistakes.csv and mistakes.png skipped: no probabilities.csv beside the submission "
               "(--probabilities)" if probabilities is None
               else "; mistakes.png skipped: no eval photos (--images)" if photos is None else "")
    print(f"report in {directory}: {', '.join(written)}{skipped}")


def organisers_json(metrics):
    """The organisers' result shape: percentages as strings, with their ranking flags."""
    return json.dumps({
        "accuracy": {"value": f"{metrics['accuracy'] * 100:.2f}%", "rank": True, "decs": True},
        "f1": {"value": f"{metrics['f1']:.4f}", "rank": False, "decs": True},
    })


def refuse_empty_cells(frame, columns, source):
    """Refuses, in one line naming `source`, the row (as the CSV's line) and the column, a frame with an empty cell
    in `columns`: an empty path or class is no answer to score."""
    for column in columns:
        empty = frame[column].isna() | (frame[column].astype(str).str.strip() == "")
        if empty.any():
            raise cli.UserError(f"{source}: row {int(empty.to_numpy().argmax()) + 2} has no {column} (an empty cell)")


def read_truth(source):
    """(path, class) of every photo: the class folders of a folder (paths relative to it) or a CSV's rows."""
    source = Path(source)
    if source.is_dir():
        photos = utf8_paths(find_photos(source))  # as inference.py skips them
        truth = pd.DataFrame({"path": [str(path.relative_to(source)) for path in photos],
                              "class": [path.relative_to(source).parts[0] for path in photos]})
        truth = truth[truth["path"] != truth["class"]]  # photos beside the class folders have no class
    elif source.is_file():
        truth = read_csv(source, dtype=str)
        missing = [column for column in ("path", "class") if column not in truth.columns]
        if missing:
            raise cli.UserError(f"truth {source} lacks the column(s) {', '.join(missing)}")
        refuse_empty_cells(truth, ["path", "class"], f"truth {source}")
    else:
        raise cli.UserError(f"truth {source} is neither a folder of class folders nor a CSV of path, class")
    if truth.empty or truth["path"].duplicated().any():
        raise cli.UserError(f"truth {source} lists no photo, or a photo twice")
    return truth


def class_table(true_classes, predicted_classes):
    """Per true class: precision, recall, F1 and support, as a frame; and the metrics over them."""
    classes = sorted(set(true_classes))
    precision, recall, f1, support = precision_recall_fscore_support(true_classes, predicted_classes, labels=classes,
                                                                     zero_division=0)
    table = pd.DataFrame({"class": classes, "precision": precision, "recall": recall, "f1": f1, "support": support})
    return table, {"accuracy": float(accuracy_score(true_classes, predicted_classes)), "f1": float(f1.mean())}


def score_folder(truth_source, predictions_path, args):
    """Prints accuracy, macro F1 and the per-class table of a folder's predictions (and with --report writes their
    pictures: the photos of a truth folder at --resize); returns the metrics."""
    truth = read_truth(truth_source)
    predictions = read_predictions(predictions_path)
    refuse_empty_cells(predictions, ["path", "predicted"], f"predictions {predictions_path}")
    predictions = predictions.set_index("path")
    missing = truth["path"][~truth["path"].isin(predictions.index)]
    extra = predictions.index[~predictions.index.isin(truth["path"])]
    if len(missing) or len(extra):
        first = missing.iloc[0] if len(missing) else extra[0]
        raise cli.UserError(f"the predictions and the truth name different photos ({len(missing)} missing, "
                            f"{len(extra)} extra; first: {first})")
    table, metrics = class_table(truth["class"].to_numpy(), predictions.loc[truth["path"], "predicted"].to_numpy())
    print(f"accuracy {metrics['accuracy']:.4f} f1 {metrics['f1']:.4f}{folder_ece(truth, predictions)} over "
          f"{len(truth)} photos")
    print(table.to_string(index=False, float_format="%.4f"))
    if args.report:
        write_folder_report(args, truth, predictions.loc[truth["path"]], truth_source)
    return metrics


def folder_ece(truth, predictions):
    """' ece X' of predictions.csv's prob_<class> columns against the true classes, or '' when a true class has
    no column."""
    names = [column.removeprefix("prob_") for column in predictions.columns if column.startswith("prob_")]
    if not set(truth["class"]) <= set(names):
        return ""
    probabilities = predictions.loc[truth["path"], [f"prob_{name}" for name in names]].to_numpy(dtype=float)
    return f" ece {expected_calibration_error(probabilities, truth['class'].map(names.index).to_numpy()):.4f}"


def write_folder_report(args, truth, predictions, truth_source):
    """reports.py's pictures of a folder's predictions: the scheme of the true classes, the confidences of
    predictions.csv's prob_<class> columns, the photos of the truth folder."""
    scheme = folder_scheme(truth["class"].unique())
    label = {name: number for number, name in enumerate(scheme.classes)}
    unknown = set(predictions["predicted"]) - set(label)
    if unknown:
        raise cli.UserError(f"--report: the predictions name {sorted(unknown)[0]}, which no true class folder is")
    columns = [f"prob_{name}" for name in scheme.classes]
    probabilities = predictions[columns].to_numpy(dtype=float) if set(columns) <= set(predictions.columns) else None
    photos = (ImageDataset([Path(truth_source) / path for path in truth["path"]], size=tuple(args.resize))
              if Path(truth_source).is_dir() else None)
    written = reports.write_report(Path(args.report), truth["class"].map(label).to_numpy(),
                                   predictions["predicted"].map(label).to_numpy(), scheme, probabilities,
                                   truth["path"].tolist(), None if photos is None else photos.load, args.mistakes)
    print(f"report in {args.report}: {', '.join(written)}")


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    if args.truth:
        score_folder(args.truth, args.predictions or Path(args.output_dir) / "predictions.csv", args)
        return
    ground_truth = read_labels(Path(args.gt_dir) / "gt.csv", "ground truth")
    refuse_empty_cells(ground_truth, ["ImageID"], f"ground truth {Path(args.gt_dir) / 'gt.csv'}")
    submission_path = args.submission or Path(args.output_dir) / "output.csv"
    submission = read_labels(submission_path, "submission")
    refuse_empty_cells(submission, ["ImageID"], f"submission {submission_path}")
    predicted = align(ground_truth, submission)
    report_inputs = read_report_inputs(args, submission_path, ground_truth["ImageID"].tolist()) if args.report else ()
    metrics = score(ground_truth["ans"].to_numpy(), predicted)
    print(organisers_json(metrics))
    probabilities = (report_inputs[0] if args.report
                     else read_report_probabilities(args, submission_path, ground_truth["ImageID"].tolist()))
    ece = "" if probabilities is None else f" ece {expected_calibration_error(probabilities, ground_truth['ans']):.4f}"
    print(" ".join(f"{name} {value:.4f}" for name, value in metrics.items()) + ece)
    if args.report:
        write_report(args.report, ground_truth, predicted, *report_inputs, args.mistakes)


if __name__ == "__main__":
    sys.exit(cli.run(main))
