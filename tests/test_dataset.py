import numpy as np
import pandas as pd
import pytest
import torch

from dataset import (NUM_CLASSES, AgeLabel, age_band, compose_probabilities, decode_label, encode_label,
                     parse_person_folder, task_marginals, training_targets)


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
