"""The sample set's character, drawn by code: the same man in any pose of the pose library, fitted into the
frame with a small random scale and offset."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from storyboard.sample_data.scenery import Colour
from storyboard.story.poses import Pose

Point = tuple[float, float]

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


def draw_character(img: Image.Image, pose: Pose, rng: random.Random) -> None:
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
