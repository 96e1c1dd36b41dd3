"""The storyboards of a study and the blind sheets raters see.

The rendered contact_sheet.png can't be shown as it is: its title line names the mode and its captions carry CLIP
scores and retry counts. So each storyboard is served as a sheet composed here from its frame_XX.png files,
numbered and nothing else, rebuilt from raw pixels so no PNG text chunk can name the mode either. Each storyboard
gets a random item id; the id -> (story, mode) map stays on the server.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import random
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from storyboard.evaluate.study.store import StudyError

DEFAULT_MODES: tuple[str, ...] = ("baseline", "lora", "ref_guided")
STUDY_COLUMNS = 3
# Frames are shown at this width: tiny-profile 64 px frames blown up, 1024 px SDXL frames shrunk to a page.
FRAME_MIN_PX, FRAME_MAX_PX = 256, 512


@dataclass(frozen=True)
class StudyItem:
    """One storyboard to rate. Only `item_id` and `story_text` ever reach the browser."""

    item_id: str
    story_id: str
    mode: str
    frames: tuple[Path, ...]
    story_text: str


def label_for(index: int) -> str:
    """A, B, ..., Z, AA, AB, ...: spreadsheet-style labels, so a long study never runs out of letters."""
    letters = string.ascii_uppercase
    label = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        label = letters[rem] + label
    return label


def frame_files(story_dir: Path) -> list[Path]:
    """The story's frames in order: as metadata.json lists them, else every frame_*.png by name."""
    try:
        meta = json.loads((story_dir / "metadata.json").read_text(encoding="utf-8"))
        records = sorted(meta["frames"], key=lambda r: r["index"])
        # Bare names only: metadata must not point the server at files outside the story folder.
        names = [r["file"] for r in records if isinstance(r.get("file"), str) and Path(r["file"]).name == r["file"]]
    except (OSError, ValueError, KeyError, TypeError):
        names = []
    if names:
        return [story_dir / name for name in names]
    return sorted(story_dir.glob("frame_*.png"))


def blind_sheet(frames: Sequence[Path], columns: int = STUDY_COLUMNS) -> Image.Image:
    """A grid of the frames, each numbered and nothing else: no title, mode, score or retry count."""
    images = []
    for path in frames:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    size = min(max(images[0].width, FRAME_MIN_PX), FRAME_MAX_PX)
    font = ImageFont.load_default(size=max(14, size // 16))
    gap, label_h = 10, font.size + 8
    cols = min(columns, len(images))
    rows = math.ceil(len(images) / cols)
    frame_h = max(size * image.height // image.width for image in images)  # portrait frames keep their shape
    cell_h = frame_h + label_h
    sheet = Image.new("RGB", (cols * size + (cols + 1) * gap, rows * cell_h + (rows + 1) * gap), "white")
    draw = ImageDraw.Draw(sheet)
    for n, image in enumerate(images):
        # Nearest keeps small frames crisp when blown up; Lanczos for shrinking large ones.
        resample = Image.Resampling.NEAREST if image.width < size else Image.Resampling.LANCZOS
        x = gap + (n % cols) * (size + gap)
        y = gap + (n // cols) * (cell_h + gap)
        sheet.paste(image.resize((size, size * image.height // image.width), resample), (x, y))
        draw.text((x, y + frame_h + 4), str(n + 1), fill="black", font=font)
    return sheet


def _story_text(outputs_root: Path, modes: Sequence[str], story_id: str) -> str:
    """The one-line story from any mode's metadata.json (it is the same in every mode), else the id."""
    for mode in modes:
        try:
            meta = json.loads((outputs_root / mode / story_id / "metadata.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and isinstance(meta.get("story"), str) and meta["story"].strip():
            return meta["story"].strip()
    return story_id


def collect_items(
    outputs_root: Path, story_ids: Sequence[str], modes: Sequence[str], seed: int | None = None
) -> list[StudyItem]:
    """Every story x mode storyboard, each under its own random id; an error naming every one without frames."""
    frames: dict[tuple[str, str], tuple[Path, ...]] = {}
    missing = []
    for story, mode in itertools.product(story_ids, modes):
        found = tuple(frame_files(outputs_root / mode / story))
        if not found or not all(path.is_file() for path in found):
            missing.append(str(outputs_root / mode / story))
        frames[story, mode] = found
    if missing:
        raise StudyError(
            f"{len(missing)} storyboard(s) without frames (frame_XX.png); render them first: {', '.join(missing)}"
        )
    # A seeded generator only when asked: default ids must not be guessable from the item order.
    rng = random.Random(seed) if seed is not None else None
    ids: set[str] = set()
    items = []
    for story in story_ids:
        text = _story_text(outputs_root, modes, story)
        for mode in modes:
            item_id = ""
            while not item_id or item_id in ids:
                item_id = f"{rng.getrandbits(96):024x}" if rng else secrets.token_hex(12)
            ids.add(item_id)
            items.append(StudyItem(item_id, story, mode, frames[story, mode], text))
    return items


def sheet_png(item: StudyItem) -> bytes:
    """The blind sheet as PNG bytes. Saved from a fresh image, so no `info` (PNG text, EXIF) of a frame file can
    ride along into what the browser gets."""
    buffer = io.BytesIO()
    blind_sheet(item.frames).save(buffer, format="PNG")
    return buffer.getvalue()
