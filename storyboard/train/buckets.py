"""Aspect-ratio bucketing: portrait and landscape pictures train at their own shape instead of being cropped square.

Buckets keep about the same pixel count as `resolution`^2 (what SDXL was trained on) in sizes the UNet accepts;
each image goes to the bucket nearest its aspect ratio, is resized to cover it and cropped to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image

MAX_ASPECT = 4.0  # beyond 1:4 the model has seen too few such shapes to be useful


@dataclass(frozen=True, order=True)
class Bucket:
    width: int
    height: int

    @property
    def aspect(self) -> float:
        return self.width / self.height


def make_buckets(resolution: int, step: int) -> list[Bucket]:
    """Sizes (multiples of `step`) with about resolution^2 pixels and aspect ratios within 1:4..4:1."""
    area = resolution * resolution
    buckets = {Bucket(resolution, resolution)}
    width = step
    while width <= resolution * 4:
        height = max(step, round(area / width / step) * step)
        if 1 / MAX_ASPECT <= width / height <= MAX_ASPECT and abs(width * height - area) <= 0.15 * area:
            buckets |= {Bucket(width, height), Bucket(height, width)}  # portrait and landscape alike
        width += step
    return sorted(buckets, key=lambda b: b.aspect)


def nearest_bucket(size: tuple[int, int], buckets: list[Bucket]) -> Bucket:
    aspect = size[0] / size[1]
    return min(buckets, key=lambda b: abs(math.log(b.aspect / aspect)))


def fit_to_bucket(image: Image.Image, bucket: Bucket, center_crop: bool, rng) -> tuple[Image.Image, tuple[int, int]]:
    """Resize to cover the bucket, crop to it; returns the image and the crop's top-left (SDXL conditions on it)."""
    scale = max(bucket.width / image.width, bucket.height / image.height)
    resized = image.resize(
        (max(bucket.width, round(image.width * scale)), max(bucket.height, round(image.height * scale))),
        Image.Resampling.LANCZOS,
    )
    spare_x, spare_y = resized.width - bucket.width, resized.height - bucket.height
    if center_crop:
        left, top = spare_x // 2, spare_y // 2
    else:
        left, top = rng.randint(0, spare_x), rng.randint(0, spare_y)
    return resized.crop((left, top, left + bucket.width, top + bucket.height)), (top, left)
