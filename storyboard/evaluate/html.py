"""A static HTML report of one run: the ablation table, every story's frames side by side per mode, the params.

The report is one folder (index.html plus assets/ holding copies of the frames, linked relatively), so it opens
from the file system with no server and can be moved or zipped whole. No JavaScript, no external CSS or fonts:
it must render offline. The page is the Jinja2 template templates/report.html (with report.css), rendered with
autoescaping on: story text, scenes and params are user and LLM text. This module turns the run into the
template's plain values.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd
import yaml
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup
from PIL import Image

from storyboard import TINY_NOTICE
from storyboard.evaluate.sweep_report import sweep_section
from storyboard.fsutil import atomic_path
from storyboard.settings import MODES, Settings

logger = logging.getLogger(__name__)

NA = "n/a"
THUMB_PX = 160  # thumbnail width; frames narrower than this (tiny profile: 64 px) are upscaled pixelated

MODE_NOTES = {
    "baseline": "SDXL alone, no LoRA",
    "lora": "SDXL + the character LoRA",
    "ref_guided": "LoRA + IP-Adapter on frame 1 + ControlNet pose",
    "multiref": "FLUX.2 klein fed reference images, no LoRA",
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
    Column("vistorybench_self_cids", "Self-CIDS (ViStoryBench)", ".3f"),
    Column("vistorybench_self_cids_first_attempt", "Self-CIDS, first attempts", ".3f"),
    Column("vistorybench_cross_cids", "Cross-CIDS (ViStoryBench)", ".3f"),
    Column("character_detection_rate", "character detection rate", ".0%"),
    Column("character_to_first", "character vs frame 1", ".3f"),
    Column("character_pairwise", "character pairwise", ".3f"),
    Column("character_to_references", "character vs training set", ".3f"),
    Column("face_detection_rate", "face detection rate", ".0%"),
    Column("face_in_box_rate", "face in character box", ".0%"),
    Column("face_similarity_to_first", "face sim. vs frame 1", ".3f"),
    Column("face_pairwise", "face sim. pairwise", ".3f"),
    Column("face_pairs_scored", "face pairs scored", "d"),
    Column("face_pairs_possible", "face pairs possible", "d"),
    Column("attempts_per_frame", "attempts / frame", ".2f"),
    Column("seconds_per_frame", "s / frame", ".2f"),
)

# The retry loop's cost and gain per mode (report.py's CHECK_COLUMNS): the thresholds generate applied and where
# they came from, how often it rendered a frame again, and the first attempts' figures beside the kept ones.
CHECK_COLUMNS: tuple[Column, ...] = (
    Column("clip_threshold", "text threshold", ".3f"),
    Column("clip_threshold_source", "text threshold from", ""),
    Column("likeness_threshold", "likeness threshold", ".3f"),
    Column("likeness_threshold_source", "likeness threshold from", ""),
    Column("attempts_per_frame", "attempts / frame", ".2f"),
    Column("frames_redone", "frames redone", ".0%"),
    Column("clip_text_score_first_attempt", "CLIP text, first", ".3f"),
    Column("clip_text_score", "CLIP text, kept", ".3f"),
    Column("vistorybench_self_cids_first_attempt", "Self-CIDS, first", ".3f"),
    Column("vistorybench_self_cids", "Self-CIDS, kept", ".3f"),
    Column("character_to_references_first_attempt", "vs training set, first", ".3f"),
    Column("character_to_references", "vs training set, kept", ".3f"),
)

# The per-frame scores shown under each thumbnail: columns of the evaluate stage's frames/<mode>.csv.
FRAME_COLUMNS: tuple[Column, ...] = (
    Column("clip_text_score", "CLIP text", ".3f"),
    Column("clip_image_to_first", "CLIP img vs 1", ".3f"),
    Column("character_to_first", "character vs 1", ".3f"),
    Column("character_detected", "character found", ""),
    Column("face_detected", "face found", ""),
    Column("face_similarity_to_first", "face sim. vs 1", ".3f"),
    Column("attempts", "attempts", "d"),
    Column("seconds", "seconds", ".2f"),
)


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


@dataclass(frozen=True)
class Cell:
    text: str
    na: bool  # shown greyed: nothing could be scored


def _cell(value: Any, spec: str) -> Cell:
    text = fmt(value, spec)
    return Cell(text, text == NA)


def _present(columns: tuple[Column, ...], rows: list[dict]) -> list[Column]:
    return [c for c in columns if any(c.key in r for r in rows)]


def _table(rows: list[dict], columns: tuple[Column, ...] = SUMMARY_COLUMNS) -> dict[str, Any]:
    """rows: {"mode", "figures", and for per-story rows "story_id"/"story_rowspan"}; only columns some row has."""
    columns = _present(columns, [row["figures"] for row in rows])
    return {
        "columns": columns,
        "rows": [{**row, "cells": [_cell(row["figures"].get(c.key), c.fmt) for c in columns]} for row in rows],
    }


def _ablation(metrics: dict, columns: tuple[Column, ...] = SUMMARY_COLUMNS) -> dict[str, Any]:
    return _table(
        [
            {"story_rowspan": 0, "mode": mode, "note": MODE_NOTES.get(mode), "figures": metrics.get(mode) or {}}
            for mode in MODES
        ],
        columns,
    )


def _per_story(metrics: dict, settings: Settings) -> dict[str, Any] | None:
    """The same figures per story, when the metrics carry them (metrics[mode]["stories"][story_id])."""
    per_mode = {mode: (metrics.get(mode) or {}).get("stories") or {} for mode in MODES}
    if not any(per_mode.values()):
        return None
    order = [s.id for s in settings.stories]
    order += sorted({sid for stories in per_mode.values() for sid in stories} - set(order))
    rows = []
    for story_id in order:
        modes = [mode for mode in MODES if story_id in per_mode[mode]]
        for n, mode in enumerate(modes):
            # The story named once per group (rowspan); the ablation table above already explains the modes.
            span = len(modes) if n == 0 else 0
            rows.append(
                {
                    "story_id": story_id,
                    "story_rowspan": span,
                    "mode": mode,
                    "note": None,
                    "figures": per_mode[mode][story_id],
                }
            )
    return _table(rows)


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


def _frame_view(thumb: Thumb) -> dict[str, Any]:
    r = thumb.record
    return {
        "src": thumb.src,
        "height": max(1, round(THUMB_PX * thumb.height / thumb.width)),
        "pixelated": thumb.width < THUMB_PX,  # upscaled tiny frames: keep pixels crisp, not blurred
        "alt": f"frame {r['index']}: {r.get('scene', '')}",
        "shot": " · ".join(str(r[k]) for k in ("shot", "pose") if r.get(k)),
        "scene": str(r.get("scene", "")),
        "scores": [(c.label, _cell(thumb.scores.get(c.key), c.fmt)) for c in FRAME_COLUMNS],
    }


def _story_view(story_id: str, text: str, by_mode: dict[str, list[Thumb] | str]) -> dict[str, Any]:
    rows = []
    for mode, thumbs in by_mode.items():
        missing = thumbs if isinstance(thumbs, str) else None
        frames = [] if isinstance(thumbs, str) else [_frame_view(t) for t in thumbs]
        rows.append({"mode": mode, "note": MODE_NOTES.get(mode), "missing": missing, "frames": frames})
    count = max((len(t) for t in by_mode.values() if isinstance(t, list)), default=0)
    return {"id": story_id, "text": text, "count": count, "rows": rows}


_TEMPLATES = Environment(
    loader=PackageLoader("storyboard.evaluate", "templates"),
    autoescape=True,
    undefined=StrictUndefined,  # a misspelt name fails the render instead of leaving a blank
    keep_trailing_newline=True,
)


def evaluated_params(settings: Settings) -> dict:
    """The params the evaluate stage lists in dvc.yaml, and no others: a report that showed more would show values
    this run never read (a changed train param does not rerun evaluate)."""
    sections = {"profile", "runtime", "character", "stories", "models", "evaluate"}
    data = settings.model_dump(mode="json", include=sections)
    data["character"] = {k: data["character"][k] for k in ("name", "trigger")}
    sdxl = data["models"]["sdxl"]
    data["models"]["sdxl"] = {k: sdxl[k] for k in ("clip", "face_backend", "face_model", "face_model_root")}
    return data


def render_html(
    settings: Settings, metrics: dict, stories: dict[str, dict[str, list[Thumb] | str]], checkpoints: str = ""
) -> str:
    """The page itself, from figures and already-copied thumbnails (no file access: easy to unit-test)."""
    story_text = {s.id: s.text for s in settings.stories}
    return _TEMPLATES.get_template("report.html").render(
        title=f"Storyboard report: {settings.character.name}",
        profile=settings.profile,
        trigger=settings.character.trigger,
        story_count=len(settings.stories),
        modes=MODES,
        notice=TINY_NOTICE if settings.is_tiny else None,
        ablation=_ablation(metrics),
        checks=_ablation(metrics, CHECK_COLUMNS),
        per_story=_per_story(metrics, settings),
        checkpoints=Markup(checkpoints),  # built by sweep_report.py, which escapes the run's text
        stories=[_story_view(sid, story_text.get(sid, ""), by_mode) for sid, by_mode in stories.items()],
        thumb_px=THUMB_PX,
        params=yaml.safe_dump(evaluated_params(settings), sort_keys=False, allow_unicode=True, width=120),
    )


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
    the select stage's metrics/train.json (the checkpoint choice).
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
