"""export.py and ONNX at inference: the exported variants match eager, carry their metadata, are reported, and
inference.py --onnx (TTA and folder sorting too) writes what eager writes."""
import json
import shutil
from types import SimpleNamespace

import numpy as np
import onnx
import pandas as pd
import pytest
import torch

from conftest import QUICK_EXPORT, assert_one_line_error, run_script
from dataset import COMPETITION
from export import VARIANTS, check_variant, gate
from exported import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, OnnxClassifier, create_session, read_config
from inference import load_run
from model import WithProbabilities


def random_photos(count, size, seed=0):
    return torch.randint(0, 256, (count, 3, *size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def eager_model(run):
    model, config = load_run(run, torch.device("cpu"))
    return WithProbabilities(model, config).eval(), config


@pytest.mark.parametrize("batch", [1, 3])
def test_the_fp32_export_gives_eager_probabilities_at_any_batch(exported, batch):
    run, _ = exported
    eager, config = eager_model(run)
    images = random_photos(batch, config["resize"], seed=batch)
    with torch.no_grad():
        expected = eager(images).numpy()
    produced = create_session(run / "model.onnx").run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]
    assert produced.shape == (batch, COMPETITION.num_classes)
    np.testing.assert_allclose(produced, expected, atol=1e-5)


def test_fp16_loads_and_agrees_and_int8_is_the_smallest(exported):
    run, _ = exported
    eager, config = eager_model(run)
    images = random_photos(8, config["resize"], seed=0)
    with torch.no_grad():
        expected = eager(images).numpy()
    half = create_session(run / "model_fp16.onnx").run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]
    np.testing.assert_allclose(half, expected, atol=1e-2)
    sizes = {name: (run / name).stat().st_size for name in ("model.onnx", "model_fp16.onnx", "model_int8.onnx")}
    assert sizes["model_int8.onnx"] < sizes["model_fp16.onnx"] < sizes["model.onnx"]
    quantized = onnx.load(run / "model_int8.onnx")
    assert any(node.op_type == "QuantizeLinear" for node in quantized.graph.node)
    onnx.checker.check_model(quantized)


def test_every_variant_carries_the_runs_scheme_size_and_crop(exported):
    run, _ = exported
    config = json.loads((run / "config.json").read_text())
    for name, variant in (("model.onnx", "fp32"), ("model_fp16.onnx", "fp16"), ("model_int8.onnx", "int8")):
        carried = read_config(run / name)
        assert carried["variant"] == variant
        assert carried["scheme"] == config["scheme"] and carried["classes"] == COMPETITION.classes
        assert (carried["resize"], carried["crop"], carried["face_margin"]) == (config["resize"], "face", 0.4)
        assert (carried["model"], carried["head"], carried["fold"]) == (config["model"], config["head"], config["fold"])


def test_the_report_lists_every_variant_with_its_measures_and_targets(exported):
    run, result = exported
    report = json.loads((run / "export_report.json").read_text())
    rows = {row["variant"]: row for row in report["variants"]}
    assert list(rows) == ["eager", "fp32", "fp16", "int8"]
    for name in ("fp32", "fp16", "int8"):
        row = rows[name]
        assert row["file_mb"] == pytest.approx((run / VARIANTS[name]).stat().st_size / 1e6)
        assert 0 < row["latency_ms"] <= row["latency_p90_ms"] and row["images_per_second"] > 0
        assert row["agreement"] >= 0.99 if name != "int8" else 0 <= row["agreement"] <= 1
        assert row["meets_targets"] == (row["file_mb"] <= report["max_mb"] and row["latency_ms"] <= report["max_ms"])
    assert rows["fp32"]["max_difference_batch_1"] < 1e-5
    assert rows["eager"]["latency_ratio"] == 1.0
    assert report["validation_photos"] > 0 and report["calibration_photos"] == 16
    assert isinstance(report["avx512_vnni"], bool) and report["cpu"]
    table = (run / "export_report.md").read_text()
    assert all(f"| {name} |" in table for name in rows) and "| fp32 |" in result.stdout


def test_targets_out_of_reach_are_met_by_no_variant(exported, tmp_path):
    run, _ = exported
    result = run_script("export.py", run, "--output_dir", tmp_path, "--variants", "fp32", "--max_mb", "0.001",
                        *QUICK_EXPORT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "export_report.json").read_text())["meeting_targets"] == []
    assert sorted(path.name for path in tmp_path.iterdir()) == ["export_report.json", "export_report.md", "model.onnx"]


def test_a_variant_that_disagrees_with_eager_fails_the_gate_of_its_precision(exported, sample_data):
    run, _ = exported
    eager, config = eager_model(run)
    images = random_photos(16, config["resize"], seed=1)
    with torch.no_grad():
        eager_probabilities = eager(images).numpy()
    torch.manual_seed(123)
    scrambled, _ = load_run(run, torch.device("cpu"))  # the same model with other weights: it disagrees
    for parameter in scrambled.parameters():
        parameter.data.normal_()
    other = WithProbabilities(scrambled, config).eval()
    path = run.parent / "other.onnx"
    torch.onnx.export(other, (images[:2].clone(),), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_shapes={"images": {0: torch.export.Dim("batch")}}).save(str(path), external_data=False)
    args = SimpleNamespace(batch_size=8, min_agreement=0.99, near_tie=0.01, fp32_tolerance=1e-4, fp16_tolerance=0.02)
    targets = eager_probabilities.argmax(axis=1)
    measured = check_variant(path, create_session(path), eager, images, eager_probabilities, targets, COMPETITION,
                             args)
    assert measured["agreement"] < 0.99 and measured["max_difference"] > 0.02
    assert "differ from eager's by up to" in gate("fp32", measured, args)
    assert "over --fp16_tolerance 0.02" in gate("fp16", measured, args)
    assert gate("int8", measured, args) is None  # int8 is reported, not refused
    assert gate("fp16", {**measured, "max_difference": 0.01, "agreement_no_near_tie": 0.5}, args).startswith(
        "it agrees with eager's top-1 on 0.5000")
    faithful = check_variant(run / "model.onnx", create_session(run / "model.onnx"), eager, images,
                             eager_probabilities, targets, COMPETITION, args)
    assert gate("fp32", faithful, args) is None and faithful["agreement_no_near_tie"] == 1.0


def submission(directory):
    return pd.read_csv(directory / "output.csv"), pd.read_csv(directory / "probabilities.csv")


@pytest.mark.parametrize("script, extra", [("inference.py", []), ("inference_tta.py", ["--tta", "flip"])])
def test_inference_with_onnx_writes_the_eager_submission(exported, sample_data, tmp_path, script, extra):
    run, _ = exported
    common = ["--data_dir", sample_data / "eval", "--workers", "0", *extra]
    eager = run_script(script, *common, "--model_dir", run, "--output_dir", tmp_path / "eager")
    onnx_run = run_script(script, *common, "--onnx", run / "model.onnx", "--output_dir", tmp_path / "onnx")
    assert eager.returncode == 0 and onnx_run.returncode == 0, (eager.stderr + onnx_run.stderr)[-3000:]
    (eager_output, eager_probabilities), (onnx_output, onnx_probabilities) = (submission(tmp_path / "eager"),
                                                                              submission(tmp_path / "onnx"))
    pd.testing.assert_frame_equal(onnx_output, eager_output)
    np.testing.assert_allclose(onnx_probabilities.iloc[:, 1:], eager_probabilities.iloc[:, 1:], atol=1e-5)


def test_onnx_sorts_a_photo_folder_as_eager_does(exported, sample_data, tmp_path):
    run, _ = exported
    photos = shutil.copytree(sample_data / "eval/images", tmp_path / "photos")
    common = ["--data_dir", photos, "--workers", "0", "--cache", "off"]
    eager = run_script("inference.py", *common, "--model_dir", run, "--output_dir", tmp_path / "eager",
                       "--sort_into", tmp_path / "sorted_eager")
    onnx_run = run_script("inference.py", *common, "--onnx", run / "model.onnx", "--output_dir",
                          tmp_path / "onnx", "--sort_into", tmp_path / "sorted_onnx")
    assert eager.returncode == 0 and onnx_run.returncode == 0, (eager.stderr + onnx_run.stderr)[-3000:]
    eager_predictions, onnx_predictions = (pd.read_csv(tmp_path / name / "predictions.csv")
                                           for name in ("eager", "onnx"))
    pd.testing.assert_series_equal(onnx_predictions["predicted"], eager_predictions["predicted"])

    def tree(folder):
        return sorted(str(path.relative_to(folder)) for path in folder.rglob("*.jpg"))

    assert tree(tmp_path / "sorted_onnx") == tree(tmp_path / "sorted_eager")
    assert len(tree(tmp_path / "sorted_onnx")) == len(tree(photos))


def test_the_onnx_classifier_returns_log_probabilities_a_softmax_restores(exported):
    run, _ = exported
    classifier = OnnxClassifier(run / "model.onnx")
    images = torch.randint(0, 256, (2, 3, *classifier.config["resize"]), dtype=torch.uint8)
    direct = classifier.session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]
    np.testing.assert_allclose(torch.softmax(classifier(images), dim=1).numpy(), direct, atol=1e-6)
    np.testing.assert_allclose(classifier(images.float() / 255).numpy(), classifier(images).numpy())  # TTA's floats


@pytest.mark.parametrize("damage, message", [
    (lambda path: path.write_bytes(b"not a model"), "cannot read"),
    (lambda path: onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "empty", [], [])), path),
     f"carries no {METADATA_KEY} metadata"),
])
def test_an_unreadable_model_is_one_line(exported, sample_data, tmp_path, damage, message):
    path = tmp_path / "model.onnx"
    damage(path)
    result = run_script("inference.py", "--data_dir", sample_data / "eval", "--onnx", path, "--output_dir",
                        tmp_path / "out", "--workers", "0")
    assert_one_line_error(result, message)
    assert not (tmp_path / "out").exists()


def test_export_refuses_what_is_not_a_run(exported, tmp_path):
    run, _ = exported
    assert_one_line_error(run_script("export.py", tmp_path), "is not a run directory")
    (tmp_path / "parent").mkdir()
    shutil.copytree(run, tmp_path / "parent/fold0")
    assert_one_line_error(run_script("export.py", tmp_path / "parent"), "export one of its fold runs")
