import json

import pandas as pd
import pytest

import torch

from conftest import assert_one_line_error, run_script
from dataset import COMPETITION, folder_scheme, load_folds, training_targets
from evaluation import collapsed_tasks, score


def test_macro_f1_by_hand_counts_absent_classes_as_zero():
    true = [0, 0, 1, 1]
    predicted = [0, 1, 1, 1]
    # class 0: p 1, r .5 -> 2/3; class 1: p 2/3, r 1 -> .8; the other 16 classes count 0
    metrics = score(true, predicted)
    assert metrics["f1"] == pytest.approx((2 / 3 + 0.8) / 18)
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["mask_f1"] == pytest.approx(1 / 3)  # all wear: f1 1 for wear, 0 for the two others
    assert metrics["gender_f1"] == pytest.approx(1 / 2)  # all male: f1 1 for male, 0 for female
    assert metrics["age_f1"] == pytest.approx((2 / 3 + 0.8) / 3)


def write(folder, name, rows):
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["ImageID", "ans"]).to_csv(folder / name, index=False)


def evaluate(tmp_path, submission_rows):
    write(tmp_path / "gt", "gt.csv", [("a.jpg", 0), ("b.jpg", 17), ("c.jpg", 5)])
    write(tmp_path / "out", "output.csv", submission_rows)
    return run_script("evaluation.py", "--gt_dir", tmp_path / "gt", "--output_dir", tmp_path / "out")


def test_prints_the_organisers_json_and_per_task_f1(tmp_path):
    result = evaluate(tmp_path, [("c.jpg", 5), ("a.jpg", 0), ("b.jpg", 17)])
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()[:2]
    assert json.loads(first)["accuracy"]["value"] == "100.00%"
    assert json.loads(first)["f1"]["value"] == f"{3 / 18:.4f}"
    assert "gender_f1 1.0000" in second  # both genders present and right; mask lacks 'incorrect' -> 2/3


@pytest.mark.parametrize("rows, message", [
    ([("a.jpg", 0), ("b.jpg", 17)], "no prediction for c.jpg"),
    ([("a.jpg", 0), ("b.jpg", 17), ("c.jpg", 5), ("d.jpg", 1)], "predicts d.jpg"),
    ([("a.jpg", 0), ("a.jpg", 0), ("b.jpg", 17), ("c.jpg", 5)], "lists a.jpg more than once"),
    ([("a.jpg", 18), ("b.jpg", 17), ("c.jpg", 5)], "labels are integers 0-17"),
    ([("a.jpg", "x"), ("b.jpg", 17), ("c.jpg", 5)], "labels are integers 0-17"),
    ([("a.jpg", 1.5), ("b.jpg", 17), ("c.jpg", 5)], "labels are integers 0-17"),
])
def test_rejects_a_bad_submission_in_one_line(tmp_path, rows, message):
    assert_one_line_error(evaluate(tmp_path, rows), message)


def test_predictions_of_one_value_are_collapsed_only_where_the_truth_is_not():
    scheme = folder_scheme(["correct", "incorrect", "none"])
    truth = [0] * 10 + [1] * 10 + [2] * 10
    assert collapsed_tasks(truth, [2] * 30, scheme) == {"class": ("none", 1.0, pytest.approx(1 / 3))}
    assert collapsed_tasks(truth, [2] * 29 + [0], scheme)["class"][1] == pytest.approx(29 / 30)
    assert collapsed_tasks(truth, [2] * 27 + [0] * 3, scheme) == {}  # 90%: a poor model, not a collapsed one
    assert collapsed_tasks([2] * 30, [2] * 30, scheme) == {}  # the truth is one value too


def test_one_collapsed_task_of_the_competition_is_named():
    mask, gender, age = [2] * 12, [0, 1] * 6, [0, 1, 2] * 4  # every photo predicted not worn, the rest varied
    predicted = COMPETITION.encode(*map(torch.tensor, (mask, gender, age))).tolist()
    truth = COMPETITION.encode(*map(torch.tensor, ([0, 1, 2] * 4, gender, age))).tolist()
    assert collapsed_tasks(truth, predicted, COMPETITION) == {"mask": ("not_wear", 1.0, pytest.approx(1 / 3))}


def test_summary_says_whether_the_epochs_predictions_collapsed(trained_run, sample_data):
    summary = pd.read_csv(trained_run / "summary.csv")
    best = torch.load(trained_run / "best.pth", weights_only=True)
    folds = load_folds(sample_data / "train/folds.csv", sample_data / "train/images", 0)
    truth = training_targets(folds[folds["fold"] == best["config"]["fold"]])
    collapsed = collapsed_tasks(truth, best["valid_probabilities"].argmax(dim=1).numpy(), COMPETITION)
    assert summary.set_index("epoch").loc[best["epoch"], "val_collapsed"] == float(bool(collapsed))
