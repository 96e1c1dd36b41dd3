"""generate@multiref's reference images: the user's own reference sheet, else a few training images chosen by rule.

The user's sheet wins: every image in the references folder (data/references/ in the DVC pipeline), in file-name
order. With none there, `choose_references` takes generate.multiref.references images from the training set:

1. the clearest front view: the image whose largest face has the highest detector confidence times the share of
   the image it covers (a large, sharp, frontal face scores high; a profile or a distant face scores low or is not
   found), by the profile's face backend;
2. then the fullest figures: the other images by height over width, tallest first (a standing figure seen whole
   is a tall picture; a head and shoulders is a square one); ties keep the training set's order.

With no face found in any image, step 1 is skipped. Each reference is scaled so that its longest side is
generate.multiref.reference_size (None: the frame's resolution): the model's cost grows with every reference's
pixels, and FLUX.2 reads at most a megapixel of each.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from storyboard.dataset import read_manifest
from storyboard.errors import StoryboardError
from storyboard.models.faces import FaceBackend, largest_face

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MIN_SIDE = 64  # FLUX.2's image processor refuses a side shorter than this
MAX_ASPECT = 8  # ... and an aspect ratio beyond this


class NoReferences(StoryboardError):
    """generate@multiref found no image to take the character from; the message says where to put some."""


@dataclass(frozen=True)
class Reference:
    name: str  # the file name in the sheet, or the training image's name
    image: Image.Image
    why: str  # sheet | clearest_face | fullest_figure


def sheet_files(folder: Path | None) -> list[Path]:
    """The images of the user's reference sheet, in file-name order (none when the folder is absent)."""
    if folder is None or not Path(folder).is_dir():
        return []
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def sheet_sha256(folder: Path | None) -> list[tuple[str, str]]:
    """(name, content hash) of every sheet image: what the render hash holds of the sheet."""
    return [(p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in sheet_files(folder)]


def training_images(dataset_dir: Path | None) -> list[tuple[str, Image.Image]]:
    """The training set's usable images with their names, in manifest order."""
    if dataset_dir is None or not (Path(dataset_dir) / "manifest.jsonl").exists():
        return []
    records = [r for r in read_manifest(dataset_dir) if r.status == "ok"]
    return [(r.image, Image.open(Path(dataset_dir) / "images" / r.image).convert("RGB")) for r in records]


def choose_references(
    images: Sequence[tuple[str, Image.Image]], faces: FaceBackend | None, count: int
) -> list[Reference]:
    """The rule of the module docstring over (name, image) pairs of the training set."""
    chosen: list[Reference] = []
    rest = list(images)
    if faces is not None and rest:
        clarity = []
        for (_, image), found in zip(rest, faces.detect_many([image for _, image in rest]), strict=True):
            face = largest_face(found)
            share = face.area / (image.width * image.height) if face is not None else 0.0
            clarity.append(face.score * share if face is not None else 0.0)
        best = max(range(len(rest)), key=lambda i: (clarity[i], -i))
        if clarity[best] > 0:
            name, image = rest.pop(best)
            chosen.append(Reference(name, image, "clearest_face"))
    tallest = sorted(range(len(rest)), key=lambda i: (-rest[i][1].height / rest[i][1].width, i))
    chosen += [Reference(*rest[i], "fullest_figure") for i in tallest[: count - len(chosen)]]
    return chosen


def load_references(
    sheet: Path | None,
    dataset_dir: Path | None,
    faces: FaceBackend | None,
    *,
    count: int,
) -> list[Reference]:
    """The story-independent references of generate@multiref (see the module docstring); the renderer scales them.

    Args:
        sheet: the user's reference folder; its images, when it holds any, are the references.
        dataset_dir: the training dataset, where the rule chooses from otherwise.
        faces: the face backend of the rule's first step (None: skip it).
        count: how many training images the rule takes (generate.multiref.references).
    """
    files = sheet_files(sheet)
    if files:
        references = [Reference(p.name, Image.open(p).convert("RGB"), "sheet") for p in files]
        logger.info("multiref: %d reference(s) from the reference sheet %s", len(references), sheet)
    else:
        references = choose_references(training_images(dataset_dir), faces, count)
        if not references:
            raise NoReferences(
                f"generate@multiref needs pictures of the character: put some in {sheet or 'data/references/'} "
                f"(your reference sheet) or run the caption stage, whose dataset {dataset_dir} it chooses from"
            )
        chosen = ", ".join(f"{r.name} ({r.why})" for r in references)
        logger.info("multiref: references from the training set: %s", chosen)
    return references


def fit(image: Image.Image, size: int) -> Image.Image:
    """`image` scaled so its longest side is `size`, its shortest at least MIN_SIDE; an extreme strip is cropped
    to MAX_ASPECT about its centre."""
    width, height = image.size
    if max(width, height) > MAX_ASPECT * min(width, height):
        side = MAX_ASPECT * min(width, height)
        left, top = (width - min(width, side)) // 2, (height - min(height, side)) // 2
        image = image.crop((left, top, left + min(width, side), top + min(height, side)))
        width, height = image.size
    scale = max(size / max(width, height), MIN_SIDE / min(width, height))
    target = (max(MIN_SIDE, round(width * scale)), max(MIN_SIDE, round(height * scale)))
    return image if target == image.size else image.resize(target, Image.Resampling.LANCZOS)
