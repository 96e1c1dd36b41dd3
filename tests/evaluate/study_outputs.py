"""Study test data: rendered outputs as the generate stage leaves them, with the mode hidden in every place a
careless server could leak it from."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw, PngImagePlugin

from storyboard.evaluate.study.sheets import DEFAULT_MODES

COLOURS = {"baseline": (200, 80, 80), "lora": (80, 160, 80), "ref_guided": (80, 80, 200)}


def frame_colour(mode: str, frame: int) -> tuple[int, int, int]:
    return tuple(min(255, c + 30 * frame) for c in COLOURS[mode])


def make_outputs(root: Path, story_ids: list[str]) -> Path:
    """outputs/<mode>/<story>/ as the generate stage leaves it: frame_01..03.png, metadata.json and a contact
    sheet whose title names the mode (as the real one does). Frames also carry the mode in a PNG text chunk,
    as a careless renderer might, so the tests can check the server never passes either on."""
    for mode in DEFAULT_MODES:
        for n, story in enumerate(story_ids):
            folder = root / mode / story
            folder.mkdir(parents=True)
            info = PngImagePlugin.PngInfo()
            info.add_text("mode", mode)
            records = []
            sheet = Image.new("RGB", (240, 100), "white")
            ImageDraw.Draw(sheet).text((5, 2), f"{story} | {mode} | CLIP 0.31", fill="black")
            for frame in range(1, 4):
                image = Image.new("RGB", (64, 64), frame_colour(mode, frame))
                image.save(folder / f"frame_{frame:02d}.png", pnginfo=info)
                sheet.paste(image.resize((70, 70)), (5 + 80 * (frame - 1), 20))
                records.append({"index": frame, "file": f"frame_{frame:02d}.png", "scene": f"scene {frame}"})
            sheet.save(folder / "contact_sheet.png", pnginfo=info)
            meta = {
                "story_id": story,
                "story": f"The trickster fools merchant number {n} at the <market>.",
                "mode": mode,
                "frames": records,
            }
            (folder / "metadata.json").write_text(json.dumps(meta))
    return root
