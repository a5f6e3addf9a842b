"""Generated hostile and broken inputs: every parser answers with a valid result or the one-line error (UserError,
or exit 2 and one `error:` line), never another exception or a traceback, and nothing outside the data is touched.
Also what arrives with a model or beside the data: class names, an exported model's metadata, face boxes, file
names."""
import contextlib
import io
import json
import math
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image

import ensemble
import inference
import onnx
import preprocess
import sorting
import train
from cli import UserError, check_values
from conftest import run_script
from dataset import COMPETITION, FOLDS_COLUMNS, NUM_CLASSES, LabelScheme, load_folds
from exported import METADATA_KEY, read_config
from faces import BOX_COLUMNS, CROP_MODES, SCORE_COLUMN, check_boxes
from fileio import is_utf8, read_csv, read_json
from inference import RUN_CONFIG_CHECKS, read_eval_set, source_config
from photos import decode_image
from submissions import read_labels, read_probabilities

IN_PROCESS = settings(max_examples=40, deadline=None)
SUBPROCESS = settings(max_examples=4, deadline=None)

# Cells a careless or hostile file holds: numbers of every kind, booleans, paths out of the folder, CSV syntax.
CELLS = st.one_of(
    st.integers(-3, 30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", " ", "True", "False", "nan", "-0", "1.0", "1e400", "../../secret.jpg", "../../etc/passwd",
                     "/etc/passwd", "a.jpg", '"', "a,b", "é.jpg", "\\", "0x1"]),
    st.text(max_size=8),
)


def one_line_user_error(error):
    return isinstance(error, UserError) and "\n" not in str(error) and str(error).strip()


def csv_text(header, rows):
    return "\n".join(",".join(row) for row in [header, *rows]) + "\n"


def table(columns, cells=CELLS):
    """CSV text with some of `columns` (and maybe a stranger) and a few rows of generated cells."""
    return st.lists(st.sampled_from([*columns, "stranger"]), min_size=1, max_size=len(columns) + 1,
                    unique=True).flatmap(
        lambda header: st.lists(st.lists(cells, min_size=len(header), max_size=len(header)), max_size=4).map(
            lambda rows: csv_text(header, rows)))


def parsed_or_one_line(call):
    """(value, None) when `call()` returns, (None, message) when it raises a one-line UserError; anything else
    fails the test."""
    try:
        return call(), None
    except UserError as error:
        assert one_line_user_error(error), repr(str(error))
        return None, str(error)


# Each numeric flag with the values it must accept: parsing succeeds exactly for those, else one error line.
NUMERIC_FLAGS = [
    (train, "--lr", float, lambda value: value > 0),
    (train, "--smoothing", float, lambda value: 0 <= value <= 1),
    (train, "--weight_decay", float, lambda value: value >= 0),
    (train, "--batch_size", int, lambda value: value >= 1),
    (train, "--workers", int, lambda value: value >= 0),
    (train, "--lr_decay_step", int, lambda value: value >= 1),
    (preprocess, "--kfold", int, lambda value: value >= 2),
    (ensemble, "--weights", float, lambda value: value >= 0),
    (inference, "--batch_size", int, lambda value: value >= 1),
]
NUMBERS = st.one_of(st.integers(-5, 5).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
                    st.sampled_from(["", "x", "1e400", "-inf", "0x10", "3.0", " 2", "1_0"]))


def accepts(kind, accepted, text):
    """What the flag should do with `text`, worked out without argparse."""
    try:
        value = kind(text)
    except ValueError:
        return False
    return math.isfinite(value) and accepted(value)


@IN_PROCESS
@given(flag=st.sampled_from(NUMERIC_FLAGS), text=NUMBERS)
def test_a_numeric_flag_parses_in_range_or_fails_with_one_error_line(flag, text):
    script, name, kind, accepted = flag
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            value = getattr(script.get_args_parser().parse_args([f"{name}={text}"]), name[2:])
        except SystemExit as exit_:
            assert exit_.code == 2
            lines = stderr.getvalue().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"error: argument {name}"), lines
            assert not accepts(kind, accepted, text)
            return
    value = value[0] if isinstance(value, list) else value
    assert accepts(kind, accepted, text) and value == kind(text)


@pytest.fixture(scope="module")
def eval_dir(sample_data, tmp_path_factory):
    """A copy of the eval folder, with a file beside it that info.csv must not reach."""
    root = tmp_path_factory.mktemp("fuzz_eval")
    shutil.copytree(sample_data / "eval", root / "eval")
    (root / "secret.jpg").write_bytes(next((root / "eval/images").iterdir()).read_bytes())
    return root / "eval"


IMAGE_IDS = st.one_of(CELLS, st.sampled_from(["REAL", "REAL", "images/../REAL", "../../secret.jpg",
                                              "../eval/images/REAL", "SECRET", "./REAL", "REAL/"]))


@IN_PROCESS
@given(text=st.one_of(table(["ImageID", "ans"]), st.text(max_size=40)),
       image_ids=st.lists(IMAGE_IDS, min_size=1, max_size=3), well_formed=st.booleans())
@example(text="", image_ids=["\x00"], well_formed=True)  # found by this test: a NUL byte broke path resolution
@example(text="", image_ids=['"', '"'], well_formed=True)  # and a quoted ImageID holding a line break
def test_info_csv_gives_images_inside_the_folder_or_one_line(eval_dir, text, image_ids, well_formed):
    if well_formed:  # the header and ImageIDs real, absent, or out of the folder in every spelling
        real = next((eval_dir / "images").iterdir()).name
        secret = (eval_dir.parent / "secret.jpg").resolve()
        text = "ImageID,ans\n" + "".join(f"{image_id.replace('SECRET', str(secret)).replace('REAL', real)},0\n"
                                         for image_id in image_ids)
    (eval_dir / "info.csv").write_text(text)
    result, error = parsed_or_one_line(lambda: read_eval_set(eval_dir))
    if error is None:
        info, paths = result
        images = (eval_dir / "images").resolve()
        assert len(paths) == len(info) > 0
        assert all(path.is_file() and path.is_relative_to(images) for path in paths)


SMALL_INTEGERS = st.integers(-1, 20).map(str)


@IN_PROCESS
@given(rows=st.lists(st.tuples(st.sampled_from(["ok", "ok", "../folds.csv", "/etc/passwd", "", "nan"]),
                               *[st.one_of(SMALL_INTEGERS, SMALL_INTEGERS, CELLS)] * (len(FOLDS_COLUMNS) - 1)),
                     min_size=1, max_size=3))
@example(rows=[("ok", "0", "0", "0", "0", "0", "¹")])  # found by this test: a digit that int() refuses
def test_a_folds_csv_gives_valid_labels_inside_the_folder_or_one_line(sample_data, tmp_path_factory, rows):
    data_dir = sample_data / "train/images"
    real = pd.read_csv(sample_data / "train/folds.csv")["path"].iloc[0]
    csv = tmp_path_factory.mktemp("folds") / "folds.csv"
    csv.write_text(csv_text(FOLDS_COLUMNS, [(real if path == "ok" else path, *cells) for path, *cells in rows]))
    fold = int(rows[0][-1]) if rows[0][-1].lstrip("-").isdecimal() else 0  # the fold the first row names
    frame, error = parsed_or_one_line(lambda: load_folds(csv, data_dir, fold))
    if error is None:
        assert len(frame) > 0 and fold in set(frame["fold"]) and (frame["fold"] >= 0).all()
        assert frame["age"].between(1, 120).all() and frame["label"].between(0, NUM_CLASSES - 1).all()
        assert frame["mask_label"].between(0, 2).all() and frame["gender_label"].between(0, 1).all()
        assert all((data_dir / path).resolve().is_relative_to(data_dir.resolve()) for path in frame["path"])


@IN_PROCESS
@given(text=st.one_of(table(["ImageID", "ans"]), st.text(max_size=40)))
def test_a_submission_gives_integer_labels_or_one_line(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("submission") / "output.csv"
    path.write_text(text)
    frame, error = parsed_or_one_line(lambda: read_labels(path, "submission"))
    if error is None:
        assert frame["ans"].dtype.kind == "i" and frame["ans"].between(0, NUM_CLASSES - 1).all()
        assert frame["ImageID"].is_unique


@IN_PROCESS
@given(text=st.one_of(table(["ImageID", "prob_0", "prob_1", "prob_2"]), st.text(max_size=40)))
def test_a_probabilities_file_gives_distributions_or_one_line(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("probabilities") / "probabilities.csv"
    path.write_text(text)
    result, error = parsed_or_one_line(lambda: read_probabilities(path))
    if error is None:
        _, probabilities = result
        assert probabilities.isfinite().all() and (probabilities >= 0).all()
        assert np.allclose(probabilities.sum(dim=1), 1, atol=1e-3)


JSON_VALUES = st.one_of(  # values a saved config may hold for any key, the plausible ones often
    st.sampled_from([None, True, 3, 0.5, "3", "0.5", "single", "multi", "test_resnet", "cpu", "cuda:7", [64, 48],
                     [0, 1], [64.0, 48], math.nan, math.inf]),
    st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(), st.text(max_size=6)),
                 lambda inner: st.lists(inner, max_size=3), max_leaves=6))
CONFIG_KEYS = ["model", "head", "resize", "lr", "batch_size", "epochs", "device", "task", "smoothing", "fold",
               "pretrained", "name", "task_weights"]


DEPLOYED_VALUES = {"scheme": st.one_of(JSON_VALUES, st.just(COMPETITION.to_dict()), st.just({"name": "folders",
                                                                                              "tasks": {"class": [
                                                                                                  "..", "b"]}})),
                   "crop": st.sampled_from(["face", "box", "none", "eyes", 3]), "face_margin": JSON_VALUES,
                   "crop_box": st.one_of(JSON_VALUES, st.just([0.1, 0.1, 0.9, 0.9]), st.just([0.9, 0.1, 0.1, 0.9]))}


@IN_PROCESS
@given(config=st.one_of(st.dictionaries(st.sampled_from(CONFIG_KEYS), JSON_VALUES), JSON_VALUES),
       deployed=st.fixed_dictionaries({}, optional=DEPLOYED_VALUES), raw=st.one_of(st.none(), st.text(max_size=20)))
def test_a_run_config_has_what_rebuilding_the_model_needs_or_is_refused_in_one_line(tmp_path_factory, config, deployed,
                                                                                    raw):
    path = tmp_path_factory.mktemp("run") / "config.json"
    config = {**config, **deployed} if isinstance(config, dict) else config
    path.write_text(json.dumps(config) if raw is None else raw)
    saved, error = parsed_or_one_line(lambda: read_json(path, RUN_CONFIG_CHECKS))
    if error is None:
        assert isinstance(saved["model"], str) and saved["head"] in ("single", "multi")
        assert len(saved["resize"]) == 2 and all(type(side) is int and side > 0 for side in saved["resize"])
        checked, error = parsed_or_one_line(lambda: source_config(path.parent))  # what inference reads
        if error is None:
            assert checked.get("crop", "none") in CROP_MODES and inference.run_scheme(checked).num_classes >= 1


FLAG_VALUES = st.one_of(JSON_VALUES, st.integers(-2, 300), st.floats(), st.sampled_from(["3", "0.5", "64", "1e-3"]),
                        st.lists(st.one_of(st.integers(-1, 300), st.floats(0, 1)), max_size=4))


@settings(max_examples=100, deadline=None)  # cheap: a parser and a dict
@given(key=st.sampled_from(CONFIG_KEYS), value=FLAG_VALUES)
def test_a_saved_flag_value_is_accepted_only_when_the_command_line_gives_that_value(key, value):
    parser = train.get_args_parser()
    _, error = parsed_or_one_line(lambda: check_values(parser, {key: value}, "config.json"))
    if error is None and value is not None:
        switch = isinstance(value, bool) and key == "pretrained"
        argv = ([f"--{key}"] if value else []) if switch else [f"--{key}", *map(str, value if isinstance(value, list)
                                                                                 else [value])]
        with contextlib.redirect_stderr(io.StringIO()):
            parsed = getattr(parser.parse_args(argv), key)
        assert parsed == value and type(parsed) is type(value) or type(value) is int and type(parsed) is float


PIXELS = {  # PIL mode: the numpy dtype and range of its pixels
    "1": (np.bool_, 0, 1), "L": (np.uint8, 0, 255), "LA": (np.uint8, 0, 255), "P": (np.uint8, 0, 255),
    "RGB": (np.uint8, 0, 255), "RGBA": (np.uint8, 0, 255), "CMYK": (np.uint8, 0, 255),
    "I;16": (np.uint16, 0, 65535), "I": (np.int32, -70000, 70000), "F": (np.float32, -0.5, 1.5),
}


@IN_PROCESS
@given(mode=st.sampled_from(sorted(PIXELS)), seed=st.integers(0, 2**16), transparency=st.booleans(),
       size=st.tuples(st.integers(1, 9), st.integers(1, 9)))
def test_a_photo_of_any_mode_decodes_to_8_bit_rgb_or_one_line(tmp_path_factory, mode, seed, transparency, size):
    dtype, low, high = PIXELS[mode]
    channels = {"LA": 2, "RGB": 3, "RGBA": 4, "CMYK": 4}.get(mode)
    shape = size if channels is None else (*size, channels)
    values = np.random.default_rng(seed).uniform(low, high, shape)
    photo = Image.fromarray(values.astype(dtype)) if mode != "P" else Image.fromarray(values.astype(dtype), "L")
    photo = photo.convert(mode) if mode in ("P", "CMYK") else photo
    path = tmp_path_factory.mktemp("photo") / f"photo.{ {'CMYK': 'jpg', 'I': 'tiff', 'F': 'tiff'}.get(mode, 'png')}"
    photo.save(path, **({"transparency": 0} if transparency and mode == "P" else {}))
    pixels, error = parsed_or_one_line(lambda: decode_image(path))
    if error is None:
        assert pixels.dtype == np.uint8 and pixels.shape == (*size, 3)
        if mode == "I;16":
            assert (pixels[..., 0] == np.round(values.astype(np.uint16) / 257)).all()
    else:
        assert mode in ("I", "F") and "pixels are outside" in error  # only values out of range are refused


@SUBPROCESS
@given(text=table(["ImageID", "ans"]))
def test_evaluation_exits_0_with_a_score_or_2_with_one_line_and_touches_nothing(tmp_path_factory, text):
    root = tmp_path_factory.mktemp("evaluation")
    (root / "gt").mkdir()
    (root / "gt/gt.csv").write_text("ImageID,ans\na.jpg,0\nb.jpg,17\n")
    (root / "output").mkdir()
    (root / "output/output.csv").write_text(text)
    before = sorted(root.rglob("*"))
    result = run_script("evaluation.py", "--gt_dir", root / "gt", "--output_dir", root / "output", cwd=root)
    assert "Traceback" not in result.stderr
    if result.returncode == 0:
        assert json.loads(result.stdout.splitlines()[0])["f1"]
    else:
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith("error: ")
    assert sorted(root.rglob("*")) == before


# What arrives with a model or beside the data.
CLASS_NAMES = st.one_of(
    st.text(max_size=10),
    st.sampled_from(["..", ".", "", " ", "a/b", "a\\b", "uncertain", "UNCERTAIN", ".hidden", "a\x00b", "a\nb", "\udcff",
                     "x" * 256, "<30", "60+", "마스크", "no_face", "-", "a-b"]),
    st.integers(-1, 3), st.none())


def assert_unchanged_outside(before, root, allowed):
    """Every file under `root` is as in `before` (path: size, mtime) except under the `allowed` folders."""
    after = snapshot(root)
    changed = {path for path in set(before) | set(after) if before.get(path) != after.get(path)}
    assert all(any(path.is_relative_to(folder) for folder in allowed) for path in changed), sorted(changed)[:5]


def snapshot(root):
    """Each path under `root`: a file's size and mtime, a folder's mere presence (its mtime moves with its files)."""
    return {path: None if path.is_dir() and not path.is_symlink() else (path.lstat().st_size, path.lstat().st_mtime_ns)
            for path in root.rglob("*")}


@settings(max_examples=80, deadline=None)
@given(names=st.lists(CLASS_NAMES, min_size=1, max_size=4))
def test_generated_class_names_make_a_scheme_whose_folders_stay_in_the_sort_folder_or_one_line(tmp_path_factory,
                                                                                               names):
    scheme, error = parsed_or_one_line(lambda: LabelScheme.from_dict({"name": "folders", "tasks": {"class": names}},
                                                                     "config.json"))
    if error is not None:
        assert error.startswith("config.json: ")
        return
    root = tmp_path_factory.mktemp("sorted")
    folders = sorting.class_folders(root, scheme.classes)
    for folder in folders.values():
        folder.mkdir()  # a real folder of that name, directly inside
    assert sorted(path.name for path in root.iterdir()) == sorted(folders) and len(folders) == len(names) + 1


def metadata_strategy():
    """Changes to an exported model's metadata: each key absent (as exported), or a hostile or plausible value."""
    names = st.lists(CLASS_NAMES, min_size=1, max_size=19)
    schemes = st.one_of(st.just(COMPETITION.to_dict()), st.none(), JSON_VALUES,
                        names.map(lambda class_names: {"name": "folders", "tasks": {"class": class_names}}),
                        st.lists(st.text(max_size=6).map(str), min_size=18, max_size=18, unique=True).map(
                            lambda class_names: {"name": "folders", "tasks": {"class": class_names}}))
    return st.fixed_dictionaries({}, optional={
        "scheme": schemes, "classes": st.one_of(names, JSON_VALUES),
        "resize": st.one_of(st.just([64, 48]), st.just([48, 64]), JSON_VALUES),
        "crop": st.sampled_from([*CROP_MODES, "eyes", None, 3]),
        "face_margin": st.one_of(st.floats(), st.sampled_from([0.4, 0, -1, True, None, "0.4", 101])),
        "crop_box": st.one_of(st.lists(st.one_of(st.floats(-0.5, 1.5), JSON_VALUES), max_size=5),
                              st.just([0.1, 0.1, 0.9, 0.9])),
        "task": st.sampled_from(["all", "mask", "class", 3, None, ["mask"]])})


def hostile_model(exported_run, folder, changes, derive_classes):
    """A copy of the exported fp32 model in `folder` whose metadata has `changes` (with its class list then made to
    match the scheme, when `derive_classes` and the scheme allows it)."""
    proto = onnx.load(exported_run / "model.onnx")
    props = {prop.key: prop.value for prop in proto.metadata_props}
    metadata = {**json.loads(props[METADATA_KEY]), **changes}
    if derive_classes:
        with contextlib.suppress(UserError, AttributeError):
            metadata["classes"] = inference.run_scheme(metadata).classes
    onnx.helper.set_model_props(proto, {**props, METADATA_KEY: json.dumps(metadata)})
    onnx.save(proto, folder / "model.onnx")
    return folder / "model.onnx"


@settings(max_examples=25, deadline=None)
@given(changes=metadata_strategy(), derive_classes=st.booleans())
def test_generated_metadata_is_read_only_when_it_describes_the_graph(exported, tmp_path_factory, changes,
                                                                     derive_classes):
    model = hostile_model(exported[0], tmp_path_factory.mktemp("model"), changes, derive_classes)
    config, error = parsed_or_one_line(lambda: read_config(model))
    if error is None:
        assert config["resize"] == [64, 48] and len(config["classes"]) == NUM_CLASSES  # the graph's
        assert len(set(config["classes"])) == NUM_CLASSES and config.get("crop", "none") in CROP_MODES
        if config.get("crop") == "box":
            x1, y1, x2, y2 = config["crop_box"]
            assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1


def photo_folder_with_faces(sample_data, folder, count=3):
    """`count` eval photos in `folder`, their faces kept in folder/.cache/faces.csv as inference keeps them."""
    folder.mkdir(parents=True)
    for path in sorted((sample_data / "eval/images").iterdir())[:count]:
        shutil.copy(path, folder / path.name)
    paths = sorted(folder.iterdir())
    (folder / ".cache").mkdir()
    pd.DataFrame({"path": [path.name for path in paths], "bytes": [path.stat().st_size for path in paths],
                  "mtime_ns": [path.stat().st_mtime_ns for path in paths], "face_x1": 0.3, "face_y1": 0.2,
                  "face_x2": 0.7, "face_y2": 0.6, "face_score": 0.99}).to_csv(folder / ".cache/faces.csv", index=False)
    return folder


def assert_exit_0_with_output_or_2_with_one_line(result, written):
    """exit 0, or exit 2 with one `error:` line and none of the `written` paths there; never a traceback."""
    assert "Traceback" not in result.stderr
    if result.returncode == 0:
        return True
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-2000:]
    assert not any(path.exists() for path in written)
    return False


@SUBPROCESS
@given(changes=metadata_strategy(), derive_classes=st.booleans())
@example(changes={}, derive_classes=False)  # as exported: every photo filed
@example(changes={"scheme": {"name": "folders", "tasks": {"class": [".."] + [f"c{k}" for k in range(17)]}}},
         derive_classes=True)
def test_a_model_with_generated_metadata_sorts_into_the_sort_folder_or_exits_2_and_writes_nothing(
        exported, sample_data, tmp_path_factory, changes, derive_classes):
    root = tmp_path_factory.mktemp("sort_hostile")
    photos = photo_folder_with_faces(sample_data, root / "photos")
    model = hostile_model(exported[0], root, changes, derive_classes)
    before, work = snapshot(root), root / "work"
    result = run_script("inference.py", "--data_dir", photos, "--onnx", model, "--output_dir", work / "out",
                        "--sort_into", work / "sorted", "--workers", "0", "--cache", "off")
    assert result.returncode == 0 or changes, result.stderr[-2000:]  # the metadata as exported is read
    if assert_exit_0_with_output_or_2_with_one_line(result, [work]):
        predictions = pd.read_csv(work / "out/predictions.csv")
        filed = sorted(path.relative_to(work / "sorted") for path in (work / "sorted").rglob("*.jpg"))
        assert len(filed) == len(predictions) == 3 and all(len(path.parts) == 2 for path in filed)
    assert_unchanged_outside(before, root, [work, photos / ".cache"])


BOX_CELLS = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(str), st.floats(0, 1).map(str),
                      st.floats(0, 1).map(str), st.sampled_from(["", "", "True", "-0", "1", "0", "1e400", "abc", " "]))


@IN_PROCESS
@given(text=table([*BOX_COLUMNS, SCORE_COLUMN, "path"], BOX_CELLS))
def test_a_face_box_csv_gives_boxes_inside_the_photo_or_one_line_naming_row_and_column(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("faces") / "faces.csv"
    path.write_text(text)
    frame, error = parsed_or_one_line(lambda: check_boxes(read_csv(path, dtype=str), path))
    if error is not None:
        assert error.startswith(f"{path}") and ("row " in error or "face column" in error)
    elif set(BOX_COLUMNS) <= set(frame.columns):
        boxes = frame[list(BOX_COLUMNS)].to_numpy(dtype=float)
        found = ~np.isnan(boxes).any(axis=1)
        assert (np.isnan(boxes).all(axis=1) | found).all()
        x1, y1, x2, y2 = boxes[found].T
        assert ((0 <= x1) & (x1 < x2) & (x2 <= 1) & (0 <= y1) & (y1 < y2) & (y2 <= 1)).all()


@SUBPROCESS
@given(cells=st.lists(st.tuples(*[BOX_CELLS] * 4), min_size=3, max_size=3))
@example(cells=[("0.1", "0.1", "0.5", "0.6"), ("", "", "", ""), ("0.2", "0.3", "0.9", "1")])
@example(cells=[("0.1", "0.1", "0.5", "0.6"), ("0.5", "0.1", "0.1", "0.6"), ("0.2", "0.3", "0.9", "1")])
def test_kept_faces_with_generated_boxes_give_a_submission_or_exit_2_and_write_nothing(exported, sample_data,
                                                                                       tmp_path_factory, cells):
    root = tmp_path_factory.mktemp("kept_faces")
    shutil.copytree(sample_data / "eval", root / "eval", ignore=shutil.ignore_patterns(".cache", "*faces.csv"))
    images = sorted((root / "eval/images").iterdir())[:3]
    info = pd.read_csv(root / "eval/info.csv", dtype=str)
    info[info["ImageID"].isin([path.name for path in images])].to_csv(root / "eval/info.csv", index=False)
    pd.DataFrame({"path": [path.name for path in images], "bytes": [path.stat().st_size for path in images],
                  "mtime_ns": [path.stat().st_mtime_ns for path in images],
                  **dict(zip(BOX_COLUMNS, zip(*cells))), SCORE_COLUMN: 0.9}).to_csv(root / "eval/faces.csv",
                                                                                    index=False)
    before = snapshot(root)
    _, refused = parsed_or_one_line(lambda: check_boxes(read_csv(root / "eval/faces.csv", dtype=str), "faces.csv"))
    result = run_script("inference.py", "--data_dir", root / "eval", "--onnx", exported[0] / "model.onnx",
                        "--output_dir", root / "out", "--workers", "0", "--cache", "off")
    assert (result.returncode == 0) == (refused is None), result.stderr[-2000:]
    if assert_exit_0_with_output_or_2_with_one_line(result, [root / "out"]):
        assert len(pd.read_csv(root / "out/output.csv")) == 3
    assert_unchanged_outside(before, root, [root / "out", root / "eval/faces.csv", root / "eval/no_face.csv"])


NAME_BYTES = st.one_of(
    st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1, max_size=12).map(
        str.encode),
    st.binary(min_size=1, max_size=6).filter(lambda name: b"/" not in name and b"\x00" not in name),
    st.sampled_from([b"L" * 240, "é".encode() * 124, b"..", b"-", b" ", b"a\nb", b"caf\xe9", b"\xff\xfe"]))


@SUBPROCESS
@given(names=st.lists(NAME_BYTES, min_size=1, max_size=4, unique=True))
@example(names=[b"ok", b"caf\xe9", b"L" * 251])
def test_photos_of_any_file_name_are_filed_inside_the_sort_folder_or_skipped_and_counted(exported, sample_data,
                                                                                          tmp_path_factory, names):
    root = tmp_path_factory.mktemp("names")
    source = next((sample_data / "eval/images").iterdir())
    (root / "photos").mkdir()
    for name in names:
        path = os.fsencode(root / "photos") + b"/" + (name + b".jpg")[-255:]
        shutil.copy(source, os.fsdecode(path))
    model = hostile_model(exported[0], root, {"crop": "none"}, False)
    photos = [path for path in (root / "photos").iterdir() if not path.name.startswith(".")]
    before, work = snapshot(root), root / "work"
    result = run_script("inference.py", "--data_dir", root / "photos", "--onnx", model, "--output_dir", work / "out",
                        "--sort_into", work / "sorted", "--workers", "0", "--cache", "off")
    readable = sorted(path.name for path in photos if is_utf8(path))
    if not readable:
        assert result.returncode == 2 and "no info.csv and no photos" in result.stderr
        return
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(path.name for path in (work / "sorted").rglob("*.jpg")) == readable
    assert sorted(pd.read_csv(work / "out/predictions.csv", dtype={"path": str})["path"]) == readable
    assert ("skipping" in result.stdout) == (len(readable) < len(photos))
    assert_unchanged_outside(before, root, [work, root / "photos/.cache"])
