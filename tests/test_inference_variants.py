"""Inference variants: votes, split-task composition, test-time augmentation and the held-out fold check."""
import os
import re

import pandas as pd
import pytest
import torch
from PIL import ImageOps

from augmentation import create_transform
from cli import UserError
from conftest import TINY_TRAINING, assert_one_line_error, run_script
from dataset import compose_probabilities, encode_label, task_marginals
from ensemble import hard_vote, soft_vote
from inference import load_run
from inference_tta import VIEWS, parse_views, predict_views
from photos import read_image
from submissions import read_probabilities, write_probabilities

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models gain nothing from threads that wait on a busy machine
FOLD_SCORE = re.compile(r"^fold 0 \(28 images\): f1 (\d\.\d{4}) ", re.MULTILINE)


@pytest.fixture(scope="module")
def work(sample_data, tmp_path_factory):
    """An 18-class run and mask, gender and age runs (model/all, model/mask, ...), each trained on fold 1 of a
    two-fold slice of the sample with fold 0 held out."""
    work = tmp_path_factory.mktemp("variants")
    folds = pd.read_csv(sample_data / "train/folds.csv")
    folds[folds["fold"] <= 1].to_csv(work / "folds.csv", index=False)
    for task in ("all", "mask", "gender", "age"):
        result = run_script("train.py", "--name", task, "--task", task, "--data_dir", sample_data / "train/images",
                            "--csv", work / "folds.csv", "--model_dir", work / "model", *TINY_TRAINING, env=ENV)
        assert result.returncode == 0, result.stderr[-2000:]
    return work


def run_variant(sample_data, work, script, output, *args, expect_success=True):
    """Runs an inference variant with the eval and train folders from SM_* variables, into work/output."""
    env = {**ENV, "SM_CHANNEL_EVAL": str(sample_data / "eval"),
           "SM_CHANNEL_TRAIN": str(sample_data / "train/images")}
    result = run_script(script, "--workers", "0", "--output_dir", work / output, *args, env=env, cwd=work)
    if expect_success:
        assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.fixture(scope="module")
def fold_outputs(sample_data, work):
    """inference.py and identity-only inference_tta.py on held-out fold 0, then their hard vote."""
    fold = ["--fold", "0", "--csv", work / "folds.csv"]
    return {
        "inference": run_variant(sample_data, work, "inference.py", "plain", "--model_dir", work / "model/all", *fold),
        "tta": run_variant(sample_data, work, "inference_tta.py", "identity", "--model_dir", work / "model/all",
                           "--tta", "none", *fold),
        "ensemble": run_variant(sample_data, work, "ensemble.py", "vote", work / "plain", work / "identity",
                                "--method", "hard", *fold),
    }


def softmax_rows(rows, classes, seed):
    return torch.randn(rows, classes, generator=torch.Generator().manual_seed(seed)).softmax(dim=1)


def test_soft_vote_of_copies_is_the_input():
    probabilities = softmax_rows(5, 18, seed=0)
    copies = probabilities.expand(3, -1, -1)
    assert torch.allclose(soft_vote(copies, torch.ones(3)), probabilities, atol=1e-6)
    assert torch.allclose(soft_vote(copies, torch.tensor([2.0, 0.5, 0.0])), probabilities, atol=1e-6)


def test_hard_vote_takes_the_majority_and_breaks_ties_by_summed_probability():
    voters = torch.tensor([
        [[0.40, 0.35, 0.25], [0.5, 0.4, 0.1]],  # image 0: votes 0, 0, 2 although class 2 sums highest;
        [[0.40, 0.35, 0.25], [0.1, 0.6, 0.3]],  # image 1: votes 0, 1, 2, a tie that the sums 0.9, 1.3, 0.8
        [[0.00, 0.00, 1.00], [0.3, 0.3, 0.4]],  # break in favour of class 1
    ])
    assert hard_vote(voters, torch.ones(3)).tolist() == [0, 1]
    assert soft_vote(voters, torch.ones(3)).argmax(dim=1).tolist() == [2, 1]
    assert hard_vote(voters, torch.tensor([1.0, 1.0, 3.0])).tolist() == [2, 2]  # weighted votes


def test_split_task_composition_of_hand_made_distributions():
    mask = torch.tensor([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    gender = torch.tensor([[0.8, 0.2], [0.45, 0.55]])
    age = torch.tensor([[0.2, 0.3, 0.5], [0.5, 0.4, 0.1]])
    probabilities = compose_probabilities(mask, gender, age)
    assert probabilities.argmax(dim=1).tolist() == [encode_label(2, 0, 2), encode_label(0, 1, 0)]
    assert probabilities[0, encode_label(2, 0, 2)].item() == pytest.approx(0.7 * 0.8 * 0.5)


def test_ensemble_composes_mask_gender_and_age_runs_in_info_order(sample_data, work):
    run_variant(sample_data, work, "ensemble.py", "composed",
                *(argument for task in ("mask", "gender", "age") for argument in (f"--{task}", work / "model" / task)))
    info = pd.read_csv(sample_data / "eval/info.csv")
    submission = pd.read_csv(work / "composed/output.csv")
    image_ids, probabilities = read_probabilities(work / "composed/probabilities.csv")
    assert list(submission["ImageID"]) == image_ids == list(info["ImageID"])
    assert probabilities.shape == (len(info), 18)
    assert torch.allclose(compose_probabilities(*task_marginals(probabilities)), probabilities, atol=1e-5)
    assert (probabilities.argmax(dim=1).numpy() == submission["ans"].to_numpy()).all()


def test_a_run_of_another_task_is_refused(work):
    with pytest.raises(UserError, match="--task gender, not --task mask"):
        load_run(work / "model/gender", torch.device("cpu"), task="mask")


def test_a_run_that_trained_on_the_fold_is_refused(work):
    with pytest.raises(UserError, match="held out fold 0, not 1"):
        load_run(work / "model/all", torch.device("cpu"), fold=1)


def test_ensemble_output_has_info_rows_in_order(sample_data, work):
    info = pd.read_csv(sample_data / "eval/info.csv")
    shuffled = info["ImageID"].sample(frac=1, random_state=0).tolist()
    probabilities = softmax_rows(len(info), 18, seed=1)
    write_probabilities(shuffled, probabilities, work / "shuffled/probabilities.csv")
    run_variant(sample_data, work, "ensemble.py", "reordered", work / "shuffled", work / "shuffled/probabilities.csv")
    submission = pd.read_csv(work / "reordered/output.csv")
    image_ids, voted = read_probabilities(work / "reordered/probabilities.csv")
    assert list(submission["ImageID"]) == image_ids == list(info["ImageID"])
    expected = probabilities[[shuffled.index(image_id) for image_id in image_ids]]
    assert torch.allclose(voted, expected, atol=1e-6)


def test_ensemble_rejects_mismatched_image_ids(sample_data, work):
    info = pd.read_csv(sample_data / "eval/info.csv")
    image_ids = info["ImageID"].tolist()
    write_probabilities(image_ids, softmax_rows(len(info), 18, seed=2), work / "full/probabilities.csv")
    write_probabilities([*image_ids[:-1], "stranger.jpg"], softmax_rows(len(info), 18, seed=3),
                        work / "other/probabilities.csv")
    result = run_variant(sample_data, work, "ensemble.py", "refused", work / "full", work / "other",
                         "--data_dir", work / "no_eval_here", expect_success=False)
    assert_one_line_error(result, f"has no row for {image_ids[-1]}")
    assert not (work / "refused").exists()


@pytest.mark.parametrize("content, message", [
    ("ImageID,prob_0,prob_1\na.jpg,2.5,-1.5\n", "is not a distribution"),
    ("ImageID,ans\na.jpg,3\n", "is not a probabilities file"),
    ("ImageID,prob_0,prob_1\na.jpg,0.5,0.5\na.jpg,0.2,0.8\n", "lists a.jpg more than once"),
])
def test_read_probabilities_explains_a_bad_file(tmp_path, content, message):
    (tmp_path / "probabilities.csv").write_text(content)
    with pytest.raises(UserError, match=message):
        read_probabilities(tmp_path / "probabilities.csv")


def test_tta_with_only_the_identity_view_equals_inference(work, fold_outputs):
    plain_ids, plain = read_probabilities(work / "plain/probabilities.csv")
    tta_ids, tta = read_probabilities(work / "identity/probabilities.csv")
    assert tta_ids == plain_ids
    assert torch.allclose(tta, plain, atol=1e-6)


def test_hflip_view_of_a_flipped_image_equals_the_identity_view_of_the_original(sample_data):
    image = read_image(next((sample_data / "eval/images").iterdir()))
    transform = create_transform("BaseAugmentation", (64, 48))
    original, mirrored = transform(image).unsqueeze(0), transform(ImageOps.mirror(image)).unsqueeze(0)
    assert torch.allclose(VIEWS["hflip"](mirrored), VIEWS["identity"](original), atol=1e-5)


def test_every_view_keeps_the_batch_shape_and_unknown_views_are_refused():
    images = torch.randn(2, 3, 64, 48)
    for view in parse_views("default"):
        assert view(images).shape == images.shape
    with pytest.raises(UserError, match="unknown TTA view 'rotate'"):
        parse_views("hflip,rotate")


def test_random_views_are_reproducible_from_the_seed(sample_data, work):
    model, config = load_run(work / "model/all", torch.device("cpu"))
    paths = sorted((sample_data / "eval/images").iterdir())[:2]

    def predict(seed, batch_size):
        return predict_views(model, config, paths, batch_size, 0, torch.device("cpu"), [VIEWS["identity"]], 1, seed)

    first = predict(seed=0, batch_size=2)
    assert first.shape == (2, 18) and torch.allclose(first.sum(dim=1), torch.ones(2))
    assert torch.allclose(predict(seed=0, batch_size=1), first, atol=1e-6)  # whatever the batching
    assert not torch.allclose(predict(seed=1, batch_size=2), first, atol=1e-6)


def test_fold_prints_an_f1_for_every_variant(fold_outputs):
    for script, result in fold_outputs.items():
        match = FOLD_SCORE.search(result.stdout)
        assert match and 0 <= float(match[1]) <= 1, f"{script}: {result.stdout[-1000:]}"


@pytest.mark.parametrize("script", ["inference.py", "inference_tta.py"])
def test_bf16_and_channels_last_inference_agree_with_float32(sample_data, work, fold_outputs, script):
    reference, views = ("plain", []) if script == "inference.py" else ("identity", ["--tta", "none"])
    fast = run_variant(sample_data, work, script, f"fast_{script}", "--model_dir", work / "model/all", "--fold", "0",
                       "--csv", work / "folds.csv", "--amp", "bf16", "--channels_last", *views)
    ids, probabilities = read_probabilities(work / f"fast_{script}/probabilities.csv")
    reference_ids, reference_probabilities = read_probabilities(work / reference / "probabilities.csv")
    assert ids == reference_ids and not torch.equal(probabilities, reference_probabilities)  # bf16 rounds
    assert torch.allclose(probabilities, reference_probabilities, atol=0.05)
    assert FOLD_SCORE.search(fast.stdout)
