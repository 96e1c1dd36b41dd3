"""Training inputs: the captioned examples, and their latents and text embeddings computed once, by bucket."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps

from storyboard.dataset import read_manifest
from storyboard.settings import Train
from storyboard.train.buckets import Bucket, fit_to_bucket, make_buckets, nearest_bucket
from storyboard.train.errors import TrainError
from storyboard.train.parts import SdxlParts

logger = logging.getLogger(__name__)


@dataclass
class TrainExample:
    image: Path
    caption: str


def load_examples(dataset_dir: Path) -> list[TrainExample]:
    records = [r for r in read_manifest(dataset_dir) if r.status == "ok"]
    if not records:
        raise TrainError(f"{dataset_dir}/manifest.jsonl lists no usable images: check the caption stage's REPORT.md")
    examples = [TrainExample(Path(dataset_dir) / "images" / r.image, r.caption or "") for r in records]
    if missing := [e.image.name for e in examples if not e.caption.strip()]:
        raise TrainError(f"{dataset_dir}: images without a caption: {', '.join(missing[:5])}; rerun the caption stage")
    return examples


@dataclass
class BucketTensors:
    bucket: Bucket
    latents: torch.Tensor  # (N, 4, h, w)
    flipped: torch.Tensor | None  # mirrored latents when random_flip
    tokens: torch.Tensor  # (N, 2, 77)
    prompt_embeds: torch.Tensor | None  # (N, 77, D); None when text encoders train
    pooled: torch.Tensor | None
    time_ids: torch.Tensor  # (N, 6): original size, crop top-left, target size


class LatentCache:
    """Every training input computed once, on the training device, grouped by bucket."""

    def __init__(self, buckets: list[BucketTensors], empty_tokens: torch.Tensor, empty_embeds, empty_pooled):
        self.buckets = buckets
        self.empty_tokens, self.empty_embeds, self.empty_pooled = empty_tokens, empty_embeds, empty_pooled
        sizes = torch.tensor([len(b.latents) for b in buckets], dtype=torch.float32)
        self.bucket_weights = sizes / sizes.sum()

    def __len__(self) -> int:
        return sum(len(b.latents) for b in self.buckets)

    @classmethod
    @torch.no_grad()
    def build(cls, parts: SdxlParts, examples: list[TrainExample], settings: Train, resolution: int) -> LatentCache:
        buckets = (
            make_buckets(resolution, parts.bucket_step) if settings.bucketing else [Bucket(resolution, resolution)]
        )
        rng = random.Random(settings.seed)
        grouped: dict[Bucket, list[tuple[Image.Image, str, list[int]]]] = {}
        for example in examples:
            image = ImageOps.exif_transpose(Image.open(example.image)).convert("RGB")
            bucket = nearest_bucket(image.size, buckets)
            fitted, (top, left) = fit_to_bucket(image, bucket, settings.center_crop, rng)
            time_ids = [image.height, image.width, top, left, bucket.height, bucket.width]
            grouped.setdefault(bucket, []).append((fitted, example.caption, time_ids))
        cached = []
        for bucket, items in sorted(grouped.items()):
            images = [im for im, _, _ in items]
            latents = torch.cat([parts.encode_images(images[i : i + 4]) for i in range(0, len(images), 4)])
            flipped = None
            if settings.random_flip:
                mirrored = [ImageOps.mirror(im) for im in images]
                flipped = torch.cat([parts.encode_images(mirrored[i : i + 4]) for i in range(0, len(mirrored), 4)])
            tokens = parts.tokenize([c for _, c, _ in items])
            embeds = pooled = None
            if not settings.text_encoder_lora:
                embeds, pooled = parts.encode_tokens(tokens)
            time_ids = torch.tensor([t for _, _, t in items], dtype=parts.weight_dtype, device=parts.device)
            cached.append(BucketTensors(bucket, latents, flipped, tokens, embeds, pooled, time_ids))
            logger.info("bucket %dx%d: %d images", bucket.width, bucket.height, len(items))
        empty_tokens = parts.tokenize([""])
        empty_embeds, empty_pooled = parts.encode_tokens(empty_tokens)
        return cls(cached, empty_tokens, empty_embeds, empty_pooled)
