import shutil

import pandas as pd
import pytest
from PIL import Image

from conftest import assert_one_line_error, run_script
from generate_sample import generate


@pytest.fixture
def data(tmp_path):
    generate(tmp_path, people=12, eval_people=0, seed=1)
    return tmp_path / "train/images"


def preprocess(images, *args):
    return run_script("preprocess.py", "--data_dir", images, *args)


def test_no_person_in_two_folds_and_stratification_holds(tmp_path):
    generate(tmp_path, people=80, eval_people=0, seed=3)
    result = preprocess(tmp_path / "train/images", "--kfold", "4", "--faces", "off")
    assert result.returncode == 0, result.stderr
    folds = pd.read_csv(tmp_path / "train/folds.csv", dtype={"id": str})
    assert len(folds) == 80 * 7
    assert folds.groupby("id")["fold"].nunique().max() == 1
    people = folds.drop_duplicates("id")
    overall = (people["gender_label"] * 3 + people["age_label"]).value_counts(normalize=True)
    for _, fold in people.groupby("fold"):
        share = (fold["gender_label"] * 3 + fold["age_label"]).value_counts(normalize=True)
        assert (share.reindex(overall.index, fill_value=0) - overall).abs().max() < 0.1


def test_rows_carry_the_labels(data):
    assert preprocess(data).returncode == 0
    folds = pd.read_csv(data.parent / "folds.csv")
    assert set(folds.columns) >= {"path", "id", "gender", "race", "age", "mask_label", "gender_label",
                                  "age_label", "label", "fold"}
    assert (folds["label"] == folds["mask_label"] * 6 + folds["gender_label"] * 3 + folds["age_label"]).all()
    assert set(folds.loc[folds["path"].str.contains("/normal"), "mask_label"]) == {2}


def test_hidden_files_are_ignored(data):
    person = sorted(data.iterdir())[0]
    shutil.copy(person / "normal.jpg" if (person / "normal.jpg").exists() else next(person.iterdir()),
                person / "._mask1.jpg")
    (data / ".DS_Store").write_text("finder")
    result = preprocess(data)
    assert result.returncode == 0, result.stderr
    assert len(pd.read_csv(data.parent / "folds.csv")) == 12 * 7


def test_malformed_names_are_reported_in_one_line_and_nothing_is_written(data):
    person = sorted(data.iterdir())[0]
    shutil.copytree(person, data / "000999_robot_Asian_30")
    next(person.iterdir()).rename(person / "selfie.jpg")
    result = preprocess(data)
    assert_one_line_error(result, "unknown gender 'robot'")
    assert "selfie.jpg" in result.stderr
    assert not (data.parent / "folds.csv").exists()


def test_skip_bad_skips_and_counts_the_offenders(data):
    shutil.copytree(sorted(data.iterdir())[0], data / "000999_robot_Asian_30")
    (data / "notes.txt").write_text("stray")
    result = preprocess(data, "--skip_bad")
    assert result.returncode == 0, result.stderr
    assert "skipped 2 problem(s)" in result.stdout
    assert len(pd.read_csv(data.parent / "folds.csv")) == 12 * 7


def test_classes_too_small_for_the_folds_are_one_line(tmp_path):
    for name in ("mask", "no_mask"):
        (tmp_path / "data" / name).mkdir(parents=True)
        Image.new("RGB", (64, 64), (90, 60, 40)).save(tmp_path / "data" / name / "0001_photo.jpg")
    result = preprocess(tmp_path / "data", "--layout", "folders", "--faces", "off", "--kfold", "2")
    assert_one_line_error(result, "no class has 2 photos to spread over 2 folds")
