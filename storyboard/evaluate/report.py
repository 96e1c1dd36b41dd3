"""Evaluate all modes: per-frame CSVs for `dvc plots`, one metrics JSON for `dvc metrics diff`, a results table."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from storyboard import TINY_NOTICE
from storyboard.dataset import load_training_images
from storyboard.evaluate.html import write_html_report
from storyboard.evaluate.independence import evaluate_face_backend, figure_provenance
from storyboard.evaluate.scores import (
    Locator,
    frame_checks,
    locate_files,
    mode_files,
    retried,
    score_mode,
    summarise,
    summarise_by_story,
)
from storyboard.evaluate.vistorybench import DIFFERENCES
from storyboard.fsutil import atomic_path, write_json, write_text
from storyboard.log import logger
from storyboard.models.loading import Device, model_set
from storyboard.settings import MODES, Settings

# Figures also scored on each frame's first attempt (seed, no retries): "kept - first" is the retry loop's gain.
FIRST_ATTEMPT_FIGURES = (
    "clip_text_score",
    "vistorybench_self_cids",
    "vistorybench_cross_cids",
    "vistorybench_self_cids_face",
    "character_pairwise",
    "character_to_references",
    "face_pairwise",
)

TABLE_COLUMNS = {
    "clip_text_score": "CLIP text",
    "vistorybench_self_cids": "Self-CIDS (ViStoryBench)",
    "vistorybench_self_cids_first_attempt": "Self-CIDS, first attempts",
    "vistorybench_cross_cids": "Cross-CIDS (ViStoryBench)",
    "vistorybench_self_cids_face": "Self-CIDS face",
    "character_detection_rate": "character detection rate",
    "character_to_first": "character vs frame 1",
    "character_pairwise": "character pairwise",
    "character_to_references": "character vs training set",
    "face_detection_rate": "face detection rate",
    "face_in_box_rate": "face in character box",
    "face_similarity_to_first": "face sim. vs frame 1",
    "face_pairwise": "face sim. pairwise",
    "attempts_per_frame": "attempts / frame",
    "frames_redone": "frames redone",
    "seconds_per_frame": "s / frame",
}
# The retry loop's cost and gain per mode: the thresholds it applied, how often it rendered a frame again, and the
# figures of the first attempts beside the kept ones.
CHECK_COLUMNS = {
    "clip_threshold": "text threshold",
    "clip_threshold_source": "text threshold from",
    "likeness_threshold": "likeness threshold",
    "likeness_threshold_source": "likeness threshold from",
    "attempts_per_frame": "attempts / frame",
    "frames_redone": "frames redone",
    "clip_text_score_first_attempt": "CLIP text, first",
    "clip_text_score": "CLIP text, kept",
    "vistorybench_self_cids_first_attempt": "Self-CIDS, first",
    "vistorybench_self_cids": "Self-CIDS, kept",
    "character_to_references_first_attempt": "vs training set, first",
    "character_to_references": "vs training set, kept",
}


def _with_first(kept: dict, first: dict) -> dict:
    return {**kept, **{f"{key}_first_attempt": first[key] for key in FIRST_ATTEMPT_FIGURES}}


def _table(rows: dict[str, dict], columns: dict[str, str] = TABLE_COLUMNS) -> str:
    table = pd.DataFrame(
        {name: {label: row.get(key) for key, label in columns.items()} for name, row in rows.items()}
    ).T
    # None survives as None (not NaN) so tabulate prints it as n/a
    return table.astype(object).where(table.notna(), None).to_markdown(floatfmt=".3f", missingval="n/a")


def results_markdown(metrics: dict, settings: Settings, face_backend: str, clip_model: str) -> str:
    """The ablation table across modes, overall and per story, as Markdown (also shown in the HTML report)."""
    lines = [f"# Results ({settings.profile} profile)", ""]
    if settings.is_tiny:
        lines += [f"> {TINY_NOTICE}", ""]
    lines += [
        f"Face backend: {face_backend}. CLIP model: {clip_model}. Similarities are cosines (-1..1); the two face "
        "backends have different scales. n/a: no frame could be scored (see the detection rate). "
        "\"first attempts\": the same figure on each frame's first attempt, before generate's retries.",
        "",
        f"{DIFFERENCES}",
        "",
        "## All stories",
        "",
        _table({mode: metrics[mode] for mode in MODES}),
        "",
        "## Frame checks: what the retries cost and what they bought",
        "",
        'generate redoes a frame below either threshold (docs/frame-checks.md); "first": the frames\' first '
        'attempts, "kept": the attempts kept.',
        "",
        _table({mode: metrics[mode] for mode in MODES}, CHECK_COLUMNS),
        "",
    ]
    for story in settings.stories:
        lines += [f"## {story.id}: {story.text}", "", _table({m: metrics[m]["stories"][story.id] for m in MODES}), ""]
    return "\n".join(lines)


def evaluate_outputs(
    settings: Settings,
    outputs: Path,
    metrics_path: Path,
    frames_dir: Path,
    report_path: Path,
    html_dir: Path | None = None,
    dataset_dir: Path | None = None,
    train_metrics_path: Path | None = None,
) -> dict:
    started = time.perf_counter()
    models = model_set(settings)
    device = Device.from_runtime(settings.runtime)
    face_backend = evaluate_face_backend(settings)
    locator = Locator.of_evaluate(settings, models, device)
    references = locator.references(load_training_images(dataset_dir))
    logger.info("evaluate: models and references ready in %.1f s", time.perf_counter() - started)
    story_ids = [s.id for s in settings.stories]
    metrics: dict = {
        "profile": settings.profile,
        **({"notice": TINY_NOTICE} if settings.is_tiny else {}),
        "models": figure_provenance(settings, models, face_backend),
        "vistorybench": DIFFERENCES,
    }
    frames: dict[str, pd.DataFrame] = {}
    # Every frame of every mode located up front, together: a frame kept at its first attempt is located once for
    # both passes.
    located = locate_files([f for mode in MODES for f in mode_files(outputs / mode, mode, story_ids)], locator)
    with atomic_path(frames_dir) as staged:
        staged.mkdir(parents=True)
        for mode in MODES:
            frames[mode], stories = score_mode(outputs / mode, mode, story_ids, locator, references, "kept", located)
            frames[mode].to_csv(staged / f"{mode}.csv", index=False)
            if retried(outputs / mode, story_ids, mode):
                first, first_stories = score_mode(
                    outputs / mode, mode, story_ids, locator, references, "first", located
                )
            else:  # no frame was retried: the first attempts are the kept frames
                first, first_stories = frames[mode].assign(attempt="first"), stories
            first.to_csv(staged / f"{mode}_first_attempt.csv", index=False)
            first_by_story = summarise_by_story(first, first_stories)
            metrics[mode] = {
                **_with_first(summarise(frames[mode], stories), summarise(first, first_stories)),
                **frame_checks(outputs / mode, story_ids, mode),
                "stories": {
                    story: _with_first(kept, first_by_story[story])
                    for story, kept in summarise_by_story(frames[mode], stories).items()
                },
            }
            logger.info("%s: %s", mode, {k: v for k, v in metrics[mode].items() if k != "stories"})
    write_json(metrics_path, metrics)
    write_text(report_path, results_markdown(metrics, settings, locator.faces.name, models.clip))
    if html_dir is not None:
        train_metrics = None
        if train_metrics_path is not None and Path(train_metrics_path).exists():
            train_metrics = json.loads(Path(train_metrics_path).read_text(encoding="utf-8"))
        write_html_report(html_dir, outputs, metrics, frames, settings, train_metrics)
    return metrics
