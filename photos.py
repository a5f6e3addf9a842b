"""Photos from files: finding them, decoding them (the one decode path), and which pixels of a photo a crop shows.

Not a script: the datasets, face detection, crop_faces.py, stream.py and the server decode through it.

A crop is a region of the photo as fractions of its width and height (faces.crop_regions makes one per photo);
crop_box_pixels turns it into the pixel box that is cut out and resized to the model's input: the region widened or
heightened to the output's aspect ratio (never squashed), scaled by `zoom` (training decodes a larger view for its
random crops to act in), shrunk to fit the photo if it is larger, and shifted inside it.
"""
import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cli import UserError, first_line

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
DECODING = "upright"  # what decode_image gives, recorded with decoded pixels: the photo turned as its EXIF says


def crop_box_pixels(region, photo_size, out_size, zoom=1.0):
    """The pixel box (left, top, right, bottom) of a photo of `photo_size` = (width, height) that shows `region`
    (fractions) at the aspect ratio of `out_size` = (height, width), scaled by `zoom` and kept inside the photo:
    0 <= left < right <= width and 0 <= top < bottom <= height, exactly, whatever the rounding."""
    photo_width, photo_height = photo_size
    x1, y1, x2, y2 = np.asarray(region, dtype=float) * [photo_width, photo_height, photo_width, photo_height]
    width, height = (x2 - x1) * zoom, (y2 - y1) * zoom
    aspect = out_size[1] / out_size[0]
    width, height = max(width, height * aspect), max(height, width / aspect)
    fit = min(1.0, photo_width / width, photo_height / height)
    # a box that fills the photo in one direction must not round past its edges (the fit multiplies in an error)
    width, height = min(width * fit, photo_width), min(height * fit, photo_height)
    left = min(max((x1 + x2 - width) / 2, 0.0), photo_width - width)
    top = min(max((y1 + y2 - height) / 2, 0.0), photo_height - height)
    return left, top, min(left + width, photo_width), min(top + height, photo_height)


def find_photos(folder):
    """The photos (.jpg, .jpeg, .png) under `folder` at any depth, sorted by path, hidden files and folders left
    out."""
    folder = Path(folder)
    return sorted(path for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS
                  and not any(part.startswith(".") for part in path.relative_to(folder).parts))


def read_image(path):
    """The photo at `path` as an RGB PIL image, decoded as decode_image does."""
    return Image.fromarray(decode_image(path))


def to_rgb(photo):
    """A PIL image of any mode as 8-bit RGB: 16- and 32-bit integer pixels scaled from 0-65535 and float pixels from
    0-1 (PIL would clip them to white or black; values outside are refused), a palette's transparency dropped as
    PIL asks (through RGBA), every other mode converted by PIL."""
    if photo.mode.startswith("I") or photo.mode == "F":
        pixels, full_scale = np.asarray(photo, dtype=np.float64), 1.0 if photo.mode == "F" else 65535.0
        if not (np.isfinite(pixels).all() and pixels.min() >= 0 and pixels.max() <= full_scale):
            raise ValueError(f"its {photo.mode} pixels are outside 0-{full_scale:g}")
        return Image.fromarray(np.round(pixels * (255 / full_scale)).astype(np.uint8)).convert("RGB")
    if photo.mode == "P" and "transparency" in photo.info:
        photo = photo.convert("RGBA")
    return photo.convert("RGB")


# EXIF orientation (tag 274): how the stored pixels turn into the photo as it was taken
ORIENTATION_TAG = 0x0112
TRANSPOSES = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
SWAPS_SIDES = {5, 6, 7, 8}  # the orientations that turn the stored photo by a quarter


def orientation(photo):
    """A PIL photo's EXIF orientation, 1 (as stored) when it has none or an invalid one."""
    try:
        value = photo.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 -- a malformed EXIF block orients nothing; the pixels may still decode
        return 1
    return value if value in TRANSPOSES else 1


def decode_problem(error):
    """What went wrong in PIL, in one line that names no Python object (PIL's 'cannot identify image file' names
    an open file by its repr)."""
    if isinstance(error, UnidentifiedImageError):
        return "not a photo in a format PIL reads (JPEG, PNG, ...)"
    return first_line(error)


def upright_size(path):
    """(width, height) of the photo at `path` as decode_image gives it (turned as its EXIF says), without decoding
    its pixels."""
    try:
        with Image.open(path) as photo:
            return photo.size[::-1] if orientation(photo) in SWAPS_SIDES else photo.size
    except Exception as error:  # noqa: BLE001 -- PIL on bytes from outside: every failure is the file's
        raise UserError(f"cannot decode {source_name(path)}: {decode_problem(error)}") from None


def source_name(source):
    """How an error names what was decoded: the path, or an open file's name."""
    return str(getattr(source, "name", None) or "the uploaded photo") if hasattr(source, "read") else str(source)


def decode_image(source, size=None, region=None, zoom=1.0):
    """The photo at `source` (a path, or a binary file open for reading) as a uint8 (H, W, 3) array, upright as its
    EXIF orientation says, resized to `size` = (height, width) unless None; with a `region` (fractions of the
    upright photo, see faces.crop_regions), only the box crop_box_pixels makes of it.

    The one place photos are decoded: any failure of PIL on the file's bytes (truncation, a decompression bomb,
    a malformed header, a mode it cannot convert) is the one-line error naming the photo."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # a likely bomb is refused, not decoded
            with Image.open(source) as photo:
                turn = orientation(photo)
                stored = photo.size
                upright = stored[::-1] if turn in SWAPS_SIDES else stored
                box = None if region is None else crop_box_pixels(region, upright, size, zoom)
                if size is not None:
                    # A JPEG decodes straight at 1/2, 1/4 or 1/8 scale when that still covers `size`: several times
                    # faster. The scale is asked of the stored photo, whose sides a quarter turn swaps.
                    shown = upright if box is None else (box[2] - box[0], box[3] - box[1])
                    wanted = (math.ceil(upright[0] * size[1] / shown[0]), math.ceil(upright[1] * size[0] / shown[1]))
                    photo.draft("RGB", wanted[::-1] if turn in SWAPS_SIDES else wanted)
                image = to_rgb(photo)
    except Exception as error:  # noqa: BLE001 -- only PIL runs here, on bytes from outside: every failure is the file's
        raise UserError(f"cannot decode {source_name(source)}: {decode_problem(error)}") from None
    if turn != 1:
        image = image.transpose(TRANSPOSES[turn])
    if box is not None and image.size != upright:  # the box in the reduced photo's pixels, kept inside them
        scale_x, scale_y = image.width / upright[0], image.height / upright[1]
        box = (box[0] * scale_x, box[1] * scale_y, min(box[2] * scale_x, image.width),
               min(box[3] * scale_y, image.height))
    if size is not None and (box is not None or image.size != (size[1], size[0])):
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR, box=box)
    return np.array(image)


def crop_pixels(pixels, size, region):
    """A uint8 (H, W, 3) array already decoded (a video frame) cut to `region` and resized to `size` as decode_image
    cuts and resizes a photo."""
    image = Image.fromarray(pixels)
    box = crop_box_pixels(region, image.size, size)
    return np.array(image.resize((size[1], size[0]), Image.Resampling.BILINEAR, box=box))
