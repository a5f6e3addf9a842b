"""Adjusted predictions: temperature calibration, label-shift adaptation (EM, BBSE), decisions for macro F1 and the
expected calibration error, on simulated classifiers of known behaviour and through the inference scripts."""
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import RandomSampler, WeightedRandomSampler

import adaptation
from adaptation import (Adjuster, HeldOut, apply_temperatures, balanced_weights, bbse_mixes, class_weights, decide,
                        em_mixes, expected_calibration_error, fit_temperatures, head_scheme, held_out_mixes,
                        log_likelihood_loss, macro_f1, prior_ratio, reweight, task_biases, task_mixes, training_mix)
from conftest import TINY_TRAINING, run_script
from dataset import COMPETITION, folder_scheme, inverse_frequency
from fileio import load_checkpoint, save_checkpoint
from generate_sample import generate_classes
from submissions import read_probabilities

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SINGLE_HEAD = head_scheme(COMPETITION, "single")  # the 18 classes as one task
FOLDERS = folder_scheme(["mask", "no_mask", "uncertain_mask"])


def uniform(scheme):
    return torch.full((scheme.num_classes,), 1 / scheme.num_classes, dtype=torch.float64)


def simulate(scheme, mixes, photos, seed, separation=1.5, training_mixes=None):
    """A classifier of known behaviour: each task's class y shows as a feature vector drawn around its own centre,
    and the classifier answers the exact posteriors under the training mixes (uniform unless given), composed over
    the tasks as a multi head composes them. Returns (class probabilities (N, C), class labels (N,))."""
    rng = np.random.default_rng(seed)
    tasks, labels = [], []
    for size, mix, trained in zip(scheme.sizes, mixes, training_mixes or [np.full(s, 1 / s) for s in scheme.sizes]):
        task_labels = rng.choice(size, photos, p=np.asarray(mix))
        centres = separation * np.eye(size)
        features = centres[task_labels] + rng.normal(size=(photos, size))
        log_posterior = features @ centres.T - (centres ** 2).sum(axis=1) / 2 + np.log(trained)
        tasks.append(torch.softmax(torch.as_tensor(log_posterior), dim=1))
        labels.append(task_labels)
    return scheme.compose(*tasks), scheme.encode(*labels)


EVAL_MIXES = [[0.6, 0.25, 0.15], [0.7, 0.3], [0.45, 0.2, 0.35]]


def test_em_and_bbse_recover_a_known_eval_mix_within_a_few_points():
    probabilities, _ = simulate(COMPETITION, EVAL_MIXES, 4000, seed=0)
    valid_probabilities, valid_labels = simulate(COMPETITION, [[1 / 3] * 3, [0.5] * 2, [1 / 3] * 3], 3000, seed=1)
    for estimate in (em_mixes(probabilities, uniform(COMPETITION), COMPETITION),
                     bbse_mixes(valid_probabilities, valid_labels, probabilities, COMPETITION)):
        for found, true in zip(estimate, EVAL_MIXES):
            assert np.abs(found.numpy() - true).max() < 0.04, (found, true)
    naive = [task.mean(dim=0) for task in COMPETITION.marginals(probabilities)]  # what the classifier says alone
    assert np.abs(naive[0].numpy() - EVAL_MIXES[0]).max() > 0.08  # so the estimate is not the raw mean


def test_adaptation_to_the_training_prior_changes_nothing():
    training_prior = COMPETITION.compose(*(torch.tensor([mix], dtype=torch.float64) for mix in EVAL_MIXES))[0]
    probabilities, _ = simulate(COMPETITION, EVAL_MIXES, 200, seed=2, training_mixes=EVAL_MIXES)
    ratio = prior_ratio(task_mixes(training_prior, COMPETITION), training_prior, COMPETITION)
    assert torch.allclose(ratio, torch.ones(18, dtype=torch.float64))
    assert torch.allclose(reweight(probabilities, ratio), probabilities, atol=1e-12)


def test_adapted_probabilities_follow_the_eval_mix_and_raise_accuracy():
    probabilities, labels = simulate(COMPETITION, EVAL_MIXES, 2000, seed=3, separation=1.0)
    adapted = reweight(probabilities, prior_ratio(em_mixes(probabilities, uniform(COMPETITION), COMPETITION),
                                                  uniform(COMPETITION), COMPETITION))
    accuracy = [float((p.argmax(dim=1).numpy() == labels).mean()) for p in (probabilities, adapted)]
    assert accuracy[1] > accuracy[0] + 0.02


@pytest.mark.parametrize("scheme", [COMPETITION, SINGLE_HEAD, FOLDERS], ids=["multi head", "18 classes", "folders"])
def test_temperature_lowers_the_validation_nll_and_keeps_the_argmax(scheme):
    probabilities, labels = simulate(scheme, [np.full(size, 1 / size) for size in scheme.sizes], 600, seed=4)
    overconfident = normalise_rows(probabilities ** 3)  # logits tripled
    temperatures = fit_temperatures(overconfident, labels, scheme)
    calibrated = apply_temperatures(overconfident, temperatures, scheme)
    assert log_likelihood_loss(calibrated, labels) < log_likelihood_loss(overconfident, labels) - 0.05
    assert all(2.0 < temperature < 4.5 for temperature in temperatures)  # the tripling found again
    assert torch.equal(calibrated.argmax(dim=1), overconfident.argmax(dim=1))
    assert expected_calibration_error(calibrated, labels) < expected_calibration_error(overconfident, labels)


def normalise_rows(values):
    return values / values.sum(dim=1, keepdim=True)


LEAN = [[0.5, 0.3, 0.2], [0.75, 0.25], [0.5, 0.4, 0.1]]  # what a leaning classifier's posteriors answer to


def test_em_on_bias_corrected_posteriors_recovers_the_mix_a_leaning_classifier_misses():
    probabilities, _ = simulate(COMPETITION, EVAL_MIXES, 4000, seed=7, training_mixes=LEAN)
    valid, valid_labels = simulate(COMPETITION, [[1 / 3] * 3, [0.5] * 2, [1 / 3] * 3], 2000, seed=8,
                                   training_mixes=LEAN)
    leaning = em_mixes(probabilities, uniform(COMPETITION), COMPETITION)  # believing its posteriors are balanced
    assert np.abs(leaning[1].numpy() - EVAL_MIXES[1]).max() > 0.1
    correction = class_weights(task_biases(valid, valid_labels, COMPETITION), COMPETITION)
    answers_to = COMPETITION.compose(*(mix[None] for mix in held_out_mixes(valid_labels, COMPETITION)))[0]
    corrected = em_mixes(reweight(probabilities, correction), answers_to, COMPETITION)
    for found, true in zip(corrected, EVAL_MIXES):
        assert np.abs(found.numpy() - true).max() < 0.04, (found, true)


def test_the_balanced_decision_undoes_a_lean_and_raises_macro_f1():
    held_out, held_out_labels = simulate(COMPETITION, EVAL_MIXES, 1500, seed=9, training_mixes=LEAN)
    probabilities, labels = simulate(COMPETITION, EVAL_MIXES, 1500, seed=10, training_mixes=LEAN)
    answers = decide(probabilities, balanced_weights(held_out, held_out_labels, COMPETITION), COMPETITION)
    assert macro_f1(labels, answers, 18) > macro_f1(labels, probabilities.argmax(dim=1).numpy(), 18) + 0.03
    _, _, age = COMPETITION.decode(answers)
    assert (age == 2).mean() > 0.25  # 60+, which the lean under-called, is answered about as often as the others


@pytest.mark.parametrize("seed", range(4))
def test_the_f1_decision_never_lowers_the_held_out_macro_f1(seed, capsys):
    scheme = [COMPETITION, FOLDERS, SINGLE_HEAD, COMPETITION][seed]
    mixes = [np.random.default_rng(seed).dirichlet(np.ones(size)) for size in scheme.sizes]
    probabilities, labels = simulate(scheme, mixes, 120, seed=seed, separation=1.2)
    adjuster = Adjuster(decision="f1", oof=HeldOut(probabilities, labels))
    answers = adjuster.decide(scheme, probabilities)
    argmax = probabilities.argmax(dim=1).numpy()
    decided = argmax if answers is None else answers
    assert macro_f1(labels, decided, scheme.num_classes) >= macro_f1(labels, argmax, scheme.num_classes)
    assert "decision for macro F1" in capsys.readouterr().out


def test_ece_of_hand_made_confidences():
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 1])
    # bins of 0.9: accuracy 1/2 (gap 0.4, 2 photos); 0.6: right (gap 0.4); 0.7: right (gap 0.3)
    assert expected_calibration_error(probabilities, labels, bins=10) == pytest.approx((0.8 + 0.4 + 0.3) / 4)
    counts, _, _ = adaptation.calibration_bins(probabilities, labels, bins=10)
    assert counts.sum() == 4 and counts[8] == 2


def test_the_training_mix_is_what_the_sampler_draws():
    targets = np.array([0] * 90 + [2] * 10)
    weighted = WeightedRandomSampler(inverse_frequency(targets, 3)[targets], len(targets))
    assert training_mix(weighted, targets, 3) == pytest.approx([0.5, 0.0, 0.5])
    assert training_mix(RandomSampler(range(100)), targets, 3) == pytest.approx([0.9, 0.0, 0.1])


@pytest.mark.parametrize("scheme, head", [(COMPETITION, "single"), (COMPETITION, "multi"), (FOLDERS, "single")],
                         ids=["18 classes", "multi head", "folders"])
@pytest.mark.parametrize("method", ["em", "bbse"])
def test_every_path_keeps_probabilities_finite_and_rows_summing_to_one(scheme, head, method, capsys):
    probabilities, labels = simulate(scheme, [np.full(size, 1 / size) for size in scheme.sizes], 60, seed=6,
                                     separation=6.0)
    probabilities[:5] = torch.nn.functional.one_hot(torch.as_tensor(labels[:5]), scheme.num_classes)  # certain
    probabilities[5, :] = 0
    probabilities[5, -1] = 1  # and wrong
    training_prior = torch.zeros(scheme.num_classes, dtype=torch.float64)
    training_prior[1:] = 1 / (scheme.num_classes - 1)  # class 0 never drawn in training
    adjuster = Adjuster(calibrate=True, adapt_prior=method, decision="f1")
    adjusted = adjuster.adjust("run", scheme, head, probabilities.float(), (probabilities[:30], labels[:30]),
                               training_prior.tolist())
    answers = adjuster.decide(scheme)
    assert adjusted.dtype == torch.float32 and torch.isfinite(adjusted).all()
    assert torch.allclose(adjusted.sum(dim=1), torch.ones(len(adjusted)), atol=1e-5)
    assert answers.shape == (60,) and answers.min() >= 0 and answers.max() < scheme.num_classes
    printed = capsys.readouterr().out
    assert f"eval mix by {method.upper()}" in printed and "decision for macro F1" in printed


def run_inference(script, sample_data, run_dir, output, *flags):
    result = run_script(script, "--data_dir", sample_data / "eval", "--model_dir", run_dir, "--output_dir", output,
                        "--workers", "0", *flags, env=ENV)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def assert_distributions(path):
    image_ids, probabilities = read_probabilities(path)  # refuses rows that are not distributions
    assert torch.isfinite(probabilities).all() and len(image_ids) == len(set(image_ids))
    return probabilities


ADJUSTED = ["--calibrate", "--adapt_prior", "em", "--decision", "f1", "--keep_raw"]


def test_inference_adjusts_a_multi_head_run_and_keeps_the_raw_probabilities(sample_data, trained_run, tmp_path):
    assert len(json.loads((trained_run / "config.json").read_text())["training_prior"]) == 18
    plain = run_inference("inference.py", sample_data, trained_run, tmp_path / "plain", "--no-calibrate",
                          "--adapt_prior", "none", "--decision", "argmax")
    adjusted = run_inference("inference.py", sample_data, trained_run, tmp_path / "adjusted", *ADJUSTED)
    assert "temperature mask" in adjusted.stdout and "eval mix by EM: wear" in adjusted.stdout
    assert "decision for macro F1" in adjusted.stdout and "temperature" not in plain.stdout
    assert torch.equal(assert_distributions(tmp_path / "adjusted/probabilities_raw.csv"),
                       assert_distributions(tmp_path / "plain/probabilities.csv"))
    assert not torch.allclose(assert_distributions(tmp_path / "adjusted/probabilities.csv"),
                              assert_distributions(tmp_path / "plain/probabilities.csv"))
    scores = run_script("evaluation.py", "--gt_dir", sample_data / "gt", "--output_dir", tmp_path / "adjusted")
    assert scores.returncode == 0 and " ece 0." in scores.stdout.splitlines()[1]
    tta = run_inference("inference_tta.py", sample_data, trained_run, tmp_path / "tta", "--tta", "flip",
                        "--calibrate", "--adapt_prior", "bbse")
    assert "eval mix by BBSE" in tta.stdout
    assert_distributions(tmp_path / "tta/probabilities.csv")


def test_ensemble_decides_a_vote_on_held_out_predictions(sample_data, trained_run, tmp_path):
    held_out = tmp_path / "fold0"
    result = run_script("inference.py", "--model_dir", trained_run, "--fold", "0", "--output_dir", held_out,
                        "--train_dir", sample_data / "train/images", "--workers", "0", "--calibrate", env=ENV)
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_script("ensemble.py", trained_run, tmp_path / "fold0", "--data_dir", sample_data / "eval",
                        "--output_dir", tmp_path / "vote", "--workers", "0", "--calibrate", "--decision", "f1",
                        "--oof", held_out / "probabilities.csv", "--train_dir", sample_data / "train/images",
                        "--fold", "0", "--keep_raw", env=ENV)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "taken as written" in result.stdout and "fitted on 28 --oof photos" in result.stdout
    assert_distributions(tmp_path / "vote/probabilities.csv")
    assert_distributions(tmp_path / "vote/probabilities_raw.csv")


def test_a_run_saved_before_training_priors_still_predicts_and_says_what_it_cannot_do(sample_data, trained_run,
                                                                                      tmp_path):
    old = tmp_path / "old"
    shutil.copytree(trained_run, old, ignore=shutil.ignore_patterns("report", "events*"))
    config = json.loads((old / "config.json").read_text())
    del config["training_prior"]
    (old / "config.json").write_text(json.dumps(config))
    state = load_checkpoint(old / "best.pth")
    del state["valid_targets"]
    save_checkpoint(state, old / "best.pth")
    result = run_inference("inference.py", sample_data, old, tmp_path / "out", *ADJUSTED)
    line = next(line for line in result.stdout.splitlines() if line.startswith(str(old)))
    assert "temperature mask" in line and "eval mix by EM" in line  # its validation fold labelled from the folds CSV
    assert_distributions(tmp_path / "out/probabilities.csv")
    (old / "config.json").write_text(json.dumps({**config, "csv": str(tmp_path / "moved.csv")}))
    result = run_inference("inference.py", sample_data, old, tmp_path / "moved", *ADJUSTED)
    line = next(line for line in result.stdout.splitlines() if line.startswith(str(old)))
    assert "not calibrated (its folds CSV" in line and "eval mix not adapted (no training prior recorded" in line
    assert "decision: argmax (no held-out predictions" in result.stdout
    assert_distributions(tmp_path / "moved/probabilities.csv")


def test_a_class_folder_run_is_adjusted_and_sorted_by_its_decision(tmp_path):
    generate_classes(tmp_path, "mask", people=4, eval_people=1, seed=3)
    for script, *flags in (("preprocess.py", "--data_dir", tmp_path / "train", "--group_regex", r"^(\d+)_",
                            "--kfold", "2", "--faces", "off"),
                           ("train.py", "--data_dir", tmp_path / "train", "--model_dir", tmp_path / "model",
                            "--crop", "none", *TINY_TRAINING)):
        assert run_script(script, *flags, env=ENV).returncode == 0
    result = run_script("inference.py", "--data_dir", tmp_path / "eval", "--model_dir", tmp_path / "model/exp",
                        "--output_dir", tmp_path / "out", "--workers", "0", *ADJUSTED, env=ENV)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "eval mix by EM: mask" in result.stdout
    predictions = pd.read_csv(tmp_path / "out/predictions.csv")
    columns = ["prob_mask", "prob_no_mask"]
    assert np.isfinite(predictions[columns]).all(axis=None)
    assert np.allclose(predictions[columns].sum(axis=1), 1, atol=1e-5)
    chosen = predictions[columns].to_numpy()[np.arange(len(predictions)),
                                             predictions["predicted"].map({"mask": 0, "no_mask": 1})]
    assert np.allclose(predictions["confidence"], chosen)  # the confidence of the class decided
