"""photos.py: the one decode path turns photos upright as their EXIF says, and the crop box never leaves the photo."""
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from skimage.data import astronaut

from photos import ORIENTATION_TAG, crop_box_pixels, decode_image

# How a camera stores an upright photo under each EXIF orientation: the inverse of the turn that shows it upright.
STORED_AS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
             5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
             8: Image.Transpose.ROTATE_270}
REGION = (0.3, 0.1, 0.7, 0.4)  # about the astronaut's face


def stored_with_orientation(upright, orientation, path):
    """`upright` saved as a camera would store it under `orientation`: pixels turned, the EXIF tag saying how."""
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    upright.transpose(STORED_AS[orientation]).save(path, quality=95, exif=exif)
    return path


@pytest.fixture(scope="module")
def upright(tmp_path_factory):
    path = tmp_path_factory.mktemp("upright") / "upright.png"
    Image.fromarray(astronaut()).resize((384, 512)).save(path)
    return path


@pytest.mark.parametrize("orientation", sorted(STORED_AS))
def test_a_photo_decodes_upright_whatever_its_exif_orientation(upright, orientation, tmp_path):
    stored = stored_with_orientation(Image.open(upright), orientation, tmp_path / "stored.jpg")
    assert Image.open(stored).size != (384, 512) or orientation < 5  # a quarter turn is stored on its side
    expected = decode_image(upright).astype(int)
    assert np.abs(decode_image(stored).astype(int) - expected).mean() < 4  # JPEG's loss only
    crop, expected_crop = decode_image(stored, (64, 48), REGION), decode_image(upright, (64, 48), REGION)
    assert crop.shape == (64, 48, 3)
    assert np.abs(crop.astype(int) - expected_crop.astype(int)).mean() < 4


def test_an_open_file_decodes_as_its_path_does(upright):
    with open(upright, "rb") as photo:
        np.testing.assert_array_equal(decode_image(photo, (64, 48), REGION), decode_image(upright, (64, 48), REGION))
    with pytest.raises(Exception, match="cannot decode the uploaded photo"):
        decode_image(io.BytesIO(b"not a photo"))


def test_a_face_that_fills_the_photo_decodes(tmp_path):
    path = tmp_path / "close.png"
    Image.new("RGB", (97, 131), (90, 60, 40)).save(path)
    for margin in (0.0, 0.4, 1.0):  # the region grown past the photo on every side
        assert decode_image(path, (128, 96), (-margin, -margin, 1 + margin, 1 + margin)).shape == (128, 96, 3)


@settings(max_examples=300, deadline=None)
@given(x1=st.floats(-1, 1), y1=st.floats(-1, 1), width=st.floats(1e-3, 3), height=st.floats(1e-3, 3),
       photo=st.tuples(st.integers(1, 4000), st.integers(1, 4000)),
       out=st.tuples(st.integers(1, 512), st.integers(1, 512)), zoom=st.floats(0.5, 2))
def test_the_crop_box_lies_inside_the_photo(x1, y1, width, height, photo, out, zoom):
    left, top, right, bottom = crop_box_pixels((x1, y1, x1 + width, y1 + height), photo, out, zoom)
    assert 0 <= left < right <= photo[0] and 0 <= top < bottom <= photo[1]
