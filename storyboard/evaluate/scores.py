"""Score rendered storyboards: text alignment, character consistency and face identity, per frame and per mode.

Identity is measured against frame 1 of the same story and mode (the reference every later frame should
match). Faces a detector misses are not dropped silently: the detection rate is reported beside the face
similarity, and a character-level CLIP image similarity covers every frame, face or not.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
from PIL import Image
from tqdm import tqdm

from storyboard.errors import StoryboardError
from storyboard.evaluate.faces import FaceBackend, cosine_similarity, largest_face
from storyboard.models.clip import ClipScorer


class EvaluateError(StoryboardError):
    """Outputs to score are missing or inconsistent; the message names them."""


@dataclass
class FrameScore:
    mode: str
    story_id: str
    frame: int
    clip_text_score: float
    clip_image_to_first: float | None  # None for frame 1 itself
    face_detected: bool
    face_similarity_to_first: float | None  # None when frame 1 or this frame has no detected face
    attempts: int
    seconds: float


def _round(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 4)


def score_story(story_dir: Path, mode: str, scorer: ClipScorer, faces: FaceBackend) -> list[FrameScore]:
    meta_path = story_dir / "metadata.json"
    if not meta_path.exists():
        raise EvaluateError(f"{meta_path} missing: rerun `dvc repro generate@{mode}`")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    records = meta["frames"]
    images = [Image.open(story_dir / r["file"]).convert("RGB") for r in records]
    text = scorer.text_scores(images, [r["scene"] for r in records])
    to_first = scorer.image_scores(images[1:], images[0])
    detected = [largest_face(faces.detect(im)) for im in images]
    first_face = detected[0]
    rows = []
    for i, (record, face) in enumerate(zip(records, detected, strict=True)):
        face_sim = None
        if i > 0 and face is not None and first_face is not None:
            face_sim = cosine_similarity(face.embedding, first_face.embedding)
        rows.append(
            FrameScore(
                mode=mode,
                story_id=meta["story_id"],
                frame=record["index"],
                clip_text_score=_round(text[i]),
                clip_image_to_first=_round(to_first[i - 1]) if i > 0 else None,
                face_detected=face is not None,
                face_similarity_to_first=_round(face_sim),
                attempts=len(record["attempts"]),
                seconds=record["seconds"],
            )
        )
    return rows


def score_mode(mode_dir: Path, mode: str, story_ids: list[str], scorer: ClipScorer, faces: FaceBackend) -> pd.DataFrame:
    rows: list[FrameScore] = []
    for story_id in tqdm(story_ids, desc=f"evaluate {mode}", unit="story"):
        story_dir = Path(mode_dir) / story_id
        if not story_dir.is_dir():
            raise EvaluateError(f"{story_dir} missing: rerun `dvc repro generate@{mode}`")
        rows += score_story(story_dir, mode, scorer, faces)
    return pd.DataFrame([asdict(r) for r in rows])


def _mean(series: pd.Series) -> float | None:
    values = series.dropna()
    return _round(values.mean()) if len(values) else None


def summarise(frames: pd.DataFrame) -> dict:
    """The per-mode figures `dvc metrics diff` compares. None means "no frame could be scored" (see rates)."""
    later = frames[frames["frame"] > 1]
    scored_faces = later["face_similarity_to_first"].notna().sum()
    return {
        "frames": int(len(frames)),
        "clip_text_score": _mean(frames["clip_text_score"]),
        "clip_image_to_first": _mean(later["clip_image_to_first"]),
        "face_detection_rate": _round(frames["face_detected"].mean()),
        "face_similarity_to_first": _mean(later["face_similarity_to_first"]),
        "face_pairs_scored": int(scored_faces),
        "face_pairs_possible": int(len(later)),
        "attempts_per_frame": _round(frames["attempts"].mean()),
        "seconds_per_frame": _round(frames["seconds"].mean()),
    }
