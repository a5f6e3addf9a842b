"""Real photographs (from registry packages, real_assets.py): the detector and the crop on real faces, and photos
stored sideways with an EXIF orientation seen upright by every path that detects or crops."""
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import real_assets
from cli import UserError
from conftest import run_script
from faces import detect_faces, kept_boxes
from photos import ORIENTATION_TAG, decode_image

# The six faces of insightface's t1.jpg (1280 x 886), their centres read off the photo by eye.
T1_FACE_CENTRES = [(107, 333), (319, 207), (520, 336), (793, 412), (960, 131), (1180, 336)]


@pytest.mark.parametrize("name, min_face_size", [("mtcnn", 40), ("yunet", 20), ("yunet+mtcnn", 20)])
def test_each_detector_finds_the_six_faces_of_t1_each_box_on_a_face(real_photos, name, min_face_size):
    [faces] = detect_faces([real_photos["t1"]], min_face_size=min_face_size, name=name)
    assert len(faces) == 6
    width, height = 1280, 886
    for x, y in T1_FACE_CENTRES:
        holding = [face for face in faces if face.box[0] * width < x < face.box[2] * width
                   and face.box[1] * height < y < face.box[3] * height]
        assert len(holding) == 1, (x, y)
        box_width = (holding[0].box[2] - holding[0].box[0]) * width
        assert 60 < box_width < 160  # a face, not a part of one nor a whole person
    assert all(face.score > 0.85 for face in faces)


def test_an_asset_that_is_not_the_expected_file_is_refused(tmp_path):
    with pytest.raises(UserError, match="not the file expected"):
        real_assets.write_checked(tmp_path / "t1.jpg", b"another photo", "0" * 64, "t1.jpg of insightface==2.1")
    assert not (tmp_path / "t1.jpg").exists()


@pytest.fixture(scope="module")
def turned(real_photos, tmp_path_factory):
    """A folder of two photos of one real face (the astronaut at 384 x 512): upright.jpg, and sideways.jpg stored
    turned a quarter with the EXIF orientation (6) that turns it back, as phones store portraits."""
    folder = tmp_path_factory.mktemp("turned") / "photos"
    folder.mkdir()
    upright = Image.open(real_photos["astronaut"]).convert("RGB").resize((384, 512))
    upright.save(folder / "upright.jpg", quality=95)
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(folder / "sideways.jpg", quality=95, exif=exif)
    assert Image.open(folder / "sideways.jpg").size == (512, 384)
    return folder


def assert_same_boxes(boxes, tolerance=0.02):
    """Rows of (x1, y1, x2, y2) fractions that agree within `tolerance` of the photo."""
    boxes = np.asarray(boxes, dtype=float)
    assert not np.isnan(boxes).any()
    assert np.abs(boxes - boxes[0]).max() < tolerance, boxes


def test_a_sideways_photo_is_detected_and_cropped_as_the_upright_one(turned):
    paths = [turned / "upright.jpg", turned / "sideways.jpg"]
    faces = [found[0] for found in detect_faces(paths)]
    assert_same_boxes([face.box for face in faces])
    crops = [decode_image(path, (64, 48), face.box).astype(int) for path, face in zip(paths, faces)]
    assert np.abs(crops[0] - crops[1]).mean() < 6


def test_kept_eval_boxes_follow_the_upright_photo(turned, tmp_path):
    boxes = kept_boxes([turned / "upright.jpg", turned / "sideways.jpg"], ["upright.jpg", "sideways.jpg"],
                       tmp_path / "faces.csv")
    assert_same_boxes(boxes.iloc[:, :4])


def test_preprocess_keeps_the_upright_boxes_of_a_class_folder(turned, tmp_path):
    for name in ("a", "b"):
        shutil.copytree(turned, tmp_path / "data" / name)
    result = run_script("preprocess.py", "--data_dir", tmp_path / "data", "--layout", "folders", "--kfold", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    folds = pd.read_csv(tmp_path / "folds.csv")
    assert sorted(folds["path"]) == ["a/sideways.jpg", "a/upright.jpg", "b/sideways.jpg", "b/upright.jpg"]
    assert_same_boxes(folds[["face_x1", "face_y1", "face_x2", "face_y2"]])


def test_crop_faces_writes_the_same_crop_of_a_sideways_photo(turned, tmp_path):
    result = run_script("crop_faces.py", turned, tmp_path / "crops", "--size", "128", "96")
    assert result.returncode == 0, result.stderr[-2000:]
    crops = [np.asarray(Image.open(tmp_path / "crops" / name), dtype=int) for name in ("upright.jpg", "sideways.jpg")]
    assert crops[0].shape == crops[1].shape == (128, 96, 3)
    assert np.abs(crops[0] - crops[1]).mean() < 6


def test_stream_sees_a_sideways_photo_of_a_folder_upright(turned, trained_run, tmp_path):
    result = run_script("stream.py", turned, "--model_dir", trained_run, "--output_dir", tmp_path, "--fps", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = pd.read_csv(tmp_path / "faces.csv").sort_values("frame")
    assert list(rows["frame"]) == [0, 1]  # one face in each photo
    assert_same_boxes(rows[["x1", "y1", "x2", "y2"]].to_numpy() / [384, 512, 384, 512])
