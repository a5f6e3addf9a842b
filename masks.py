"""Face masks and sunglasses drawn onto a real photo at a face's five landmarks.

Not a script: mask_faces.py renders data sets with it.

The five landmarks (eyes, nose tip, mouth corners; faces.Face) place a simple head model: the lower face is an
elliptic cylinder about a vertical axis, turned by the face's roll (the line of the eyes) and yaw (how far the nose
tip sits off the eyes' midline), scaled by the eye distance, with the chin extrapolated from the eyes-to-mouth
distance. A mask is a patch of that surface: its outline (top edge over the nose bridge, sides towards the ears,
bottom under the chin) is drawn in the patch's own coordinates, s across from -1 to 1 and t from its top edge (0) to
its bottom edge (1), so that a texture, pleats, seams and patterns follow the face. Each photo pixel is traced back
onto the surface in closed form; the surface's normal shades it, a plane fitted to the skin's brightness carries the
photo's light over it, and its edges are anti-aliased by their distance in pixels. Sunglasses are a curved frame in
front of the eyes, projected alike.

Variants, as the competition means them: `correct` (nose and mouth covered), `nose_out` (the mask's top edge under
the nose tip), `chin` (mouth and nose out, the mask on the chin).
"""
import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

VARIANTS = ("correct", "nose_out", "chin")
KINDS = ("surgical", "cloth", "kn95")
KIND_WEIGHTS = (0.45, 0.35, 0.2)
TEMPLATE_SIZE = (160, 320)  # (rows, columns) of a mask's texture in its own (t, s) coordinates

# the head model, in units of half the eye distance seen from the front
NOSE_DEPTH = 2.0  # the nose tip's distance in front of the head's axis
NOSE_PROTRUSION = 0.7  # ... and in front of the eyes: how far a turned face moves the nose off the eyes' midline
CHEEK_RADIUS, JAW_RADIUS = 2.15, 1.6  # the surface's half-width at the nose and at the chin
CHIN_DEPTH = 1.75  # the surface's depth at the chin
CHIN_BELOW_MOUTH = 0.72  # the chin's distance below the mouth, as a share of the eyes-to-mouth distance
MAX_YAW = math.radians(55)

SURGICAL_COLOURS = {"light blue": (142, 186, 216), "white": (234, 235, 232), "black": (34, 34, 38),
                    "pink": (232, 172, 186), "mint": (136, 196, 176), "lavender": (184, 172, 214),
                    "grey": (152, 154, 160), "navy": (44, 58, 96)}
CLOTH_COLOURS = {"black": (30, 30, 33), "navy": (32, 42, 72), "grey": (118, 118, 124), "denim": (72, 96, 132),
                 "beige": (200, 182, 152), "olive": (96, 102, 62), "burgundy": (112, 32, 48), "white": (228, 226, 220),
                 "pink": (224, 160, 170), "mustard": (200, 160, 54), "teal": (42, 112, 118), "red": (172, 36, 42),
                 "sky": (120, 170, 210)}
KN95_COLOURS = {"white": (238, 238, 236), "light grey": (202, 202, 204), "black": (36, 36, 40),
                "blue": (174, 200, 226), "pink": (232, 182, 192)}
CLOTH_PATTERNS = ("solid", "solid", "heather", "stripes", "dots", "checks", "floral", "camo")
LENS_TINTS = {"black": (14, 14, 18), "brown": (46, 30, 20), "green": (24, 36, 28), "blue mirror": (24, 46, 86),
              "grey gradient": (30, 30, 36)}
FRAME_COLOURS = {"black": (18, 18, 20), "tortoise": (92, 56, 30), "gold": (190, 158, 90), "silver": (175, 178, 184),
                 "white": (225, 225, 222), "red": (150, 28, 32)}
LENS_SHAPES = ("wayfarer", "aviator", "round", "rectangle", "cat eye")


@dataclass(frozen=True)
class Head:
    """A face's pose and proportions from its landmarks, in pixels of the photo.

    Face coordinates (a, b): a along the eyes' line from the eyes' midpoint (towards the right eye of the photo),
    b perpendicular to it, downwards."""
    origin: np.ndarray  # the eyes' midpoint (x, y)
    across: np.ndarray  # unit vector from the left eye to the right eye
    down: np.ndarray  # unit vector perpendicular to it, towards the mouth
    unit: float  # half the eye distance as the face would show it from the front
    yaw: float  # radians: positive when the nose is turned towards the right eye of the photo
    axis: float  # a of the head's vertical axis
    nose: float  # b of the nose tip
    mouth: float  # b of the mouth's centre
    chin: float  # b of the chin

    @property
    def roll(self):
        """Degrees, counter-clockwise on the photo, of the eyes' line."""
        return math.degrees(math.atan2(-self.across[1], self.across[0]))

    def shifted(self, dx, dy):
        """The same head in a crop of the photo whose top left corner is at (dx, dy)."""
        return dataclasses.replace(self, origin=self.origin - np.array([dx, dy], dtype=np.float64))

    def to_photo(self, a, b):
        """Photo (x, y) of face coordinates."""
        a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
        return (self.origin[0] + a * self.across[0] + b * self.down[0],
                self.origin[1] + a * self.across[1] + b * self.down[1])

    def to_face(self, x, y):
        """Face (a, b) of photo coordinates."""
        dx, dy = x - self.origin[0], y - self.origin[1]
        return dx * self.across[0] + dy * self.across[1], dx * self.down[0] + dy * self.down[1]

    def radii(self, b):
        """The surface's half-width and depth at height b: the cheeks' above the nose tip, narrowing to the jaw's."""
        share = np.clip((b - self.nose) / max(self.chin - self.nose, 1e-6), 0, 1.3)
        return (self.unit * (CHEEK_RADIUS + (JAW_RADIUS - CHEEK_RADIUS) * share),
                self.unit * (NOSE_DEPTH + (CHIN_DEPTH - NOSE_DEPTH) * share))

    def surface_point(self, angle, b):
        """Face a of the surface point at `angle` (radians from the front) and height b."""
        width, depth = self.radii(b)
        return self.axis + width * np.sin(angle) * math.cos(self.yaw) + depth * np.cos(angle) * math.sin(self.yaw)

    def surface_angle(self, a, b):
        """The angle on the surface that shows at face (a, b), its pixels per radian there, and its distance in
        pixels to the surface's outline (negative: off the surface)."""
        width, depth = self.radii(b)
        along, behind = width * math.cos(self.yaw), depth * math.sin(self.yaw)
        reach = np.hypot(along, behind)
        phase = np.arctan2(behind, along)
        ratio = np.clip((a - self.axis) / reach, -1, 1)
        angle = np.arcsin(ratio) - phase
        return angle, reach * np.sqrt(1 - ratio ** 2), reach - np.abs(a - self.axis)

    def normal(self, angle, b):
        """Unit normals (x, y, z towards the camera) of the surface at `angle` and height b, yaw applied."""
        width, depth = self.radii(b)
        nx, nz = np.sin(angle) / width, np.cos(angle) / depth
        norm = np.hypot(nx, nz)
        nx, nz = nx / norm, nz / norm
        return (nx * math.cos(self.yaw) + nz * math.sin(self.yaw), np.zeros_like(nx),
                -nx * math.sin(self.yaw) + nz * math.cos(self.yaw))


def head_of(landmarks, photo_size):
    """The Head of a face's landmarks (5, 2), fractions of a photo of `photo_size` = (width, height)."""
    points = np.asarray(landmarks, dtype=np.float64) * np.asarray(photo_size, dtype=np.float64)
    left_eye, right_eye, nose, mouth = points[0], points[1], points[2], (points[3] + points[4]) / 2
    origin = (left_eye + right_eye) / 2
    distance = max(float(np.linalg.norm(right_eye - left_eye)), 1e-3)
    across = (right_eye - left_eye) / distance
    down = np.array([-across[1], across[0]])
    nose_a, nose_b = float((nose - origin) @ across), float((nose - origin) @ down)
    mouth_b = max(float((mouth - origin) @ down), nose_b + 0.2 * distance, 0.5 * distance)
    nose_b = min(max(nose_b, 0.25 * distance), mouth_b - 0.15 * distance)
    # a nose off the eyes' midline by `nose_a` is a turn of tan(yaw) = nose_a / (protrusion * half eye distance)
    yaw = float(np.clip(math.atan2(nose_a, NOSE_PROTRUSION * distance / 2), -MAX_YAW, MAX_YAW))
    unit = distance / 2 / math.cos(yaw)
    return Head(origin=origin, across=across, down=down, unit=unit, yaw=yaw,
                axis=nose_a - NOSE_DEPTH * unit * math.sin(yaw), nose=nose_b, mouth=mouth_b,
                chin=mouth_b * (1 + CHIN_BELOW_MOUTH))


# ---------------------------------------------------------------------------------------------------------------
# Mask styles: the outline on the surface and the texture in (t, s)


@dataclass
class MaskStyle:
    kind: str
    variant: str
    colour: str  # a colour's name, or "photo:NAME" for a texture from a photo of a real mask
    pattern: str
    texture: np.ndarray  # (rows, columns, 3) float albedo 0-1 over (t, s)
    relief: np.ndarray  # (rows, columns) height of the fabric (pleats, seams), for shading
    # the outline (mask_bounds): the top edge's centre at `top_offset` of the way from its anchor's landmark to the
    # next (bridge: eyes' line to nose tip; under_nose: nose tip to mouth; under_mouth: mouth to chin), `top_rise`
    # units lower at the sides; the bottom `bottom_drop` units under the chin, `bottom_side` units under the mouth at
    # the sides; the powers round the edges between
    top_anchor: str
    top_offset: float
    top_rise: float
    top_power: float
    bottom_drop: float
    bottom_side: float
    bottom_power: float
    half_angle: float  # radians: the mask's sides
    loop_colour: tuple
    loop_width: float  # units
    gloss: float

    def describe(self):
        return {"mask_kind": self.kind, "mask_colour": self.colour, "mask_pattern": self.pattern,
                "variant": self.variant}


def smooth_noise(rng, shape, scale):
    """Smooth noise of unit standard deviation, about as smooth as white noise blurred by a Gaussian of `scale`
    pixels: white noise on a grid 2.5 `scale` times coarser, resized up bicubically (much faster than blurring)."""
    step = max(2.5 * float(scale), 1.0)
    coarse = rng.standard_normal((int(shape[0] / step) + 2, int(shape[1] / step) + 2)).astype(np.float32)
    noise = np.asarray(Image.fromarray(coarse, mode="F").resize(shape[::-1], Image.Resampling.BICUBIC))
    noise = noise - noise.mean()
    return noise / max(float(noise.std()), 1e-6)


def template_grid():
    rows, columns = TEMPLATE_SIZE
    t = (np.arange(rows, dtype=np.float32)[:, None] + 0.5) / rows
    s = (np.arange(columns, dtype=np.float32)[None, :] + 0.5) / columns * 2 - 1
    return np.broadcast_to(t, TEMPLATE_SIZE), np.broadcast_to(s, TEMPLATE_SIZE)


def pick(rng, options, weights=None):
    keys = list(options)
    return keys[int(rng.choice(len(keys), p=weights))]


def jitter_colour(rng, colour, amount=10):
    return np.clip(np.asarray(colour, dtype=np.float32) + rng.uniform(-amount, amount, 3), 0, 255) / 255


def seam_line(coordinate, at, width):
    """A soft line (0-1) along coordinate == at."""
    return np.exp(-((coordinate - at) / width) ** 2)


def pleats(t, s, rng):
    """The relief of a surgical mask's three pleats: a sharp fold's shadow under each, a slope above, opened flatter
    at the centre of the mask where the face stretches them."""
    relief = np.zeros(TEMPLATE_SIZE, np.float32)
    positions = np.sort(rng.uniform(-0.03, 0.03, 3) + [0.34, 0.52, 0.7])
    strength = 0.55 + 0.45 * np.abs(s) ** 1.5
    for position in positions:
        at = position + 0.02 * np.sin(s * 2.4 + rng.uniform(0, 6))
        below = t - at
        relief += strength * np.where(below > 0, np.exp(-below / 0.03) - 1, np.clip(-below / 0.16, 0, 1) - 1) * 0.22
    return relief


def mask_texture(photo):
    """A photo of a real flat mask (uint8 RGB) as a mask's texture: its borders trimmed, its light flattened (the
    drawing shades it), resampled onto the template's (t, s)."""
    photo = np.asarray(photo, dtype=np.float32) / 255
    rows, columns = photo.shape[:2]
    trim = photo[int(rows * 0.07):int(rows * 0.95), int(columns * 0.04):int(columns * 0.96)]
    small = np.asarray(Image.fromarray(np.clip(trim * 255, 0, 255).astype(np.uint8)).resize(
        TEMPLATE_SIZE[::-1], Image.Resampling.LANCZOS), dtype=np.float32) / 255
    light = ndimage.gaussian_filter(small.mean(axis=2), min(TEMPLATE_SIZE) / 6, mode="nearest")
    return np.clip(small * (light.mean() / np.maximum(light, 1e-3))[..., None], 0, 1)


def cloth_pattern(rng, pattern, base, t, s):
    """A cloth mask's print over (t, s): stripes, dots, checks, flowers, camouflage or a heathered weave."""
    texture = np.broadcast_to(base, (*TEMPLATE_SIZE, 3)).copy()
    second = jitter_colour(rng, CLOTH_COLOURS[pick(rng, CLOTH_COLOURS)], 20)
    aspect = TEMPLATE_SIZE[1] / TEMPLATE_SIZE[0] / 2  # one unit of t is this many of s
    if pattern == "heather":
        texture *= (1 + 0.07 * smooth_noise(rng, TEMPLATE_SIZE, 0.7))[..., None]
    elif pattern == "stripes":
        angle, period = rng.choice([0, math.pi / 4, -math.pi / 4, math.pi / 2]), rng.uniform(0.08, 0.18)
        phase = (t * math.cos(angle) + s * aspect * math.sin(angle)) / period
        share = rng.uniform(0.3, 0.6)
        stripe = np.clip((np.abs((phase % 1) - 0.5) - share / 2) * period * 60 + 0.5, 0, 1)
        texture = texture * (1 - stripe[..., None]) + second * stripe[..., None]
    elif pattern == "dots":
        period, radius = rng.uniform(0.09, 0.16), rng.uniform(0.18, 0.32)
        u, v = (s * aspect / period) % 1 - 0.5, (t / period + 0.5 * (np.floor(s * aspect / period) % 2)) % 1 - 0.5
        dot = np.clip((radius - np.hypot(u, v)) * period * 90 + 0.5, 0, 1)
        texture = texture * (1 - dot[..., None]) + second * dot[..., None]
    elif pattern == "checks":
        period = rng.uniform(0.1, 0.2)
        bands = ((np.floor(t / period) % 2)[..., None] + (np.floor(s * aspect / period) % 2)[..., None]) / 2
        texture = texture * (1 - 0.6 * bands) + second * 0.6 * bands
    elif pattern == "floral":
        third = jitter_colour(rng, CLOTH_COLOURS[pick(rng, CLOTH_COLOURS)], 20)
        for _ in range(int(rng.integers(14, 26))):
            ct, cs, size = rng.uniform(0, 1), rng.uniform(-1, 1), rng.uniform(0.04, 0.08)
            dt, ds = t - ct, (s - cs) * aspect
            radius, angle = np.hypot(dt, ds), np.arctan2(dt, ds)
            petals = size * (0.65 + 0.35 * np.cos(5 * angle + rng.uniform(0, 6)))
            flower = np.clip((petals - radius) * 300, 0, 1)[..., None]
            centre = np.clip((size * 0.3 - radius) * 300, 0, 1)[..., None]
            texture = texture * (1 - flower) + second * flower
            texture = texture * (1 - centre) + third * centre
    elif pattern == "camo":
        for colour in (second, jitter_colour(rng, CLOTH_COLOURS[pick(rng, CLOTH_COLOURS)], 20)):
            blot = np.clip((smooth_noise(rng, TEMPLATE_SIZE, 9) - 0.4) * 4, 0, 1)[..., None]
            texture = texture * (1 - blot) + colour * blot
    return texture


def outline_for(rng, kind, variant):
    """The MaskStyle fields of a mask's outline (see mask_bounds) for its kind and variant."""
    anchor, offset = {"correct": ("bridge", rng.uniform(0.3, 0.5)), "nose_out": ("under_nose", rng.uniform(0.25, 0.5)),
                      "chin": ("under_mouth", rng.uniform(0.35, 0.55))}[variant]
    shapes = {  # the top's rise to the sides and its power; the bottom's drop under the chin, side, power
        "surgical": (rng.uniform(0.2, 0.45), rng.uniform(1.2, 1.8), rng.uniform(0.05, 0.3), rng.uniform(0.5, 0.9),
                     rng.uniform(1.8, 2.6)),
        "cloth": (rng.uniform(0.4, 0.7), rng.uniform(1.6, 2.4), rng.uniform(0.1, 0.35), rng.uniform(0.4, 0.8),
                  rng.uniform(1.6, 2.2)),
        "kn95": (rng.uniform(0.45, 0.75), rng.uniform(0.9, 1.15), rng.uniform(0.15, 0.35), rng.uniform(0.2, 0.6),
                 rng.uniform(0.95, 1.2)),
    }
    return dict(zip(("top_anchor", "top_offset", "top_rise", "top_power", "bottom_drop", "bottom_side",
                     "bottom_power"), (anchor, offset, *shapes[kind])))


def random_style(rng, variant, mask_photos=(), kinds=KINDS):
    """A mask of one of `kinds`, its colour, pattern, outline and texture drawn from `rng`; `mask_photos` (name,
    mask_texture) are photos of real masks that surgical masks may wear as their texture."""
    weights = np.array([KIND_WEIGHTS[KINDS.index(kind)] for kind in kinds])
    kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
    t, s = template_grid()
    relief = 0.004 * smooth_noise(rng, TEMPLATE_SIZE, 6)
    pattern = "solid"
    if kind == "surgical":
        if mask_photos and rng.random() < 0.45:
            name, texture = mask_photos[int(rng.integers(len(mask_photos)))]
            colour, texture = f"photo:{name}", texture[:, ::-1] if rng.random() < 0.5 else texture
        else:
            colour = pick(rng, SURGICAL_COLOURS, [0.34, 0.16, 0.16, 0.08, 0.08, 0.06, 0.06, 0.06])
            base = jitter_colour(rng, SURGICAL_COLOURS[colour], 8)
            mottle = 1 + 0.035 * smooth_noise(rng, TEMPLATE_SIZE, 1.5)
            hem = np.maximum.reduce([seam_line(t, 0.04, 0.035), seam_line(t, 0.96, 0.035),
                                     np.clip((np.abs(s) - 0.93) * 30, 0, 1)])
            texture = base * (mottle * (1 - 0.06 * hem))[..., None]
            stitches = (seam_line(t, 0.075, 0.006) + seam_line(t, 0.925, 0.006)) * (np.sin(s * 260) > 0)
            texture *= (1 - 0.12 * stitches)[..., None]
        if not colour.startswith("photo:"):  # a photo of a real mask shows its own pleats
            relief = relief + pleats(t, s, rng)
        loop = (245, 245, 245) if colour != "black" or rng.random() < 0.3 else (30, 30, 32)
        loop_width, gloss = rng.uniform(0.03, 0.045), 0.05
    elif kind == "cloth":
        colour = pick(rng, CLOTH_COLOURS)
        pattern = CLOTH_PATTERNS[int(rng.integers(len(CLOTH_PATTERNS)))]
        base = jitter_colour(rng, CLOTH_COLOURS[colour], 12)
        texture = cloth_pattern(rng, pattern, base, t, s)
        texture *= (1 + 0.03 * smooth_noise(rng, TEMPLATE_SIZE, 0.6))[..., None]
        seam = seam_line(s, 0, 0.012)
        hem = seam_line(t, 0.05, 0.01) + seam_line(t, 0.95, 0.01)
        texture *= (1 - 0.25 * seam - 0.08 * hem * (np.sin(s * 180) > 0))[..., None]
        relief = relief + 0.02 * seam_line(s, 0, 0.05) + 0.008 * smooth_noise(rng, TEMPLATE_SIZE, 12)
        loop = tuple(int(c) for c in np.clip(base * 255 * 0.9, 0, 255))
        loop_width, gloss = rng.uniform(0.06, 0.1), 0.0
    else:
        colour = pick(rng, KN95_COLOURS, [0.55, 0.15, 0.15, 0.08, 0.07])
        base = jitter_colour(rng, KN95_COLOURS[colour], 6)
        inset = np.minimum.reduce([t, 1 - t, (1 - np.abs(s)) * 1.6])
        emboss = seam_line(inset, 0.05, 0.008) + 0.6 * seam_line(inset, 0.08, 0.005) * (np.sin(s * 300) > 0)
        texture = base * (1 + 0.02 * smooth_noise(rng, TEMPLATE_SIZE, 1.0) - 0.1 * emboss)[..., None]
        relief = relief + 0.05 * (1 - np.abs(s)) ** 2 - 0.01 * emboss
        loop = (240, 240, 240) if colour != "black" else (40, 40, 44)
        loop_width, gloss = rng.uniform(0.03, 0.045), 0.08
    return MaskStyle(kind=kind, variant=variant, colour=colour, pattern=pattern, texture=texture,
                     relief=relief.astype(np.float32), **outline_for(rng, kind, variant),
                     half_angle=math.radians(rng.uniform(66, 74) if kind != "kn95" else rng.uniform(62, 68)),
                     loop_colour=loop, loop_width=loop_width, gloss=gloss)


def mask_bounds(head, style):
    """b (pixels) of the mask's top and bottom edges at the centre and at the sides."""
    unit, offset = head.unit, style.top_offset
    if style.top_anchor == "bridge":  # between the eyes' line and the nose tip
        top = head.nose * offset
    elif style.top_anchor == "under_nose":  # under the nostrils, above the mouth
        top = min(max(head.nose + offset * (head.mouth - head.nose), head.nose + 0.25 * unit), head.mouth - 0.3 * unit)
        if top < head.nose + 0.2 * unit:  # nose and mouth close together: halfway
            top = (head.nose + head.mouth) / 2
    else:
        top = head.mouth + offset * (head.chin - head.mouth)
    if style.variant == "chin":  # the loops pull the corners up; the mask hangs under the chin
        top_side = top - 0.2 * unit
        bottom = head.chin + (0.55 + style.bottom_drop) * unit
        bottom_side = head.mouth + (0.8 + style.bottom_side) * unit
    else:  # pulled down under the nose, its top edge runs flatter and its sides lower
        top_side = top + style.top_rise * unit * (0.35 if style.variant == "nose_out" else 1)
        bottom = head.chin + style.bottom_drop * unit
        bottom_side = head.mouth + style.bottom_side * unit * (1.4 if style.variant == "nose_out" else 1)
    return top, top_side, bottom, max(bottom_side, top_side + 0.6 * unit)


# ---------------------------------------------------------------------------------------------------------------
# The photo's light, carried over onto what is drawn


def luminance(pixels):
    return pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def fit_light(pixels, inside, a, b, unit):
    """The photo's light over a region: a plane fitted to the brightness of its skin (its darker pixels, lips and
    nostrils, left out), as a field around 1; the region's brightness; its colour cast; and the plane's slope
    (brightness per unit across and down, relative to the level), which says where the light comes from."""
    values = luminance(pixels)[inside]
    if values.size < 30:
        return np.ones(a.shape, np.float32), 0.6, np.ones(3, np.float32), np.zeros(2)
    columns = np.stack([np.ones_like(values), a[inside] / unit, b[inside] / unit], axis=1)
    keep = np.ones(values.size, bool)
    for _ in range(2):
        coefficients, *_ = np.linalg.lstsq(columns[keep], values[keep], rcond=None)
        residual = values - columns @ coefficients
        keep = residual > -0.6 * residual[keep].std()
    level = max(float(np.median(values[keep])), 1.0)
    field = (coefficients[0] + coefficients[1] * a / unit + coefficients[2] * b / unit) / level
    cast = pixels[inside][keep].mean(axis=0)
    cast = (cast / max(float(cast.mean()), 1.0)) ** 0.35  # the skin's own colour is most of it: a little is the light's
    return (np.clip(field, 0.55, 1.5).astype(np.float32), level / 255, cast.astype(np.float32),
            np.asarray(coefficients[1:]) / level)


def exposure_of(level):
    """How bright a white surface shows where the skin's median brightness is `level` (0-1)."""
    return float(np.clip(level / 0.62, 0.35, 1.2)) ** 0.85


def sample(texture, t, s):
    """Bilinear samples of a (rows, columns, channels) template at (t, s)."""
    rows, columns = texture.shape[:2]
    coordinates = [np.clip(t * rows - 0.5, 0, rows - 1), np.clip((s + 1) / 2 * columns - 0.5, 0, columns - 1)]
    if texture.ndim == 2:
        return ndimage.map_coordinates(texture, coordinates, order=1)
    return np.stack([ndimage.map_coordinates(texture[..., k], coordinates, order=1)
                     for k in range(texture.shape[2])], axis=-1)


def photo_noise(pixels):
    """The standard deviation of a photo region's grain."""
    grey = luminance(pixels)
    return float(np.clip(np.median(np.abs(grey - ndimage.uniform_filter(grey, 3))) * 1.4, 0.5, 8))


def photo_blur(pixels):
    """How soft a photo region is: the Gaussian blur (pixels) to give what is drawn on it. The ratio of the
    Laplacian's energy at two scales tells the region's own blur under a natural photo's 1/f spectrum; what a sharp
    photo shows by that measure (about a pixel) is left out."""
    grey = luminance(pixels)
    if min(grey.shape) < 12:
        return 0.0
    fine = ndimage.laplace(ndimage.gaussian_filter(grey, 1)).var()
    coarse = ndimage.laplace(ndimage.gaussian_filter(grey, 3)).var()
    ratio = math.sqrt(min(coarse / max(fine, 1e-9), 0.99))
    own = math.sqrt(max(9 * ratio - 1, 0) / (1 - ratio))
    return float(np.clip(1.3 * (own - 1.0), 0, 3))


def soften(colour, coverage, sigma):
    """Colour and coverage blurred together by `sigma` pixels (premultiplied, so that edges blend as a lens's)."""
    if sigma < 0.3:
        return colour, coverage
    spread = ndimage.gaussian_filter(coverage, sigma)
    colour = ndimage.gaussian_filter(colour * coverage[..., None], (sigma, sigma, 0)) / np.maximum(spread, 1e-4)[
        ..., None]
    return colour, spread


def patch_box(head, points, margin, shape):
    """The pixel box (x0, y0, x1, y1) holding face points (a, b), grown by `margin` units, inside the photo."""
    x, y = head.to_photo(*points)
    pad = margin * head.unit
    x0, y0 = max(int(np.floor(x.min() - pad)), 0), max(int(np.floor(y.min() - pad)), 0)
    x1, y1 = min(int(np.ceil(x.max() + pad)), shape[1]), min(int(np.ceil(y.max() + pad)), shape[0])
    return x0, y0, x1, y1


def pixel_grid(head, box):
    x0, y0, x1, y1 = box
    y, x = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    return head.to_face(x + 0.5, y + 0.5)


def stroke(a, b, points, width):
    """Anti-aliased coverage (0-1) of a polyline of face points (N, 2) drawn `width` pixels wide."""
    coverage = np.zeros(a.shape, np.float32)
    reach = width / 2 + 1
    near = ((a > points[:, 0].min() - reach) & (a < points[:, 0].max() + reach) & (b > points[:, 1].min() - reach)
            & (b < points[:, 1].max() + reach))
    a, b = a[near], b[near]
    distance = np.full(a.shape, np.inf, np.float32)
    for (a0, b0), (a1, b1) in zip(points[:-1], points[1:]):
        da, db = a1 - a0, b1 - b0
        along = np.clip(((a - a0) * da + (b - b0) * db) / max(da * da + db * db, 1e-9), 0, 1)
        distance = np.minimum(distance, np.hypot(a - a0 - along * da, b - b0 - along * db))
    coverage[near] = np.clip(width / 2 - distance + 0.5, 0, 1)
    return coverage


# ---------------------------------------------------------------------------------------------------------------
# Drawing


def draw_mask(photo, head, style, rng):
    """`photo` (H, W, 3 float 0-255) with the mask drawn on the face of `head`, and the mask's coverage (H, W, 0-1)
    of the photo (ear loops included)."""
    top, top_side, bottom, bottom_side = mask_bounds(head, style)
    corner = style.half_angle
    outline_a = np.concatenate([head.surface_point(np.full(2, -corner), np.array([top_side, bottom_side])),
                                head.surface_point(np.full(2, corner), np.array([top_side, bottom_side])),
                                [head.surface_point(0.0, bottom), head.surface_point(0.0, top)]])
    outline_b = np.array([top_side, bottom_side, top_side, bottom_side, bottom, top])
    ears = head.surface_point(np.array([-1.62, 1.62]), np.array([0.0, 0.0]))
    box = patch_box(head, (np.concatenate([outline_a, ears]), np.concatenate([outline_b, [0, 0]])), 0.6,
                    photo.shape)
    a, b = pixel_grid(head, box)
    region = photo[box[1]:box[3], box[0]:box[2]]

    angle, per_radian, to_silhouette = head.surface_angle(a, b)
    s = angle / corner
    span = np.minimum(np.abs(s), 1)
    top_edge = top + (top_side - top) * span ** style.top_power
    bottom_edge = bottom_side + (bottom - bottom_side) * (1 - span ** style.bottom_power)
    t = (b - top_edge) / np.maximum(bottom_edge - top_edge, 1e-3)
    distance = np.minimum.reduce([(1 - np.abs(s)) * corner * per_radian, b - top_edge, bottom_edge - b,
                                  to_silhouette])
    coverage = np.clip(distance / 1.2 + 0.5, 0, 1).astype(np.float32)
    inside = coverage > 0

    # the photo's light, from the skin the mask covers
    field, level, cast, slope = fit_light(region, inside, a, b, head.unit)
    exposure = exposure_of(level)

    albedo = sample(style.texture, np.clip(t, 0, 1), np.clip(s, -1, 1))
    relief = sample(style.relief, np.clip(t, 0, 1), np.clip(s, -1, 1))
    nx, _, nz = head.normal(angle, b)
    # the fabric turns under the chin and up over the nose: tilt the normal along b
    under = np.clip((b - head.mouth) / max(bottom - head.mouth, 1e-3), 0, 1) ** 2 * (1 - 0.5 * span)
    over = np.clip((head.nose - b) / max(head.nose - top, 1e-3), 0, 1) * (1 - span) * 0.5
    ny = 0.85 * under - 0.35 * over
    # relief (pleats, seams) tilts it along t
    grad_t = np.gradient(relief, axis=0) / max(float(np.gradient(t, axis=0).mean()), 1e-4)
    ny = ny + np.clip(grad_t, -0.9, 0.9)
    norm = np.sqrt(nx ** 2 + ny ** 2 + nz ** 2)
    nx, ny, nz = nx / norm, ny / norm, nz / norm
    # light from the side the skin is brighter on, mostly from the front and a little from above
    light = np.array([np.clip(2 * slope[0], -0.6, 0.6) + rng.uniform(-0.1, 0.1),
                      np.clip(2 * slope[1], -0.3, 0.3) + rng.uniform(-0.4, -0.2), 1.0])
    light /= np.linalg.norm(light)
    lambert = np.clip(nx * light[0] + ny * light[1] + nz * light[2], 0, 1)
    ambient = 0.5
    shade = (ambient + (1 - ambient) * lambert) / (ambient + (1 - ambient) * light[2])
    highlight = style.gloss * np.clip(nz * 1.0 + ny * -0.3, 0, 1) ** 12
    colour = (albedo * (shade * field)[..., None] * exposure * cast + highlight[..., None]) * 255
    grain = photo_noise(region)
    colour += rng.normal(0, grain, colour.shape).astype(np.float32)

    # ear loops from the mask's corners to the ears, where the near side of the head faces the camera
    loops = np.zeros(a.shape, np.float32)
    for side in (-1, 1):
        for corner_b, ear_b in ((top_side + 0.08 * head.unit, 0.1 * head.unit),
                                (bottom_side - 0.1 * head.unit, head.nose + 0.25 * head.unit)):
            path = np.linspace(0, 1, 9)
            angles = side * (corner + (1.58 - corner) * path)
            heights = corner_b + (ear_b - corner_b) * path + 0.15 * head.unit * np.sin(path * math.pi)
            facing = head.normal(angles, heights)[2] > 0.05
            if facing.sum() < 2:
                continue
            points = np.stack([head.surface_point(angles, heights), heights], axis=1)[facing]
            loops = np.maximum(loops, stroke(a, b, points, max(style.loop_width * head.unit, 1.0)))
    loops *= 1 - coverage
    loop_colour = np.asarray(style.loop_colour, np.float32) / 255 * exposure * cast * field[..., None] * 255
    blur = photo_blur(region)
    colour, coverage = soften(colour, coverage, blur)
    loop_colour, loops = soften(loop_colour, loops, blur)

    # the mask's shadow on the skin: its coverage dropped a little down the face and blurred
    drop = ndimage.shift(coverage, (0.08 * head.unit * head.down[1], 0.08 * head.unit * head.down[0]), order=1)
    shadow = 0.3 * ndimage.gaussian_filter(drop, 0.12 * head.unit) * (1 - coverage)
    shaded = region * (1 - shadow)[..., None]
    shaded = shaded * (1 - loops[..., None]) + loop_colour * loops[..., None]
    drawn = shaded * (1 - coverage[..., None]) + colour * coverage[..., None]
    result = photo.copy()
    result[box[1]:box[3], box[0]:box[2]] = np.clip(drawn, 0, 255)
    full = np.zeros(photo.shape[:2], np.float32)
    full[box[1]:box[3], box[0]:box[2]] = np.maximum(coverage, loops)
    return result, full


# ---------------------------------------------------------------------------------------------------------------
# Sunglasses


@dataclass
class GlassesStyle:
    shape: str
    tint: str
    frame: str
    lens_width: float  # half-width, units
    lens_height: float  # half-height, units
    frame_width: float  # units
    gap: float  # half the distance between the lenses, units
    alpha: float  # how much of the eye the lens hides

    def describe(self):
        return {"sunglasses": f"{self.shape}, {self.tint} lenses, {self.frame} frame"}


def random_glasses(rng):
    shape = LENS_SHAPES[int(rng.integers(len(LENS_SHAPES)))]
    width = rng.uniform(0.72, 0.8) if shape == "round" else rng.uniform(0.78, 0.9)
    height = width * {"wayfarer": rng.uniform(0.7, 0.8), "aviator": rng.uniform(0.82, 0.92),
                      "round": rng.uniform(0.92, 1.0), "rectangle": rng.uniform(0.55, 0.65),
                      "cat eye": rng.uniform(0.62, 0.72)}[shape]
    frame = pick(rng, FRAME_COLOURS, [0.4, 0.2, 0.12, 0.12, 0.08, 0.08])
    thin = frame in ("gold", "silver") or shape == "aviator"
    return GlassesStyle(shape=shape, tint=pick(rng, LENS_TINTS), frame=frame, lens_width=width, lens_height=height,
                        frame_width=rng.uniform(0.035, 0.05) if thin else rng.uniform(0.07, 0.12),
                        gap=rng.uniform(0.2, 0.3),
                        alpha=rng.uniform(0.9, 0.97))


def lens_outline(style, count=64):
    """A lens's outline (count, 2) in units around its centre, x towards the temple, y down."""
    angle = np.linspace(0, 2 * math.pi, count, endpoint=False)
    c, s = np.cos(angle), np.sin(angle)
    power = {"wayfarer": 3.2, "aviator": 2.4, "round": 2.0, "rectangle": 4.0, "cat eye": 3.0}[style.shape]
    x = np.sign(c) * np.abs(c) ** (2 / power) * style.lens_width
    y = np.sign(s) * np.abs(s) ** (2 / power) * style.lens_height
    if style.shape == "wayfarer":  # wider at the top, the outer top corner raised
        x *= 1 + 0.12 * (y < 0) * (-y / style.lens_height)
        y -= 0.1 * style.lens_height * np.clip(x / style.lens_width, 0, 1) * (y < 0)
    elif style.shape == "aviator":  # the teardrop: deepest under the inner half
        y += 0.25 * style.lens_height * np.clip(-x / style.lens_width + 0.3, 0, 1.3) * (y > 0)
        y -= 0.1 * style.lens_height * (y < 0)
    elif style.shape == "cat eye":
        y -= 0.35 * style.lens_height * np.clip(x / style.lens_width, 0, 1) ** 2 * (y < 0)
    return np.stack([x, y], axis=1)


def draw_sunglasses(photo, head, style, rng):
    """`photo` with sunglasses drawn over the eyes of `head`, and their coverage (H, W, 0-1). The frame is a curved
    band in front of the eyes, turned with the head; the temple on the side nearer the camera runs back to the ear."""
    unit = head.unit
    depth = NOSE_DEPTH - NOSE_PROTRUSION + 0.35  # the frame's distance in front of the head's axis, units
    outline = lens_outline(style)
    centre_x, centre_y = style.gap + style.lens_width, 0.08
    bar = style.frame_width * (1.8 if style.shape in ("wayfarer", "cat eye", "rectangle") else 1.0)

    def project(x, y, z=None):
        """Face (a, b) of frame points (x, y, z) in units; z by default on the frame's curve round the face."""
        z = depth - 0.12 * x ** 2 if z is None else z
        return head.axis + unit * (x * math.cos(head.yaw) + z * math.sin(head.yaw)), unit * y

    lenses, frames = [], []
    grow = 1 + style.frame_width / style.lens_width
    frame_y = outline[:, 1] * grow - (bar - style.frame_width) * np.clip(-outline[:, 1] / style.lens_height, 0, 1)
    for side in (-1, 1):
        lenses.append(project(side * (centre_x + outline[:, 0]), centre_y + outline[:, 1]))
        frames.append(project(side * (centre_x + outline[:, 0] * grow), centre_y + frame_y))
    inner = centre_x - style.lens_width * 0.95
    bridge_y = centre_y - style.lens_height * (0.8 if style.shape == "aviator" else 0.55)
    across = np.linspace(-1.2, 1.2, 7)
    bridge = project(inner * across / 1.2, bridge_y - 0.08 * np.cos(across))
    temples = []
    if abs(head.yaw) > math.radians(8):  # the temple of the side nearer the camera, from its hinge to the ear
        side = -1 if head.yaw > 0 else 1
        hinge = centre_x + style.lens_width * grow
        along = np.linspace(0, 1, 6)
        x = side * (hinge + (2.25 - hinge) * along)
        temples.append(project(x, centre_y - 0.4 * style.lens_height + (0.1 - centre_y) * along,
                               (depth - 0.12 * hinge ** 2) * (1 - along) - 0.3 * along))
    points = [*frames, *temples]
    box = patch_box(head, (np.concatenate([p[0] for p in points]), np.concatenate([p[1] for p in points])), 0.5,
                    photo.shape)
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        return photo.copy(), np.zeros(photo.shape[:2], np.float32)

    def cover(polygons, width=None):
        """Coverage (0-1) of filled polygons, or of lines `width` pixels wide, supersampled 4 times."""
        scale = 4
        image = Image.new("L", ((x1 - x0) * scale, (y1 - y0) * scale))
        draw = ImageDraw.Draw(image)
        for pa, pb in polygons:
            px, py = head.to_photo(pa, pb)
            corners = list(zip(((px - x0) * scale).tolist(), ((py - y0) * scale).tolist()))
            if width is None:
                draw.polygon(corners, fill=255)
            else:
                draw.line(corners, fill=255, width=max(int(width * scale), 1), joint="curve")
        return np.asarray(image.resize((x1 - x0, y1 - y0), Image.Resampling.BOX), dtype=np.float32) / 255

    lens_cover = cover(lenses)
    frame_cover = np.maximum.reduce([np.maximum(cover(frames) - lens_cover, 0),
                                     cover([bridge], style.frame_width * unit * 0.8),
                                     cover(temples, style.frame_width * unit * 0.9) if temples else 0 * lens_cover])

    region = photo[y0:y1, x0:x1]
    a, b = pixel_grid(head, box)
    level = float(np.median(luminance(region))) / 255
    exposure = exposure_of(level)
    # the lens: its tint, a little lighter downwards (a gradient lens much lighter), mirroring the scene's bright
    # parts, more so towards its rim where the glass is seen at a glancing angle, and a soft streak of light
    tint = np.asarray(LENS_TINTS[style.tint], np.float32)
    depth_down = np.clip((b / unit - (centre_y - style.lens_height)) / (2 * style.lens_height), 0, 1)
    fade = 0.55 + 2.0 * depth_down ** 1.5 if style.tint == "grey gradient" else 0.8 + 0.35 * depth_down
    lens = tint * fade[..., None] * exposure
    scene = ndimage.gaussian_filter(region[::-1, ::-1], (unit * 0.25, unit * 0.25, 0))
    highlights = scene * np.clip((luminance(scene) / 255 - 0.3) / 0.7, 0, 1)[..., None]
    rim = np.exp(-ndimage.distance_transform_edt(lens_cover > 0.5) / (0.12 * unit))
    mirror = (0.45 if style.tint == "blue mirror" else 0.16) + 0.2 * rim
    lens = lens + mirror[..., None] * highlights
    streak_angle, streak_at = rng.uniform(0.5, 1.1), rng.uniform(-0.8, 0.8)
    across = (a * math.cos(streak_angle) + b * math.sin(streak_angle)) / unit - streak_at
    streak = (np.exp(-(across / 0.12) ** 2) + 0.6 * np.exp(-((across - 0.35) / 0.06) ** 2)) * rng.uniform(0.04, 0.12)
    lens = lens + 255 * streak[..., None] * exposure
    frame_colour = np.asarray(FRAME_COLOURS[style.frame], np.float32) * exposure
    frame_shade = 1 + 0.25 * np.clip(-(b / unit - centre_y) / style.lens_height, -1, 1)
    frame = frame_colour * frame_shade[..., None]
    # the frame's shadow on the skin, a little below it
    shadow_source = np.maximum(frame_cover, lens_cover * 0.5)
    shadow = ndimage.shift(ndimage.gaussian_filter(shadow_source, unit * 0.08),
                           (0.12 * unit * head.down[1], 0.12 * unit * head.down[0]), order=1)
    drawn = region * (1 - 0.3 * np.clip(shadow, 0, 1))[..., None]
    grain = photo_noise(region)
    lens = lens + rng.normal(0, grain, lens.shape).astype(np.float32)
    frame = frame + rng.normal(0, grain, frame.shape).astype(np.float32)
    blur = photo_blur(region)
    lens, lens_alpha = soften(lens, lens_cover * style.alpha, blur)
    frame, frame_cover = soften(frame, frame_cover, blur)
    lens_cover = ndimage.gaussian_filter(lens_cover, blur) if blur >= 0.3 else lens_cover
    drawn = drawn * (1 - lens_alpha[..., None]) + lens * lens_alpha[..., None]
    drawn = drawn * (1 - frame_cover[..., None]) + frame * frame_cover[..., None]
    result = photo.copy()
    result[y0:y1, x0:x1] = np.clip(drawn, 0, 255)
    full = np.zeros(photo.shape[:2], np.float32)
    full[y0:y1, x0:x1] = np.maximum(lens_cover, frame_cover)
    return result, full
