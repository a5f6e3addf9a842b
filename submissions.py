"""The files predictions are exchanged in: submissions (output.csv), probabilities.csv and predictions.csv.

Not a script: inference.py, inference_tta.py and ensemble.py write them, ensemble.py and evaluation.py read them.

output.csv is info.csv with `ans` filled; probabilities.csv is the common currency of TTA and ensembles, `ImageID`
followed by one column per class (`prob_0` ... `prob_17`), each row summing to 1; a folder of photos gets
predictions.csv, one row per photo with its predicted class name, confidence and a `prob_<class>` per class.
"""
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import cli
from dataset import NUM_CLASSES
from fileio import read_csv, write_csv, write_csvs

PROBABILITY_PREFIX = "prob_"


def read_probabilities(path):
    """(ImageIDs, (N, K) float tensor) of a probabilities.csv, checked: ImageID and prob_0..prob_{K-1} columns,
    unique ids, each row a distribution."""
    path = Path(path)
    if not path.is_file():
        raise cli.UserError(f"{path} does not exist: pass a probabilities.csv written by inference.py, "
                            "inference_tta.py or ensemble.py")
    frame = read_csv(path, dtype={"ImageID": str})
    classes = [column for column in frame.columns if column.startswith(PROBABILITY_PREFIX)]
    expected = [f"{PROBABILITY_PREFIX}{k}" for k in range(len(classes))]
    if "ImageID" not in frame.columns or not classes or set(classes) != set(expected) or frame.empty:
        raise cli.UserError(f"{path} is not a probabilities file: it needs rows and the columns ImageID, "
                            f"{PROBABILITY_PREFIX}0, {PROBABILITY_PREFIX}1, ...")
    duplicated = frame["ImageID"][frame["ImageID"].duplicated()]
    if len(duplicated):
        raise cli.UserError(f"{path} lists {duplicated.iloc[0]} more than once")
    values = frame[expected].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values).all(axis=1) | (values < 0).any(axis=1) | (np.abs(values.sum(axis=1) - 1) > 1e-3)
    if bad.any():
        row = int(bad.argmax())
        raise cli.UserError(f"{path}: the row of {frame['ImageID'].iloc[row]} is not a distribution (numbers "
                            "from 0 to 1 summing to 1): write probabilities, not logits")
    return frame["ImageID"].tolist(), torch.tensor(values, dtype=torch.float32)


def probabilities_frame(image_ids, probabilities):
    columns = [f"{PROBABILITY_PREFIX}{k}" for k in range(probabilities.shape[1])]
    frame = pd.DataFrame(np.asarray(probabilities), columns=columns)
    frame.insert(0, "ImageID", list(image_ids))
    return frame


def write_probabilities(image_ids, probabilities, path):
    write_csv(probabilities_frame(image_ids, probabilities), path)


def write_submission(info, probabilities, output_dir, answers=None):
    """output.csv (info.csv with ans = `answers`, by default the most probable class) and probabilities.csv, written
    as a pair: output.csv is there only when both are new. Returns the answers. Probabilities that are not all
    finite (NaN weights, an overflow) are refused: their argmax would be a submission of zeros."""
    if not np.isfinite(np.asarray(probabilities)).all():
        raise cli.UserError("the predicted probabilities are not all finite numbers (a checkpoint with NaN weights? "
                            "an overflow under --amp fp16?): nothing written")
    answers = np.asarray(probabilities).argmax(axis=1) if answers is None else np.asarray(answers)
    write_csvs({Path(output_dir) / "probabilities.csv": probabilities_frame(info["ImageID"], probabilities),
                Path(output_dir) / "output.csv": info.assign(ans=answers)})
    print(f"wrote {Path(output_dir) / 'output.csv'} ({len(info)} rows) and probabilities.csv")
    return answers


def write_predictions(info, probabilities, scheme, output_dir, answers=None):
    """predictions.csv of a folder of photos: path, predicted class name (`answers`, by default the most probable
    class), its probability as the confidence, prob_<class> per class (and probabilities.csv, for TTA and
    ensembles); returns (predicted class names, confidences)."""
    probabilities = np.asarray(probabilities)
    answers = probabilities.argmax(axis=1) if answers is None else np.asarray(answers)
    predicted = np.array(scheme.classes)[answers]
    confidences = probabilities[np.arange(len(answers)), answers]
    frame = pd.DataFrame({"path": info["ImageID"], "predicted": predicted, "confidence": confidences})
    for name, column in zip(scheme.classes, probabilities.T):
        frame[f"{PROBABILITY_PREFIX}{name}"] = column
    write_probabilities(info["ImageID"], probabilities, Path(output_dir) / "probabilities.csv")
    write_csv(frame, Path(output_dir) / "predictions.csv")
    counts = ", ".join(f"{name} {count}" for name, count in zip(*np.unique(predicted, return_counts=True)))
    print(f"wrote {Path(output_dir) / 'predictions.csv'} ({len(frame)} photos: {counts}) and probabilities.csv")
    return predicted, confidences


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


def read_predictions(path):
    """The path and predicted columns of a predictions.csv, checked."""
    path = Path(path)
    if not path.is_file():
        raise cli.UserError(f"predictions {path} does not exist: run inference.py on a folder of photos first")
    predictions = read_csv(path, dtype={"path": str, "predicted": str})
    if not {"path", "predicted"} <= set(predictions.columns) or predictions["path"].duplicated().any():
        raise cli.UserError(f"predictions {path} needs the columns path and predicted, one row per photo")
    return predictions
