"""mask_faces.py on real photos: masks and sunglasses drawn where the landmarks say, following the face's roll, and
data sets in both layouts that preprocess.py reads, deterministic under --seed.

The faces of t1.jpg (six adults) and the astronaut are detected once, by the module's first run of the script; the
other runs and the drawing tests read its faces.csv."""
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import mask_faces
import masks
from conftest import assert_one_line_error, run_script
from faces import detect_faces
from photos import decode_image

SEED = ["--seed", "3"]


@pytest.fixture(scope="module")
def photos_dir(real_photos, tmp_path_factory):
    folder = tmp_path_factory.mktemp("people")
    for stem in ("t1", "astronaut"):
        shutil.copy(real_photos[stem], folder / real_photos[stem].name)
    return folder


@pytest.fixture(scope="module")
def rendered(photos_dir, tmp_path_factory):
    """The three classes, one render per person and class, two of the seven people held out: detects the faces."""
    dst = tmp_path_factory.mktemp("rendered") / "set"
    result = run_script("mask_faces.py", photos_dir, dst, "--renders", "1", "--eval_people", "2", "--min_face_size",
                        "64", *SEED)  # the faces are 90-110 pixels wide: the detector's pyramid starts smaller
    assert result.returncode == 0, result.stderr[-2000:]
    return dst


@pytest.fixture(scope="module")
def faces(rendered, photos_dir):
    """{(photo, face): (the photo's float pixels, its landmarks in pixels, Head)} of every person, from the run's
    faces.csv."""
    table = pd.read_csv(rendered / "faces.csv").dropna(subset=["face"])
    pixels = {name: decode_image(photos_dir / name).astype(np.float32) for name in table["photo"].unique()}
    found = {}
    for row in table.itertuples(index=False):
        photo = pixels[row.photo]
        landmarks = np.array([getattr(row, column) for column in mask_faces.LANDMARK_COLUMNS]).reshape(5, 2)
        found[(row.photo, int(row.face))] = (photo, landmarks * photo.shape[1::-1],
                                             masks.head_of(landmarks, photo.shape[1::-1]))
    return found


def change_near(before, after, head, point, radius=0.12):
    """The mean absolute change of the pixels within `radius` eye distances of the photo point (x, y)."""
    reach = radius * 2 * head.unit
    x0, y0 = max(int(point[0] - reach), 0), max(int(point[1] - reach), 0)
    rows, columns = np.mgrid[y0:int(point[1] + reach) + 2, x0:int(point[0] + reach) + 2]
    near = np.hypot(columns + 0.5 - point[0], rows + 0.5 - point[1]) < reach
    return float(np.abs(after[rows, columns] - before[rows, columns])[near].mean())


def draw(photo, head, variant, kind, seed):
    """The photo with a mask of `kind` drawn on: its shape, shading and edges as drawn, its colour a saturated blue
    that no skin has, so that its pixels tell where it is."""
    rng = np.random.default_rng(seed)
    style = masks.random_style(rng, variant, kinds=(kind,))
    style.texture = np.broadcast_to(np.float32([0.1, 0.3, 0.9]), style.texture.shape)
    return masks.draw_mask(photo, head, style, rng)[0]


def test_each_variant_covers_the_landmarks_it_should_on_every_face(faces):
    """On each of the seven faces, with every kind of mask, at the detector's landmarks: a correct mask hides the
    nose tip and both mouth corners; one under the nose shows the nose tip and hides the mouth; one on the chin shows
    the nose tip and the mouth."""
    for (name, number), (photo, landmarks, head) in faces.items():
        nose, mouth_corners = landmarks[2], landmarks[3:]
        for seed, kind in enumerate(masks.KINDS):
            correct = draw(photo, head, "correct", kind, seed)
            nose_out = draw(photo, head, "nose_out", kind, seed)
            chin = draw(photo, head, "chin", kind, seed)
            where = f"{name} face {number}, {kind}"
            assert change_near(photo, correct, head, nose) > 30, where
            assert change_near(photo, nose_out, head, nose, radius=0.08) < 3, where
            assert change_near(photo, chin, head, nose) < 1, where
            for corner in mouth_corners:
                assert change_near(photo, correct, head, corner) > 30, where
                assert change_near(photo, nose_out, head, corner, radius=0.08) > 30, where
                assert change_near(photo, chin, head, corner) < 3, where


def test_sunglasses_cover_both_eyes_and_leave_the_mouth(faces):
    for (name, number), (photo, landmarks, head) in faces.items():
        rng = np.random.default_rng(number)
        worn, coverage = masks.draw_sunglasses(photo, head, masks.random_glasses(rng), rng)
        for x, y in landmarks[:2]:
            assert change_near(photo, worn, head, (x, y)) > 10, (name, number)
            assert coverage[int(y), int(x)] > 0.9, (name, number)
            assert masks.luminance(worn[int(y), int(x)]) < 110, (name, number)
        for corner in landmarks[3:]:
            assert change_near(photo, worn, head, corner) < 1, (name, number)


def orientation(changed):
    """Degrees, counter-clockwise, of the major axis of the pixels `changed` (a boolean image)."""
    rows, columns = np.nonzero(changed)
    x, y = columns - columns.mean(), rows - rows.mean()
    return math.degrees(0.5 * math.atan2(-2 * (x * y).mean(), (x * x).mean() - (y * y).mean()))


def test_a_rolled_face_gets_a_rolled_mask(faces):
    """The astronaut turned by 20 degrees: the face the detector finds on the turned photo gets its mask turned by as
    much, by its pixels."""
    photo, _, head = faces[("astronaut.png", 0)]
    turned_image = Image.fromarray(photo.astype(np.uint8)).rotate(20, resample=Image.Resampling.BICUBIC, expand=True,
                                                                  fillcolor=(128, 128, 128))
    found = detect_faces_in(turned_image)[0]  # the most confident
    turned = (np.asarray(turned_image, dtype=np.float32), masks.head_of(found.landmarks, turned_image.size))
    angles = []
    for pixels, face in ((photo, head), turned):
        rng = np.random.default_rng(5)
        drawn, coverage = masks.draw_mask(pixels, face, masks.random_style(rng, "correct", kinds=("surgical",)), rng)
        changed = np.abs(drawn - pixels).max(axis=2) > 30
        angles.append((orientation(changed), orientation(coverage > 0.5), face.roll))
    (mask_upright, cover_upright, roll_upright), (mask_turned, cover_turned, roll_turned) = angles
    assert abs(roll_turned - roll_upright - 20) < 4
    assert abs(cover_turned - cover_upright - 20) < 4
    assert abs(mask_turned - mask_upright - 20) < 5


def detect_faces_in(image):
    """The faces the detector finds in a PIL image, written out as detect_faces reads photos from files."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "photo.png"
        image.save(path)
        return detect_faces([path], min_face_size=64, name="mtcnn")[0]  # as mask_faces.py detects


def test_the_csv_lists_every_photo_written_and_every_face_found(rendered):
    renders = pd.read_csv(rendered / "renders.csv")
    written = sorted(str(path.relative_to(rendered)) for path in rendered.rglob("*.jpg"))
    assert sorted(renders["path"]) == written
    assert len(written) == 7 * 3
    for column in ("person", "photo", "face_x1", "face_y2", "mask_kind", "mask_colour", "variant", "framing",
                   "crop_x1"):
        assert column in renders.columns
    assert set(renders.loc[renders["class"] == "correct", "variant"]) == {"correct"}
    assert set(renders.loc[renders["class"] == "incorrect", "variant"]) <= {"nose_out", "chin"}
    assert set(renders.loc[renders["class"] == "none", "variant"]) == {"none"}
    assert renders.loc[renders["class"] != "none", "mask_kind"].isin(masks.KINDS).all()
    faces = pd.read_csv(rendered / "faces.csv")
    assert faces["person"].notna().sum() == 7 and sorted(faces["person"].dropna()) == list(range(1, 8))
    people = pd.read_csv(rendered / "people.csv")
    assert (people["split"] == "eval").sum() == 2
    assert (rendered / "contact_sheet.png").is_file()


def test_portraits_show_the_face_at_a_fifth_to_a_third_of_their_width(rendered):
    renders = pd.read_csv(rendered / "renders.csv")
    group = renders[renders["photo"] == "t1.jpg"]  # the astronaut's square photo cannot give a 3:4 box that wide
    share = (group["face_x2"] - group["face_x1"]) * 1280 / (group["crop_x2"] - group["crop_x1"])
    assert share.between(0.19, 0.36).all(), share.tolist()
    assert np.allclose(group["output_face_x2"] - group["output_face_x1"], share, atol=1e-3)
    centre = (group["output_face_y1"] + group["output_face_y2"]) / 2
    assert centre.between(0.25, 0.45).all()  # the upper middle
    aspect = (group["crop_y2"] - group["crop_y1"]) / (group["crop_x2"] - group["crop_x1"])
    assert np.allclose(aspect, 4 / 3, atol=0.01)
    with Image.open(rendered / group["path"].iloc[0]) as photo:
        assert photo.size == (384, 512)


def test_class_folders_are_what_preprocess_reads_and_no_person_is_on_both_sides(rendered, tmp_path):
    output = tmp_path / "folds.csv"
    result = run_script("preprocess.py", "--data_dir", rendered / "train", "--group_regex", r"^(\d+)_", "--kfold", "2",
                        "--faces", "off", "--output", output)
    assert result.returncode == 0, result.stderr[-2000:]
    folds = pd.read_csv(output, dtype={"group": str})
    assert sorted(folds["class"].unique()) == ["correct", "incorrect", "none"]
    assert folds.groupby("group")["fold"].nunique().max() == 1
    assert folds["group"].nunique() == 5
    held_out = {path.name.split("_")[0] for path in (rendered / "eval").rglob("*.jpg")}
    assert len(held_out) == 2 and not held_out & set(folds["group"])


def test_the_competition_layout_is_what_preprocess_reads(rendered, photos_dir, tmp_path):
    people = pd.read_csv(rendered / "people.csv")
    labels = people.assign(gender=np.where(people["person"] % 2, "female", "male"), age=20 + 7 * people["person"])
    labels[["photo", "face", "gender", "age"]].to_csv(tmp_path / "labels.csv", index=False)
    dst = tmp_path / "competition"
    result = run_script("mask_faces.py", photos_dir, dst, "--layout", "competition", "--labels",
                        tmp_path / "labels.csv", "--eval_people", "2", "--faces_csv", rendered / "faces.csv", *SEED)
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_script("preprocess.py", "--data_dir", dst / "train/images", "--kfold", "2", "--faces", "off")
    assert result.returncode == 0, result.stderr[-2000:]
    folds = pd.read_csv(dst / "train/folds.csv", dtype={"id": str})
    assert len(folds) == 5 * 7 and folds["id"].nunique() == 5
    assert (folds.groupby("mask_label").size() == [25, 5, 5]).all()
    truth = pd.read_csv(dst / "gt/gt.csv")
    assert len(truth) == 2 * 7 and (dst / "eval/info.csv").is_file()
    assert sorted(path.name for path in (dst / "eval/images").iterdir()) == sorted(truth["ImageID"])
    assert set(truth["ans"] // 6) == {0, 1, 2}  # mask, incorrect and no mask photos of the held-out people
    alone = tmp_path / "alone"  # one person: the astronaut
    alone.mkdir()
    shutil.copy(photos_dir / "astronaut.png", alone)
    detected = pd.read_csv(rendered / "faces.csv")
    detected[detected["photo"] == "astronaut.png"].to_csv(tmp_path / "faces.csv", index=False)
    unlabelled = run_script("mask_faces.py", alone, tmp_path / "unlabelled", "--layout", "competition",
                            "--unlabelled", "--faces_csv", tmp_path / "faces.csv", "--mask_kinds", "cloth")
    assert unlabelled.returncode == 0, unlabelled.stderr[-2000:]
    names = [path.name for path in (tmp_path / "unlabelled/train/images").iterdir()]
    assert names == ["0001_male_unlabelled_30"]
    assert sorted(path.stem for path in (tmp_path / "unlabelled/train/images" / names[0]).iterdir()) == sorted(
        ["mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal"])


def test_the_same_seed_gives_identical_files_and_another_seed_other_styles(rendered, photos_dir, tmp_path):
    def render(folder, seed):
        result = run_script("mask_faces.py", photos_dir, tmp_path / folder, "--classes", "correct,face_sunglasses",
                            "--renders", "1", "--faces_csv", rendered / "faces.csv", "--framing", "face", "--seed",
                            seed)
        assert result.returncode == 0, result.stderr[-2000:]
        return {str(path.relative_to(tmp_path / folder)): path.read_bytes()
                for path in sorted((tmp_path / folder).rglob("*")) if path.is_file() and path.suffix != ".png"}

    first, again, other = render("first", 3), render("again", 3), render("other", 4)
    assert first == again
    first_styles = pd.read_csv(tmp_path / "first/renders.csv")
    other_styles = pd.read_csv(tmp_path / "other/renders.csv")
    columns = ["mask_kind", "mask_colour", "sunglasses"]
    assert (first_styles[columns].fillna("") != other_styles[columns].fillna("")).any(axis=1).mean() > 0.5
    assert first.keys() == other.keys() and all(first[name] != other[name] for name in first if name.endswith("jpg"))


@pytest.mark.parametrize("flags, message", [
    (["--classes", "correct,helmet"], "unknown class 'helmet'"),
    (["--classes", "correct"], "two or more different classes"),
    (["--layout", "competition"], "needs every person's gender and age"),
    (["--mask_kinds", "bandana"], "--mask_kinds 'bandana'"),
    (["--eval_people", "7"], "leaves none to train on"),
    (["--unlabelled"], "--labels and --unlabelled name the people of --layout competition"),
])
def test_bad_requests_are_one_line_errors(rendered, photos_dir, tmp_path, flags, message):
    result = run_script("mask_faces.py", photos_dir, tmp_path / "out", "--faces_csv", rendered / "faces.csv", *flags)
    assert_one_line_error(result, message)


def test_labels_that_miss_a_person_or_name_no_face_are_one_line_errors(rendered, photos_dir, tmp_path):
    people = pd.read_csv(rendered / "people.csv").assign(gender="female", age=40)
    people.iloc[1:][["photo", "face", "gender", "age"]].to_csv(tmp_path / "short.csv", index=False)
    wrong = people.assign(face=people["face"] + 6)
    wrong[["photo", "face", "gender", "age"]].to_csv(tmp_path / "wrong.csv", index=False)
    for labels, message in (("short.csv", "has no gender and age for 1 of the 7 people"),
                            ("wrong.csv", "no person is face 6 of 'astronaut.png'")):
        result = run_script("mask_faces.py", photos_dir, tmp_path / "out", "--layout", "competition", "--labels",
                            tmp_path / labels, "--faces_csv", rendered / "faces.csv")
        assert_one_line_error(result, message)


def test_an_earlier_set_is_kept_unless_overwrite_and_dst_may_not_be_inside_src(rendered, photos_dir):
    assert_one_line_error(run_script("mask_faces.py", photos_dir, rendered, "--faces_csv", rendered / "faces.csv"),
                          "already holds a data set")
    assert_one_line_error(run_script("mask_faces.py", photos_dir, photos_dir / "out"), "overlap")


def test_benchmark_faces_scores_each_detector_on_the_rendered_faces(rendered):
    result = run_script("benchmark_faces.py", rendered / "train", "--detectors", "mtcnn:64", "yunet:20")
    assert_one_line_error(result, "has no renders.csv")
    result = run_script("benchmark_faces.py", rendered, "--detectors", "mtcnn:64", "yunet:20")
    assert result.returncode == 0, result.stderr[-2000:]
    table = pd.read_csv(rendered / "benchmark_faces.csv").set_index("detector")
    assert list(table.index) == ["mtcnn:64", "yunet:20"]
    assert (table["found none"] == 1).all()  # every unmasked face found, its box on the true face
    rates = table[["found correct", "found incorrect", "found none"]]
    np.testing.assert_allclose(table["gap"], rates.max(axis=1) - rates.min(axis=1))
    assert (table["mean IoU found"] > 0.6).all() and "| yunet:20 |" in result.stdout
