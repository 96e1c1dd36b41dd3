"""Opening user images: every odd input is handled here, once, with a message naming the file and the fix."""

from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from storyboard.errors import StoryboardError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


class BadImage(StoryboardError):
    """An input file can't be used as an image; the message names it and says what to do."""


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder` or below it, in a stable order (case-insensitive suffixes)."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def content_hash(path: Path) -> str:
    """SHA-256 of the file's bytes: names outputs and keys caches, so renames cost nothing."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_rgb(path: Path, *, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Open an image as upright 8-bit RGB: EXIF rotation applied, first frame of animations, alpha flattened."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise BadImage(f"{path}: empty file (0 bytes); re-export or remove it")
    try:
        with Image.open(path) as im:
            im.seek(0)  # animated GIF/WebP: the first frame stands for the file
            im.load()
            image = ImageOps.exif_transpose(im)
        return _to_rgb(image, background)  # inside the try: a mode PIL can't convert is a BadImage too
    except UnidentifiedImageError:
        raise BadImage(
            f"{path}: not an image PIL can read (wrong extension?); convert it to PNG or remove it"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage(f"{path}: unreadable or truncated image ({e}); re-export it or remove it") from None


def _to_rgb(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits instead of clipping everything above 255 to white. Through "I" first:
        # point() has no table for big-endian I;16B (16-bit TIFFs saved with Mac byte order) and raises.
        image = image.convert("I").point(lambda v: v / 256).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (*background, 255))
        flat.alpha_composite(rgba)
        return flat.convert("RGB")
    return image.convert("RGB")
