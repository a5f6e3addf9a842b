"""Pictures of results: confusion matrices, per-class scores, mistakes, curves, run comparisons, and out-of-fold
predictions as an ensemble input."""
import contextlib
import io
import json
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import confusion_matrix

import compare
import ensemble
import evaluation
import inference
import preprocess
import reports
import train
from adaptation import fit_temperatures
from cli import UserError
from conftest import assert_one_line_error, run_script
from dataset import COMPETITION, NUM_CLASSES, decode_label

TINY = ["--model", "test_resnet", "--resize", "64", "48", "--batch_size", "16", "--workers", "0"]
REPORT_FILES = ("confusion.png", "confusion.csv", "confusion_tasks.png", "per_class.csv", "per_class.png",
                "reliability.png", "mistakes.csv", "mistakes.png")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    """A valid PNG of non-trivial size."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    with Image.open(path) as image:
        image.verify()
    assert path.stat().st_size > 5_000, path


def run_main(module, *flags):
    """Runs a script's main() in this process, as `python module.py flags` would; returns what it printed."""
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(sys, "argv", [f"{module.__name__}.py", *map(str, flags)])
        module.main()
    return printed.getvalue()


@pytest.fixture(scope="module")
def fold_all_run(sample_data, tmp_path_factory):
    """A two-fold `--fold all` run of two epochs: (run directory, folds CSV, images folder, train.py's output)."""
    work = tmp_path_factory.mktemp("kfold")
    images, folds_csv = sample_data / "train/images", work / "folds2.csv"
    run_main(preprocess, "--data_dir", images, "--kfold", 2, "--output", folds_csv)
    printed = run_main(train, "--data_dir", images, "--csv", folds_csv, "--model_dir", work, "--fold", "all",
                       "--epochs", 2, *TINY)
    return work / "exp", folds_csv, images, printed


@pytest.fixture
def submission(sample_data, tmp_path):
    """An output folder of random predictions of the eval set: output.csv and probabilities.csv."""
    ground_truth = pd.read_csv(sample_data / "gt/gt.csv")
    probabilities = np.random.default_rng(0).dirichlet(np.ones(NUM_CLASSES), len(ground_truth))
    output = tmp_path / "output"
    output.mkdir()
    frame = pd.DataFrame(probabilities, columns=[f"prob_{k}" for k in range(NUM_CLASSES)])
    frame.insert(0, "ImageID", ground_truth["ImageID"])
    frame.to_csv(output / "probabilities.csv", index=False)
    ground_truth.assign(ans=probabilities.argmax(axis=1)).to_csv(output / "output.csv", index=False)
    return output


def evaluate(sample_data, output, *flags):
    """evaluation.py on the output folder, in this process; returns what it printed."""
    return run_main(evaluation, "--gt_dir", sample_data / "gt", "--output_dir", output,
                    "--images", sample_data / "eval/images", *flags)


def test_class_names_follow_the_label_encoding():
    names = COMPETITION.classes
    assert len(names) == NUM_CLASSES and names[0] == "wear/male/<30" and names[17] == "not_wear/female/60+"
    for label in range(NUM_CLASSES):
        assert names[label] == "/".join(COMPETITION.tasks[task][int(value)]
                                        for task, value in zip(("mask", "gender", "age"), decode_label(label)))


def test_matrix_counts_equal_sklearns_confusion_matrix(tmp_path):
    rng = np.random.default_rng(1)
    true, predicted = rng.integers(0, NUM_CLASSES, 300), rng.integers(0, NUM_CLASSES, 300)
    expected = confusion_matrix(true, predicted, labels=np.arange(NUM_CLASSES))
    assert (reports.confusion_counts(true, predicted, NUM_CLASSES) == expected).all()
    reports.write_report(tmp_path, true, predicted, COMPETITION)
    written = pd.read_csv(tmp_path / "confusion.csv", index_col=0)
    assert list(written.columns) == COMPETITION.classes and (written.to_numpy() == expected).all()
    rows = reports.normalise_rows(expected)
    assert np.allclose(rows.sum(axis=1), 1)


def test_mistakes_are_the_wrong_predictions_most_confident_first():
    probabilities = np.array([[0.6, 0.4], [0.1, 0.9], [0.3, 0.7], [0.95, 0.05]])
    true, predicted = np.array([1, 0, 0, 0]), probabilities.argmax(axis=1)
    mistakes = reports.mistakes_table(["a", "b", "c", "d"], true, predicted, probabilities, ["x", "y"])
    assert list(mistakes["path"]) == ["b", "c", "a"]  # d is right
    assert list(mistakes["confidence"]) == [0.9, 0.7, 0.6]
    assert list(mistakes["true_name"]) == ["x", "x", "y"] and list(mistakes["predicted_name"]) == ["y", "y", "x"]


def test_evaluation_report_writes_every_picture(sample_data, submission, tmp_path):
    evaluate(sample_data, submission, "--report", tmp_path / "report")
    for name in REPORT_FILES:
        assert (tmp_path / "report" / name).is_file(), name
        if name.endswith(".png"):
            assert_png(tmp_path / "report" / name)
    truth = pd.read_csv(sample_data / "gt/gt.csv")
    predicted = pd.read_csv(submission / "output.csv")["ans"]
    counts = pd.read_csv(tmp_path / "report/confusion.csv", index_col=0).to_numpy()
    assert (counts == confusion_matrix(truth["ans"], predicted, labels=np.arange(NUM_CLASSES))).all()
    mistakes = pd.read_csv(tmp_path / "report/mistakes.csv")
    assert len(mistakes) == (truth["ans"] != predicted).sum()
    assert mistakes["confidence"].is_monotonic_decreasing and (mistakes["true"] != mistakes["predicted"]).all()


def test_evaluation_report_without_probabilities_skips_the_mistakes_and_says_so(sample_data, submission, tmp_path):
    (submission / "probabilities.csv").unlink()
    printed = evaluate(sample_data, submission, "--report", tmp_path / "report")
    assert "reliability.png, mistakes.csv and mistakes.png skipped" in printed
    assert {p.name for p in (tmp_path / "report").iterdir()} == set(REPORT_FILES) - {"reliability.png",
                                                                                     "mistakes.csv", "mistakes.png"}


@pytest.mark.parametrize("damage, message", [
    (lambda output: (output / "output.csv").write_text("ImageID,ans\nx.jpg,18\n"), "labels are integers 0-17"),
    (lambda output: (output / "probabilities.csv").write_text("ImageID,prob_0\nx.jpg,2\n"), "not a distribution"),
], ids=["bad submission", "bad probabilities"])
def test_a_bad_input_writes_no_report(sample_data, submission, tmp_path, damage, message):
    damage(submission)
    with pytest.raises(UserError, match=message):
        evaluate(sample_data, submission, "--report", tmp_path / "report")
    assert not (tmp_path / "report").exists()


def test_photos_missing_from_images_are_a_one_line_error(sample_data, submission, tmp_path):
    result = run_script("evaluation.py", "--gt_dir", sample_data / "gt", "--output_dir", submission, "--report",
                        tmp_path / "report", "--images", tmp_path)
    assert_one_line_error(result, "lacks")
    assert not (tmp_path / "report").exists()


@pytest.mark.slow
def test_training_draws_curves_and_the_best_epochs_report(fold_all_run):
    run = fold_all_run[0]
    for fold_run in (run / "fold0", run / "fold1"):
        assert_png(fold_run / "curves.png")
        for name in REPORT_FILES:
            assert (fold_run / "report" / name).is_file(), name
            if name.endswith(".png"):
                assert_png(fold_run / "report" / name)
    # the mistakes are the best epoch's validation errors, most confident first, by path under the data folder
    mistakes = pd.read_csv(run / "fold0/report/mistakes.csv")
    oof = pd.read_csv(run / "oof.csv").query("fold == 0")
    wrong = oof[oof["label"] != oof["predicted"]]
    assert sorted(mistakes["path"]) == sorted(wrong["ImageID"])
    assert mistakes["confidence"].is_monotonic_decreasing


@pytest.mark.slow
def test_each_epochs_confusion_matrix_goes_to_tensorboard(fold_all_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(next((fold_all_run[0] / "fold0").glob("events.out.tfevents*"))))
    events.Reload()
    assert [event.step for event in events.Images("confusion")] == [1, 2]


@pytest.mark.slow
def test_compare_overlays_runs_of_different_lengths(fold_all_run, tmp_path):
    run = fold_all_run[0]
    short = tmp_path / "short"
    short.mkdir()
    pd.read_csv(run / "fold0/summary.csv").head(1).to_csv(short / "summary.csv", index=False)
    printed = run_main(compare, run, short, "--output", tmp_path / "compare.png")
    assert_png(tmp_path / "compare.png")
    oof_f1 = json.loads((run / "oof_metrics.json").read_text())["f1"]
    parent_line = next(line for line in printed.splitlines() if "(out of fold)" in line)
    assert f"{oof_f1:.4f}" in parent_line and "±" in parent_line
    short_line = next(line for line in printed.splitlines() if line.strip().startswith(str(short)))
    assert short_line.split()[1:3] == ["1", "1"]  # one epoch, best epoch 1


@pytest.mark.slow
def test_compare_refuses_a_folder_that_is_not_a_run(fold_all_run, tmp_path):
    result = run_script("compare.py", fold_all_run[0], tmp_path, "--output", tmp_path / "compare.png")
    assert_one_line_error(result, "is not a run")
    assert not (tmp_path / "compare.png").exists()


@pytest.mark.slow
def test_oof_csv_is_an_ensemble_input_scoring_what_train_printed(fold_all_run, tmp_path):
    run, folds_csv, images, train_output = fold_all_run
    oof = pd.read_csv(run / "oof.csv")
    assert list(oof.columns[:NUM_CLASSES + 1]) == ["ImageID", *[f"prob_{k}" for k in range(NUM_CLASSES)]]
    f1 = json.loads((run / "oof_metrics.json").read_text())["f1"]
    assert f"out-of-fold f1 {f1:.4f}" in train_output
    # one voter, named by its file, and the same run again by its folder: their vote is the run's own prediction
    printed = run_main(ensemble, run / "oof.csv", run, "--fold", "all", "--csv", folds_csv, "--train_dir", images,
                       "--output_dir", tmp_path)
    assert f"fold all ({len(oof)} images): f1 {f1:.4f}" in printed
    answers = pd.read_csv(tmp_path / "output.csv").set_index("ImageID")["ans"]
    assert (answers.loc[oof["ImageID"]].to_numpy() == oof["predicted"].to_numpy()).all()


@pytest.mark.slow
def test_the_fold_runs_of_a_fold_all_run_are_calibrated_and_decided_on_every_fold_together(sample_data, fold_all_run,
                                                                                          tmp_path):
    run = fold_all_run[0]
    oof = pd.read_csv(run / "oof.csv")
    printed = run_main(inference, "--model_dir", run, "--data_dir", sample_data / "eval", "--output_dir", tmp_path,
                       "--workers", 0)
    temperatures = fit_temperatures(oof.filter(like="prob_").to_numpy(), oof["label"].to_numpy(), COMPETITION)
    line = (f"temperature mask {temperatures[0]:.2f}, gender {temperatures[1]:.2f}, age {temperatures[2]:.2f} "
            f"(validation NLL")
    assert f"{run / 'fold0'}: {line}" in printed  # said once, for both fold runs
    assert printed.count("temperature mask") == 1 and f"on {len(oof)} photos of the 2 fold runs of {run})" in printed
    assert f"fitted on {len(oof)} validation photos" in printed  # every fold's predictions counted once


@pytest.mark.slow
def test_ensemble_fold_all_refuses_a_folder_without_oof_csv(fold_all_run, tmp_path):
    run, folds_csv, images, _ = fold_all_run
    with pytest.raises(UserError, match="holds no oof.csv"):
        run_main(ensemble, run / "fold0", "--fold", "all", "--csv", folds_csv, "--train_dir", images,
                 "--output_dir", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_compare_labels_each_run_by_the_shortest_tail_that_tells_it_apart():
    assert compare.short_names(["a/model/exp", "b/model/exp2"]) == {"a/model/exp": "exp", "b/model/exp2": "exp2"}
    assert compare.short_names(["a/fold0", "b/fold0"]) == {"a/fold0": "a/fold0", "b/fold0": "b/fold0"}
