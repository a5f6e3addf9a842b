"""Any mask classifier: class-folder data sets through preprocess, train, inference (sorting photos into folders)
and evaluation, with their label scheme saved in the run."""
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import sorting
import train
from conftest import assert_one_line_error, run_script
from dataset import COMPETITION, LabelScheme, folder_scheme, scheme_of
from generate_sample import KINDS, generate_classes
from model import MaskClassifier

TINY = ["--model", "test_resnet", "--resize", "64", "48", "--epochs", "1", "--batch_size", "8", "--workers", "0"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(script, *args):
    return run_script(script, *args, env=ENV)


def chain(root, kind):
    """generate -> preprocess -> train -> inference -> evaluation on a small set of `kind`; the results."""
    generate_classes(root, kind, people=6, eval_people=2, seed=1)
    steps = {
        "preprocess": run("preprocess.py", "--data_dir", root / "train", "--group_regex", r"^(\d+)_", "--kfold", "2",
                          "--faces", "off"),
        "train": run("train.py", "--data_dir", root / "train", "--model_dir", root / "model", "--crop", "none",
                     *TINY),
        "inference": run("inference.py", "--data_dir", root / "eval", "--model_dir", root / "model/exp",
                         "--output_dir", root / "output", "--workers", "0"),
        "evaluation": run("evaluation.py", "--truth", root / "eval", "--output_dir", root / "output"),
    }
    return steps


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_goes_preprocess_train_inference_evaluation(tmp_path, kind):
    steps = chain(tmp_path, kind)
    for name, result in steps.items():
        assert result.returncode == 0, f"{name}: {result.stderr[-2000:]}"
    classes = sorted(KINDS[kind])
    folds = pd.read_csv(tmp_path / "folds.csv", dtype={"group": str})
    assert sorted(folds["class"].unique()) == classes
    assert (folds.groupby("group")["fold"].nunique() == 1).all()  # one subject, one fold
    config = json.loads((tmp_path / "model/exp/config.json").read_text())
    assert scheme_of(config).classes == classes and config["head"] == "single"
    summary = pd.read_csv(tmp_path / "model/exp/summary.csv")
    assert {"val_f1", "val_accuracy", *(f"val_class_f1/{name}" for name in classes)} <= set(summary.columns)
    predictions = pd.read_csv(tmp_path / "output/predictions.csv")
    assert list(predictions.columns) == ["path", "predicted", "confidence", *(f"prob_{name}" for name in classes)]
    assert predictions["predicted"].isin(classes).all() and len(predictions) == 2 * len(classes)
    assert np.allclose(predictions[[f"prob_{name}" for name in classes]].sum(axis=1), 1, atol=1e-4)
    assert "accuracy" in steps["evaluation"].stdout and all(name in steps["evaluation"].stdout for name in classes)
    assert "photos of 3 people, too few to choose on" in steps["train"].stdout  # 6 people in 2 folds


@pytest.mark.parametrize("labels", [{"mask_label": "0"}, {"class": "mask"}], ids=["competition", "folders"])
def test_a_validation_fold_of_fewer_than_ten_people_is_warned_of(labels):
    def frame(people):  # a person's 7 photos: the competition's id, or a class folder's group
        return pd.DataFrame({"id" if "mask_label" in labels else "group": [f"{p:03d}" for p in range(people)
                                                                           for _ in range(7)],
                             "fold": [p % 3 for p in range(people) for _ in range(7)], **labels})

    assert train.small_fold_warning(frame(30), 0) is None  # 10 people in each fold
    assert "the validation fold holds 63 photos of 9 people" in train.small_fold_warning(frame(27), 0)
    assert "--fold all" in train.small_fold_warning(frame(27), 2)


def test_the_scheme_round_trips_through_config():
    for scheme in (COMPETITION, folder_scheme(["no_mask", "mask"])):
        assert LabelScheme.from_dict(json.loads(json.dumps(scheme.to_dict()))) == scheme
    assert folder_scheme(["no_mask", "mask"]).classes == ["mask", "no_mask"]
    assert scheme_of({}) == COMPETITION  # runs saved before schemes


@pytest.fixture(scope="module")
def mask_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mask")
    steps = chain(root, "mask")
    assert all(result.returncode == 0 for result in steps.values())
    return root


def test_inference_on_a_run_of_another_scheme_is_refused(sample_data, mask_run, tmp_path):
    result = run("inference.py", "--data_dir", sample_data / "eval", "--model_dir", mask_run / "model/exp",
                 "--output_dir", tmp_path / "out", "--workers", "0")
    assert_one_line_error(result, "predicts mask, no_mask, not the classes of")
    assert not (tmp_path / "out").exists()


def test_preprocess_refuses_a_single_class_and_counts_bad_files(tmp_path):
    generate_classes(tmp_path, "mask", people=3, eval_people=0)
    shutil.rmtree(tmp_path / "train/no_mask")
    assert_one_line_error(run("preprocess.py", "--data_dir", tmp_path / "train", "--faces", "off"),
                          "a classifier needs two or more")
    (tmp_path / "train/empty").mkdir()
    (tmp_path / "train/mask/notes.txt").write_text("not a photo")
    (tmp_path / "train/mask/.DS_Store").write_text("hidden")
    (tmp_path / "train/mask/broken.jpg").write_bytes(b"\xff\xd8 broken")
    result = run("preprocess.py", "--data_dir", tmp_path / "train", "--faces", "off", "--kfold", "2")
    assert_one_line_error(result, "3 problem(s)")
    assert all(part in result.stderr for part in ("empty class folder", "notes.txt", "broken.jpg"))
    assert ".DS_Store" not in result.stderr


def test_preprocess_names_a_file_name_that_is_not_utf8_and_skips_it_on_request(tmp_path):
    generate_classes(tmp_path, "mask", people=4, eval_people=0)
    photo = next((tmp_path / "train/mask").iterdir())
    undecodable = photo.with_name(os.fsdecode(b"caf\xe9_" + os.fsencode(photo.name)))
    shutil.copy(photo, undecodable)
    result = run("preprocess.py", "--data_dir", tmp_path / "train", "--faces", "off", "--kfold", "2")
    assert_one_line_error(result, "1 problem(s)")
    assert f"mask/caf\\xe9_{photo.name}: its name is not UTF-8" in result.stderr
    result = run("preprocess.py", "--data_dir", tmp_path / "train", "--faces", "off", "--kfold", "2", "--skip_bad")
    assert result.returncode == 0, result.stderr[-2000:]
    folds = pd.read_csv(tmp_path / "folds.csv")
    assert len(folds) == sum(1 for path in (tmp_path / "train").rglob("*.jpg")) - 1
    assert photo.name in set(folds["path"].map(os.path.basename))


def photos(folder, count):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(count):
        path = folder / f"photo{number % 2}.jpg" if number < 2 else folder / f"sub{number}" / "photo0.jpg"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(f"photo {number}".encode())
        paths.append(path)
    return paths


@pytest.mark.parametrize("mode", sorting.SORT_MODES)
def test_sorting_puts_every_photo_in_exactly_one_folder(tmp_path, mode):
    paths = photos(tmp_path / "in", 4)  # two photos named photo0.jpg: a name clash
    contents = [path.read_bytes() for path in paths]
    (tmp_path / "out/mask").mkdir(parents=True)
    (tmp_path / "out/mask/photo0.jpg").write_bytes(b"already there")  # never overwritten
    targets = sorting.sort_photos(paths, ["mask", "no_mask", "mask", "mask"], [0.9, 0.9, 0.3, 0.95],
                                  tmp_path / "out", mode, min_confidence=0.5)
    assert [target.parent.name for target in targets] == ["mask", "no_mask", "uncertain", "mask"]
    assert len(set(targets)) == 4 and (tmp_path / "out/mask/photo0.jpg").read_bytes() == b"already there"
    assert [target.read_bytes() for target in targets] == contents
    assert all(target.is_symlink() == (mode == "symlink") for target in targets)
    assert all(path.exists() == (mode != "move") for path in paths)


def test_an_interrupted_move_loses_no_photo(tmp_path, monkeypatch):
    paths = photos(tmp_path / "in", 4)
    contents = {path.read_bytes() for path in paths}
    real_remove, removed = os.remove, []

    def remove_then_die(path):
        if len(removed) == 2 and not str(path).endswith(".tmp"):
            raise RuntimeError("killed")  # killed between filing a photo and removing its original
        removed.append(path)
        real_remove(path)

    monkeypatch.setattr(sorting.os, "remove", remove_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        sorting.sort_photos(paths, ["a", "b", "a", "b"], [1, 1, 1, 1], tmp_path / "out", "move")
    left = {path.read_bytes() for path in (tmp_path / "in").rglob("*.jpg")}
    filed = {path.read_bytes() for path in (tmp_path / "out").rglob("*.jpg")}
    assert left | filed == contents


def test_inference_sorts_a_photo_folder(mask_run, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(mask_run / "eval/mask", folder)
    result = run("inference.py", "--data_dir", folder, "--model_dir", mask_run / "model/exp", "--output_dir",
                 tmp_path / "out", "--workers", "0", "--sort_into", tmp_path / "sorted", "--sort_mode", "move")
    assert result.returncode == 0, result.stderr[-2000:]
    predictions = pd.read_csv(tmp_path / "out/predictions.csv")
    filed = sorted(path.relative_to(tmp_path / "sorted") for path in (tmp_path / "sorted").rglob("*.jpg"))
    assert sorted(str(path) for path in filed) == sorted(f"{row.predicted}/{row.path}" for row in
                                                         predictions.itertuples())
    assert not list(folder.glob("*.jpg"))  # moved


def test_a_mobilenet_head_takes_the_network_own_feature_size():
    model = MaskClassifier("mobilenetv3_large_100", "single", folder_scheme(["a", "b", "c"])).eval()
    assert model(torch.zeros(2, 3, 64, 48, dtype=torch.uint8)).shape == (2, 3)
