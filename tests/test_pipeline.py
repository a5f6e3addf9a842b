"""The whole chain through the competition's environment-variable contract, as the README runs it."""
import json
import os

import pandas as pd
import pytest

from conftest import TINY_TRAINING, run_script


@pytest.fixture(scope="module")
def pipeline(sample_data, tmp_path_factory):
    """Runs preprocess, train, inference and evaluation with paths from SM_* variables only."""
    work = tmp_path_factory.mktemp("work")
    env = {**os.environ, "SM_CHANNEL_TRAIN": str(sample_data / "train/images"), "SM_MODEL_DIR": str(work / "model"),
           "SM_CHANNEL_EVAL": str(sample_data / "eval"), "SM_CHANNEL_MODEL": str(work / "model/exp"),
           "SM_OUTPUT_DATA_DIR": str(work / "output"), "SM_GROUND_TRUTH_DIR": str(sample_data / "gt")}
    steps = {"preprocess": ["preprocess.py"], "train": ["train.py", "--name", "exp", *TINY_TRAINING],
             "inference": ["inference.py", "--workers", "0"],
             "inference by argmax": ["inference.py", "--workers", "0", "--decision", "argmax", "--output_dir",
                                     work / "output_argmax"],
             "evaluation": ["evaluation.py"],
             "train again": ["train.py", "--name", "exp", *TINY_TRAINING]}
    return work, {step: run_script(*command, env=env, cwd=work) for step, command in steps.items()}


def test_every_step_succeeds(pipeline):
    _, results = pipeline
    for script, result in results.items():
        assert result.returncode == 0, f"{script}: {result.stderr[-2000:]}"


def test_run_directory_holds_what_reproduces_it(pipeline):
    work, _ = pipeline
    run = work / "model/exp"
    assert {"config.json", "best.pth", "last.pth", "summary.csv"} <= {p.name for p in run.iterdir()}
    assert any(p.name.startswith("events.out.tfevents") for p in run.iterdir())
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "test_resnet" and config["resize"] == [64, 48] and config["run_dir"] == str(run)
    summary = pd.read_csv(run / "summary.csv")
    assert list(summary["epoch"]) == [1]
    assert {"train_loss", "val_loss", "val_f1", "val_accuracy", "val_mask_f1", "val_gender_f1", "val_age_f1"} <= set(summary)


def test_a_taken_run_name_gets_a_number(pipeline):
    work, _ = pipeline
    assert (work / "model/exp2/best.pth").is_file()


def test_submission_follows_info_csv_order(pipeline, sample_data):
    work, _ = pipeline
    info = pd.read_csv(sample_data / "eval/info.csv")
    submission = pd.read_csv(work / "output/output.csv")
    assert list(submission["ImageID"]) == list(info["ImageID"])
    assert submission["ans"].between(0, 17).all()
    probabilities = pd.read_csv(work / "output/probabilities.csv")
    assert list(probabilities["ImageID"]) == list(info["ImageID"])
    class_columns = [f"prob_{k}" for k in range(18)]
    assert (probabilities[class_columns].sum(axis=1) - 1).abs().max() < 1e-4
    # the default decision (for macro F1) chooses the answers, not the probabilities; argmax answers their maximum
    by_argmax = pd.read_csv(work / "output_argmax/output.csv")
    pd.testing.assert_frame_equal(pd.read_csv(work / "output_argmax/probabilities.csv"), probabilities)
    assert (probabilities[class_columns].to_numpy().argmax(axis=1) == by_argmax["ans"]).all()


def test_evaluation_prints_the_f1(pipeline):
    _, results = pipeline
    scores = json.loads(results["evaluation"].stdout.splitlines()[0])
    assert 0 <= float(scores["f1"]["value"]) <= 1


def test_same_seed_gives_the_same_metrics(pipeline):
    work, _ = pipeline
    first = pd.read_csv(work / "model/exp/summary.csv").drop(columns="seconds")
    second = pd.read_csv(work / "model/exp2/summary.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(first, second)


def test_every_script_documents_its_flags():
    for script in ["preprocess.py", "train.py", "inference.py", "evaluation.py", "generate_sample.py"]:
        result = run_script(script, "--help")
        assert result.returncode == 0 and "--" in result.stdout, script
    assert "--batch-size" in run_script("train.py", "--help").stdout
