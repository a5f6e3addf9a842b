"""Real photographs (from registry packages, real_assets.py): the detector and the crop on real faces."""
import pytest

import real_assets
from cli import UserError
from faces import detect_faces

# The six faces of insightface's t1.jpg (1280 x 886), their centres read off the photo by eye.
T1_FACE_CENTRES = [(107, 333), (319, 207), (520, 336), (793, 412), (960, 131), (1180, 336)]


def test_mtcnn_finds_the_six_faces_of_t1_each_box_on_a_face(real_photos):
    [faces] = detect_faces([real_photos["t1"]])
    assert len(faces) == 6
    width, height = 1280, 886
    for x, y in T1_FACE_CENTRES:
        holding = [face for face in faces if face.box[0] * width < x < face.box[2] * width
                   and face.box[1] * height < y < face.box[3] * height]
        assert len(holding) == 1, (x, y)
        box_width = (holding[0].box[2] - holding[0].box[0]) * width
        assert 60 < box_width < 160  # a face, not a part of one nor a whole person
    assert all(face.score > 0.95 for face in faces)


def test_an_asset_that_is_not_the_expected_file_is_refused(tmp_path):
    with pytest.raises(UserError, match="not the file expected"):
        real_assets.write_checked(tmp_path / "t1.jpg", b"another photo", "0" * 64, "t1.jpg of insightface==2.1")
    assert not (tmp_path / "t1.jpg").exists()
