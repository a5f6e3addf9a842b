"""Compares training runs: their curves overlaid in one figure, and a table of each run's best epoch.

    python compare.py model/pretrained model/scratch                 # compare.png + the table
    python compare.py model/crop model/nocrop --output crop.png
    python compare.py model/kfold                                   # a --fold all parent: its fold runs

Each RUN is a run directory of train.py (holding summary.csv) or the parent of a `--fold all` run (fold0,
fold1, ... and oof_metrics.json). The figure overlays training and validation loss, validation macro F1,
per-task F1 and learning rate by epoch, one colour per run (a parent's folds each count as a run); runs may
have different lengths. The table lists each run's best epoch (best validation macro F1) and its metrics;
a parent's row holds its out-of-fold metrics and the spread of its folds' F1. A folder that is not a run is
refused with a one-line error before anything is written.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import cli
import reports
from fileio import read_csv

METRICS = ("val_f1", "val_accuracy", "val_mask_f1", "val_gender_f1", "val_age_f1")


def get_args_parser():
    parser = cli.new_parser("Overlay the curves of training runs and print each run's best epoch.")
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("runs", nargs="+", metavar="RUN",
                        help="run directories of train.py, or parents of --fold all runs")
    output = parser.add_argument_group("output")
    cli.add_flag(output, "output", default="compare.png", help="the figure of the overlaid curves (PNG)")
    return parser


def read_summary(run_dir):
    """summary.csv of a run, checked: one row per epoch with the columns the curves need."""
    summary = read_csv(run_dir / "summary.csv")
    missing = [column for column in ("epoch", "train_loss", "val_loss", "val_f1", "lr") if column not in summary]
    if summary.empty or missing:
        raise cli.UserError(f"{run_dir / 'summary.csv'} has no epochs or lacks {', '.join(missing) or 'rows'}: "
                            "pass a run directory of train.py")
    return summary


def fold_runs(parent):
    """The fold runs of a --fold all parent, in fold order."""
    return sorted((path.parent for path in parent.glob("fold*/summary.csv")), key=lambda path: int(path.name[4:]))


def best_row(name, summary):
    """The table row of a run: its epochs, best epoch and that epoch's metrics."""
    best = summary.loc[summary["val_f1"].idxmax()]
    return {"run": name, "epochs": len(summary), "best_epoch": int(best["epoch"]),
            **{metric: best[metric] for metric in METRICS if metric in summary}}


def parent_row(name, parent, fold_rows):
    """The table row of a --fold all parent: out-of-fold metrics and the spread of its folds' F1."""
    metrics = json.loads((parent / "oof_metrics.json").read_text())
    fold_f1 = np.asarray(metrics["fold_f1"], dtype=float)
    return {"run": f"{name} (out of fold)", "epochs": max(row["epochs"] for row in fold_rows),
            "best_epoch": "/".join(str(row["best_epoch"]) for row in fold_rows),
            **{f"val_{metric}": metrics[metric] for metric in ("f1", "accuracy", "mask_f1", "gender_f1", "age_f1")
               if metric in metrics},
            "fold_f1_spread": f"{fold_f1.mean():.4f} ± {fold_f1.std():.4f} ({fold_f1.min():.4f}-{fold_f1.max():.4f})"}


def read_runs(paths):
    """({label: summary} of every run to draw, table rows): each argument checked before anything is drawn."""
    summaries, rows = {}, []
    for path in map(Path, paths):
        if (path / "summary.csv").is_file():
            summaries[str(path)] = read_summary(path)
            rows.append(best_row(str(path), summaries[str(path)]))
        elif (folds := fold_runs(path)) and (path / "oof_metrics.json").is_file():
            fold_rows = []
            for fold_dir in folds:
                summaries[str(fold_dir)] = read_summary(fold_dir)
                fold_rows.append(best_row(str(fold_dir), summaries[str(fold_dir)]))
            rows += [*fold_rows, parent_row(str(path), path, fold_rows)]
        else:
            raise cli.UserError(f"{path} is not a run (no summary.csv) nor a finished --fold all parent (fold0/ "
                                "and oof_metrics.json): pass folders train.py made")
    return summaries, rows


def short_names(paths):
    """Each path's shortest tail of folders that tells it from the others: the legend's labels."""
    parts = [Path(path).parts for path in paths]
    for depth in range(1, max(map(len, parts)) + 1):
        names = ["/".join(part[-depth:]) for part in parts]
        if len(set(names)) == len(names):
            return dict(zip(paths, names))
    return {path: path for path in paths}


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    summaries, rows = read_runs(args.runs)
    labels = short_names(list(summaries))
    reports.save_figure(reports.curves_figure({labels[path]: summary for path, summary in summaries.items()}),
                        args.output)
    table = pd.DataFrame(rows).rename(columns=lambda name: name.removeprefix("val_")).fillna("")
    with pd.option_context("display.float_format", "{:.4f}".format, "display.width", 200):
        print(table.to_string(index=False))
    print(f"curves of {len(summaries)} runs in {args.output}")


if __name__ == "__main__":
    sys.exit(cli.run(main))
