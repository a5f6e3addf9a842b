"""Pictures of a model's predictions and of training runs, drawn headless with matplotlib.

Not a script: `evaluation.py --report DIR` and train.py (RUN_DIR/report/, the best epoch's validation fold)
write a report with `write_report`; train.py redraws RUN_DIR/curves.png after every epoch and sends each epoch's
confusion matrix to TensorBoard; compare.py overlays the curves of several runs. A report holds:

    confusion.png, confusion.csv   the classes' confusion matrix: counts, and normalised by true class (rows)
    confusion_tasks.png            one matrix per task of the scheme (the competition's mask, gender, age)
    per_class.csv, per_class.png   precision, recall, F1 and support of each class
    mistakes.csv                   every wrong prediction, most confident first: path, true, predicted, confidence
    mistakes.png                   the most confident mistakes, each photo as the model saw it
    reliability.png                accuracy against confidence in 15 bins (the reliability diagram) and the ECE

mistakes.csv is where label errors show first: a photo the model gets wrong with high confidence is often
labelled wrong, and its fix goes to `preprocess.py --corrections`.
"""
import itertools
import math

import matplotlib
import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_fscore_support

from adaptation import ECE_BINS, calibration_bins, expected_calibration_error
from fileio import atomic_path, write_csv

matplotlib.use("Agg")  # files only: no display on servers, in loader workers or in tests
import matplotlib.pyplot as plt  # noqa: E402  (pyplot after the backend is chosen)

DPI = 100             # small PNGs: a report is looked at, not printed
MISTAKES_SHOWN = 16   # tiles of the mistakes grid
GRID_COLUMNS = 4
TITLE_CHARACTERS = 34  # of a photo's path above its tile: the end, which names the person and the photo


def save_figure(figure, path):
    """Writes the figure as a PNG atomically and frees it."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(figure)


def confusion_counts(true, predicted, num_classes):
    """(K, K) counts of each true class (rows) predicted as each class (columns)."""
    true, predicted = np.asarray(true, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    cells = np.bincount(true * num_classes + predicted, minlength=num_classes * num_classes)
    return cells.reshape(num_classes, num_classes)


def normalise_rows(counts):
    """Each row divided by its total: the share of a true class given each prediction (recall on the diagonal)."""
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)


def draw_matrix(axis, values, names, title, number_format):
    """One confusion matrix on `axis`, class names on both axes, non-zero cells written in."""
    axis.imshow(values, cmap="Blues", vmin=0, vmax=max(values.max(), 1e-12))
    ticks = np.arange(len(names))
    axis.set_xticks(ticks, names, rotation=90, fontsize=8)
    axis.set_yticks(ticks, names, fontsize=8)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    for row, column in zip(*np.nonzero(values)):
        value = values[row, column]
        axis.text(column, row, format(value, number_format), ha="center", va="center", fontsize=7,
                  color="white" if value > values.max() / 2 else "black")


def draw_confusion_pair(axes, counts, names, title=""):
    draw_matrix(axes[0], counts, names, f"{title} counts".strip(), "d")
    draw_matrix(axes[1], normalise_rows(counts), names, f"{title} normalised by true class".strip(), ".2f")


def confusion_figure(true, predicted, names):
    """The classes' confusion matrix side by side as counts and normalised by true class."""
    side = 2.5 + 0.36 * len(names)
    figure, axes = plt.subplots(1, 2, figsize=(2 * side, side))
    draw_confusion_pair(axes, confusion_counts(true, predicted, len(names)), names)
    figure.tight_layout()
    return figure


def task_confusion_figure(true, predicted, scheme):
    """One confusion matrix per task of the label scheme (counts above, normalised below)."""
    tasks = len(scheme.tasks)
    figure, axes = plt.subplots(2, tasks, figsize=(3.8 * tasks, 7.6))
    for column, (task, true_task, predicted_task) in enumerate(zip(scheme.tasks, scheme.decode(np.asarray(true)),
                                                                  scheme.decode(np.asarray(predicted)))):
        counts = confusion_counts(true_task, predicted_task, len(scheme.tasks[task]))
        draw_confusion_pair(axes[:, column], counts, scheme.tasks[task], task)
    figure.tight_layout()
    return figure


def per_class_table(true, predicted, names):
    """Precision, recall, F1 and support of each class (a class never predicted nor present scores 0)."""
    precision, recall, f1, support = precision_recall_fscore_support(
        true, predicted, labels=np.arange(len(names)), zero_division=0)
    return pd.DataFrame({"class": np.arange(len(names)), "name": names, "precision": precision, "recall": recall,
                         "f1": f1, "support": support})


def per_class_figure(table):
    """Grouped bars of each class's precision, recall and F1, its support beside its name."""
    figure, axis = plt.subplots(figsize=(2.5 + 0.55 * len(table), 4.5))
    positions, width = np.arange(len(table)), 0.27
    for offset, metric in zip((-width, 0, width), ("precision", "recall", "f1")):
        axis.bar(positions + offset, table[metric], width, label=metric)
    axis.set_xticks(positions, [f"{name} ({support})" for name, support in zip(table["name"], table["support"])],
                    rotation=90, fontsize=8)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("score")
    axis.set_title(f"per class (support in brackets); macro F1 {table['f1'].mean():.4f}")
    axis.legend(fontsize=8, ncol=3, loc="upper right")
    figure.tight_layout()
    return figure


def mistakes_table(image_ids, true, predicted, probabilities, names):
    """Every wrong prediction, most confident first: path, true, predicted, confidence (the probability of the
    predicted class), and both classes' names."""
    true, predicted = np.asarray(true), np.asarray(predicted)
    confidence = np.asarray(probabilities)[np.arange(len(predicted)), predicted]
    wrong = np.flatnonzero(true != predicted)
    order = wrong[np.argsort(-confidence[wrong], kind="stable")]
    return pd.DataFrame({"path": np.asarray(image_ids, dtype=object)[order], "true": true[order],
                         "predicted": predicted[order], "confidence": confidence[order],
                         "true_name": [names[k] for k in true[order]],
                         "predicted_name": [names[k] for k in predicted[order]]})


def mistakes_figure(mistakes, photos):
    """A grid of photos ((3, H, W) uint8) with each one's path, true and predicted class and confidence."""
    rows = max(1, math.ceil(len(photos) / GRID_COLUMNS))
    figure, axes = plt.subplots(rows, GRID_COLUMNS, figsize=(2.3 * GRID_COLUMNS, 3.0 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, photo, mistake in zip(axes.flat, photos, mistakes.itertuples()):
        axis.imshow(np.asarray(photo).transpose(1, 2, 0), interpolation="nearest")  # the pixels the model saw
        path = mistake.path if len(mistake.path) <= TITLE_CHARACTERS else "..." + mistake.path[3 - TITLE_CHARACTERS:]
        axis.set_title(f"{path}\ntrue {mistake.true_name}\npredicted {mistake.predicted_name} "
                       f"({mistake.confidence:.2f})", fontsize=7)
    figure.suptitle("most confident mistakes")
    figure.tight_layout()
    return figure


def reliability_figure(true, probabilities, bins=ECE_BINS):
    """The reliability diagram: each confidence bin's accuracy (bars) and mean confidence (red marks) against the
    diagonal of perfect calibration, and below it how many photos fall in each bin; the ECE in the title."""
    counts, confidence, accuracy = calibration_bins(probabilities, true, bins)
    edges = np.linspace(0, 1, bins + 1)
    centres, width, filled = (edges[:-1] + edges[1:]) / 2, 1 / bins, counts > 0
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(centres[filled], accuracy[filled], width, edgecolor="black", label="accuracy")
    top.hlines(confidence[filled], edges[:-1][filled], edges[1:][filled], colors="tab:red", linewidth=3,
               label="mean confidence")
    top.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"reliability: ECE {expected_calibration_error(probabilities, true, bins):.4f} ({bins} bins)")
    top.legend(fontsize=8, loc="upper left")
    bottom.bar(centres, counts, width, color="grey", edgecolor="black")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence (largest probability)")
    bottom.set_ylabel("photos")
    figure.tight_layout()
    return figure


def write_report(directory, true, predicted, scheme, probabilities=None, image_ids=None, load_photo=None,
                 shown=MISTAKES_SHOWN):
    """Writes the report of `predicted` against `true` (labels of `scheme`) into `directory`. mistakes.csv needs the
    `probabilities` (N, K) and `image_ids`; mistakes.png also `load_photo(row)`, the photo of a row as the model
    saw it. Returns the names of the files written."""
    names = scheme.classes
    true, predicted = np.asarray(true), np.asarray(predicted)
    save_figure(confusion_figure(true, predicted, names), directory / "confusion.png")
    counts = pd.DataFrame(confusion_counts(true, predicted, len(names)), index=names, columns=names)
    write_csv(counts.rename_axis("true \\ predicted").reset_index(), directory / "confusion.csv")
    written = ["confusion.png", "confusion.csv"]
    if len(scheme.tasks) > 1:
        save_figure(task_confusion_figure(true, predicted, scheme), directory / "confusion_tasks.png")
        written.append("confusion_tasks.png")
    table = per_class_table(true, predicted, names)
    write_csv(table, directory / "per_class.csv")
    save_figure(per_class_figure(table), directory / "per_class.png")
    written += ["per_class.csv", "per_class.png"]
    if probabilities is None:
        return written
    save_figure(reliability_figure(true, probabilities), directory / "reliability.png")
    mistakes = mistakes_table(image_ids, true, predicted, probabilities, names)
    write_csv(mistakes, directory / "mistakes.csv")
    written += ["reliability.png", "mistakes.csv"]
    if load_photo is None:
        return written
    row_of = {image_id: row for row, image_id in enumerate(image_ids)}
    photos = [load_photo(row_of[path]) for path in mistakes["path"][:shown]]
    save_figure(mistakes_figure(mistakes, photos), directory / "mistakes.png")
    return written + ["mistakes.png"]


def curves_figure(summaries):
    """The curves of runs, `summaries` = {label: summary.csv frame}, overlaid by epoch: training and validation
    loss, validation macro F1, per-task F1 (one line style per task; per class for a scheme of one task) and
    learning rate. Runs may differ in length."""
    figure, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    colours = itertools.cycle(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    for (label, summary), colour in zip(summaries.items(), colours):
        epochs, style = summary["epoch"], {"color": colour, "marker": "o", "markersize": 3}
        axes[0].plot(epochs, summary["train_loss"], linestyle="--", label=f"{label} train", **style)
        axes[0].plot(epochs, summary["val_loss"], label=f"{label} validation", **style)
        axes[1].plot(epochs, summary["val_f1"], label=label, **style)
        parts = [column for column in summary if column.startswith("val_") and column.endswith("_f1")
                 and column != "val_f1"] or [column for column in summary if column.startswith("val_class_f1/")]
        for column, line in zip(parts, itertools.cycle(("-", "--", ":", "-."))):
            part = column.removeprefix("val_class_f1/").removeprefix("val_").removesuffix("_f1")
            axes[2].plot(epochs, summary[column], linestyle=line, label=f"{label} {part}", **style)
        axes[3].plot(epochs, summary["lr"], label=label, **style)
    for axis, title in zip(axes, ("loss (dashed: train)", "validation macro F1", "validation F1 per task or class",
                                  "learning rate (end of epoch)")):
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    return figure
