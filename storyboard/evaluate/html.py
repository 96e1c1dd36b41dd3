"""A static HTML report of one run: the ablation table, every story's frames side by side per mode, the params.

The report is one folder (index.html plus assets/ holding copies of the frames, linked relatively), so it opens
from the file system with no server and can be moved or zipped whole. No JavaScript, no external CSS or fonts:
it must render offline. Every piece of text from the run goes through html.escape.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd
import yaml
from PIL import Image

from storyboard import TINY_NOTICE
from storyboard.evaluate.sweep_report import sweep_section
from storyboard.fsutil import atomic_path
from storyboard.generate.frames import MODES
from storyboard.log import logger
from storyboard.settings import Settings

NA = "n/a"
THUMB_PX = 160  # thumbnail width; frames narrower than this (tiny profile: 64 px) are upscaled pixelated

MODE_NOTES = {
    "baseline": "SDXL alone, no LoRA",
    "lora": "SDXL + the character LoRA",
    "ref_guided": "LoRA + IP-Adapter on frame 1 + ControlNet pose",
}


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    fmt: str  # a format spec for numbers; bools show as yes/no, None and NaN as n/a


# The per-mode (and per-story) figures of `summarise`, in display order. Keys missing from the metrics are left
# out of the tables and keys not listed here are ignored, so the report survives metrics gaining or losing a key.
SUMMARY_COLUMNS: tuple[Column, ...] = (
    Column("frames", "frames", "d"),
    Column("clip_text_score", "CLIP text", ".3f"),
    Column("clip_image_to_first", "CLIP image vs frame 1", ".3f"),
    Column("character_to_first", "character vs frame 1", ".3f"),
    Column("character_pairwise", "character pairwise", ".3f"),
    Column("character_to_references", "character vs training set", ".3f"),
    Column("face_detection_rate", "face detection rate", ".0%"),
    Column("face_similarity_to_first", "face sim. vs frame 1", ".3f"),
    Column("face_pairwise", "face sim. pairwise", ".3f"),
    Column("face_pairs_scored", "face pairs scored", "d"),
    Column("face_pairs_possible", "face pairs possible", "d"),
    Column("attempts_per_frame", "attempts / frame", ".2f"),
    Column("seconds_per_frame", "s / frame", ".2f"),
)

# The per-frame scores shown under each thumbnail: columns of the evaluate stage's frames/<mode>.csv.
FRAME_COLUMNS: tuple[Column, ...] = (
    Column("clip_text_score", "CLIP text", ".3f"),
    Column("clip_image_to_first", "CLIP img vs 1", ".3f"),
    Column("character_to_first", "character vs 1", ".3f"),
    Column("face_detected", "face found", ""),
    Column("face_similarity_to_first", "face sim. vs 1", ".3f"),
    Column("attempts", "attempts", "d"),
    Column("seconds", "seconds", ".2f"),
)

CSS = """
:root { --fg: #1d2330; --muted: #5f6b7a; --line: #d9dee5; --bg: #f6f7f9; --card: #fff; --accent: #2456a6; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 32px 48px; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto,
       "Helvetica Neue", Arial, sans-serif; color: var(--fg); background: var(--bg); }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 32px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 24px 0 4px; }
p { margin: 4px 0 8px; }
code { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 12px; }
.meta, .hint { color: var(--muted); }
.hint { font-size: 12px; }
.notice { margin: 12px 0; padding: 10px 14px; border: 1px solid #e0a100; border-left: 6px solid #e0a100;
          background: #fff6da; font-weight: 600; max-width: 1100px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; background: var(--card); }
table.scores th, table.scores td { padding: 5px 10px; border: 1px solid var(--line); text-align: right;
                                   white-space: nowrap; }
/* headers wrap on their spaces so the figures table fits a laptop screen; the figures never wrap */
table.scores th { background: #eef1f5; font-weight: 600; white-space: normal; min-width: 64px; }
table.scores thead th { vertical-align: bottom; font-size: 12px; }
table.scores thead th:not(.lead) { width: 104px; }  /* equal columns, labels wrap to at most two lines */
table.scores th[scope=row], table.scores td.text, table.scores thead th.lead { text-align: left; }
table.scores th[scope=row] { width: 150px; }
td.story-id { font-weight: 600; vertical-align: top; }
.na { color: #9aa3ae; }
.mode-note { display: block; font-weight: 400; font-size: 11px; color: var(--muted); }
.story-text { font-size: 15px; max-width: 1100px; }
table.frames { border: 1px solid var(--line); }
table.frames th, table.frames td { border: 1px solid var(--line); vertical-align: top; padding: 6px; }
table.frames thead th { background: #eef1f5; font-weight: 600; text-align: center; font-size: 12px; }
table.frames tbody th { text-align: left; width: 130px; min-width: 130px; background: #fafbfc; }
td.frame { width: 172px; min-width: 172px; }
td.frame img { display: block; width: 160px; height: auto; background: #ddd; border-radius: 2px; }
img.px { image-rendering: pixelated; }
.shot { font-size: 11px; color: var(--accent); font-weight: 600; margin-top: 4px; }
.scene { font-size: 12px; margin: 2px 0 4px; width: 160px; overflow-wrap: anywhere; }
dl.fs { display: grid; grid-template-columns: auto auto; gap: 0 8px; margin: 0; font-size: 11px; width: 160px; }
dl.fs dt { color: var(--muted); }
dl.fs dd { margin: 0; text-align: right; font-variant-numeric: tabular-nums; }
.missing { color: #a33; font-size: 12px; }
details { background: var(--card); border: 1px solid var(--line); padding: 8px 12px; }
summary { cursor: pointer; font-weight: 600; }
pre { margin: 8px 0 0; font-size: 12px; overflow-x: auto; }
"""


def fmt(value: Any, spec: str = "") -> str:
    """A cell's text: n/a for None/NaN (nothing could be scored), yes/no for bools, numbers by `spec`."""
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()  # numpy/pandas scalars -> Python, so the isinstance checks below hold
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return NA
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float) and spec:
        try:
            return format(value, spec)
        except ValueError:  # e.g. a float where an int was expected (pandas upcasts columns with gaps)
            return format(value, "g")
    return str(value)


def _cell(value: Any, spec: str, tag: str = "td") -> str:
    text = fmt(value, spec)
    cls = ' class="na"' if text == NA else ""
    return f"<{tag}{cls}>{escape(text)}</{tag}>"


def _present(columns: tuple[Column, ...], rows: list[dict]) -> list[Column]:
    return [c for c in columns if any(c.key in r for r in rows)]


def _summary_table(table_id: str, rows: list[tuple[list[str], dict]], head: list[str]) -> str:
    """rows: (the leading header cells as HTML, the figures dict). Only columns some row has are shown."""
    columns = _present(SUMMARY_COLUMNS, [figures for _, figures in rows])
    out = [f'<div class="scroll"><table class="scores" id="{table_id}"><thead><tr>']
    out += [f'<th scope="col" class="lead">{escape(h)}</th>' for h in head]
    out += [f'<th scope="col">{escape(c.label)}</th>' for c in columns]
    out.append("</tr></thead><tbody>")
    for lead, figures in rows:
        out.append("<tr>" + "".join(lead) + "".join(_cell(figures.get(c.key), c.fmt) for c in columns) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _mode_header(mode: str, note: bool = True) -> str:
    text = MODE_NOTES.get(mode) if note else None
    note_html = f'<span class="mode-note">{escape(text)}</span>' if text else ""
    return f'<th scope="row">{escape(mode)}{note_html}</th>'


def _ablation(metrics: dict) -> str:
    rows = [([_mode_header(mode)], metrics.get(mode) or {}) for mode in MODES]
    return (
        '<section><h2>Ablation</h2><p class="hint">Means over every frame of every story. CLIP scores are cosine '
        "similarities (-1..1); &ldquo;vs frame 1&rdquo; compares each later frame with frame 1 of its story and "
        "mode. n/a: no frame could be scored (see the face detection rate).</p>"
        + _summary_table("ablation", rows, ["mode"])
        + "</section>"
    )


def _per_story(metrics: dict, settings: Settings) -> str:
    """The same figures per story, when the metrics carry them (metrics[mode]["stories"][story_id])."""
    per_mode = {mode: (metrics.get(mode) or {}).get("stories") or {} for mode in MODES}
    if not any(per_mode.values()):
        return ""
    order = [s.id for s in settings.stories]
    order += sorted({sid for stories in per_mode.values() for sid in stories} - set(order))
    rows = []
    for story_id in order:
        modes = [mode for mode in MODES if story_id in per_mode[mode]]
        for n, mode in enumerate(modes):
            # The story named once per group (rowspan); the ablation table above already explains the modes.
            story = f'<td class="text story-id" rowspan="{len(modes)}">{escape(story_id)}</td>' if n == 0 else ""
            rows.append(([story, _mode_header(mode, note=False)], per_mode[mode][story_id]))
    return "<section><h2>Per story</h2>" + _summary_table("per-story", rows, ["story", "mode"]) + "</section>"


@dataclass
class Thumb:
    src: str  # relative URL inside the report
    width: int
    height: int
    record: dict  # the frame's entry in metadata.json
    scores: dict  # the frame's row of frames/<mode>.csv, {} when it has none


def _frame_rows(frames: pd.DataFrame | None) -> dict[tuple[str, int], dict]:
    if frames is None or frames.empty or not {"story_id", "frame"} <= set(frames.columns):
        return {}
    return {(str(r["story_id"]), int(r["frame"])): r for r in frames.to_dict("records")}


def _copy_story(
    story_dir: Path, mode: str, story_id: str, assets: Path, scores: dict[tuple[str, int], dict]
) -> list[Thumb] | str:
    """Copy one story's frames into assets/; the thumbnails, or why there are none."""
    meta_path = story_dir / "metadata.json"
    if not meta_path.exists():
        logger.warning("HTML report: %s missing; %s/%s shown as not rendered", meta_path, mode, story_id)
        # Relative to the outputs folder: the report may be moved, and absolute paths of this machine mean nothing.
        return f"not rendered: {mode}/{story_id}/metadata.json missing"
    records = json.loads(meta_path.read_text(encoding="utf-8")).get("frames", [])
    target = assets / mode / story_id
    target.mkdir(parents=True, exist_ok=True)
    thumbs = []
    for n, record in enumerate(records, start=1):
        # Only the file name: metadata is user-editable and must not point the copy outside the story folder.
        name = Path(str(record.get("file", ""))).name
        source = story_dir / name
        if not name or not source.is_file():
            logger.warning("HTML report: frame %s of %s/%s missing (%s)", n, mode, story_id, source)
            continue
        shutil.copyfile(source, target / name)
        with Image.open(source) as im:
            width, height = im.size
        index = int(record.get("index", n))
        src = "/".join(quote(part) for part in ("assets", mode, story_id, name))
        thumbs.append(Thumb(src, width, height, {**record, "index": index}, scores.get((story_id, index), {})))
    return thumbs


def _frame_cell(thumb: Thumb) -> str:
    r = thumb.record
    cls = ' class="px"' if thumb.width < THUMB_PX else ""  # upscaled tiny frames: keep pixels crisp, not blurred
    height = max(1, round(THUMB_PX * thumb.height / thumb.width))
    alt = f"frame {r['index']}: {r.get('scene', '')}"
    shot = " · ".join(escape(str(r[k])) for k in ("shot", "pose") if r.get(k))
    scores = "".join(f"<dt>{escape(c.label)}</dt>{_cell(thumb.scores.get(c.key), c.fmt, 'dd')}" for c in FRAME_COLUMNS)
    return (
        f'<td class="frame"><a href="{escape(thumb.src)}"><img src="{escape(thumb.src)}" alt="{escape(alt)}" '
        f'width="{THUMB_PX}" height="{height}"{cls} loading="eager"></a>'
        f'<div class="shot">{shot}</div><div class="scene">{escape(str(r.get("scene", "")))}</div>'
        f'<dl class="fs">{scores}</dl></td>'
    )


def _story_section(story_id: str, text: str, by_mode: dict[str, list[Thumb] | str]) -> str:
    count = max((len(t) for t in by_mode.values() if isinstance(t, list)), default=0)
    out = [
        f'<section class="story" id="story-{escape(story_id)}"><h3>{escape(story_id)}</h3>',
        f'<p class="story-text">{escape(text)}</p><div class="scroll"><table class="frames"><thead><tr><th>mode</th>',
        "".join(f"<th>frame {i}</th>" for i in range(1, count + 1)),
        "</tr></thead><tbody>",
    ]
    for mode, thumbs in by_mode.items():
        out.append(f"<tr>{_mode_header(mode)}")
        if isinstance(thumbs, str):
            out.append(f'<td class="missing" colspan="{max(count, 1)}">{escape(thumbs)}</td>')
        else:
            out += [_frame_cell(t) for t in thumbs]
            out += ["<td></td>"] * (count - len(thumbs))
        out.append("</tr>")
    out.append("</tbody></table></div></section>")
    return "".join(out)


def render_html(
    settings: Settings, metrics: dict, stories: dict[str, dict[str, list[Thumb] | str]], checkpoints: str = ""
) -> str:
    """The page itself, from figures and already-copied thumbnails (no file access: easy to unit-test)."""
    title = f"Storyboard report: {settings.character.name}"
    notice = f'<p class="notice" id="tiny-notice" role="note">{escape(TINY_NOTICE)}</p>' if settings.is_tiny else ""
    story_text = {s.id: s.text for s in settings.stories}
    params = yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False, allow_unicode=True, width=120)
    parts = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body><header>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="meta">profile <b id="profile">{escape(settings.profile)}</b> · trigger '
        f"<code>{escape(settings.character.trigger)}</code> · {len(settings.stories)} stories · modes: "
        f"{escape(', '.join(MODES))}</p>",
        notice,
        "</header><main>",
        _ablation(metrics),
        _per_story(metrics, settings),
        checkpoints,
        "<section><h2>Stories</h2>",
        '<p class="hint">One row per mode, frames in order; click a frame for the full-size image. Scores under each '
        "frame come from the evaluate stage; shot, pose and scene from the plan.</p>",
        *(_story_section(sid, story_text.get(sid, ""), by_mode) for sid, by_mode in stories.items()),
        "</section><section><h2>Parameters</h2>",
        f"<details><summary>params of this run (validated settings, YAML)</summary><pre>{escape(params)}</pre>"
        "</details></section></main></body></html>\n",
    ]
    return "".join(parts)


def write_html_report(
    report_dir: Path,
    outputs_root: Path,
    metrics: dict,
    frames: dict[str, pd.DataFrame],
    settings: Settings,
    train_metrics: dict | None = None,
) -> Path:
    """Write report_dir/index.html and report_dir/assets/ (frame copies) atomically; return the index.html path.

    outputs_root holds <mode>/<story_id>/{frame_NN.png, metadata.json} as generate writes them; metrics is
    evaluate's metrics JSON; frames maps mode -> its per-frame scores (the frames/<mode>.csv table); train_metrics:
    the train stage's metrics/train.json (the checkpoint choice).
    """
    report_dir, outputs_root = Path(report_dir), Path(outputs_root)
    with atomic_path(report_dir) as staged:
        assets = staged / "assets"
        assets.mkdir(parents=True)
        scores = {mode: _frame_rows(frames.get(mode)) for mode in MODES}
        stories = {
            s.id: {mode: _copy_story(outputs_root / mode / s.id, mode, s.id, assets, scores[mode]) for mode in MODES}
            for s in settings.stories
        }
        checkpoints = sweep_section(train_metrics, assets)
        (staged / "index.html").write_text(render_html(settings, metrics, stories, checkpoints), encoding="utf-8")
    shown = sum(len(t) for by_mode in stories.values() for t in by_mode.values() if isinstance(t, list))
    logger.info("HTML report: %s (%d frames)", report_dir / "index.html", shown)
    return report_dir / "index.html"
