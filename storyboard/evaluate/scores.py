"""Score rendered storyboards: text alignment, character consistency and face identity, per frame and per mode.

Following ViStoryBench's character identity similarity (CIDS): locate the character first, then embed it; ArcFace
(or dlib) embeddings of the face for realistic faces, CLIP image features of the character crop for stylised
ones. Two kinds of figure: self-consistency (each frame against frame 1, and all pairs of frames in a story) and,
when reference images exist (the training set), cross-similarity of each frame to them.

Faces a detector misses are not dropped silently: the detection rate and the number of scored pairs stand beside
the face similarity, and the CLIP character figures cover every frame, face or not. The character crop is the
head-and-torso box around the largest face, or the whole frame when no face is found.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from storyboard.errors import StoryboardError
from storyboard.models.clip import ClipScorer
from storyboard.models.faces import Face, FaceBackend, cosine_similarity, largest_face


class EvaluateError(StoryboardError):
    """Outputs to score are missing or inconsistent; the message names them."""


@dataclass
class FrameScore:
    mode: str
    story_id: str
    frame: int
    clip_text_score: float
    clip_image_to_first: float | None  # whole frame vs frame 1; None for frame 1 itself
    character_to_first: float | None  # character crop vs frame 1's crop
    character_pairwise: float | None  # mean over the story's other frames
    character_to_references: float | None  # mean over the reference (training) images; None without references
    face_detected: bool
    face_similarity_to_first: float | None  # None when frame 1 or this frame has no detected face
    face_pairwise: float | None  # mean over the story's other frames with a face
    attempts: int
    seconds: float


def _round(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 4)


def character_crop(image: Image.Image, face: Face | None) -> Image.Image:
    """Head and torso around the face (3 face-widths wide, from half a face above to 2.5 below), else the frame."""
    if face is None:
        return image
    x0, y0, x1, y1 = face.bbox
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    box = (max(0, cx - 1.5 * w), max(0, y0 - 0.5 * h), min(image.width, cx + 1.5 * w), min(image.height, y1 + 2.5 * h))
    return image.crop(tuple(round(v) for v in box))


def _mean_others(sims: torch.Tensor, i: int, valid: list[bool]) -> float | None:
    others = [sims[i, j].item() for j in range(len(valid)) if j != i and valid[j]]
    return sum(others) / len(others) if others and valid[i] else None


def reference_features(scorer: ClipScorer, images: list[Image.Image]) -> torch.Tensor | None:
    return scorer.image_features(images) if images else None


def score_story(
    story_dir: Path,
    mode: str,
    scorer: ClipScorer,
    faces: FaceBackend,
    references: torch.Tensor | None = None,
) -> list[FrameScore]:
    meta_path = story_dir / "metadata.json"
    if not meta_path.exists():
        raise EvaluateError(f"{meta_path} missing: rerun `dvc repro generate@{mode}`")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    records = meta["frames"]
    images = [Image.open(story_dir / r["file"]).convert("RGB") for r in records]
    text = scorer.text_scores(images, [r["scene"] for r in records])
    to_first = scorer.image_scores(images[1:], images[0])
    detected = [largest_face(faces.detect(im)) for im in images]
    crops = scorer.image_features([character_crop(im, f) for im, f in zip(images, detected, strict=True)])
    crop_sims = crops @ crops.T
    to_refs = (crops @ references.T).mean(dim=1) if references is not None else None
    has_face = [f is not None for f in detected]
    face_sims = torch.zeros(len(images), len(images))
    for i, a in enumerate(detected):
        for j, b in enumerate(detected):
            if a is not None and b is not None:
                face_sims[i, j] = cosine_similarity(a.embedding, b.embedding)
    everyone = [True] * len(images)
    rows = []
    for i, record in enumerate(records):
        later = i > 0
        rows.append(
            FrameScore(
                mode=mode,
                story_id=meta["story_id"],
                frame=record["index"],
                clip_text_score=_round(text[i]),
                clip_image_to_first=_round(to_first[i - 1]) if later else None,
                character_to_first=_round(crop_sims[i, 0].item()) if later else None,
                character_pairwise=_round(_mean_others(crop_sims, i, everyone)),
                character_to_references=_round(to_refs[i].item()) if to_refs is not None else None,
                face_detected=has_face[i],
                face_similarity_to_first=_round(face_sims[i, 0].item())
                if later and has_face[i] and has_face[0]
                else None,
                face_pairwise=_round(_mean_others(face_sims, i, has_face)),
                attempts=len(record["attempts"]),
                seconds=record["seconds"],
            )
        )
    return rows


def score_mode(
    mode_dir: Path,
    mode: str,
    story_ids: list[str],
    scorer: ClipScorer,
    faces: FaceBackend,
    references: torch.Tensor | None = None,
) -> pd.DataFrame:
    rows: list[FrameScore] = []
    for story_id in tqdm(story_ids, desc=f"evaluate {mode}", unit="story"):
        story_dir = Path(mode_dir) / story_id
        if not story_dir.is_dir():
            raise EvaluateError(f"{story_dir} missing: rerun `dvc repro generate@{mode}`")
        rows += score_story(story_dir, mode, scorer, faces, references)
    return pd.DataFrame([asdict(r) for r in rows])


def _mean(series: pd.Series) -> float | None:
    values = series.dropna()
    return _round(values.mean()) if len(values) else None


def summarise(frames: pd.DataFrame) -> dict:
    """The figures `dvc metrics diff` compares. None means "no frame could be scored" (see the rates and counts)."""
    later = frames[frames["frame"] > 1]
    return {
        "frames": int(len(frames)),
        "clip_text_score": _mean(frames["clip_text_score"]),
        "clip_image_to_first": _mean(later["clip_image_to_first"]),
        "character_to_first": _mean(later["character_to_first"]),
        "character_pairwise": _mean(frames["character_pairwise"]),
        "character_to_references": _mean(frames["character_to_references"]),
        "face_detection_rate": _round(frames["face_detected"].mean()),
        "face_similarity_to_first": _mean(later["face_similarity_to_first"]),
        "face_pairwise": _mean(frames["face_pairwise"]),
        "face_pairs_scored": int(later["face_similarity_to_first"].notna().sum()),
        "face_pairs_possible": int(len(later)),
        "attempts_per_frame": _round(frames["attempts"].mean()),
        "seconds_per_frame": _round(frames["seconds"].mean()),
    }


def summarise_by_story(frames: pd.DataFrame) -> dict[str, dict]:
    return {story: summarise(group) for story, group in frames.groupby("story_id", sort=False)}
