import re

import numpy as np
import pandas as pd
from PIL import Image

from conftest import assert_one_line_error, run_script
from generate_sample import STEMS, draw_attributes, eval_image_name, generate, make_person

FOLDER = re.compile(r"^(\d{6})_(male|female)_Asian_(\d+)$")


def test_layout_matches_the_competition(tmp_path):
    generate(tmp_path, people=6, eval_people=2, seed=0)

    train = pd.read_csv(tmp_path / "train" / "train.csv", dtype={"id": str})
    assert list(train.columns) == ["id", "gender", "race", "age", "path"]
    folders = sorted(d.name for d in (tmp_path / "train" / "images").iterdir())
    assert folders == sorted(train["path"])
    assert len(set(train["id"])) == 6 and min(train["id"]) == "000001"
    for row in train.itertuples():
        person_id, gender, age = FOLDER.match(row.path).groups()
        assert (person_id, gender, int(age), row.race) == (row.id, row.gender, row.age, "Asian")
        photos = sorted((tmp_path / "train" / "images" / row.path).iterdir())
        assert sorted(f.stem for f in photos) == sorted(STEMS)
        assert {f.suffix for f in photos} <= {".jpg", ".jpeg", ".png"}

    info = pd.read_csv(tmp_path / "eval" / "info.csv")
    gt = pd.read_csv(tmp_path / "gt" / "gt.csv")
    assert list(info.columns) == list(gt.columns) == ["ImageID", "ans"]
    assert list(info["ImageID"]) == list(gt["ImageID"]) and len(info) == 2 * 7
    assert (info["ans"] == 0).all()
    for name in info["ImageID"]:
        assert re.fullmatch(r"[0-9a-f]{40}\.jpg", name)
        assert (tmp_path / "eval" / "images" / name).is_file()

    some_photos = [next((tmp_path / "train" / "images" / folders[0]).iterdir()),
                   tmp_path / "eval" / "images" / info["ImageID"][0]]
    for path in some_photos:
        with Image.open(path) as img:
            assert img.size == (384, 512) and img.mode == "RGB"


def test_same_seed_gives_identical_files(tmp_path):
    def files(out):
        return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    runs = {}
    for name, seed in [("a", 3), ("b", 3), ("c", 4)]:
        generate(tmp_path / name, people=3, eval_people=1, seed=seed)
        runs[name] = files(tmp_path / name)
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


def test_person_does_not_depend_on_how_many_people_are_generated(tmp_path):
    generate(tmp_path / "few", people=2, eval_people=0, seed=0)
    generate(tmp_path / "many", people=4, eval_people=0, seed=0)
    few = sorted((tmp_path / "few" / "train" / "images").rglob("*.*"))
    assert few and all(f.read_bytes() == (tmp_path / "many" / f.relative_to(tmp_path / "few")).read_bytes() for f in few)


def test_gt_labels_follow_the_encoding(tmp_path):
    seed, eval_people = 1, 3
    generate(tmp_path, people=0, eval_people=eval_people, seed=seed)
    gt = pd.read_csv(tmp_path / "gt" / "gt.csv").set_index("ImageID")["ans"]
    assert gt.between(0, 17).all()

    mask_of = {"mask1": 0, "mask2": 0, "mask3": 0, "mask4": 0, "mask5": 0, "incorrect_mask": 1, "normal": 2}
    for index in range(eval_people):
        person = make_person(seed, "eval", index)
        gender = {"male": 0, "female": 1}[person.gender]
        age_band = 0 if person.age < 30 else 1 if person.age < 60 else 2
        for stem in STEMS:
            assert gt[eval_image_name(seed, index, stem)] == mask_of[stem] * 6 + gender * 3 + age_band


def test_ages_span_18_to_60_with_rare_60_plus():
    people = [draw_attributes(np.random.default_rng([0, 0, i]), "train") for i in range(200)]
    ages = np.array([age for _, age in people])
    assert ages.min() >= 18 and ages.max() <= 60
    assert 0.02 <= (ages == 60).mean() <= 0.15
    assert 0.25 <= np.mean([gender == "male" for gender, _ in people]) <= 0.55


def test_refuses_to_overwrite_without_flag(tmp_path):
    command = ["--out", tmp_path, "--people", "1", "--eval-people", "1"]
    assert run_script("generate_sample.py", *command).returncode == 0
    assert_one_line_error(run_script("generate_sample.py", *command), "--overwrite")
    replaced = run_script("generate_sample.py", *command, "--overwrite", "--people", "2")
    assert replaced.returncode == 0
    assert len(list((tmp_path / "train" / "images").iterdir())) == 2
