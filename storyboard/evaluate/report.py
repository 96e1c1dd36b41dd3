"""Evaluate all modes: per-frame CSVs for `dvc plots`, one metrics JSON for `dvc metrics diff`, a results table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from storyboard import TINY_NOTICE
from storyboard.evaluate.faces import load_face_backend
from storyboard.evaluate.scores import score_mode, summarise
from storyboard.fsutil import atomic_path, write_json, write_text
from storyboard.generate.render import MODES
from storyboard.log import logger
from storyboard.models.clip import ClipScorer
from storyboard.models.loading import Device, model_set
from storyboard.settings import Settings

TABLE_COLUMNS = {
    "clip_text_score": "CLIP text",
    "clip_image_to_first": "CLIP image vs frame 1",
    "face_detection_rate": "face detection rate",
    "face_similarity_to_first": "face sim. vs frame 1",
    "attempts_per_frame": "attempts / frame",
    "seconds_per_frame": "s / frame",
}


def results_markdown(summary: dict[str, dict], settings: Settings, face_backend: str, clip_model: str) -> str:
    table = pd.DataFrame(
        {mode: {label: summary[mode][key] for key, label in TABLE_COLUMNS.items()} for mode in summary}
    ).T
    lines = [f"# Results ({settings.profile} profile)", ""]
    if settings.is_tiny:
        lines += [f"> {TINY_NOTICE}", ""]
    lines += [
        f"Stories: {settings.story_ids()}. Face backend: {face_backend}. CLIP model: {clip_model}. "
        "CLIP scores are cosine similarities "
        "(-1..1). n/a: no frame could be scored (see the detection rate).",
        "",
        table.to_markdown(floatfmt=".3f", missingval="n/a"),
        "",
    ]
    return "\n".join(lines)


def evaluate_outputs(
    settings: Settings, outputs: Path, metrics_path: Path, frames_dir: Path, report_path: Path
) -> dict:
    models = model_set(settings)
    device = Device.from_runtime(settings.runtime)
    scorer = ClipScorer(models.clip, device)
    faces = load_face_backend(models, settings.evaluate.face_min_score)
    story_ids = [s.id for s in settings.stories]
    summary: dict[str, dict] = {}
    with atomic_path(frames_dir) as staged:
        staged.mkdir(parents=True)
        for mode in MODES:
            frames = score_mode(outputs / mode, mode, story_ids, scorer, faces)
            frames.to_csv(staged / f"{mode}.csv", index=False)
            summary[mode] = summarise(frames)
            logger.info("%s: %s", mode, summary[mode])
    metrics = {"profile": settings.profile, **({"notice": TINY_NOTICE} if settings.is_tiny else {}), **summary}
    write_json(metrics_path, metrics)
    write_text(report_path, results_markdown(summary, settings, faces.name, models.clip))
    return metrics
