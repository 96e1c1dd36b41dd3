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

import logging
import random
from pathlib import Path

from PIL import Image

from storyboard.fsutil import atomic_path
from storyboard.sample_data.figure import draw_character
from storyboard.sample_data.scenery import SETTINGS
from storyboard.settings import Character
from storyboard.story.poses import POSE_NAMES, get_pose

logger = logging.getLogger(__name__)

# Drawn at this multiple of the output size and downsampled, which anti-aliases the flat shapes.
_SUPERSAMPLE = 2
_JPEG_EVERY = 3  # every third image is a JPEG, so the caption stage reads more than one format
_JPEG_QUALITY = 92

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


def draw_sample(pose_name: str, setting_index: int, size: int, rng: random.Random) -> Image.Image:
    """One `size` x `size` RGB image of the character in a pose and setting (see SETTINGS)."""
    canvas = size * _SUPERSAMPLE
    img = Image.new("RGB", (canvas, canvas))
    SETTINGS[setting_index % len(SETTINGS)].paint(img, rng)
    draw_character(img, get_pose(pose_name), rng)
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
