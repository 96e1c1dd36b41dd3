"""A built-in training set: one simple cartoon character drawn by code, in varied poses and settings.

These images exist so the tiny profile (and any offline run) goes end to end with no user data and no
network: caption, train, generate and evaluate all get real files of the usual kinds (PNG and JPEG, with
sidecar captions). They say nothing about the quality a real character set would give.

The character is always the same man: a large round front-facing face with eyebrows and a thin black
moustache, a fur-trimmed conical hat and a striped robe (chapan). Only the pose (from `POSE_NAMES`), the
setting, and a small random placement change from image to image, which is what a character LoRA needs to
learn "this identity, any scene". Everything is deterministic for a seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from storyboard.fsutil import atomic_path
from storyboard.log import logger
from storyboard.settings import Character
from storyboard.story.poses import POSE_NAMES, Pose, get_pose

Point = tuple[float, float]
Colour = tuple[int, int, int]

# Drawn at this multiple of the output size and downsampled, which anti-aliases the flat shapes.
_SUPERSAMPLE = 2
_JPEG_EVERY = 3  # every third image is a JPEG, so the caption stage reads more than one format
_JPEG_QUALITY = 92

# The character's proportions, in pose units (the pose frame is 1 x 1). The head is cartoon-large: at the
# usual fitting scale its diameter is about a fifth of the image height, big enough for a face detector.
_HEAD_R = 0.12
_HEAD_LIFT = 0.9  # head centre sits this many head radii above the neck, along the neck -> nose direction
_HAT_TIP = 2.05  # hat tip, in head radii above the head centre
_ARM_W = 0.05
_LEG_W = 0.055
_HAND_R = 0.03
_BOOT_R = 0.034
_MIN_SHOULDER_HALF = 0.075  # a robe is never narrower than this, even on a figure turned sideways
_MIN_WAIST_HALF = 0.068
_HEM_AT = 0.62  # robe hem: this far from hip to knee
_STRIPE_W = 0.024
_FIT_MARGIN = 0.04  # of the image side, kept clear round the figure
_MAX_SCALE = 0.95  # cap, so seated (short) figures don't get a much bigger face than standing ones

SKIN: Colour = (238, 196, 150)
SKIN_SHADE: Colour = (214, 160, 118)
CHEEK: Colour = (240, 160, 140)
INK: Colour = (25, 20, 20)
OUTLINE: Colour = (60, 35, 25)
ROBE_STRIPES: tuple[Colour, ...] = ((160, 28, 42), (222, 170, 58), (160, 28, 42), (38, 70, 130))
SLEEVE: Colour = (150, 26, 40)
ROBE_TRIM: Colour = (40, 110, 70)
SASH: Colour = (230, 190, 70)
TROUSERS: Colour = (70, 50, 40)
BOOTS: Colour = (30, 25, 25)
HAT_FELT: Colour = (30, 100, 150)
HAT_TRIM: Colour = (225, 175, 60)
FUR: Colour = (125, 85, 50)
FUR_DARK: Colour = (90, 60, 35)
TASSEL: Colour = (200, 40, 40)

# Caption words for each pose. "riding" has no horse drawn, so the caption says what is actually there.
POSE_WORDS: dict[str, str] = {
    "standing": "standing",
    "walking": "walking",
    "running": "running",
    "riding": "sitting astride with legs apart as if riding",
    "sitting": "sitting on a wooden stool",
    "pointing": "pointing to the side",
    "laughing": "laughing, hands on belly",
    "waving": "waving",
    "jumping": "jumping with arms raised",
    "kneeling": "kneeling on one knee",
    "arms_crossed": "arms crossed",
    "looking_back": "looking back over his shoulder",
    "talking": "talking with a raised hand",
    "sneaking": "sneaking on tiptoe",
}


# ---------------------------------------------------------------------------------------------- settings


def _gradient(img: Image.Image, top: Colour, bottom: Colour, y0: float = 0.0, y1: float = 1.0) -> None:
    """Fill rows y0..y1 (fractions of the height) with a vertical colour gradient."""
    w, h = img.size
    a, b = int(y0 * h), max(int(y0 * h) + 1, int(y1 * h))
    t = np.linspace(0.0, 1.0, b - a)[:, None, None]
    rows = (1 - t) * np.array(top, float) + t * np.array(bottom, float)
    band = np.broadcast_to(rows, (b - a, w, 3)).astype(np.uint8)
    img.paste(Image.fromarray(np.ascontiguousarray(band), "RGB"), (0, a))


def _jitter(colour: Colour, rng: random.Random, amount: int = 12) -> Colour:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in colour)  # type: ignore[return-value]


def _sky_and_ground(
    img: Image.Image, rng: random.Random, sky: tuple[Colour, Colour], ground: tuple[Colour, Colour]
) -> float:
    horizon = rng.uniform(0.52, 0.6)
    _gradient(img, _jitter(sky[0], rng), _jitter(sky[1], rng), 0.0, horizon)
    _gradient(img, _jitter(ground[0], rng), _jitter(ground[1], rng), horizon, 1.0)
    return horizon


def _cloud(draw: ImageDraw.ImageDraw, x: float, y: float, r: float) -> None:
    for dx, dy, k in ((-1.0, 0.2, 0.7), (0.0, 0.0, 1.0), (1.0, 0.25, 0.75), (0.5, -0.3, 0.7)):
        cx, cy, rr = x + dx * r, y + dy * r, r * k
        draw.ellipse((cx - rr, cy - rr * 0.7, cx + rr, cy + rr * 0.7), fill=(250, 250, 252))


def _steppe(img: Image.Image, rng: random.Random) -> None:
    w, h = img.size
    horizon = _sky_and_ground(img, rng, ((90, 150, 220), (190, 220, 245)), ((170, 180, 90), (120, 150, 60)))
    draw = ImageDraw.Draw(img)
    for _ in range(2):
        _cloud(draw, rng.uniform(0.1, 0.9) * w, rng.uniform(0.08, 0.3) * h, rng.uniform(0.05, 0.08) * w)
    for i in range(3):  # low rolling hills on the horizon
        cx, rx = rng.uniform(0, 1) * w, rng.uniform(0.3, 0.5) * w
        draw.ellipse((cx - rx, horizon * h - 0.05 * h, cx + rx, horizon * h + 0.08 * h), fill=(140 - 15 * i, 165, 80))
    for _ in range(14):  # grass tufts
        x, y = rng.uniform(0, 1) * w, rng.uniform(horizon + 0.05, 0.98) * h
        for dx in (-0.008, 0.0, 0.008):
            draw.line((x, y, x + dx * 2 * w, y - 0.025 * h), fill=(90, 120, 40), width=max(1, w // 200))


def _bazaar(img: Image.Image, rng: random.Random) -> None:
    w, h = img.size
    horizon = _sky_and_ground(img, rng, ((240, 200, 140), (250, 230, 190)), ((215, 180, 130), (190, 150, 100)))
    draw = ImageDraw.Draw(img)
    awnings = ((200, 50, 50), (40, 120, 170), (220, 150, 40), (60, 140, 80))
    n = 3
    for i in range(n):
        x0 = (i / n + rng.uniform(0.0, 0.03)) * w
        x1 = x0 + w / n * 0.9
        top, counter = (horizon - 0.3) * h, (horizon - 0.02) * h
        draw.rectangle((x0 + 0.02 * w, top, x0 + 0.03 * w, counter), fill=(110, 75, 45))  # poles
        draw.rectangle((x1 - 0.03 * w, top, x1 - 0.02 * w, counter), fill=(110, 75, 45))
        stripes = 6
        colour = awnings[(i + rng.randint(0, 3)) % len(awnings)]
        for k in range(stripes):  # striped awning, scalloped edge
            sx0 = x0 + (x1 - x0) * k / stripes
            sx1 = x0 + (x1 - x0) * (k + 1) / stripes
            fill = colour if k % 2 == 0 else (245, 240, 225)
            draw.rectangle((sx0, top - 0.08 * h, sx1, top), fill=fill)
            draw.pieslice((sx0, top - 0.03 * h, sx1, top + 0.03 * h), 0, 180, fill=fill)
        draw.rectangle((x0, counter - 0.08 * h, x1, counter + 0.02 * h), fill=(140, 95, 55))  # counter
        for k in range(5):  # goods: fruit, pots
            cx = x0 + (x1 - x0) * (k + 0.5) / 5
            r = 0.018 * w
            fruit = ((230, 120, 30), (190, 30, 40), (120, 170, 50), (240, 200, 60))[(k + i) % 4]
            draw.ellipse((cx - r, counter - 0.08 * h - 2 * r, cx + r, counter - 0.08 * h), fill=fruit)


def _yurt(img: Image.Image, rng: random.Random) -> None:
    w, h = img.size
    horizon = _sky_and_ground(img, rng, ((110, 170, 230), (200, 230, 250)), ((120, 170, 80), (90, 140, 60)))
    draw = ImageDraw.Draw(img)
    _cloud(draw, rng.uniform(0.6, 0.9) * w, 0.12 * h, 0.06 * w)
    cx = rng.choice((0.22, 0.78)) * w
    rx, base = 0.2 * w, (horizon + 0.05) * h
    wall_top = base - 0.16 * h
    draw.pieslice((cx - rx, wall_top - 0.14 * h, cx + rx, wall_top + 0.14 * h), 180, 360, fill=(245, 240, 228))
    draw.rectangle((cx - rx, wall_top, cx + rx, base), fill=(240, 234, 220))
    draw.rectangle((cx - rx, wall_top + 0.02 * h, cx + rx, wall_top + 0.045 * h), fill=(170, 40, 40))  # band
    draw.rectangle((cx - 0.04 * w, base - 0.11 * h, cx + 0.04 * w, base), fill=(190, 60, 40))  # door
    draw.ellipse((cx - 0.03 * w, wall_top - 0.15 * h, cx + 0.03 * w, wall_top - 0.13 * h), fill=(120, 90, 60))


def _night(img: Image.Image, rng: random.Random) -> None:
    w, h = img.size
    horizon = _sky_and_ground(img, rng, ((10, 15, 45), (40, 50, 100)), ((45, 70, 60), (30, 50, 45)))
    draw = ImageDraw.Draw(img)
    for _ in range(30):
        x, y, r = rng.uniform(0, 1) * w, rng.uniform(0, horizon - 0.05) * h, rng.choice((1, 1, 2)) * w / 256
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(250, 250, 220))
    mx, my, mr = rng.uniform(0.15, 0.85) * w, rng.uniform(0.1, 0.2) * h, 0.07 * w
    draw.ellipse((mx - mr, my - mr, mx + mr, my + mr), fill=(250, 240, 190))
    draw.ellipse((mx - mr * 0.4, my - mr * 0.2, mx - mr * 0.1, my + mr * 0.1), fill=(225, 215, 170))  # crater
    for i in range(2):
        cx, rx = rng.uniform(0, 1) * w, rng.uniform(0.3, 0.5) * w
        draw.ellipse((cx - rx, (horizon - 0.07) * h, cx + rx, (horizon + 0.1) * h), fill=(20 + 8 * i, 35, 40))


def _desert(img: Image.Image, rng: random.Random) -> None:
    w, h = img.size
    horizon = _sky_and_ground(img, rng, ((245, 170, 90), (250, 225, 160)), ((230, 180, 100), (210, 150, 80)))
    draw = ImageDraw.Draw(img)
    sx, sy, sr = rng.uniform(0.15, 0.85) * w, 0.15 * h, 0.06 * w
    draw.ellipse((sx - sr, sy - sr, sx + sr, sy + sr), fill=(255, 245, 200))
    shades = ((225, 165, 90), (235, 185, 110), (215, 150, 80))
    for i, shade in enumerate(shades):
        cx, rx = rng.uniform(0, 1) * w, rng.uniform(0.35, 0.6) * w
        y = (horizon - 0.06 + 0.1 * i) * h
        draw.ellipse((cx - rx, y, cx + rx, y + 0.3 * h), fill=shade)


def _mountains(img: Image.Image, rng: random.Random) -> None:
    w, h = img.size
    horizon = _sky_and_ground(img, rng, ((120, 170, 230), (215, 235, 250)), ((110, 150, 80), (80, 120, 60)))
    draw = ImageDraw.Draw(img)
    for i in range(4):
        cx = (i / 3 + rng.uniform(-0.08, 0.08)) * w
        half, peak = rng.uniform(0.2, 0.3) * w, rng.uniform(0.12, 0.3) * h
        base = horizon * h + 2
        draw.polygon(((cx - half, base), (cx, peak), (cx + half, base)), fill=(115 + 12 * (i % 2), 120, 135))
        cap = 0.3  # snow cap: the top 30 % of the peak
        draw.polygon(
            ((cx - half * cap, peak + (base - peak) * cap), (cx, peak), (cx + half * cap, peak + (base - peak) * cap)),
            fill=(245, 248, 252),
        )


def _river(img: Image.Image, rng: random.Random) -> None:
    w, h = img.size
    horizon = _sky_and_ground(img, rng, ((100, 165, 225), (200, 228, 248)), ((130, 180, 80), (100, 150, 60)))
    draw = ImageDraw.Draw(img)
    _cloud(draw, rng.uniform(0.1, 0.5) * w, 0.15 * h, 0.06 * w)
    x_far, x_near = rng.uniform(0.3, 0.7) * w, rng.uniform(0.2, 0.8) * w
    y0 = horizon * h
    # A river winding from the horizon to the foreground, widening with perspective.
    left = [(x_far - 0.02 * w, y0), (x_near - 0.22 * w, (horizon + 0.2) * h), (x_near - 0.35 * w, h)]
    right = [(x_near + 0.35 * w, h), (x_near + 0.22 * w, (horizon + 0.2) * h), (x_far + 0.02 * w, y0)]
    draw.polygon(left + right, fill=(70, 130, 200))
    draw.line(left, fill=(150, 125, 80), width=max(1, w // 120))
    draw.line(right, fill=(150, 125, 80), width=max(1, w // 120))
    for _ in range(6):  # reeds
        x = rng.choice((rng.uniform(0.0, 0.12), rng.uniform(0.88, 1.0))) * w
        draw.line((x, 0.98 * h, x + 0.01 * w, (horizon + 0.2) * h), fill=(70, 110, 40), width=max(1, w // 150))


def _village(img: Image.Image, rng: random.Random) -> None:
    w, h = img.size
    horizon = _sky_and_ground(img, rng, ((120, 175, 230), (210, 232, 250)), ((190, 170, 130), (160, 140, 105)))
    draw = ImageDraw.Draw(img)
    walls = ((225, 205, 165), (210, 190, 150), (235, 220, 185))
    x = -rng.uniform(0.0, 0.1) * w
    i = 0
    while x < w:
        hw = rng.uniform(0.22, 0.3) * w
        top = (horizon - rng.uniform(0.2, 0.28)) * h
        draw.rectangle((x, top, x + hw, horizon * h), fill=walls[i % 3])
        draw.polygon(((x - 0.02 * w, top), (x + hw / 2, top - 0.08 * h), (x + hw + 0.02 * w, top)), fill=(150, 80, 55))
        draw.rectangle((x + hw * 0.2, top + 0.05 * h, x + hw * 0.4, top + 0.1 * h), fill=(70, 100, 140))  # window
        draw.rectangle((x + hw * 0.6, horizon * h - 0.12 * h, x + hw * 0.8, horizon * h), fill=(120, 80, 50))  # door
        x += hw + 0.02 * w
        i += 1
    # The street, narrowing towards the horizon.
    draw.polygon(((0.4 * w, horizon * h), (0.6 * w, horizon * h), (0.95 * w, h), (0.05 * w, h)), fill=(175, 155, 120))


@dataclass(frozen=True)
class _Setting:
    key: str
    words: str
    paint: Callable[[Image.Image, random.Random], None]


SETTINGS: tuple[_Setting, ...] = (
    _Setting("steppe", "on the open steppe under a blue sky", _steppe),
    _Setting("bazaar", "in a bazaar with striped market stalls", _bazaar),
    _Setting("yurt", "beside a white yurt on the grassland", _yurt),
    _Setting("night", "at night under a full moon and stars", _night),
    _Setting("desert", "among desert sand dunes", _desert),
    _Setting("mountains", "before snowy mountains", _mountains),
    _Setting("river", "by a winding river", _river),
    _Setting("village", "on a village street", _village),
)


# --------------------------------------------------------------------------------------------- character


def _add(a: Point, b: Point, k: float = 1.0) -> Point:
    return (a[0] + k * b[0], a[1] + k * b[1])


def _unit(v: Point) -> Point:
    n = math.hypot(*v) or 1.0
    return (v[0] / n, v[1] / n)


@dataclass(frozen=True)
class _Figure:
    """Where the character's parts are, in pose units, for one pose."""

    joints: dict[str, Point]
    head: Point
    up: Point  # the head's "up" (unit), from neck towards nose
    side: Point  # the head's "image right" (unit)
    face_shift: float  # -1..1: features nudged towards where the nose points, a hint of the head turn

    def hat_tip(self) -> Point:
        return _add(self.head, self.up, _HAT_TIP * _HEAD_R)


def _figure(pose: Pose) -> _Figure:
    names = ("neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
             "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle")  # fmt: skip
    joints: dict[str, Point] = {}
    for n in names:
        p = pose.point(n)
        if p is None:
            raise ValueError(f"pose {pose.name!r} hides {n}; the sample character needs every body joint")
        joints[n] = p
    neck, nose = joints["neck"], pose.point("nose") or (joints["neck"][0], joints["neck"][1] - 0.085)
    up = _unit((nose[0] - neck[0], nose[1] - neck[1]))
    # Keep the hat upright-ish: a nose far to one side (head turned) should not tip the whole head over.
    up = _unit((up[0] * 0.5, up[1]))
    side = (-up[1], up[0])
    head = _add(neck, up, _HEAD_LIFT * _HEAD_R)
    shift = max(-1.0, min(1.0, (nose[0] - neck[0]) / 0.05))
    return _Figure(joints=joints, head=head, up=up, side=side, face_shift=shift)


def _extent(fig: _Figure) -> tuple[float, float, float, float]:
    """Bounding box of everything drawn, in pose units (limbs padded by their thickness)."""
    pad = max(_LEG_W, _BOOT_R * 1.3)
    xs = [p[0] for p in fig.joints.values()]
    ys = [p[1] for p in fig.joints.values()]
    x0, y0, x1, y1 = min(xs) - pad, min(ys) - pad, max(xs) + pad, max(ys) + pad
    r = _HEAD_R * 1.2  # ears stick out a little
    tip = fig.hat_tip()
    x0, x1 = min(x0, fig.head[0] - r, tip[0] - 0.03), max(x1, fig.head[0] + r, tip[0] + 0.03)
    y0, y1 = min(y0, fig.head[1] - r, tip[1] - 0.03), max(y1, fig.head[1] + r)
    return x0, y0, x1, y1


class _Painter:
    """Draws the character onto a canvas, mapping pose units to pixels with one scale and offset."""

    def __init__(self, img: Image.Image, fig: _Figure, scale: float, offset: Point) -> None:
        self.img, self.fig = img, fig
        self.draw = ImageDraw.Draw(img)
        self.px = img.size[0] * scale  # pixels per pose unit
        self.offset = offset  # pixel position of pose (0, 0)

    def at(self, p: Point) -> Point:
        return (self.offset[0] + p[0] * self.px, self.offset[1] + p[1] * self.px)

    def head_local(self, u: float, v: float) -> Point:
        """A point on the head: u head radii to image right, v head radii up (tilts with the head)."""
        f = self.fig
        return self.at(_add(_add(f.head, f.side, u * _HEAD_R), f.up, v * _HEAD_R))

    def disc(self, centre: Point, r_units: float, fill: Colour, outline: Colour | None = None) -> None:
        (x, y), r = self.at(centre), r_units * self.px
        self.draw.ellipse((x - r, y - r, x + r, y + r), fill=fill, outline=outline, width=max(1, round(r * 0.12)))

    def segment(self, a: Point, b: Point, width_units: float, fill: Colour, outline: Colour = OUTLINE) -> None:
        """A rounded limb: an outlined thick line with round joints."""
        w = width_units * self.px
        for colour, extra in ((outline, max(2.0, w * 0.18)), (fill, 0.0)):
            width = w + extra
            self.draw.line((self.at(a), self.at(b)), fill=colour, width=max(1, round(width)))
            for p in (a, b):
                (x, y), r = self.at(p), width / 2
                self.draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)

    # -- parts, in drawing order

    def stool(self) -> None:
        """A wooden stool under the hips, so a seated figure is not sitting on air."""
        j = self.fig.joints
        hip_x = (j["r_hip"][0] + j["l_hip"][0]) / 2
        seat_y = max(j["r_hip"][1], j["l_hip"][1]) + 0.035
        floor_y = max(j["r_ankle"][1], j["l_ankle"][1]) + _BOOT_R
        x0, x1 = hip_x - 0.09, hip_x + 0.1
        wood, line = (150, 100, 55), max(1, round(0.008 * self.px))
        for lx in (x0 + 0.02, x1 - 0.035):
            self.draw.rectangle(
                (*self.at((lx, seat_y)), *self.at((lx + 0.03, floor_y))), fill=wood, outline=OUTLINE, width=line
            )
        self.draw.rectangle(
            (*self.at((x0, seat_y - 0.01)), *self.at((x1, seat_y + 0.03))), fill=wood, outline=OUTLINE, width=line
        )

    def legs(self) -> None:
        j = self.fig.joints
        for s in ("r", "l"):
            self.segment(j[f"{s}_hip"], j[f"{s}_knee"], _LEG_W, TROUSERS)
            self.segment(j[f"{s}_knee"], j[f"{s}_ankle"], _LEG_W * 0.95, BOOTS)
            self.disc(j[f"{s}_ankle"], _BOOT_R, BOOTS)

    def robe(self) -> None:
        j = self.fig.joints
        neck = j["neck"]
        hip_c = ((j["r_hip"][0] + j["l_hip"][0]) / 2, (j["r_hip"][1] + j["l_hip"][1]) / 2)
        down = _unit((hip_c[0] - neck[0], hip_c[1] - neck[1]))
        across = (-down[1], down[0]) if down[1] >= 0 else (down[1], -down[0])  # points to image right
        sh = max(_MIN_SHOULDER_HALF, math.dist(j["r_shoulder"], neck))
        wa = max(_MIN_WAIST_HALF, math.dist(j["r_hip"], hip_c))
        hems = []
        for s in ("r", "l"):
            hip, knee = j[f"{s}_hip"], j[f"{s}_knee"]
            hems.append(_add(hip, (knee[0] - hip[0], knee[1] - hip[1]), _HEM_AT))
        # Order the hem corners along `across` so crossed legs (side views) never make a bow-tie polygon.
        hems.sort(key=lambda p: p[0] * across[0] + p[1] * across[1])
        flare = 0.035
        outline = [
            _add(neck, across, -sh),
            _add(neck, across, sh),
            _add(hip_c, across, wa),
            _add(hems[1], across, flare),
            _add(hems[0], across, -flare),
            _add(hip_c, across, -wa),
        ]
        pts = [self.at(p) for p in outline]
        mask = Image.new("L", self.img.size, 0)
        ImageDraw.Draw(mask).polygon(pts, fill=255)
        self.img.paste(self._stripes(across), (0, 0), mask)
        self.draw.polygon(pts, outline=OUTLINE, width=max(1, round(0.008 * self.px)))
        # Collar trim: a V from the shoulders to the chest, and a sash at the waist.
        chest = _add(neck, down, 0.12)
        trim_w = max(1, round(0.022 * self.px))
        collar = [self.at(_add(neck, across, -0.05)), self.at(chest), self.at(_add(neck, across, 0.05))]
        self.draw.line(collar, fill=ROBE_TRIM, width=trim_w, joint="curve")
        waist = _add(neck, down, 0.24)
        self.segment(_add(waist, across, -wa * 0.95), _add(waist, across, wa * 0.95), 0.035, SASH)

    def _stripes(self, across: Point) -> Image.Image:
        """Robe stripes running along the body (perpendicular to `across`), as a full-canvas image."""
        w, h = self.img.size
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        band = ((xx * across[0] + yy * across[1]) / (_STRIPE_W * self.px)).astype(np.int64)
        palette = np.array(ROBE_STRIPES, np.uint8)
        return Image.fromarray(palette[band % len(ROBE_STRIPES)], "RGB")

    def arms(self) -> None:
        j = self.fig.joints
        for s in ("r", "l"):
            self.segment(j[f"{s}_shoulder"], j[f"{s}_elbow"], _ARM_W, SLEEVE)
            self.segment(j[f"{s}_elbow"], j[f"{s}_wrist"], _ARM_W * 0.9, SLEEVE)
            self.disc(j[f"{s}_wrist"], _HAND_R, SKIN, OUTLINE)

    def head(self, laughing: bool) -> None:
        hl, d = self.head_local, self.draw
        r = _HEAD_R * self.px
        line = max(1, round(r * 0.06))
        for u in (-0.98, 0.98):  # ears behind the face
            x, y = hl(u, 0.0)
            d.ellipse((x - 0.2 * r, y - 0.26 * r, x + 0.2 * r, y + 0.26 * r), fill=SKIN, outline=OUTLINE, width=line)
        x, y = self.at(self.fig.head)
        d.ellipse((x - r, y - r, x + r, y + r), fill=SKIN, outline=OUTLINE, width=line)
        k = 0.12 * self.fig.face_shift  # features slide a little towards the way the head is turned
        for u in (-0.55, 0.55):  # cheeks
            cx, cy = hl(u + k, -0.28)
            d.ellipse((cx - 0.14 * r, cy - 0.1 * r, cx + 0.14 * r, cy + 0.1 * r), fill=CHEEK)
        for u in (-0.36, 0.36):  # eyes: white, dark pupil, brow above
            ex, ey = hl(u + k, 0.12)
            d.ellipse(
                (ex - 0.15 * r, ey - 0.19 * r, ex + 0.15 * r, ey + 0.19 * r),
                fill=(255, 255, 255),
                outline=INK,
                width=line,
            )
            px, py = hl(u + k * 1.6, 0.1)
            d.ellipse((px - 0.085 * r, py - 0.1 * r, px + 0.085 * r, py + 0.1 * r), fill=INK)
            sgn = 1 if u > 0 else -1
            brow = [hl(u + k - sgn * 0.2, 0.4), hl(u + k, 0.47), hl(u + k + sgn * 0.2, 0.42)]
            d.line(brow, fill=INK, width=max(2, round(r * 0.09)), joint="curve")
        nx, ny = hl(k, -0.1)  # nose
        d.ellipse((nx - 0.1 * r, ny - 0.08 * r, nx + 0.1 * r, ny + 0.08 * r), fill=SKIN_SHADE)
        thin = max(1, round(r * 0.06))
        for sgn in (-1, 1):  # thin moustache: out from under the nose, ends curling up (a drooping one frowns)
            tash = [hl(k + sgn * 0.04, -0.24), hl(k + sgn * 0.24, -0.3), hl(k + sgn * 0.42, -0.3),
                    hl(k + sgn * 0.52, -0.2)]  # fmt: skip
            d.line(tash, fill=INK, width=thin, joint="curve")
        if laughing:
            mx, my = hl(k, -0.52)
            d.chord(
                (mx - 0.25 * r, my - 0.16 * r, mx + 0.25 * r, my + 0.2 * r),
                0,
                180,
                fill=(130, 30, 40),
                outline=INK,
                width=line,
            )
        else:
            d.line([hl(k - 0.22, -0.46), hl(k, -0.56), hl(k + 0.22, -0.46)], fill=INK, width=line, joint="curve")

    def hat(self) -> None:
        hl = self.head_local
        r = _HEAD_R * self.px
        line = max(1, round(r * 0.05))
        cone = [hl(-0.82, 0.72), hl(0.14, _HAT_TIP - 0.1), hl(0.82, 0.72)]
        self.draw.polygon(cone, fill=HAT_FELT, outline=OUTLINE, width=line)
        self.draw.line([hl(-0.45, 1.15), hl(0.1, 1.35), hl(0.5, 1.15)], fill=HAT_TRIM, width=max(1, round(r * 0.08)))
        tx, ty = hl(0.14, _HAT_TIP - 0.1)
        self.draw.ellipse(
            (tx - 0.14 * r, ty - 0.14 * r, tx + 0.14 * r, ty + 0.14 * r), fill=TASSEL, outline=OUTLINE, width=line
        )
        # Fur band: a thick ellipse round the base of the cone, with a fixed pattern of darker tufts.
        band = [
            hl(1.08 * math.cos(t), 0.72 + 0.3 * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 48, endpoint=False)
        ]
        self.draw.polygon(band, fill=FUR, outline=OUTLINE, width=line)
        for u, v in ((-0.8, 0.7), (-0.5, 0.82), (-0.2, 0.66), (0.1, 0.8), (0.4, 0.68), (0.7, 0.8), (0.88, 0.66)):
            x, y = hl(u, v)
            self.draw.ellipse((x - 0.07 * r, y - 0.05 * r, x + 0.07 * r, y + 0.05 * r), fill=FUR_DARK)


def _draw_character(img: Image.Image, pose: Pose, rng: random.Random) -> None:
    """Fit the character in `pose` into the frame with a small random scale and offset, and draw it."""
    fig = _figure(pose)
    x0, y0, x1, y1 = _extent(fig)
    avail = 1.0 - 2 * _FIT_MARGIN
    scale = min(avail / (x1 - x0), avail / (y1 - y0), _MAX_SCALE) * rng.uniform(0.9, 1.0)
    free_x, free_y = avail - (x1 - x0) * scale, avail - (y1 - y0) * scale
    # Horizontally anywhere near the middle; vertically low, so the feet stand on the ground.
    left = _FIT_MARGIN + free_x * rng.uniform(0.25, 0.75)
    top = _FIT_MARGIN + free_y * rng.uniform(0.7, 1.0)
    side = img.size[0]
    offset = ((left - x0 * scale) * side, (top - y0 * scale) * side)
    painter = _Painter(img, fig, scale, offset)
    if pose.name == "sitting":
        painter.stool()
    painter.legs()
    painter.robe()
    painter.arms()
    painter.head(laughing=pose.name == "laughing")
    painter.hat()


# ------------------------------------------------------------------------------------------------ public


def draw_sample(pose_name: str, setting_index: int, size: int, rng: random.Random) -> Image.Image:
    """One `size` x `size` RGB image of the character in a pose and setting (see SETTINGS)."""
    canvas = size * _SUPERSAMPLE
    img = Image.new("RGB", (canvas, canvas))
    SETTINGS[setting_index % len(SETTINGS)].paint(img, rng)
    _draw_character(img, get_pose(pose_name), rng)
    return img.resize((size, size), Image.Resampling.LANCZOS)


def sample_caption(character: Character, pose_name: str, setting_index: int) -> str:
    """The sidecar caption: trigger first, as every training caption must start."""
    setting = SETTINGS[setting_index % len(SETTINGS)]
    return f"{character.trigger}, {character.name}, {POSE_WORDS[pose_name]}, {setting.words}, flat cartoon illustration"


def draw_sample_set(out_dir: Path, character: Character, *, count: int, size: int, seed: int) -> list[Path]:
    """Draw `count` images of the character (with .txt caption sidecars) into `out_dir`; return image paths.

    Image i (from 1) has pose POSE_NAMES[i-1] and setting SETTINGS[i-1], both cycling; every third is a
    JPEG. The folder is built beside `out_dir` and renamed into place, replacing any old one, so a killed
    run leaves either the old set or the new one, never half of one.
    """
    if count < 1 or size < 16:
        raise ValueError(f"need count >= 1 and size >= 16, got count={count}, size={size}")
    out_dir = Path(out_dir)
    master = random.Random(seed)
    names: list[str] = []
    with atomic_path(out_dir) as staged:
        staged.mkdir(parents=True)
        for i in range(count):
            pose_name = POSE_NAMES[i % len(POSE_NAMES)]
            rng = random.Random(master.getrandbits(64))  # one stream per image: image i is stable whatever count
            image = draw_sample(pose_name, i, size, rng)
            is_jpeg = (i + 1) % _JPEG_EVERY == 0
            name = f"sample_{i + 1:02d}.{'jpg' if is_jpeg else 'png'}"
            if is_jpeg:
                image.save(staged / name, format="JPEG", quality=_JPEG_QUALITY)
            else:
                image.save(staged / name, format="PNG")
            (staged / name).with_suffix(".txt").write_text(
                sample_caption(character, pose_name, i) + "\n", encoding="utf-8"
            )
            names.append(name)
    logger.info("drew %d sample images of %s (%d px, seed %d) into %s", count, character.name, size, seed, out_dir)
    return [out_dir / n for n in names]
