import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cli import UserError
from dataset import (NUM_CLASSES, AgeLabel, DecodedCache, age_band, compose_probabilities, decode_label,
                     encode_label, parse_person_folder, task_marginals, training_targets)
from photos import decode_image


def test_encode_decode_round_trip_covers_all_18_classes():
    labels = [encode_label(m, g, a) for m in range(3) for g in range(2) for a in range(3)]
    assert sorted(labels) == list(range(NUM_CLASSES))
    for label in range(NUM_CLASSES):
        assert encode_label(*decode_label(label)) == label


def test_encoding_matches_the_competition_table():
    assert encode_label(0, 0, 0) == 0          # wear, male, <30
    assert encode_label(1, 1, 2) == 11         # incorrect, female, 60+
    assert encode_label(2, 0, 1) == 13         # not worn, male, 30-59
    assert decode_label(np.array([17]))[0][0] == 2


def test_age_bands_and_the_old_age_boundary():
    assert list(age_band([18, 29, 30, 59, 60])) == [0, 0, 1, 1, 2]
    assert list(age_band([57, 58, 60], old_age=58)) == [1, 2, 2]
    assert age_band(60) == AgeLabel.OLD


def test_composed_probabilities_are_the_product_of_the_tasks():
    mask = torch.tensor([[0.7, 0.2, 0.1]])
    gender = torch.tensor([[0.4, 0.6]])
    age = torch.tensor([[0.5, 0.3, 0.2]])
    probs = compose_probabilities(mask, gender, age)
    assert probs.shape == (1, NUM_CLASSES)
    assert probs[0, encode_label(1, 1, 2)].item() == pytest.approx(0.2 * 0.6 * 0.2)
    assert probs.sum().item() == pytest.approx(1.0)
    for composed, original in zip(task_marginals(probs), (mask, gender, age)):
        assert torch.allclose(composed, original)


@pytest.mark.parametrize("name, problem", [
    ("000001_female_Asian", "not {id}_{gender}_{race}_{age}"),
    ("000001_robot_Asian_45", "unknown gender"),
    ("000001_male_Asian_forty", "not a number"),
    ("000001_male_Asian_450", "out of range"),
])
def test_malformed_person_folders_say_what_is_wrong(name, problem):
    with pytest.raises(ValueError, match=problem.replace("{", r"\{").replace("}", r"\}")):
        parse_person_folder(name)


def test_person_folder_parses():
    assert parse_person_folder("006959_Male_Asian_19") == {"id": "006959", "gender": "male", "race": "Asian", "age": 19}


def test_training_targets_per_task():
    frame = pd.DataFrame({"mask_label": [0, 2], "gender_label": [1, 0], "age": [25, 58]})
    assert list(training_targets(frame)) == [encode_label(0, 1, 0), encode_label(2, 0, 1)]
    assert list(training_targets(frame, "mask")) == [0, 2]
    assert list(training_targets(frame, "age", old_age=58)) == [0, 2]


@pytest.mark.parametrize("pixels, suffix", [
    (np.array([[0, 257, 32896, 65535]], dtype=np.uint16), ".png"),   # I;16: 16-bit grey
    (np.array([[0, 257, 32896, 65535]], dtype=np.int32), ".tiff"),   # I: 32-bit integers, 16-bit range
    (np.array([[0, 1 / 255, 128 / 255, 1]], dtype=np.float32), ".tiff"),  # F: floats from 0 to 1
])
def test_deep_photos_decode_scaled_to_8_bits_not_clipped(tmp_path, pixels, suffix):
    Image.fromarray(pixels).save(tmp_path / f"photo{suffix}")
    decoded = decode_image(tmp_path / f"photo{suffix}")
    assert decoded.dtype == np.uint8 and decoded.shape == (1, 4, 3)
    assert decoded[0, :, 0].tolist() == [0, 1, 128, 255] and (decoded == decoded[..., :1]).all()


def test_float_pixels_outside_0_to_1_are_refused_naming_the_photo(tmp_path):
    Image.fromarray(np.array([[0, 2.5]], dtype=np.float32)).save(tmp_path / "photo.tiff")
    with pytest.raises(UserError, match=f"cannot decode {tmp_path / 'photo.tiff'}: its F pixels are outside 0-1"):
        decode_image(tmp_path / "photo.tiff")


def test_a_palette_with_transparency_decodes_to_its_colours(tmp_path):
    photo = Image.new("P", (2, 1))
    photo.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    photo.putpixel((1, 0), 1)
    photo.save(tmp_path / "photo.png", transparency=0)
    assert decode_image(tmp_path / "photo.png")[0].tolist() == [[0, 0, 0], [200, 100, 50]]


@pytest.mark.parametrize("limit", [30, 60])  # over twice the limit PIL raises an error, over it only warns
def test_a_decompression_bomb_is_the_one_line_error(tmp_path, monkeypatch, limit):
    Image.new("RGB", (10, 10)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(UserError, match="cannot decode .*bomb.png: Image size"):
        decode_image(tmp_path / "bomb.png")


@pytest.mark.parametrize("planted, refused", [(".lock", True), (".u8", False), (".json", False)])
def test_a_symlink_planted_in_the_cache_never_writes_to_its_target(tmp_path, planted, refused):
    photos = []
    for index in range(2):
        Image.new("RGB", (8, 8), (index * 100, 0, 0)).save(tmp_path / f"photo{index}.png")
        photos.append(tmp_path / f"photo{index}.png")
    built = DecodedCache(photos, (4, 4), "disk", tmp_path / ".cache")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    built.file.with_suffix(planted).unlink()
    built.file.with_suffix(planted).symlink_to(victim)
    Image.new("RGB", (8, 8), (0, 200, 0)).save(photos[0])  # stale: the cache is rebuilt
    if refused:
        with pytest.raises(UserError, match="cannot write the decoded-image cache"):
            DecodedCache(photos, (4, 4), "disk", tmp_path / ".cache")
    else:
        assert DecodedCache(photos, (4, 4), "disk", tmp_path / ".cache").pixels(photos[0])[0, 0].tolist() == [0, 200, 0]
    assert victim.read_text() == "precious"
