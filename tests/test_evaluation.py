import json

import pandas as pd
import pytest

from conftest import assert_one_line_error, run_script
from evaluation import score


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
