"""The sample set's backgrounds: eight settings painted by code (steppe, bazaar, yurt, night, desert, mountains,
river, village), each with the words its caption uses."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

Colour = tuple[int, int, int]


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
