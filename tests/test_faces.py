"""Find the face once, crop to it everywhere: MTCNN boxes, the crop's geometry, and the same pixels at training,
validation, inference and TTA."""
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from skimage.data import astronaut

import train
from cli import UserError
from conftest import assert_one_line_error, run_script
from dataset import ImageDataset, load_folds, open_cache
from faces import (BOX_COLUMNS, FACE_DETECTOR_COLUMN, SCORE_COLUMN, Detection, YunetDetector, box_frame, choose_face,
                   crop_regions, detect_faces, facedetect_cnn, grow, report_found_rates)
from inference import FaceBoxes, get_args_parser as inference_args_parser
from photos import crop_box_pixels, decode_image

RESIZE = (64, 48)
# The astronaut's face in skimage's 512x512 portrait, by eye: forehead to chin, ear to ear (pixels).
ASTRONAUT_FACE = (165, 55, 285, 185)


@pytest.fixture(scope="module")
def portrait(tmp_path_factory):
    path = tmp_path_factory.mktemp("portrait") / "astronaut.png"
    Image.fromarray(astronaut()).save(path)
    return path


@pytest.mark.parametrize("name, sure", [("mtcnn", 0.99), ("yunet", 0.9)])
def test_each_detector_finds_the_face_and_landmarks_of_a_real_portrait(portrait, name, sure):
    [faces] = detect_faces([portrait], name=name)
    (x1, y1, x2, y2), score, landmarks = faces[0]
    assert score > sure
    centre_x, centre_y = (x1 + x2) / 2 * 512, (y1 + y2) / 2 * 512
    left, top, right, bottom = ASTRONAUT_FACE
    assert left < centre_x < right and top < centre_y < bottom
    assert 0.5 < (x2 - x1) * 512 / (right - left) < 1.2  # the face, not the whole photo nor an eye
    (left_eye, right_eye, nose, mouth_left, mouth_right) = landmarks
    assert all(x1 < x < x2 and y1 < y < y2 for x, y in landmarks)
    assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])


def resident_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def test_yunet_answers_as_yuface_and_keeps_no_memory_per_photo():
    yuface = pytest.importorskip("yuface", reason="the yunet detector's package (yuface) is not installed")
    detector = YunetDetector()
    bgr = np.ascontiguousarray(astronaut()[:, 200:, ::-1])  # the face cut by the left edge: x < 0
    scores, boxes, landmarks = yuface.detect(bgr, 0.0)
    found = detector.yunet(bgr)
    np.testing.assert_array_equal(found[:, :15], np.concatenate([scores[:, None], boxes, landmarks], axis=1))
    assert len(found) and found[0, 1] < 0
    small = np.ascontiguousarray(bgr[::8, ::8])
    detector.yunet(small)
    before = resident_kib()
    for _ in range(2000):  # yuface's own binding keeps 36 KB of each call: tens of MB
        detector.yunet(small)
    assert resident_kib() - before < 4096


def test_a_yuface_without_a_working_library_is_one_line(tmp_path):
    with pytest.raises(UserError, match="found no libfacedetection with facedetect_cnn in"):
        facedetect_cnn(tmp_path)
    (tmp_path / "libfacedetection.so").write_bytes(b"not a library")
    with pytest.raises(UserError, match="cannot load .*libfacedetection.so"):
        facedetect_cnn(tmp_path)


def test_a_photo_without_a_face_has_none(tmp_path):
    blank = tmp_path / "wall.png"
    Image.new("RGB", (384, 512), (120, 130, 140)).save(blank)
    assert detect_faces([blank]) == [[]]


def test_preprocess_writes_boxes_and_scores_into_the_folds_csv(sample_data):
    folds = pd.read_csv(sample_data / "train/folds.csv")
    found = folds.dropna(subset=[SCORE_COLUMN])
    assert 0 < len(found) < len(folds)  # the cartoon faces are found in part: both paths are exercised
    boxes = found[list(BOX_COLUMNS)].to_numpy()
    assert ((boxes >= 0) & (boxes <= 1)).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert found[SCORE_COLUMN].between(0, 1).all()
    missing = pd.read_csv(sample_data / "train/no_face.csv")
    assert sorted(missing["path"]) == sorted(folds.loc[folds[SCORE_COLUMN].isna(), "path"])


def test_a_photo_without_a_face_gets_the_median_box_of_its_set():
    boxes = pd.DataFrame([[0.2, 0.2, 0.6, 0.5], [0.4, 0.3, 0.8, 0.6], [0.3, 0.1, 0.5, 0.4], [np.nan] * 4],
                         columns=list(BOX_COLUMNS))
    regions = crop_regions(boxes, "face", margin=0.25)
    median = np.median(boxes.to_numpy()[:3], axis=0)
    np.testing.assert_allclose(regions[3], grow(median[None], 0.25)[0], atol=1e-6)
    np.testing.assert_allclose(regions[0], [0.1, 0.125, 0.7, 0.575], atol=1e-6)
    nobody = pd.DataFrame([[np.nan] * 4] * 2, columns=list(BOX_COLUMNS))
    np.testing.assert_allclose(crop_regions(nobody, "face"), [[0, 0, 1, 1]] * 2)


def test_the_crop_keeps_the_output_aspect_ratio_inside_the_photo():
    for region in ([0.4, 0.3, 0.6, 0.4], [0.0, 0.0, 0.2, 0.9], [0.9, 0.9, 1.0, 1.0], [-0.2, -0.1, 1.3, 1.2]):
        left, top, right, bottom = crop_box_pixels(region, (384, 512), (128, 96), zoom=1.15)
        assert (right - left) / (bottom - top) == pytest.approx(96 / 128)
        assert 0 <= left < right <= 384 + 1e-6 and 0 <= top < bottom <= 512 + 1e-6


def test_crop_none_reproduces_the_whole_photo_resized(sample_data):
    path = next((sample_data / "train/images").glob("*/mask1.jpg"))
    with Image.open(path) as photo:
        photo.draft("RGB", (RESIZE[1], RESIZE[0]))
        expected = np.array(photo.convert("RGB").resize((RESIZE[1], RESIZE[0]), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(decode_image(path, RESIZE), expected)
    assert crop_regions(pd.DataFrame(index=range(3)), "none") is None


def training_args(sample_data, cache_dir, *flags):
    args = train.parse_args(["--data_dir", str(sample_data / "train/images"), "--model",
                                               "test_resnet", "--resize", *map(str, RESIZE), "--workers", "0",
                                               "--cache_dir", str(cache_dir), *flags])
    args.csv = str(sample_data / "train/folds.csv")
    return args


@pytest.mark.parametrize("cache", ["disk", "off"])
def test_train_validation_and_inference_see_the_same_pixels(sample_data, tmp_path, cache):
    """The same photo gives the same tensor in train.py's validation and in inference.py --fold (and so TTA's
    identity view and ensembles, which read photos through the same FaceBoxes and ImageDataset)."""
    args = training_args(sample_data, tmp_path / "train_cache", "--cache", cache, "--face_margin", "0.3")
    frame = load_folds(sample_data / "train/folds.csv", sample_data / "train/images", 0)
    _, valid_loader = train.build_loaders(args, frame, sample_data / "train/images", torch.device("cpu"))
    inference_args = inference_args_parser().parse_args(["--fold", "0", "--train_dir",
                                                         str(sample_data / "train/images")])
    paths = valid_loader.dataset.paths
    regions = FaceBoxes(inference_args, paths, torch.device("cpu")).regions(vars(args))
    inference_set = ImageDataset(paths, size=RESIZE, regions=regions,
                                 cache=open_cache(paths, RESIZE, "disk", tmp_path / "inference_cache", regions))
    no_face = frame.loc[frame["fold"] == 0, SCORE_COLUMN].isna().to_numpy()
    for index in (int(no_face.argmax()), int((~no_face).argmax())):  # a photo with a face and one without
        assert torch.equal(valid_loader.dataset.load(index), inference_set.load(index))
    assert not torch.equal(inference_set.load(0), ImageDataset(paths, size=RESIZE).load(0))  # it is cropped


def test_another_crop_or_margin_is_another_cache(sample_data, tmp_path):
    frame = load_folds(sample_data / "train/folds.csv", sample_data / "train/images", 0)
    frame = pd.concat([frame.dropna(subset=[SCORE_COLUMN])[:4], frame[frame[SCORE_COLUMN].isna()][:2]])
    paths = [sample_data / "train/images" / path for path in frame["path"]]
    files = set()
    for crop, margin in (("face", 0.4), ("face", 0.4), ("face", 0.2), ("none", 0.4)):
        regions = crop_regions(frame, crop, margin)
        cache = open_cache(paths, RESIZE, "disk", tmp_path, regions)
        files.add(cache.file.name)
        expected = decode_image(paths[0], RESIZE, None if regions is None else regions[0])
        np.testing.assert_array_equal(cache.pixels(paths[0]), expected)
    assert len(files) == 3


def test_fold_inference_falls_back_on_the_median_face_of_the_whole_csv(sample_data):
    args = inference_args_parser().parse_args(["--fold", "1", "--train_dir", str(sample_data / "train/images")])
    folds = pd.read_csv(sample_data / "train/folds.csv")
    _, fallback = FaceBoxes(args, [None] * int((folds["fold"] == 1).sum()), torch.device("cpu")).find(
        Detection().signature)
    np.testing.assert_allclose(fallback, folds[list(BOX_COLUMNS)].dropna().median().to_numpy())


def test_eval_boxes_are_detected_once_and_kept_beside_info_csv(sample_data, tmp_path):
    eval_dir = tmp_path / "eval"
    shutil.copytree(sample_data / "eval", eval_dir)
    (eval_dir / "faces.csv").unlink(missing_ok=True)
    args = inference_args_parser().parse_args(["--data_dir", str(eval_dir)])
    paths = sorted((eval_dir / "images").glob("*.jpg"))
    detection = Detection().signature
    first, _ = FaceBoxes(args, paths, torch.device("cpu")).find(detection)
    kept = pd.read_csv(eval_dir / "faces.csv")
    assert len(kept) == len(paths) and (eval_dir / "no_face.csv").is_file()
    assert set(kept[FACE_DETECTOR_COLUMN]) == {detection}
    Image.new("RGB", (384, 512), (90, 90, 90)).save(paths[0])  # a changed photo: detected again, as faceless
    second, _ = FaceBoxes(args, paths, torch.device("cpu")).find(detection)
    assert second[SCORE_COLUMN].isna().iloc[0]
    pd.testing.assert_frame_equal(second.iloc[1:], first.iloc[1:])


def test_eval_boxes_of_another_detection_are_detected_again(sample_data, tmp_path, capsys):
    eval_dir = tmp_path / "eval"
    shutil.copytree(sample_data / "eval", eval_dir)
    args = inference_args_parser().parse_args(["--data_dir", str(eval_dir)])
    paths = sorted((eval_dir / "images").glob("*.jpg"))
    FaceBoxes(args, paths, torch.device("cpu")).find(Detection().signature)
    other = Detection(min_face_size=24).signature
    FaceBoxes(args, paths, torch.device("cpu")).find(other)
    assert f"detecting the {len(paths)} photos" in capsys.readouterr().out
    assert set(pd.read_csv(eval_dir / "faces.csv")[FACE_DETECTOR_COLUMN]) == {other}


def test_crop_faces_mirrors_the_tree_and_lists_photos_without_a_face(sample_data, portrait, tmp_path):
    source = tmp_path / "photos"
    (source / "people/inside").mkdir(parents=True)
    shutil.copy(portrait, source / "people/astronaut.png")
    Image.new("RGB", (300, 300), (200, 180, 160)).save(source / "people/inside/wall.jpg")
    (source / ".hidden.jpg").write_bytes(b"not a photo")
    result = run_script("crop_faces.py", source, tmp_path / "crops")
    assert result.returncode == 0, result.stderr[-2000:]
    crops = tmp_path / "crops"
    assert (crops / "people/astronaut.png").is_file()
    assert (crops / "no_face/people/inside/wall.jpg").is_file()
    with Image.open(crops / "people/astronaut.png") as crop:
        assert 100 < crop.width < 300  # the face and its margin, not the 512-pixel photo
    table = pd.read_csv(crops / "faces.csv")
    assert sorted(table["path"]) == ["people/astronaut.png", "people/inside/wall.jpg"]
    assert table.set_index("path").loc["people/inside/wall.jpg", "crop"] == "no_face/people/inside/wall.jpg"


def test_crop_faces_refuses_a_folder_that_is_not_empty(sample_data, tmp_path):
    (tmp_path / "crops").mkdir()
    (tmp_path / "crops/keep.txt").write_text("mine")
    result = run_script("crop_faces.py", sample_data / "eval/images", tmp_path / "crops")
    assert_one_line_error(result, "is not an empty folder")


def test_a_corrupt_eval_photo_is_a_one_line_error_before_detection_ends(sample_data, trained_run, tmp_path):
    eval_dir = tmp_path / "eval"
    shutil.copytree(sample_data / "eval", eval_dir)
    (eval_dir / "faces.csv").unlink(missing_ok=True)
    broken = sorted((eval_dir / "images").glob("*.jpg"))[3]
    broken.write_bytes(broken.read_bytes()[:200])
    result = run_script("inference.py", "--data_dir", eval_dir, "--model_dir", trained_run, "--output_dir",
                        tmp_path / "output", "--workers", "0")
    assert_one_line_error(result, f"cannot decode {broken}")
    assert not (tmp_path / "output").exists()


def test_crop_is_recorded_in_the_run_config(sample_data, tmp_path):
    args = training_args(sample_data, tmp_path, "--crop", "box", "--crop_box", "0.2", "0.1", "0.8", "0.6")
    assert (args.crop, args.crop_box) == ("box", [0.2, 0.1, 0.8, 0.6])
    with pytest.raises(Exception, match="--crop box needs --crop_box"):
        train.run_crop_regions(SimpleNamespace(crop="box", crop_box=None, face_margin=0.4), None)


def face(box, score=0.99):
    return SimpleNamespace(box=box, score=score, landmarks=None)


def test_the_typical_face_is_the_one_where_the_sets_faces_sit_not_the_loudest():
    usual = [face((0.35, 0.2, 0.65, 0.5))]
    crowded = [face((0.85, 0.1, 0.99, 0.25), 0.99), face((0.37, 0.22, 0.66, 0.52), 0.80)]  # a neighbour at the edge
    faces = [usual, usual, crowded, usual]
    assert box_frame(faces, "typical").iloc[2][list(BOX_COLUMNS)].tolist() == list(crowded[1].box)
    assert box_frame(faces, "score").iloc[2][list(BOX_COLUMNS)].tolist() == list(crowded[0].box)
    assert choose_face(crowded, "largest") is crowded[1]
    assert choose_face([face((0.0, 0.0, 0.2, 0.2)), face((0.4, 0.4, 0.55, 0.55), 0.5)], "central").score == 0.5
    assert box_frame([[], usual], "typical")[SCORE_COLUMN].isna().tolist() == [True, False]


def test_found_rates_per_class_warn_when_they_differ(tmp_path, capsys):
    labels = pd.DataFrame({"mask": ["correct"] * 10 + ["none"] * 10, "gender": ["male", "female"] * 10})
    found = np.array([True] * 6 + [False] * 4 + [True] * 10)
    rates = report_found_rates(found, labels, tmp_path / "faces_found.csv")
    assert rates.set_index(["task", "value"])["rate"].to_dict() == {
        ("mask", "correct"): 0.6, ("mask", "none"): 1.0, ("gender", "female"): 0.8, ("gender", "male"): 0.8}
    printed = capsys.readouterr().out
    assert "faces found by mask: correct 60%, none 100%" in printed
    assert printed.count("warning:") == 1 and "some mask values" in printed  # gender's rates agree
    assert pd.read_csv(tmp_path / "faces_found.csv").equals(rates)


def test_a_detection_signature_round_trips_and_a_bad_one_is_one_line():
    detection = Detection("yunet+mtcnn", 24, "largest")
    assert Detection.from_signature(detection.signature) == detection
    for bad in ("haar:40:typical:upright", "mtcnn:x:typical:upright", "mtcnn:40", "mtcnn:40:loudest:upright"):
        with pytest.raises(UserError, match="is not detector:min_face_size:face_choice"):
            Detection.from_signature(bad)


def test_training_records_how_its_faces_were_found(trained_run, sample_data):
    folds = pd.read_csv(sample_data / "train/folds.csv")
    config = json.loads((trained_run / "config.json").read_text())
    assert config["face_detection"] == folds[FACE_DETECTOR_COLUMN].iloc[0] == Detection().signature
    assert (sample_data / "train/faces_found.csv").is_file()
