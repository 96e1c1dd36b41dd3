"""What a rendered story leaves behind: frames, metadata.json, a captioned contact sheet."""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import asdict
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from storyboard.fsutil import atomic_path, write_json
from storyboard.generate.frames import Attempt, RenderedFrame
from storyboard.story.plan import StoryPlan

THUMB_MIN = 256  # tiny-profile frames are 64 px: blow them up so the sheet stays readable
CAPTION_LINES = 4


def contact_sheet(frames: list[RenderedFrame], title: str, columns: int, notice: str | None = None) -> Image.Image:
    """A grid of the kept frames, each with its number, score and scene text under it."""
    images = [f.image for f in frames if f.image is not None]
    size = max(THUMB_MIN, images[0].width)
    font = ImageFont.load_default(size=max(12, size // 20))
    line_h = font.size + 4
    cols = min(columns, len(frames))
    rows = math.ceil(len(frames) / cols)
    header = line_h * (2 if notice else 1) + 8
    cell_h = size + line_h * CAPTION_LINES + 8
    sheet = Image.new("RGB", (cols * size + (cols + 1) * 8, header + rows * cell_h + 8), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((8, 4), title, fill="black", font=font)
    if notice:
        draw.text((8, 4 + line_h), notice, fill=(190, 0, 0), font=font)
    wrap = max(10, int(size / (font.size * 0.55)))
    for n, f in enumerate(frames):
        x = 8 + (n % cols) * (size + 8)
        y = header + (n // cols) * cell_h
        sheet.paste(f.image.resize((size, size * f.image.height // f.image.width), Image.Resampling.NEAREST), (x, y))
        tries = f"{len(f.attempts)} {'try' if len(f.attempts) == 1 else 'tries'}"
        likeness = f" like {f.likeness:.2f}" if f.likeness is not None else ""
        caption = f"{f.index}. [{f.frame.shot}, {f.frame.pose}] text {f.score:.2f}{likeness} ({tries}) {f.frame.scene}"
        for k, line in enumerate(textwrap.wrap(caption, wrap)[:CAPTION_LINES]):
            draw.text((x, y + size + 4 + k * line_h), line, fill="black", font=font)
    return sheet


def story_gif(frames: list[RenderedFrame]) -> list[Image.Image]:
    """The kept frames at a viewable size, for an animated preview of the story."""
    size = max(THUMB_MIN, frames[0].image.width)
    # Fast octree to GIF's 256 colours: PIL's default median cut took seconds per 1024 px frame at full size
    # (8 s a story in the H200 rehearsal), octree about 50x less, for a preview.
    return [
        f.image.resize((size, size * f.image.height // f.image.width), Image.Resampling.NEAREST).quantize(
            256, method=Image.Quantize.FASTOCTREE
        )
        for f in frames
    ]


def write_story_outputs(
    out_dir: Path, frames: list[RenderedFrame], metadata: dict, sheet: Image.Image, gif_frame_ms: int = 900
) -> None:
    """Write one story's folder atomically: frame_01.png..., metadata.json, contact_sheet.png, story.gif, and
    first_attempts/frame_NN.png for each frame that kept a later attempt (evaluate scores the retries' gain)."""
    with atomic_path(out_dir) as staged:
        staged.mkdir(parents=True)
        records = []
        for f in frames:
            name = f"frame_{f.index:02d}.png"
            f.image.save(staged / name)
            first = name
            if f.first_image is not None:
                first = f"first_attempts/{name}"
                (staged / "first_attempts").mkdir(exist_ok=True)
                f.first_image.save(staged / first)
            records.append(
                {
                    "index": f.index,
                    "file": name,
                    "scene": f.frame.scene,
                    "shot": f.frame.shot,
                    "pose": f.frame.pose,
                    "setting": f.frame.setting,
                    "prompt": f.prompt,
                    "seed": f.attempts[f.best].seed,
                    "clip_text_score": f.score,
                    "likeness": f.likeness,
                    "attempts": [asdict(a) for a in f.attempts],
                    "kept_attempt": f.best + 1,
                    "first_attempt_file": first,
                    "seconds": round(sum(a.seconds for a in f.attempts), 3),
                }
            )
        write_json(staged / "metadata.json", {**metadata, "frames": records})
        sheet.save(staged / "contact_sheet.png")
        gif = story_gif(frames)
        gif[0].save(staged / "story.gif", save_all=True, append_images=gif[1:], duration=gif_frame_ms, loop=0)


def read_frames(story_dir: Path, plan: StoryPlan, count: int | None = None) -> list[RenderedFrame]:
    """The frames (the first `count`; None: all) of a story folder that write_story_outputs wrote, as the renderer
    had settled them: the kept image, the first attempt's when another was kept, and every attempt's record (PNG
    is lossless: the same pixels)."""
    records = json.loads((Path(story_dir) / "metadata.json").read_text(encoding="utf-8"))["frames"][:count]

    def image(name: str) -> Image.Image:
        with Image.open(Path(story_dir) / name) as opened:
            return opened.convert("RGB")

    frames = []
    for record, frame in zip(records, plan.frames, strict=False):
        first_file = record.get("first_attempt_file", record["file"])
        frames.append(
            RenderedFrame(
                index=record["index"],
                frame=frame,
                prompt=record["prompt"],
                attempts=[Attempt(**attempt) for attempt in record["attempts"]],
                image=image(record["file"]),
                best=record["kept_attempt"] - 1,
                first_image=image(first_file) if first_file != record["file"] else None,
            )
        )
    return frames


def read_first_frame(story_dir: Path, plan: StoryPlan) -> RenderedFrame:
    """Frame 1 of a story folder, as `read_frames` reads it."""
    return read_frames(story_dir, plan, count=1)[0]


def relayout(story_dir: Path, plan: StoryPlan, *, columns: int, gif_frame_ms: int) -> bool:
    """Redraw a kept story's contact sheet and GIF when generate's presentation knobs changed since it was written
    (they are not inputs of the frames: no GPU work); returns whether anything was redrawn."""
    story_dir = Path(story_dir)
    metadata = json.loads((story_dir / "metadata.json").read_text(encoding="utf-8"))
    shown = metadata.get("generate", {})
    if shown.get("contact_sheet_columns") == columns and shown.get("gif_frame_ms") == gif_frame_ms:
        return False
    frames = read_frames(story_dir, plan)
    title = f"{metadata['story_id']} | {metadata['mode']} | {metadata['story']}"
    sheet = contact_sheet(frames, title, columns, metadata.get("notice"))
    with atomic_path(story_dir / "contact_sheet.png") as staged:
        sheet.save(staged, format="PNG")
    gif = story_gif(frames)
    with atomic_path(story_dir / "story.gif") as staged:
        gif[0].save(staged, format="GIF", save_all=True, append_images=gif[1:], duration=gif_frame_ms, loop=0)
    metadata["generate"] = {**shown, "contact_sheet_columns": columns, "gif_frame_ms": gif_frame_ms}
    write_json(story_dir / "metadata.json", metadata)
    return True
