"""Scores a submission against the ground truth: macro F1 over the 18 classes, accuracy, per-task F1.

    export SM_GROUND_TRUTH_DIR=data/gt SM_OUTPUT_DATA_DIR=output
    python evaluation.py                                   # gt.csv vs output/output.csv
    python evaluation.py --submission other.csv --gt_dir data/gt

Prints the organisers' JSON ({"accuracy": {...}, "f1": {...}}), then one line with the per-task F1.
A submission whose ImageIDs do not match gt.csv one to one, or whose labels are not integers 0-17, is
refused with a one-line error and exit code 2.
"""
import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score

import cli
from dataset import NUM_CLASSES, TASK_CLASSES, decode_label
from fileio import read_csv


def get_args_parser():
    parser = cli.new_parser("Score a submission CSV against gt.csv.")
    paths = parser.add_argument_group("paths")
    cli.add_flag(paths, "gt_dir", default=cli.env_default("SM_GROUND_TRUTH_DIR", "data/gt"),
                 help="folder holding gt.csv (env SM_GROUND_TRUTH_DIR)")
    cli.add_flag(paths, "output_dir", default=cli.env_default("SM_OUTPUT_DATA_DIR", "output"),
                 help="folder holding output.csv (env SM_OUTPUT_DATA_DIR)")
    cli.add_flag(paths, "submission", default=None, help="submission CSV (default: output_dir/output.csv)")
    return parser


def macro_f1(true_labels, predicted_labels, num_classes):
    """Macro F1 over all `num_classes` labels: a class never predicted nor present counts as 0."""
    return float(f1_score(true_labels, predicted_labels, labels=np.arange(num_classes), average="macro",
                          zero_division=0))


def score(true_labels, predicted_labels):
    """Macro F1 over the 18 classes, accuracy, and each task's macro F1."""
    true_labels, predicted_labels = np.asarray(true_labels), np.asarray(predicted_labels)
    metrics = {"f1": macro_f1(true_labels, predicted_labels, NUM_CLASSES),
               "accuracy": float(accuracy_score(true_labels, predicted_labels))}
    for task, true_task, predicted_task in zip(TASK_CLASSES, decode_label(true_labels),
                                               decode_label(predicted_labels)):
        metrics[f"{task}_f1"] = macro_f1(true_task, predicted_task, TASK_CLASSES[task])
    return metrics


def score_task(true_labels, predicted_labels, task):
    """Macro F1 and accuracy of a single-task model, over that task's classes."""
    f1 = macro_f1(true_labels, predicted_labels, TASK_CLASSES[task])
    return {"f1": f1, "accuracy": float(accuracy_score(true_labels, predicted_labels)), f"{task}_f1": f1}


def read_labels(path, role):
    """The ImageID and ans columns of a CSV, checked: unique ids, integer labels 0-17."""
    path = Path(path)
    if not path.is_file():
        raise cli.UserError(f"{role} {path} does not exist")
    frame = read_csv(path, f"{role} {path}", dtype={"ImageID": str, "ans": str})  # True is no label, not 1
    missing = [column for column in ("ImageID", "ans") if column not in frame.columns]
    if missing:
        raise cli.UserError(f"{role} {path} lacks the column(s) {', '.join(missing)}")
    duplicated = frame["ImageID"][frame["ImageID"].duplicated()]
    if len(duplicated):
        raise cli.UserError(f"{role} {path} lists {duplicated.iloc[0]} more than once")
    labels = pd.to_numeric(frame["ans"], errors="coerce")
    invalid = frame["ans"][labels.isna() | (labels % 1 != 0) | (labels < 0) | (labels >= NUM_CLASSES)]
    if len(invalid):
        raise cli.UserError(f"{role} {path} has label {invalid.iloc[0]!r}: labels are integers 0-{NUM_CLASSES - 1}")
    return frame.assign(ans=labels.astype(int))


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


def organisers_json(metrics):
    """The organisers' result shape: percentages as strings, with their ranking flags."""
    return json.dumps({
        "accuracy": {"value": f"{metrics['accuracy'] * 100:.2f}%", "rank": True, "decs": True},
        "f1": {"value": f"{metrics['f1']:.4f}", "rank": False, "decs": True},
    })


def main():
    args = get_args_parser().parse_args()
    ground_truth = read_labels(Path(args.gt_dir) / "gt.csv", "ground truth")
    submission_path = args.submission or Path(args.output_dir) / "output.csv"
    predicted = align(ground_truth, read_labels(submission_path, "submission"))
    metrics = score(ground_truth["ans"].to_numpy(), predicted)
    print(organisers_json(metrics))
    print(" ".join(f"{name} {value:.4f}" for name, value in metrics.items()))


if __name__ == "__main__":
    cli.run(main)
