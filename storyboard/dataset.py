"""The dataset folder the caption stage writes and train, generate and evaluate read: manifest and images.

Its own module, so that reading a dataset does not make the caption backends (and their OpenAI client) part of
every later stage's code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from storyboard.errors import StoryboardError


class DatasetError(StoryboardError):
    """The dataset folder is missing or incomplete; the message says which stage makes it."""


@dataclass
class ManifestRecord:
    source: str  # path relative to the input folder, as the user named it
    sha256: str
    status: str  # "ok" | "excluded" | "duplicate"
    image: str | None = None  # file in the dataset's images/ folder
    caption: str | None = None
    reason: str = ""
    width: int = 0
    height: int = 0


def read_manifest(dataset_dir: Path) -> list[ManifestRecord]:
    path = Path(dataset_dir) / "manifest.jsonl"
    if not path.exists():
        raise DatasetError(f"{path} missing: run the caption stage first (`dvc repro caption`)")
    with open(path, encoding="utf-8") as f:
        return [ManifestRecord(**json.loads(line)) for line in f if line.strip()]


def training_records(dataset_dir: Path | None) -> list[ManifestRecord]:
    """The manifest's usable pictures, in its order; none without a dataset (`storyboard generate` ad hoc)."""
    if dataset_dir is None or not (Path(dataset_dir) / "manifest.jsonl").exists():
        return []
    return [r for r in read_manifest(dataset_dir) if r.status == "ok"]


def load_training_images(dataset_dir: Path | None) -> list[Image.Image]:
    """The training images: the character as the user drew it, for likeness checks and cross figures."""
    return [Image.open(Path(dataset_dir) / "images" / r.image).convert("RGB") for r in training_records(dataset_dir)]


def load_training_captions(dataset_dir: Path | None) -> list[str | None]:
    """The training images' captions, in the order of `load_training_images`."""
    return [r.caption for r in training_records(dataset_dir)]
