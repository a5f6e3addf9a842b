"""Nothing that arrives with a model or beside the data is trusted: class names, an exported file's metadata, a run's
config, face boxes, odd file names; writes on a full disk fail in one line and leave nothing half-written; exports
gate each precision by what it promises; crop_faces.py resumes and never overwrites; ensembles and evaluation take
any scheme and refuse empty cells."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pandas as pd
import pytest
import torch

import crop_faces
import export
import sorting
from cli import UserError
from conftest import QUICK_EXPORT, REPO_ROOT, assert_one_line_error, run_script
from dataset import LabelScheme, load_folds
from exported import METADATA_KEY
from fileio import STARTED, save_checkpoint, scratch_folder, write_csv
from model import create_model

FOUR_CLASSES = {"name": "folders", "tasks": {"class": ["a", "b", "c", "d"]}}


def onnx_with_metadata(source, target, change):
    """A copy at `target` of the exported model `source` whose maskcls metadata is what `change` makes of it: it
    edits the dict in place, or returns the raw text to store."""
    proto = onnx.load(source)
    props = {prop.key: prop.value for prop in proto.metadata_props}
    metadata = json.loads(props[METADATA_KEY])
    text = change(metadata)
    onnx.helper.set_model_props(proto, {**props, METADATA_KEY: text if isinstance(text, str) else json.dumps(metadata)})
    onnx.save(proto, target)
    return target


def photo_folder(sample_data, folder, count=3):
    folder.mkdir(parents=True)
    for path in sorted((sample_data / "eval/images").iterdir())[:count]:
        shutil.copy(path, folder / path.name)
    return folder


def folders_scheme(names):
    return lambda metadata: metadata.update(scheme={"name": "folders", "tasks": {"class": names}}, classes=names,
                                            task="all")


@pytest.mark.parametrize("name, problem", [
    ("..", "is a path"), (".", "is a path"), ("", "is empty"), ("  ", "is empty"), ("a/b", "is a path"),
    ("a\\b", "is a path"), ("a\0b", "control character"), ("a\nb", "control character"), ("\udcff", "not text"),
    ("uncertain", "unsure photos"), ("Uncertain", "unsure photos"), (".cache", "is hidden"), ("x" * 256, "longer"),
    (3, "is not text"), (None, "is not text"),
])
def test_a_class_name_that_is_no_plain_folder_name_is_refused_where_the_scheme_is_read(name, problem):
    with pytest.raises(UserError, match=problem) as refused:
        LabelScheme.from_dict({"name": "folders", "tasks": {"class": [name, "other"]}}, "model.onnx's metadata")
    assert str(refused.value).startswith("model.onnx's metadata: the class name") and "\n" not in str(refused.value)


@pytest.mark.parametrize("data, problem", [
    ({"name": "folders", "tasks": {}}, "has no tasks"), ({"name": "folders"}, "has no tasks"),
    ({"tasks": {"class": ["a", "b"]}}, "has no name"), ({"name": "x", "tasks": {"class": []}}, "lists no class"),
    ({"name": "x", "tasks": {"class": ["a", "b", "a"]}}, "listed twice"), (["a", "b"], "not a name and tasks"),
    ({"name": "x", "tasks": {"class": "ab"}}, "lists no class"),
    ({"name": "x", "tasks": {"a": [str(k) for k in range(101)], "b": [str(k) for k in range(101)]}}, "more than"),
])
def test_a_malformed_scheme_is_refused_in_one_line(data, problem):
    with pytest.raises(UserError, match=problem):
        LabelScheme.from_dict(data)


def test_class_names_of_every_language_and_the_competitions_are_kept():
    names = ["<30", "30-59", "60+", "masked face", "마스크", "sans_masque", "a.b"]
    assert LabelScheme("folders", {"class": names}).classes == names


@pytest.mark.parametrize("change, message", [
    (folders_scheme(["a", "b", "c", "d"]), "not one per class of the 4"),
    (folders_scheme(["a"] * 18), "listed twice"),
    (folders_scheme([".."] + [f"c{k}" for k in range(17)]), "the class name '..' is a path"),
    (folders_scheme(["uncertain"] + [f"c{k}" for k in range(17)]), "unsure photos"),
    (lambda metadata: metadata.update(scheme={"name": "folders", "tasks": {}}), "has no tasks"),
    (lambda metadata: metadata.update(classes=metadata["classes"][::-1]), "not those of its label scheme"),
    (lambda metadata: metadata.update(resize=[32, 32]), "as its metadata's resize says"),
    (lambda metadata: metadata.update(resize=[64]), "resize is [64]"),
    (lambda metadata: metadata.update(crop="eyes"), "crop is 'eyes'"),
    (lambda metadata: metadata.update(face_margin=-1), "face_margin is -1"),
    (lambda metadata: metadata.update(face_margin=True), "face_margin is True"),
    (lambda metadata: metadata.update(crop="box", crop_box=[0.9, 0.1, 0.2, 0.5]), "crop_box is"),
    (lambda metadata: metadata.update(task=["mask"]), "task is ['mask']"),
    (lambda metadata: metadata.update(task="colour"), "task is 'colour'"),
    (lambda metadata: "{not json", "is not JSON"),
    (lambda metadata: "[" * 100_000, "is not JSON"),
    (lambda metadata: "[1, 2]", "is not a table"),
])
def test_an_onnx_file_whose_metadata_does_not_describe_its_graph_is_refused_before_anything_is_written(
        exported, sample_data, tmp_path, change, message):
    run, _ = exported
    model = onnx_with_metadata(run / "model.onnx", tmp_path / "model.onnx", change)
    result = run_script("inference.py", "--data_dir", photo_folder(sample_data, tmp_path / "photos"), "--onnx", model,
                        "--output_dir", tmp_path / "out", "--sort_into", tmp_path / "sorted", "--workers", "0")
    assert_one_line_error(result, message)
    assert not (tmp_path / "out").exists() and not (tmp_path / "sorted").exists()


@pytest.mark.parametrize("key, value, message", [
    ("scheme", {"name": "folders", "tasks": {"class": ["..", "b"]}}, "the class name '..' is a path"),
    ("scheme", "competition", "not a name and tasks"),
    ("task", 3, "task is 3"),
    ("crop", "eyes", "crop is 'eyes'"),
    ("face_margin", "0.4", "face_margin is '0.4'"),
    ("crop", "box", "crop_box is None"),
])
def test_a_run_config_that_cannot_be_predicted_as_it_says_is_refused_naming_it(trained_run, sample_data, tmp_path, key,
                                                                               value, message):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("report", "*.onnx", "events.*", "*.png"))
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, key: value}))
    result = run_script("inference.py", "--data_dir", sample_data / "eval", "--model_dir", run, "--output_dir",
                        tmp_path / "out", "--workers", "0")
    assert_one_line_error(result, f"{run / 'config.json'}: ")
    assert message in result.stderr and not (tmp_path / "out").exists()


def test_sorting_files_nothing_unless_every_class_folder_is_directly_inside_the_sort_folder(tmp_path):
    photo = tmp_path / "in/photo.jpg"
    photo.parent.mkdir()
    photo.write_bytes(b"photo")
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "sorted").mkdir()
    (tmp_path / "sorted/mask").symlink_to(outside)  # planted: a class folder that leads out
    for names, message in ((["mask"], "not a folder directly inside"), ([".."], "not a folder directly inside"),
                           (["a/b", "a-b"], "share one folder"), (["uncertain"], "folder of the unsure photos"),
                           ([""], "not a folder directly inside")):
        with pytest.raises(UserError, match=message):
            sorting.sort_photos([photo] * len(names), names, [1.0] * len(names), tmp_path / "sorted", "copy")
    assert not list(outside.iterdir()) and sorted(path.name for path in (tmp_path / "sorted").iterdir()) == ["mask"]
    assert photo.read_bytes() == b"photo"


def test_a_name_at_the_file_systems_limit_gets_a_temporary_and_numbered_copies_that_fit(tmp_path):
    long_name = "n" * 251 + ".csv"  # 255 bytes: the limit, the temporary's prefix and suffix on top
    write_csv(pd.DataFrame({"a": [1]}), tmp_path / long_name)
    assert [path.name for path in tmp_path.iterdir()] == [long_name]
    photo = tmp_path / "in" / ("é" * 125 + ".jpg")  # 254 bytes, two per letter: a cut never splits one
    photo.parent.mkdir()
    photo.write_bytes(b"photo")
    targets = [sorting.sort_photos([photo], ["mask"], [1.0], tmp_path / "sorted")[0] for _ in range(3)]
    assert [target.name for target in targets] == [photo.name, "é" * 124 + "_1.jpg", "é" * 124 + "_2.jpg"]
    assert all(len(os.fsencode(target.name)) <= 255 and target.read_bytes() == b"photo" for target in targets)


def test_photos_whose_names_are_not_utf8_are_skipped_and_counted(exported, sample_data, tmp_path):
    run, _ = exported
    model = onnx_with_metadata(run / "model.onnx", tmp_path / "model.onnx",
                               lambda metadata: metadata.update(crop="none"))
    folder = photo_folder(sample_data, tmp_path / "photos", count=2)
    first, second = sorted(folder.iterdir())
    first.rename(os.fsdecode(bytes(folder) + b"/caf\xe9.jpg"))  # Latin-1, not UTF-8
    result = run_script("inference.py", "--data_dir", folder, "--onnx", model, "--output_dir", tmp_path / "out",
                        "--sort_into", tmp_path / "sorted", "--workers", "0", "--cache", "off")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipping 1 photos whose names are not valid UTF-8 (first: " in result.stdout and "caf\\xe9.jpg" in \
        result.stdout
    assert pd.read_csv(tmp_path / "out/predictions.csv")["path"].tolist() == [second.name]
    assert [path.name for path in (tmp_path / "sorted").rglob("*.jpg")] == [second.name]


@pytest.mark.parametrize("cell, column, message", [
    ("swapped", "face_x2", "not over the box's start"), ("-0.1", "face_x1", "not a fraction"),
    ("1.5", "face_y2", "not a fraction"), ("inf", "face_x2", "not a fraction"), ("abc", "face_y1", "not a fraction"),
    ("True", "face_x1", "not a fraction"), ("", "face_y2", "is empty while the rest"),
    ("2", "face_score", "not a fraction"),
])
def test_face_boxes_of_the_folds_csv_are_refused_naming_file_row_and_column(sample_data, tmp_path, cell, column,
                                                                            message):
    frame = pd.read_csv(sample_data / "train/folds.csv", dtype=str)
    row = int(frame["face_score"].notna().to_numpy().argmax())  # a photo with a face
    if cell == "swapped":
        frame.loc[row, ["face_x1", "face_x2"]] = frame.loc[row, ["face_x2", "face_x1"]].to_numpy()
    else:
        frame.loc[row, column] = cell
    csv = tmp_path / "folds.csv"
    frame.to_csv(csv, index=False)
    with pytest.raises(UserError, match=message) as refused:
        load_folds(csv, sample_data / "train/images", 0)
    assert str(refused.value).startswith(f"{csv}: row {row + 2}, column {column}")


def kept_faces(images, box=("0.3", "0.2", "0.7", "0.6")):
    """faces.csv as faces.kept_boxes keeps it for the photos in `images`, every photo's face at `box`."""
    paths = sorted(images.iterdir())
    return pd.DataFrame({"path": [path.name for path in paths], "bytes": [str(path.stat().st_size) for path in paths],
                         "mtime_ns": [str(path.stat().st_mtime_ns) for path in paths],
                         **dict(zip(["face_x1", "face_y1", "face_x2", "face_y2"], box)), "face_score": "0.99"})


def test_kept_faces_linked_from_elsewhere_are_checked_before_a_crop_uses_them(exported, sample_data, tmp_path):
    run, _ = exported
    eval_dir = tmp_path / "eval"
    shutil.copytree(sample_data / "eval", eval_dir, ignore=shutil.ignore_patterns(".cache", "*faces.csv"))
    kept = kept_faces(eval_dir / "images")  # what inference keeps, for the photos as they are
    kept.loc[1, "face_y2"] = "1e400"
    elsewhere = tmp_path / "elsewhere.csv"
    kept.to_csv(elsewhere, index=False)
    (eval_dir / "faces.csv").symlink_to(elsewhere)
    result = run_script("inference.py", "--data_dir", eval_dir, "--onnx", run / "model.onnx", "--output_dir",
                        tmp_path / "out", "--workers", "0", "--cache", "off")
    assert_one_line_error(result, f"{eval_dir / 'faces.csv'}: row 3, column face_y2 is '1e400'")
    assert not (tmp_path / "out").exists()


def test_a_folds_csv_whose_classes_cannot_be_folders_or_whose_labels_disagree_is_refused(sample_data, tmp_path):
    paths = pd.read_csv(sample_data / "train/folds.csv")["path"][:4]
    for classes, labels, message in ((["mask", "uncertain"] * 2, [0, 1] * 2, "the class name 'uncertain'"),
                                     (["mask", "no_mask"] * 2, [1, 0] * 2, "labels the class 'mask' 1, not 0")):
        frame = pd.DataFrame({"path": paths, "class": classes, "label": labels, "group": range(4), "fold": [0, 1] * 2})
        frame.to_csv(tmp_path / "folds.csv", index=False)
        with pytest.raises(UserError, match=message):
            load_folds(tmp_path / "folds.csv", sample_data / "train/images", 0)


FULL_DISK = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    import numpy as np, torch
    from PIL import Image
    import sorting
    from cli import UserError
    from dataset import DecodedCache
    from fileio import save_checkpoint
    disk, photos, results = Path(sys.argv[2]), Path(sys.argv[3]), {}
    paths = sorted(photos.iterdir())
    def attempt(name, call):
        try:
            call()
            results[name] = None
        except UserError as error:
            results[name] = str(error)
    attempt("cache", lambda: DecodedCache(paths, (128, 96), "disk", disk / "cache"))
    attempt("checkpoint", lambda: save_checkpoint({"model": {"w": torch.zeros(250_000)}}, disk / "run/best.pth"))
    attempt("sort", lambda: sorting.sort_photos(paths, ["a"] * len(paths), [1.0] * len(paths), disk / "sorted"))
    results["left"] = sorted(str(path.relative_to(disk)) for path in disk.rglob("*") if path.is_file())
    print(json.dumps(results))
""")


def test_a_full_disk_is_one_line_naming_what_is_needed_and_leaves_nothing_half_written(sample_data, tmp_path):
    photos = photo_folder(sample_data, tmp_path / "photos", count=16)  # over 200 KB
    disk = tmp_path / "disk"
    disk.mkdir()
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK)
    command = (f"mount -t tmpfs -o size=200k tmpfs {disk} && {sys.executable} {script} {REPO_ROOT} {disk} "
               f"{photos}")
    try:  # a tmpfs of 200 KB in a mount namespace of its own: a real full disk, nothing outside touched
        result = subprocess.run(["unshare", "-rm", "sh", "-c", command], capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        pytest.skip("no unshare: a small file system cannot be mounted here")
    if result.returncode != 0 and "Traceback" not in result.stderr:
        pytest.skip(f"cannot mount a small file system here: {result.stderr.strip()[-200:]}")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.splitlines()[-1])
    assert results["cache"].startswith(f"cannot write the decoded-image cache {disk}/cache/")  # was a bus error
    assert "no space left on the device (0.6 MB needed" in results["cache"] and "--cache ram" in results["cache"]
    assert results["checkpoint"].startswith(f"cannot write {disk}/run/best.pth: no space left on the device (1.0 MB "
                                            "needed")  # was torch's 'unexpected pos'
    assert results["sort"].startswith(f"cannot copy {photos}/") and "photos filed before it)" in results["sort"]
    filed = [path for path in results["left"] if path.startswith("sorted/")]
    assert [path for path in results["left"] if path not in filed] == [path for path in results["left"]
                                                                       if path.endswith(".lock")]
    assert 0 < len(filed) < 16 and all(path.endswith(".jpg") and "/." not in path for path in filed)


def test_a_scratch_folder_is_removed_however_its_job_ends_and_a_killed_jobs_by_the_next(tmp_path):
    stale = tmp_path / ".export.k1ll3d.tmp"
    stale.mkdir()
    (stale / "fp32.onnx").write_bytes(b"a full-size model")
    os.utime(stale, (STARTED - 60, STARTED - 60))  # left by a job killed before this process started
    with pytest.raises(RuntimeError):
        with scratch_folder(tmp_path, "export") as scratch:
            (scratch / "fp32.onnx").write_bytes(b"half")
            raise RuntimeError("failed")
    assert not list(tmp_path.iterdir())


def photos_with_and_without_a_face(sample_data, source):
    """SRC for crop_faces.py: a.jpg and no_face/x.jpg with a face, x.jpg and b.jpg without (as preprocess found them);
    x.jpg's copy and no_face/x.jpg's crop want the same name."""
    frame = pd.read_csv(sample_data / "train/folds.csv")
    with_face = frame["path"][frame["face_score"].notna()].tolist()
    without = frame["path"][frame["face_score"].isna()].tolist()
    (source / "no_face").mkdir(parents=True)
    for name, path in (("a.jpg", with_face[0]), ("no_face/x.jpg", with_face[1]), ("x.jpg", without[0]),
                       ("b.jpg", without[1])):
        shutil.copy(sample_data / "train/images" / path, source / name)


AS_PREPROCESS = ["--min_score", "0"]  # every face found counts, as preprocess.py counted them


def tree(folder):
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_crop_faces_resumes_an_interrupted_run_into_what_an_uninterrupted_one_writes(sample_data, tmp_path,
                                                                                     monkeypatch):
    source = tmp_path / "src"
    photos_with_and_without_a_face(sample_data, source)
    assert run_script("crop_faces.py", source, tmp_path / "whole", *AS_PREPROCESS).returncode == 0
    process, calls = crop_faces.process_photo, []

    def interrupted_after_two(*args):
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return process(*args)

    monkeypatch.setattr(crop_faces, "process_photo", interrupted_after_two)
    assert run_script("crop_faces.py", source, tmp_path / "dst", *AS_PREPROCESS).returncode == 130
    monkeypatch.setattr(crop_faces, "process_photo", process)
    assert not (tmp_path / "dst").exists()  # DST appears complete or not at all
    assert_one_line_error(run_script("crop_faces.py", source, tmp_path / "dst", *AS_PREPROCESS),
                          "pass --resume to continue it")
    assert_one_line_error(run_script("crop_faces.py", source, tmp_path / "dst", *AS_PREPROCESS, "--resume", "--margin",
                                     "0.2"),
                          "margin was 0.4 in the interrupted run")
    resumed = run_script("crop_faces.py", source, tmp_path / "dst", *AS_PREPROCESS, "--resume")
    assert resumed.returncode == 0 and "resuming: 2 of 4 photos done, 2 to go" in resumed.stdout, resumed.stderr
    assert tree(tmp_path / "dst") == tree(tmp_path / "whole")
    table = pd.read_csv(tmp_path / "dst/faces.csv").set_index("path")["crop"]
    assert table["no_face/x.jpg"] == "no_face/x.jpg" and table["x.jpg"] == "no_face/x_1.jpg"  # neither overwritten
    assert tree(tmp_path / "dst")["no_face/x_1.jpg"] == (source / "x.jpg").read_bytes()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["dst", "src", "whole"]  # no work folder left


def copy_exported_variants(run, files):
    """export.write_variants for a test: the shared export's `files` ({variant: file name})."""
    def write_variants(eager, config, paths, *args):
        for variant, path in paths.items():
            shutil.copy(run / files[variant], path)
    return write_variants


def test_a_variant_failing_its_gate_is_reported_and_skipped_and_the_others_written(exported, tmp_path, monkeypatch):
    run, _ = exported
    monkeypatch.setattr(export, "write_variants", copy_exported_variants(run, export.VARIANTS))
    (tmp_path / "model_fp16.onnx").write_bytes(b"an earlier export")
    result = run_script("export.py", run, "--output_dir", tmp_path, "--variants", "fp32", "fp16", "--fp16_tolerance",
                        "0", *QUICK_EXPORT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "the fp16 model is refused: its probabilities differ from eager's by up to" in result.stdout
    assert sorted(path.name for path in tmp_path.iterdir()) == ["export_report.json", "export_report.md", "model.onnx"]
    report = json.loads((tmp_path / "export_report.json").read_text())
    assert list(report["refused"]) == ["fp16"] and report["meeting_targets"] in ([], ["fp32"])
    assert "| fp16 |" in (tmp_path / "export_report.md").read_text() and "refused" in result.stdout
    unfaithful = {"fp32": "model_int8.onnx", "fp16": "model_fp16.onnx"}  # int8's rounding where fp32 should be exact
    monkeypatch.setattr(export, "write_variants", copy_exported_variants(run, unfaithful))
    every = run_script("export.py", run, "--output_dir", tmp_path / "none", "--variants", "fp32", "fp16",
                       "--fp16_tolerance", "0", *QUICK_EXPORT)
    assert_one_line_error(every, "every variant failed its gate (fp32: its probabilities differ from eager's")
    assert not list((tmp_path / "none").iterdir())


def four_class_run(folder, seed):
    """A run directory of a 4-class scheme (untrained test_resnet weights, the whole photo at 64x48)."""
    config = {"model": "test_resnet", "head": "single", "resize": [64, 48], "crop": "none", "scheme": FOUR_CLASSES,
              "task": "all", "fold": 0}
    torch.manual_seed(seed)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_checkpoint({"model": create_model(config, initial_weights=False).state_dict()}, folder / "best.pth")
    return folder


def test_a_soft_vote_of_two_runs_of_another_scheme_is_their_mean(sample_data, tmp_path):
    photos = photo_folder(sample_data, tmp_path / "photos")
    runs = [four_class_run(tmp_path / name, seed) for seed, name in enumerate(["a", "b"])]
    common = ["--data_dir", photos, "--workers", "0", "--cache", "off"]
    singles = []
    for run in runs:
        assert run_script("inference.py", *common, "--model_dir", run, "--output_dir", tmp_path / f"out_{run.name}"
                          ).returncode == 0
        singles.append(pd.read_csv(tmp_path / f"out_{run.name}/probabilities.csv").set_index("ImageID"))
    vote = run_script("ensemble.py", *runs, *common, "--output_dir", tmp_path / "vote")
    assert vote.returncode == 0, vote.stderr[-2000:]
    voted = pd.read_csv(tmp_path / "vote/probabilities.csv").set_index("ImageID")
    assert list(voted.columns) == ["prob_0", "prob_1", "prob_2", "prob_3"]
    np.testing.assert_allclose(voted.to_numpy(), (singles[0] + singles[1]).loc[voted.index].to_numpy() / 2,
                               atol=1e-6)
    other = tmp_path / "c"
    shutil.copytree(runs[0], other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "scheme": {"name": "folders",
                                                                        "tasks": {"class": ["a", "b", "c", "e"]}}}))
    assert_one_line_error(run_script("ensemble.py", runs[0], other, *common, "--output_dir", tmp_path / "mixed"),
                          "predicts other classes than the runs before it")


@pytest.mark.parametrize("truth, predictions, message", [
    ("path,class\na.jpg,mask\nb.jpg,\n", "path,predicted\na.jpg,mask\nb.jpg,mask\n", "row 3 has no class"),
    ("path,class\na.jpg,mask\nb.jpg,mask\n", "path,predicted\na.jpg,\nb.jpg,mask\n", "row 2 has no predicted"),
    ("path,class\n,mask\nb.jpg,mask\n", "path,predicted\na.jpg,mask\nb.jpg,mask\n", "row 2 has no path"),
])
def test_evaluation_refuses_an_empty_cell_in_one_line(tmp_path, truth, predictions, message):
    (tmp_path / "truth.csv").write_text(truth)
    (tmp_path / "predictions.csv").write_text(predictions)
    assert_one_line_error(run_script("evaluation.py", "--truth", tmp_path / "truth.csv", "--predictions",
                                     tmp_path / "predictions.csv"), message)
    (tmp_path / "gt.csv").write_text("ImageID,ans\na.jpg,0\n,1\n")
    (tmp_path / "output.csv").write_text("ImageID,ans\na.jpg,0\nb.jpg,1\n")
    assert_one_line_error(run_script("evaluation.py", "--gt_dir", tmp_path, "--submission", tmp_path / "output.csv"),
                          "row 3 has no ImageID")
