"""Bad input gets one clear line and exit code 2 (or a counted skip), never a traceback or a half-written file."""
import shutil

import pandas as pd
import pytest
import torch

from conftest import assert_one_line_error, run_script
from generate_sample import generate

TINY_TRAINING = ["--model", "test_resnet", "--resize", "64", "48", "--epochs", "1", "--batch_size", "16",
                 "--workers", "0"]


@pytest.fixture
def data(tmp_path):
    generate(tmp_path, people=10, eval_people=1, seed=2)
    return tmp_path


def first_person(data):
    return sorted((data / "train/images").iterdir())[0]


def photo(person, stem):
    return next(person.glob(f"{stem}.*"))


def preprocess(data, *args):
    return run_script("preprocess.py", "--data_dir", data / "train/images", *args)


def break_corrupt_photo(data):
    path = photo(first_person(data), "mask2")
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])
    return "does not decode"


def break_empty_folder(data):
    (data / "train/images/000777_male_Asian_33").mkdir()
    return "000777_male_Asian_33: missing mask1"


def break_missing_photo(data):
    photo(first_person(data), "normal").unlink()
    return "missing normal"


def break_folder_name(data):
    first_person(data).rename(data / "train/images/somebody")
    return "somebody: folder name is not {id}_{gender}_{race}_{age}"


def break_age_text(data):
    shutil.copytree(first_person(data), data / "train/images/000778_male_Asian_old")
    return "age 'old' is not a number"


def break_age_range(data):
    shutil.copytree(first_person(data), data / "train/images/000779_male_Asian_200")
    return "age 200 is out of range"


def break_gender(data):
    shutil.copytree(first_person(data), data / "train/images/000780_other_Asian_30")
    return "unknown gender 'other'"


def break_photo_name(data):
    photo(first_person(data), "mask3").rename(first_person(data) / "mask9.jpg")
    return "mask9.jpg: not one of the seven photos"


def break_duplicate_id(data):
    person = first_person(data)
    shutil.copytree(person, data / "train/images" / person.name.replace("_Asian_", "_Korean_"))
    return f"person id {person.name.split('_')[0]} also used by"


@pytest.mark.parametrize("break_data", [
    break_corrupt_photo, break_empty_folder, break_missing_photo, break_folder_name, break_age_text,
    break_age_range, break_gender, break_photo_name, break_duplicate_id,
])
def test_preprocess_refuses_bad_training_data(data, break_data):
    message = break_data(data)
    assert_one_line_error(preprocess(data), message)
    assert not (data / "train/folds.csv").exists()


def test_skip_bad_drops_and_lists_a_corrupt_photo(data):
    break_corrupt_photo(data)
    result = preprocess(data, "--skip_bad")
    assert result.returncode == 0, result.stderr
    assert "does not decode" in result.stdout
    folds = pd.read_csv(data / "train/folds.csv")
    assert len(folds) == 10 * 7 - 1
    assert not folds["path"].str.endswith(f"{first_person(data).name}/mask2.jpg").any()


@pytest.mark.parametrize("content, message", [
    (None, "train.csv is missing"),
    ("id,gender,age\n1,male,30\n", "lacks the column(s) race, path"),
])
def test_preprocess_needs_a_complete_train_csv(data, content, message):
    csv = data / "train/train.csv"
    csv.unlink()
    if content is not None:
        csv.write_text(content)
    assert_one_line_error(preprocess(data), message)


@pytest.fixture(scope="module")
def trained_once(sample_data, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("model")
    result = run_script("train.py", "--data_dir", sample_data / "train/images", "--model_dir", model_dir,
                        *TINY_TRAINING)
    assert result.returncode == 0, result.stderr[-2000:]
    return model_dir / "exp"


@pytest.fixture
def trained(trained_once, tmp_path):
    """A private copy of a trained run, free to damage."""
    return shutil.copytree(trained_once, tmp_path / "model/exp")


def infer(eval_dir, run_dir, output_dir):
    return run_script("inference.py", "--data_dir", eval_dir, "--model_dir", run_dir, "--output_dir", output_dir,
                      "--workers", "0")


def copy_eval(sample_data, tmp_path):
    shutil.copytree(sample_data / "eval", tmp_path / "eval")
    return tmp_path / "eval"


@pytest.mark.parametrize("damage, message", [
    (lambda eval_dir: (eval_dir / "info.csv").unlink(), "info.csv does not exist"),
    (lambda eval_dir: (eval_dir / "info.csv").write_text("Image,ans\na.jpg,0\n"), "lacks the ImageID column"),
    (lambda eval_dir: next((eval_dir / "images").iterdir()).unlink(), "images named in"),
])
def test_inference_refuses_a_broken_eval_set(sample_data, trained, tmp_path, damage, message):
    eval_dir = copy_eval(sample_data, tmp_path)
    damage(eval_dir)
    assert_one_line_error(infer(eval_dir, trained, tmp_path / "out"), message)
    assert not (tmp_path / "out").exists()


def test_inference_refuses_a_run_without_checkpoint(sample_data, trained, tmp_path):
    (trained / "best.pth").unlink()
    assert_one_line_error(infer(sample_data / "eval", trained, tmp_path / "out"), "no checkpoint at")
    assert_one_line_error(infer(sample_data / "eval", tmp_path, tmp_path / "out"), "is not a run directory")


class Payload:
    def __reduce__(self):
        return (print, ("unsafe code ran",))


def test_a_checkpoint_that_needs_arbitrary_pickles_is_refused(sample_data, trained, tmp_path):
    torch.save({"model": Payload()}, trained / "best.pth")
    result = infer(sample_data / "eval", trained, tmp_path / "out")
    assert_one_line_error(result, "unsafe")
    assert "unsafe code ran" not in result.stdout


def test_a_checkpoint_of_another_head_names_the_mismatch(sample_data, trained, tmp_path):
    state = torch.load(trained / "best.pth", weights_only=True)
    state["model"]["head.weight"] = state["model"]["head.weight"][:8]
    state["model"]["head.bias"] = state["model"]["head.bias"][:8]
    torch.save(state, trained / "best.pth")
    assert_one_line_error(infer(sample_data / "eval", trained, tmp_path / "out"), "head.weight is (8,")


def test_train_refuses_folds_of_another_data_directory(sample_data, data, tmp_path):
    result = run_script("train.py", "--data_dir", data / "train/images", "--csv", sample_data / "train/folds.csv",
                        "--model_dir", tmp_path / "model", *TINY_TRAINING)
    assert_one_line_error(result, "rerun preprocess.py for this data directory")
    assert not (tmp_path / "model").exists()


def test_nan_loss_stops_training_and_says_what_was_kept(sample_data, tmp_path):
    result = run_script("train.py", "--data_dir", sample_data / "train/images", "--model_dir", tmp_path,
                        *TINY_TRAINING, "--optimizer", "sgd", "--lr", "1e30")
    assert_one_line_error(result, "loss became nan at epoch 1: stopped; no epoch had finished")
    assert not list(tmp_path.rglob("*.pth"))
