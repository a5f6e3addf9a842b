"""Bad input gets one clear line and exit code 2 (or a counted skip), never a traceback or a half-written file."""
import json
import re
import shutil

import pandas as pd
import pytest
import torch

import ensemble
import inference
import preprocess as preprocess_script
import train
from cli import UserError
from conftest import TINY_TRAINING, assert_one_line_error, run_script
from dataset import load_folds
from generate_sample import generate
from inference import load_run, read_eval_set
from submissions import read_labels


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


@pytest.fixture
def trained(trained_run, tmp_path):
    """A private copy of the shared tiny run, free to damage."""
    return shutil.copytree(trained_run, tmp_path / "model/exp")


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
    state["model"]["head.weight"] = state["model"]["head.weight"][:5]
    state["model"]["head.bias"] = state["model"]["head.bias"][:5]
    torch.save(state, trained / "best.pth")
    assert_one_line_error(infer(sample_data / "eval", trained, tmp_path / "out"), "head.weight is (5,")


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


@pytest.mark.parametrize("script, flags, message", [
    (train, ["--lr", "nan"], "argument --lr: nan is out of range"),
    (train, ["--resize", "0", "64"], "argument --resize: 0 is out of range"),
    (train, ["--batch_size", "-1"], "argument --batch_size/--batch-size: -1 is out of range"),
    (train, ["--smoothing", "1.5"], "argument --smoothing: 1.5 is out of range"),
    (train, ["--lr_decay_step", "0"], "argument --lr_decay_step/--lr-decay-step: 0 is out of range"),
    (train, ["--device", "foo"], "'foo' is not a torch device"),
    (train, ["--device", "cuda:7"], "device 'cuda:7' is not available"),
    (train, ["--name", "../x"], "'../x' is not a plain name"),
    (preprocess_script, ["--kfold", "1"], "argument --kfold: 1 is out of range: at least 2"),
    (ensemble, ["--weights", "nan", "1"], "argument --weights: nan is out of range"),
    (ensemble, ["--weights", "inf"], "argument --weights: inf is out of range"),
    (inference, ["--batch_size", "0"], "argument --batch_size/--batch-size: 0 is out of range"),
])
def test_a_flag_out_of_range_is_one_error_line(capsys, script, flags, message):
    with pytest.raises(SystemExit) as exit_:
        script.get_args_parser().parse_args(flags)
    lines = capsys.readouterr().err.splitlines()
    assert exit_.value.code == 2
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_a_flag_out_of_range_from_the_command_line_writes_nothing(tmp_path):
    result = run_script("train.py", "--model_dir", tmp_path / "model", "--epochs", "0")
    assert_one_line_error(result, "argument --epochs: 0 is out of range: at least 1")
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("image_id", ["../info.csv", "../../nowhere.jpg", "/etc/hostname", "/nowhere.jpg"])
def test_an_image_id_outside_the_images_folder_is_refused_without_saying_if_it_exists(sample_data, tmp_path,
                                                                                       image_id):
    eval_dir = copy_eval(sample_data, tmp_path)
    (eval_dir / "info.csv").write_text(f"ImageID,ans\n{image_id},0\n")
    assert_one_line_error(infer(eval_dir, sample_data / "nothing", tmp_path / "out"),
                          f"info.csv names '{image_id}', which is not a path inside")
    assert not (tmp_path / "out").exists()


def test_a_folds_csv_path_outside_the_data_folder_is_refused(sample_data, tmp_path):
    frame = pd.read_csv(sample_data / "train/folds.csv")
    frame.loc[0, "path"] = "../folds.csv"
    frame.to_csv(tmp_path / "folds.csv", index=False)
    with pytest.raises(UserError, match="names '../folds.csv', which is not a path inside"):
        load_folds(tmp_path / "folds.csv", sample_data / "train/images", 0)


@pytest.mark.parametrize("content, message", [
    ("ImageID,ans\n", "lists no image"),
    ("ImageID,ans\n,0\n", "row 2 has no ImageID"),
])
def test_an_info_csv_without_rows_or_ids_is_refused(sample_data, tmp_path, content, message):
    eval_dir = copy_eval(sample_data, tmp_path)
    (eval_dir / "info.csv").write_text(content)
    with pytest.raises(UserError, match=message):
        read_eval_set(eval_dir)


def save_odd_checkpoint(run_dir, content):
    torch.save(content, run_dir / "best.pth")


@pytest.mark.parametrize("damage, message", [
    (lambda run: (run / "best.pth").write_bytes(b""), "cannot read checkpoint"),
    (lambda run: (run / "best.pth").write_bytes(b"\x00garbage" * 50), "is not a file torch.save wrote"),
    (lambda run: save_odd_checkpoint(run, [1, 2]), "it holds a list, not a table of tensors"),
    (lambda run: save_odd_checkpoint(run, {"epoch": 1}), "lacks the key 'model'"),
    (lambda run: save_odd_checkpoint(run, {"model": {"conv.weight": 3}}), "holds no weights"),
    (lambda run: (run / "config.json").write_text("{not json"), "cannot read"),
    (lambda run: (run / "config.json").write_text("[1]"), "config.json is not a JSON object"),
    (lambda run: (run / "config.json").write_text('{"model": "test_resnet", "head": "single"}'),
     "config.json lacks the key 'resize'"),
    (lambda run: (run / "config.json").write_text('{"model": "test_resnet", "head": "single", "resize": [0, 1]}'),
     "config.json: resize is [0, 1], not two positive integers"),
])
def test_a_broken_checkpoint_or_config_is_one_line_naming_file_and_key(trained, damage, message):
    damage(trained)
    with pytest.raises(UserError, match=re.escape(message)):
        load_run(trained, torch.device("cpu"))


def test_a_run_that_failed_before_its_first_epoch_is_skipped_in_a_parent_and_refused_by_name(
        sample_data, trained, tmp_path):
    unfinished = tmp_path / "model/unfinished"
    unfinished.mkdir()
    shutil.copy(trained / "config.json", unfinished)
    result = infer(sample_data / "eval", tmp_path / "model", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"skipping {unfinished}: no checkpoint" in result.stdout
    assert_one_line_error(infer(sample_data / "eval", unfinished, tmp_path / "out2"), "no checkpoint at")


def test_a_nan_checkpoint_stops_inference_and_writes_nothing(sample_data, trained, tmp_path):
    state = torch.load(trained / "best.pth", weights_only=True)
    state["model"] = {key: torch.full_like(value, float("nan")) if value.is_floating_point() else value
                      for key, value in state["model"].items()}
    torch.save(state, trained / "best.pth")
    assert_one_line_error(infer(sample_data / "eval", trained, tmp_path / "out"),
                          "the predicted probabilities are not all finite numbers")
    assert not (tmp_path / "out").exists()


def test_a_corrupt_photo_read_by_a_loader_worker_is_one_line_and_leaves_no_run(sample_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(sample_data / "train", data / "train")
    corrupt = sorted((data / "train/images").glob("*/mask1.*"))[0]
    corrupt.write_bytes(corrupt.read_bytes()[:300])
    result = run_script("train.py", "--data_dir", data / "train/images", "--model_dir", tmp_path / "model",
                        *TINY_TRAINING[:-2], "--workers", "2", "--cache", "off", "--fold", "all")
    assert_one_line_error(result, f"cannot decode {corrupt}")
    assert list((tmp_path / "model").iterdir()) == []


def test_true_and_false_are_no_labels(tmp_path):
    (tmp_path / "output.csv").write_text("ImageID,ans\na.jpg,True\nb.jpg,False\n")
    with pytest.raises(UserError, match="has label 'True'"):
        read_labels(tmp_path / "output.csv", "submission")


def test_a_resumed_config_is_checked_like_the_command_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"lr": "nan", "epochs": 3}))
    with pytest.raises(UserError, match="config.json: lr: nan is out of range"):
        train.resumed_args(tmp_path)


def test_weights_made_nan_by_the_last_step_stop_training_before_they_are_saved(sample_data, tmp_path):
    result = run_script("train.py", "--data_dir", sample_data / "train/images", "--model_dir", tmp_path / "model",
                        *TINY_TRAINING, "--batch_size", "128", "--optimizer", "sgd", "--lr", "1e30")  # one step
    assert_one_line_error(result, "validation loss became nan at epoch 1: stopped; no epoch had finished")
    assert list((tmp_path / "model").iterdir()) == []


def test_a_model_dir_that_is_a_file_is_one_line(sample_data, tmp_path):
    (tmp_path / "model").write_text("not a folder")
    result = run_script("train.py", "--data_dir", sample_data / "train/images", "--model_dir", tmp_path / "model",
                        *TINY_TRAINING)
    assert_one_line_error(result, "cannot create the folder")
