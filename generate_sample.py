"""
Generate a synthetic stand-in for the mask / gender / age competition data.

The real photos are not public, so this draws simple cartoon people in exactly
the real layout (train folders of seven photos, a hashed eval set, answers in
gt/). It is the default data of the demo and of the tests:

    python generate_sample.py --out data --people 60 --eval_people 20 --seed 0
    python generate_sample.py --kind mask --out data/mask --people 60 --eval_people 20
    python generate_sample.py --out data/shifted --eval_old_share 0.31 --eval_male_share 0.65   # another eval mix

Layout written under --out:
    train/images/{id:06d}_{gender}_Asian_{age}/{mask1..mask5,incorrect_mask,normal}.{jpg|jpeg|png}
    train/train.csv   id,gender,race,age,path
    eval/images/{sha1}.jpg
    eval/info.csv     ImageID,ans (ans is always 0)
    gt/gt.csv         ImageID,ans (the true 18-class label, same row order)

Other kinds write class-folder sets, one photo of every person per class, for
the other classifiers the toolkit serves: `mask` (mask / no_mask), `helmet`
(helmet / no_helmet), `mask_sunglasses` (face / masked_face / face_sunglasses /
masked_face_sunglasses) and `mask_3class` (correct_mask / incorrect_mask /
no_mask), under --out:
    train/{class}/{person:05d}_{photo}.jpg      (preprocess.py --group_regex '^(\\d+)_')
    eval/{class}/{person:05d}_{photo}.jpg       (held-out people: evaluation.py --truth)

Every person is drawn from numpy.random.default_rng([seed, split, index]), so
person k looks the same whatever the number of people, and the same seed gives
byte-identical files. People stand at different distances and places, as in
real photos: the face spans about 20-35% of the photo's width, its centre
wanders over the upper middle, so a model that sees the whole photo squashed
sees a small face, and cropping to it matters.
"""

import hashlib
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageChops, ImageDraw
from tqdm import tqdm

import cli

WIDTH, HEIGHT = 384, 512
STEMS = ["mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal"]
SPLIT_CODES = {"train": 0, "eval": 1}
SHUFFLE_CODE = 2  # rng stream for the eval row order, apart from any person

# the real eval set has more old people and more men than train
OLD_SHARE = {"train": 0.07, "eval": 0.15}
MALE_SHARE = {"train": 0.40, "eval": 0.50}
# ages 18-59: many in their 20s and 50s, fewer in between, like the real set
AGE_RANGES = [(18, 29), (30, 49), (50, 59)]
AGE_RANGE_WEIGHTS = [0.45, 0.20, 0.35]

# the face's width as a fraction of the photo's (people at different distances), and the half-width it is drawn
# at when that fraction is 1 / (2 * FACE_HALF_WIDTH / WIDTH)
FACE_WIDTH = (0.2, 0.35)
FACE_HALF_WIDTH = 82

MASK_COLOURS = {
    "white": (238, 238, 234),
    "light_blue": (165, 200, 228),
    "black": (32, 32, 36),
    "grey": (135, 135, 140),
}
HELMET_COLOURS = [(240, 200, 30), (235, 235, 235), (220, 90, 30), (40, 90, 190), (200, 40, 40)]
# Class-folder kinds: each class is (the photo's mask state as a stem, helmet, sunglasses)
KINDS = {
    "mask": {"mask": ("mask1", False, False), "no_mask": ("normal", False, False)},
    "helmet": {"helmet": ("normal", True, False), "no_helmet": ("normal", False, False)},
    "mask_sunglasses": {"face": ("normal", False, False), "masked_face": ("mask1", False, False),
                        "face_sunglasses": ("normal", False, True), "masked_face_sunglasses": ("mask1", False, True)},
    "mask_3class": {"correct_mask": ("mask1", False, False), "incorrect_mask": ("incorrect_mask", False, False),
                    "no_mask": ("normal", False, False)},
}
MASK_KINDS = ["white", "light_blue", "black", "grey", "patterned"]
MASK_KIND_WEIGHTS = [0.35, 0.25, 0.15, 0.10, 0.15]


def class_label(stem, gender, age):
    """18-class label: mask*6 + gender*3 + age band (dataset.py owns the official one)."""
    mask = 0 if stem.startswith("mask") else 1 if stem == "incorrect_mask" else 2
    age_band = 0 if age < 30 else 1 if age < 60 else 2
    return mask * 6 + (gender == "female") * 3 + age_band


@dataclass
class Person:
    gender: str
    age: int
    extension: str
    long_hair: bool
    skin: tuple
    hair: tuple
    clothes: tuple
    face_w: float
    face_h: float
    size: float
    offset_x: float
    offset_y: float
    jaw: float
    brow_width: int
    hairline: float
    hair_length: float
    wrinkles: int
    wrinkle_darkness: float
    background: Image.Image


def draw_attributes(rng, split, mix=None):
    """Gender and age, drawn first so they depend only on (seed, split, index); `mix` (share of people 60 and over,
    share of men) replaces the split's own."""
    old_share, male_share = mix or (OLD_SHARE[split], MALE_SHARE[split])
    gender = "male" if rng.random() < male_share else "female"
    if rng.random() < old_share:
        return gender, 60
    lo, hi = AGE_RANGES[rng.choice(len(AGE_RANGES), p=AGE_RANGE_WEIGHTS)]
    return gender, int(rng.integers(lo, hi + 1))


def lerp(a, b, t):
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))


def draw_background(rng):
    """One backdrop per person: a flat colour, a vertical gradient or wall stripes."""
    c1 = rng.integers(60, 236, 3).astype(np.float32)
    c2 = rng.integers(60, 236, 3).astype(np.float32)
    kind = rng.integers(3)
    if kind == 0:
        t = np.zeros((HEIGHT, 1, 1), np.float32)
    elif kind == 1:
        t = np.linspace(0, 1, HEIGHT, dtype=np.float32)[:, None, None]
    else:
        period = int(rng.integers(24, 96))
        t = ((np.arange(WIDTH) // period) % 2).astype(np.float32)[None, :, None] * 0.5
    bg = c1 + (c2 - c1) * t
    return Image.fromarray(np.broadcast_to(bg, (HEIGHT, WIDTH, 3)).astype(np.uint8))


def make_person(seed, split, index, mix=None):
    """Everything the seven photos of one person share (`mix`: draw_attributes')."""
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    gender, age = draw_attributes(rng, split, mix)
    male = gender == "male"
    u = rng.random()  # the real train set mixes extensions; the eval set is all .jpg
    extension = ".jpg" if split == "eval" or u >= 0.2 else ".jpeg" if u < 0.1 else ".png"
    # gender cues: hair style (with ~12% exceptions), brow thickness, jaw width
    long_hair = (rng.random() < 0.12) if male else (rng.random() < 0.88)
    brow_width = int(rng.integers(6, 10) if male else rng.integers(3, 7))
    jaw = rng.uniform(0.80, 0.95) if male else rng.uniform(0.65, 0.82)
    # age cues: greyer hair and more, darker wrinkles, graded with noise
    greyness = np.clip((age - 30) / 35 + rng.normal(0, 0.12), 0, 0.9)
    base_hair = lerp((20, 18, 18), (75, 50, 35), rng.random())
    hair = lerp(base_hair, (190, 190, 192), greyness)
    wrinkles = int(np.clip(round((age - 25) / 7 + rng.normal(0, 0.8)), 0, 6))
    wrinkle_darkness = float(np.clip((age - 20) / 45 + rng.normal(0, 0.1), 0.1, 1))
    return Person(
        gender=gender,
        age=age,
        extension=extension,
        long_hair=long_hair,
        skin=lerp((238, 208, 182), (172, 128, 98), rng.random()),
        hair=hair,
        clothes=tuple(int(c) for c in rng.integers(20, 236, 3)),
        face_w=rng.uniform(0.9, 1.1),
        face_h=rng.uniform(0.92, 1.08),
        size=rng.uniform(FACE_WIDTH[0], FACE_WIDTH[1]) * WIDTH / (2 * FACE_HALF_WIDTH),
        offset_x=rng.uniform(-0.1, 0.1),
        offset_y=rng.uniform(-0.06, 0.06),
        jaw=jaw,
        brow_width=brow_width,
        hairline=rng.uniform(0.5, 0.68),
        hair_length=rng.uniform(1.3, 2.0),
        wrinkles=wrinkles,
        wrinkle_darkness=wrinkle_darkness,
        background=draw_background(rng),
    )


def draw_mask(img, rng, cx, cy, fw, fh, top, straps_y):
    """A mask from `top` down over the chin, in a random colour, shape and pleating."""
    draw = ImageDraw.Draw(img)
    kind = MASK_KINDS[rng.choice(len(MASK_KINDS), p=MASK_KIND_WEIGHTS)]
    if kind == "patterned":
        colour = tuple(int(c) for c in rng.integers(40, 236, 3))
        pattern = tuple(int(c) for c in rng.integers(40, 236, 3))
    else:
        colour = tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in MASK_COLOURS[kind])
    shade = lerp(colour, (0, 0, 0), 0.25) if sum(colour) > 200 else lerp(colour, (255, 255, 255), 0.2)
    half = fw * rng.uniform(0.92, 1.04)
    bump = fh * rng.uniform(0.0, 0.1)
    bottom = cy + fh * rng.uniform(1.0, 1.1)
    outline = [
        (cx - half, top + 0.08 * fh), (cx, top - bump), (cx + half, top + 0.08 * fh),
        (cx + half * 0.85, bottom - 0.2 * fh), (cx, bottom), (cx - half * 0.85, bottom - 0.2 * fh),
    ]
    for side in (-1, 1):  # ear loops
        draw.line([(cx + side * half, top + 0.1 * fh), (cx + side * fw * 1.02, straps_y)], fill=shade, width=4)
    draw.polygon(outline, fill=colour)
    if kind == "patterned":  # dots, clipped to the mask outline
        dots, shape = Image.new("L", img.size), Image.new("L", img.size)
        ImageDraw.Draw(shape).polygon(outline, fill=255)
        dots_draw, step = ImageDraw.Draw(dots), int(rng.integers(10, 20))
        for x in range(int(cx - half), int(cx + half), step):
            for y in range(int(top - bump), int(bottom), step):
                dots_draw.ellipse([x, y, x + step // 3, y + step // 3], fill=255)
        img.paste(pattern, mask=ImageChops.multiply(dots, shape))
    for k in range(int(rng.integers(0, 4))):  # pleats
        y = top + (bottom - top) * (k + 1) / 4.5
        draw.line([(cx - half * 0.8, y), (cx + half * 0.8, y)], fill=shade, width=3)


def draw_wrinkles(draw, p, cx, cy, fw, fh, eye_y, brow_y):
    """Forehead lines, crow's feet and nose-to-mouth lines, more and darker with age."""
    colour = lerp(p.skin, (60, 35, 25), 0.55 * p.wrinkle_darkness)
    top = cy - fh * p.hairline
    for k in range(min(p.wrinkles, 3)):
        y = brow_y - (brow_y - top) * (k + 1) / 4.5
        draw.arc([cx - 0.5 * fw, y - 8, cx + 0.5 * fw, y + 8], 200, 340, fill=colour, width=3)
    if p.wrinkles >= 3:
        for side in (-1, 1):
            x = cx + side * 0.62 * fw
            for dy in (-8, 0, 8):
                draw.line([(x, eye_y), (x + side * 0.18 * fw, eye_y + dy)], fill=colour, width=2)
    if p.wrinkles >= 2:
        for side in (-1, 1):
            draw.line([(cx + side * 0.22 * fw, cy + 0.3 * fh), (cx + side * 0.35 * fw, cy + 0.6 * fh)],
                      fill=colour, width=3)


def draw_helmet(draw, cx, cy, fw, fh, colour):
    """A hard hat over the top of the head, with its brim."""
    top = cy - 1.35 * fh
    draw.chord([cx - 1.12 * fw, top, cx + 1.12 * fw, cy - 0.1 * fh], 180, 360, fill=colour)
    draw.rounded_rectangle([cx - 1.3 * fw, cy - 0.62 * fh, cx + 1.3 * fw, cy - 0.5 * fh], radius=4,
                           fill=lerp(colour, (0, 0, 0), 0.25))


def draw_sunglasses(draw, cx, eye_y, fw, fh):
    """Two dark lenses over the eyes and their bridge."""
    for side in (-1, 1):
        ex = cx + side * 0.38 * fw
        draw.rounded_rectangle([ex - 0.24 * fw, eye_y - 0.12 * fh, ex + 0.24 * fw, eye_y + 0.12 * fh],
                               radius=int(0.08 * fw), fill=(18, 18, 24))
    draw.line([(cx - 0.14 * fw, eye_y - 0.04 * fh), (cx + 0.14 * fw, eye_y - 0.04 * fh)], fill=(18, 18, 24), width=3)


def render_photo(p, stem, rng, helmet=False, sunglasses=False):
    """One photo of person p (with a helmet or sunglasses if asked); rng only adds the per-photo jitter and the
    mask draw."""
    img = p.background.copy()
    draw = ImageDraw.Draw(img)
    scale = p.size * rng.uniform(0.96, 1.04)
    cx = WIDTH * (0.5 + p.offset_x + rng.uniform(-0.03, 0.03))
    cy = HEIGHT * (0.38 + p.offset_y + rng.uniform(-0.02, 0.02))
    fw, fh = FACE_HALF_WIDTH * scale * p.face_w, 106 * scale * p.face_h
    eye_y, brow_y = cy - 0.1 * fh, cy - 0.3 * fh
    dark_skin = lerp(p.skin, (0, 0, 0), 0.2)

    draw.ellipse([cx - 2.1 * fw, cy + 1.35 * fh, cx + 2.1 * fw, cy + 3.6 * fh], fill=p.clothes)
    if p.long_hair:  # hair falling beside the face and onto the shoulders
        draw.rounded_rectangle([cx - 1.25 * fw, cy - 1.15 * fh, cx + 1.25 * fw, cy + p.hair_length * fh],
                               radius=int(fw), fill=p.hair)
    else:
        draw.ellipse([cx - 1.08 * fw, cy - 1.2 * fh, cx + 1.08 * fw, cy + 0.2 * fh], fill=p.hair)
        for side in (-1, 1):  # ears, hidden by long hair
            draw.ellipse([cx + side * fw - 0.14 * fw, eye_y - 0.05 * fh, cx + side * fw + 0.14 * fw, eye_y + 0.3 * fh],
                         fill=dark_skin)
    draw.rectangle([cx - 0.42 * fw, cy + 0.6 * fh, cx + 0.42 * fw, cy + 1.6 * fh], fill=dark_skin)
    draw.ellipse([cx - fw, cy - fh, cx + fw, cy + fh], fill=p.skin)
    draw.rounded_rectangle([cx - p.jaw * fw, cy, cx + p.jaw * fw, cy + 0.97 * fh], radius=int(0.4 * fw), fill=p.skin)
    # fringe: the upper half of an ellipse centred on the hairline
    hairline = cy - p.hairline * fh
    top = cy - 1.15 * fh
    draw.chord([cx - 1.04 * fw, top, cx + 1.04 * fw, 2 * hairline - top], 180, 360, fill=p.hair)

    for side in (-1, 1):
        ex = cx + side * 0.38 * fw
        draw.ellipse([ex - 0.11 * fw, eye_y - 0.05 * fh, ex + 0.11 * fw, eye_y + 0.05 * fh], fill=(30, 25, 25))
        draw.line([(ex - 0.18 * fw, brow_y), (ex + 0.18 * fw, brow_y)], fill=lerp(p.hair, (0, 0, 0), 0.3),
                  width=p.brow_width)
    draw.polygon([(cx, eye_y + 0.05 * fh), (cx - 0.14 * fw, cy + 0.3 * fh), (cx + 0.14 * fw, cy + 0.3 * fh)],
                 fill=dark_skin)
    for side in (-1, 1):
        draw.ellipse([cx + side * 0.08 * fw - 4, cy + 0.27 * fh - 3, cx + side * 0.08 * fw + 4, cy + 0.27 * fh + 3],
                     fill=lerp(dark_skin, (0, 0, 0), 0.4))
    draw.ellipse([cx - 0.26 * fw, cy + 0.5 * fh, cx + 0.26 * fw, cy + 0.62 * fh], fill=(170, 70, 75))
    draw_wrinkles(draw, p, cx, cy, fw, fh, eye_y, brow_y)
    if helmet:
        draw_helmet(draw, cx, cy, fw, fh, HELMET_COLOURS[int(rng.integers(len(HELMET_COLOURS)))])
    if sunglasses:
        draw_sunglasses(draw, cx, eye_y, fw, fh)

    if stem.startswith("mask"):  # over nose and mouth
        draw_mask(img, rng, cx, cy, fw, fh, top=eye_y + rng.uniform(0.13, 0.2) * fh, straps_y=eye_y)
    elif stem == "incorrect_mask":  # pulled below the nose, sometimes down to the chin
        drop = rng.uniform(0.36, 0.45) if rng.random() < 0.8 else rng.uniform(0.66, 0.72)
        draw_mask(img, rng, cx, cy, fw, fh, top=cy + drop * fh, straps_y=eye_y + 0.2 * fh)

    # camera variation: overall brightness (a lookup table, cheap) and mild sensor noise
    gain = rng.uniform(0.88, 1.12)
    img = img.point([min(255, int(v * gain)) for v in range(256)] * 3)
    pixels = np.asarray(img, dtype=np.int16) + rng.integers(-5, 6, (HEIGHT, WIDTH, 3), dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def save_photo(img, path):
    if path.suffix == ".png":
        img.save(path, compress_level=1)  # noise barely compresses; favour speed
    else:
        img.save(path, quality=90)


def photo_rng(seed, split, index, stem):
    return np.random.default_rng([seed, SPLIT_CODES[split], index, STEMS.index(stem)])


def eval_image_name(seed, index, stem):
    """A sha1-looking file name, like the real eval set, fixed by (seed, person, photo)."""
    return hashlib.sha1(f"{seed}/eval/{index}/{stem}".encode()).hexdigest() + ".jpg"


def has_images(out_dir):
    return any(f.is_file() for d in ("train/images", "eval/images") for f in (out_dir / d).rglob("*"))


def generate(out_dir, people=60, eval_people=20, seed=0, overwrite=False, eval_mix=None):
    """Write the synthetic data set under out_dir; returns a small summary dict. `eval_mix` (share of people 60 and
    over, share of men) draws the eval people with another mix than OLD_SHARE's and MALE_SHARE's."""
    out_dir = Path(out_dir)
    if has_images(out_dir):
        if not overwrite:
            raise FileExistsError(f"{out_dir} already contains images; pass --overwrite to replace them")
        for sub in ("train", "eval", "gt"):
            shutil.rmtree(out_dir / sub, ignore_errors=True)
    train_dir, eval_dir, gt_dir = out_dir / "train", out_dir / "eval", out_dir / "gt"
    (eval_dir / "images").mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)

    progress = tqdm(total=people + eval_people, desc="people", unit="person")
    train_rows = []
    for index in range(people):
        p = make_person(seed, "train", index)
        folder = f"{index + 1:06d}_{p.gender}_Asian_{p.age}"
        (train_dir / "images" / folder).mkdir(parents=True, exist_ok=True)
        for stem in STEMS:
            img = render_photo(p, stem, photo_rng(seed, "train", index, stem))
            save_photo(img, train_dir / "images" / folder / (stem + p.extension))
        train_rows.append({"id": f"{index + 1:06d}", "gender": p.gender, "race": "Asian", "age": p.age, "path": folder})
        progress.update()

    eval_rows = []
    for index in range(eval_people):
        p = make_person(seed, "eval", index, eval_mix)
        for stem in STEMS:
            name = eval_image_name(seed, index, stem)
            save_photo(render_photo(p, stem, photo_rng(seed, "eval", index, stem)), eval_dir / "images" / name)
            eval_rows.append({"ImageID": name, "ans": class_label(stem, p.gender, p.age)})
        progress.update()
    progress.close()

    train_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(train_rows, columns=["id", "gender", "race", "age", "path"]).to_csv(train_dir / "train.csv", index=False)
    # shuffle so that the seven photos of one eval person are not adjacent
    order = np.random.default_rng([seed, SHUFFLE_CODE]).permutation(len(eval_rows))
    gt = pd.DataFrame(eval_rows, columns=["ImageID", "ans"]).iloc[order]
    gt.to_csv(gt_dir / "gt.csv", index=False)
    gt.assign(ans=0).to_csv(eval_dir / "info.csv", index=False)
    return {"train_people": people, "eval_people": eval_people,
            "train_images": 7 * people, "eval_images": len(eval_rows)}


def generate_classes(out_dir, kind, people=60, eval_people=20, seed=0, overwrite=False):
    """Write a class-folder set of `kind` (one of KINDS) under out_dir: one photo of every person per class."""
    out_dir, classes = Path(out_dir), KINDS[kind]
    if any(path.is_file() for split in ("train", "eval") for path in (out_dir / split).rglob("*")):
        if not overwrite:
            raise FileExistsError(f"{out_dir} already contains images; pass --overwrite to replace them")
        for split in ("train", "eval"):
            shutil.rmtree(out_dir / split, ignore_errors=True)
    progress = tqdm(total=people + eval_people, desc="people", unit="person")
    for split, count in (("train", people), ("eval", eval_people)):
        for index in range(count):
            p = make_person(seed, split, index)
            for number, (name, (stem, helmet, sunglasses)) in enumerate(classes.items()):
                rng = np.random.default_rng([seed, SPLIT_CODES[split], index, len(STEMS) + number])
                folder = out_dir / split / name
                folder.mkdir(parents=True, exist_ok=True)
                save_photo(render_photo(p, stem, rng, helmet, sunglasses), folder / f"{index:05d}_{number}.jpg")
            progress.update()
    progress.close()
    return {"train_images": people * len(classes), "eval_images": eval_people * len(classes)}


def main(argv=None):
    parser = cli.Parser(description="Generate synthetic photos: the competition's layout, or a "
                                                 "class-folder set of another classifier.")
    parser.add_argument("--kind", default="competition", choices=["competition", *KINDS],
                        help="competition: person folders, 18 classes; others: class folders (default: competition)")
    parser.add_argument("--out", default="data", help="output folder (default: data)")
    parser.add_argument("--people", type=cli.positive_int, default=60,
                        help="number of train people, 7 photos each (default: 60)")
    parser.add_argument("--eval_people", "--eval-people", type=cli.positive_int, default=20,
                        help="number of eval people, 7 photos each (default: 20)")
    parser.add_argument("--eval_old_share", "--eval-old-share", type=cli.fraction, default=OLD_SHARE["eval"],
                        help="share of eval people aged 60+ (training: %s; default: %%(default)s)"
                             % OLD_SHARE["train"])
    parser.add_argument("--eval_male_share", "--eval-male-share", type=cli.fraction, default=MALE_SHARE["eval"],
                        help="share of eval people who are men (training: %s; default: %%(default)s)"
                             % MALE_SHARE["train"])
    parser.add_argument("--seed", type=cli.non_negative_int, default=0,
                        help="random seed; same seed gives identical files (default: 0)")
    parser.add_argument("--overwrite", action="store_true",
                        help="remove existing train/, eval/ and gt/ under --out first (default: refuse)")
    args = parser.parse_args(argv)
    try:
        if args.kind == "competition":
            summary = generate(args.out, args.people, args.eval_people, args.seed, overwrite=args.overwrite,
                               eval_mix=(args.eval_old_share, args.eval_male_share))
        else:
            summary = generate_classes(args.out, args.kind, args.people, args.eval_people, args.seed, args.overwrite)
    except FileExistsError as error:
        raise cli.UserError(str(error)) from None
    out = Path(args.out)
    if args.kind != "competition":
        print(f"wrote {summary['train_images']} train photos ({args.people} people) in {', '.join(KINDS[args.kind])} "
              f"folders under {out / 'train'} and {summary['eval_images']} eval photos under {out / 'eval'}")
        return
    print(f"wrote {summary['train_images']} train photos ({args.people} people) to {out / 'train'}, "
          f"{summary['eval_images']} eval photos ({args.eval_people} people) to {out / 'eval'}, "
          f"answers to {out / 'gt' / 'gt.csv'}")


if __name__ == "__main__":
    sys.exit(cli.run(main))
