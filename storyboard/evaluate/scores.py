"""Score rendered storyboards: text alignment, character consistency and face identity, per frame and per mode.

The character is located the way ViStoryBench locates it (storyboard/evaluate/vistorybench.py): Grounding DINO's
top box for the character prompt, the whole frame when it finds none (counted); the face score comes from the
largest face inside that box, or from the whole frame when the box holds none (counted too). The character
figures are CLIP ViT-L/14 image features of the box, the face figures the evaluate face backend's embeddings.
Neither model is one generate selected frames with (DINOv2 likeness) or conditioned on (the FaceID embedding),
so these figures measure the model, not the retry loop; the loop's effect is measured apart, by scoring each
frame's first attempt too (`attempt: first`).

Two kinds of figure: self-consistency (each frame against frame 1, and all pairs of frames in a story) and, when
reference images exist (the training set), cross-similarity of each frame to them. Faces a detector misses are not
dropped silently: detection rates and the number of scored pairs stand beside the similarities.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from storyboard.errors import StoryboardError
from storyboard.evaluate.independence import evaluate_face_backend
from storyboard.evaluate.vistorybench import cids, occm
from storyboard.models.clip import ClipScorer
from storyboard.models.detector import Box, CharacterDetector, detector_prompt
from storyboard.models.faces import Face, FaceBackend, cosine_similarity, largest_face, load_face_backend
from storyboard.models.loading import Device
from storyboard.settings import ModelSet, Settings

Attempt = Literal["kept", "first"]
LOCATE_CHUNK = 32  # frames located together: enough to occupy the cores, few enough to hold in memory


class EvaluateError(StoryboardError):
    """Outputs to score are missing or inconsistent; the message names them."""


@dataclass
class FrameScore:
    mode: str
    story_id: str
    frame: int
    attempt: str  # kept: the frame generate kept; first: its first attempt (the seed, no retries)
    clip_text_score: float
    clip_image_to_first: float | None  # whole frame vs frame 1; None for frame 1 itself
    character_detected: bool  # Grounding DINO found the character; False: the whole frame stands in
    character_box: str | None  # "x0 y0 x1 y1" in pixels
    character_to_first: float | None  # character crop vs frame 1's crop
    character_pairwise: float | None  # mean over the story's other frames
    character_to_references: float | None  # mean over the reference (training) crops; None without references
    face_detected: bool
    face_in_box: bool  # the face was found inside the character box (False: in the whole frame, or not at all)
    face_similarity_to_first: float | None  # None when frame 1 or this frame has no detected face
    face_pairwise: float | None  # mean over the story's other frames with a face
    attempts: int
    seconds: float


@dataclass
class Located:
    """An image located like ViStoryBench: the character box (None: not found), the crop scored, the face."""

    box: Box | None
    crop: Image.Image
    face: Face | None
    face_in_box: bool


@dataclass
class References:
    """The reference images' character crops, embedded once: CLIP features and face embeddings."""

    clip: torch.Tensor
    faces: torch.Tensor | None  # None when no reference shows a face


class Locator:
    """Detector, character embedder and face backend of the evaluate stage, with the detector's text prompt."""

    def __init__(self, detector: CharacterDetector, scorer: ClipScorer, faces: FaceBackend, prompt: str):
        self.detector, self.scorer, self.faces, self.prompt = detector, scorer, faces, prompt

    def locate(self, images: list[Image.Image]) -> list[Located]:
        """Each image located: the detector's top box, the largest face in it (in the whole image when the box holds
        none). The faces of all the images are detected together, which spreads them over the CPU cores (dlib)."""
        boxes, crops = self.crops(images)
        faces = [largest_face(found) for found in self.faces.detect_many(crops)]
        again = [i for i, (box, face) in enumerate(zip(boxes, faces, strict=True)) if face is None and box is not None]
        whole = dict(zip(again, map(largest_face, self.faces.detect_many([images[i] for i in again])), strict=True))
        return [
            Located(box, crop, whole.get(i, face), face_in_box=face is not None and box is not None)
            for i, (box, crop, face) in enumerate(zip(boxes, crops, faces, strict=True))
        ]

    def crops(self, images: list[Image.Image]) -> tuple[list[Box | None], list[Image.Image]]:
        """Each image's top box (None: not found) and the crop scored: the box, or the whole image without one."""
        boxes = self.detector.best(images, self.prompt)
        return boxes, [box.crop(image) if box is not None else image for image, box in zip(images, boxes, strict=True)]

    @classmethod
    def of_evaluate(cls, settings: Settings, models: ModelSet, device: Device) -> Locator:
        """The locator the evaluate stage scores with; the select stage scores the saved steps with it too, so a
        step is chosen by the identity figure evaluate reports."""
        character = settings.character
        return cls(
            CharacterDetector(models.detector, device),
            ClipScorer(models.clip, device),
            load_face_backend(
                models.model_copy(update={"face_backend": evaluate_face_backend(settings)}),
                settings.evaluate.face_min_score,
            ),
            detector_prompt(settings.evaluate.detector_prompt, character.name, character.description),
        )

    def references(self, images: list[Image.Image], faces: bool = True) -> References | None:
        """ViStoryBench's reference crops: each image's top box; the whole images only when none has a box.
        `faces`: False leaves References.faces None (the checkpoint sweep scores CLIP features only)."""
        if not images:
            return None
        boxes = self.detector.best(images, self.prompt)
        crops = [b.crop(im) for im, b in zip(images, boxes, strict=True) if b is not None] or images
        found = self._face_embeddings(crops) if faces else []
        if faces and not found and crops is not images:  # ViStoryBench retries the whole images when no crop has one
            found = self._face_embeddings(images)
        face_feats = torch.from_numpy(np.stack(found)).float() if found else None
        return References(self.scorer.image_features(crops), face_feats)

    def _face_embeddings(self, images: list[Image.Image]) -> list[np.ndarray]:
        return [face.embedding for face in map(largest_face, self.faces.detect_many(images)) if face is not None]


def _round(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 4)


def _mean_others(sims: torch.Tensor, i: int, valid: list[bool]) -> float | None:
    others = [sims[i, j].item() for j in range(len(valid)) if j != i and valid[j]]
    return sum(others) / len(others) if others and valid[i] else None


def _frame_file(record: dict, attempt: Attempt, meta_path: Path, mode: str) -> str:
    if attempt == "kept":
        return record["file"]
    if "first_attempt_file" in record:
        return record["first_attempt_file"]
    if record.get("kept_attempt", 1) == 1:
        return record["file"]
    raise EvaluateError(
        f"{meta_path}: frame {record['index']} kept attempt {record['kept_attempt']} but its first attempt was "
        f"not saved (outputs of an older generate): rerun `dvc repro -f generate@{mode}`"
    )


def score_story(
    story_dir: Path,
    mode: str,
    locator: Locator,
    references: References | None = None,
    attempt: Attempt = "kept",
    located_files: dict[Path, Located] | None = None,
) -> tuple[list[FrameScore], dict]:
    """Per-frame scores and the story's ViStoryBench figures (see vistorybench.py).

    `located_files`: what the locator found per file, kept across calls: a frame kept at its first attempt is the
    same file in the kept and the first-attempt pass, and is located (detector, face backend) once."""
    meta, files = story_files(story_dir, mode, attempt)
    records = meta["frames"]
    images = [Image.open(f).convert("RGB") for f in files]
    scorer = locator.scorer
    text = scorer.text_scores(images, [r["scene"] for r in records])
    to_first = scorer.image_scores(images[1:], images[0])
    located_files = {} if located_files is None else located_files
    new = [(file, image) for file, image in zip(files, images, strict=True) if file not in located_files]
    if new:
        located_files.update(zip([f for f, _ in new], locator.locate([im for _, im in new]), strict=True))
    located = [located_files[f] for f in files]
    crops = scorer.image_features([loc.crop for loc in located])
    crop_sims = crops @ crops.T
    to_refs = (crops @ references.clip.T).mean(dim=1) if references is not None else None
    has_face = [loc.face is not None for loc in located]
    face_sims = torch.zeros(len(images), len(images))
    for i, a in enumerate(located):
        for j, b in enumerate(located):
            if a.face is not None and b.face is not None:
                face_sims[i, j] = cosine_similarity(a.face.embedding, b.face.embedding)
    everyone = [True] * len(images)
    rows = []
    for i, (record, loc) in enumerate(zip(records, located, strict=True)):
        later = i > 0
        rows.append(
            FrameScore(
                mode=mode,
                story_id=meta["story_id"],
                frame=record["index"],
                attempt=attempt,
                clip_text_score=_round(text[i]),
                clip_image_to_first=_round(to_first[i - 1]) if later else None,
                character_detected=loc.box is not None,
                character_box=" ".join(map(str, loc.box.bbox)) if loc.box is not None else None,
                character_to_first=_round(crop_sims[i, 0].item()) if later else None,
                character_pairwise=_round(_mean_others(crop_sims, i, everyone)),
                character_to_references=_round(to_refs[i].item()) if to_refs is not None else None,
                face_detected=has_face[i],
                face_in_box=loc.face_in_box,
                face_similarity_to_first=_round(face_sims[i, 0].item())
                if later and has_face[i] and has_face[0]
                else None,
                face_pairwise=_round(_mean_others(face_sims, i, has_face)),
                attempts=len(record["attempts"]),
                seconds=record["seconds"],
            )
        )
    return rows, _vistorybench(located, crops, references)


def _vistorybench(located: list[Located], crops: torch.Tensor, references: References | None) -> dict:
    """The story's CIDS both ways: only frames where Grounding DINO found the character count, as published."""
    clip = [crops[i] if loc.box is not None else None for i, loc in enumerate(located)]
    face = [
        torch.from_numpy(loc.face.embedding).float() if loc.box is not None and loc.face_in_box else None
        for loc in located
    ]
    self_clip, cross_clip = cids(clip, references.clip if references is not None else None)
    face_refs = references.faces if references is not None else None
    self_face, cross_face = cids(face, face_refs)
    return {
        "vistorybench_self_cids": self_clip,
        "vistorybench_cross_cids": cross_clip,
        "vistorybench_self_cids_face": self_face,
        "vistorybench_cross_cids_face": cross_face if face_refs is not None else None,
        "vistorybench_occm": occm([loc.box is not None for loc in located]),
    }


def score_mode(
    mode_dir: Path,
    mode: str,
    story_ids: list[str],
    locator: Locator,
    references: References | None = None,
    attempt: Attempt = "kept",
    located_files: dict[Path, Located] | None = None,
) -> tuple[pd.DataFrame, dict[str, dict]]:
    """Every story's frames as one table, and each story's ViStoryBench figures (`located_files`: see
    score_story)."""
    rows: list[FrameScore] = []
    stories: dict[str, dict] = {}
    for story_id in tqdm(story_ids, desc=f"evaluate {mode} ({attempt} attempts)", unit="story"):
        story_dir = Path(mode_dir) / story_id
        story_rows, stories[story_id] = score_story(story_dir, mode, locator, references, attempt, located_files)
        rows += story_rows
    return pd.DataFrame([asdict(r) for r in rows]), stories


def story_files(story_dir: Path, mode: str, attempt: Attempt) -> tuple[dict, list[Path]]:
    """A story's metadata and the files of `attempt`; a missing story names the stage to rerun."""
    meta_path = story_dir / "metadata.json"
    if not story_dir.is_dir() or not meta_path.exists():
        raise EvaluateError(
            f"{meta_path if story_dir.is_dir() else story_dir} missing: rerun `dvc repro generate@{mode}`"
        )
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    return meta, [story_dir / _frame_file(r, attempt, meta_path, mode) for r in meta["frames"]]


def mode_files(mode_dir: Path, mode: str, story_ids: list[str]) -> list[Path]:
    """Every file a mode's scoring reads: the kept frames and, when generate retried any, the first attempts."""
    attempts: list[Attempt] = ["kept", "first"] if retried(mode_dir, story_ids, mode) else ["kept"]
    return [f for a in attempts for story_id in story_ids for f in story_files(Path(mode_dir) / story_id, mode, a)[1]]


def locate_files(files: list[Path], locator: Locator) -> dict[Path, Located]:
    """Each file located once, `LOCATE_CHUNK` at a time: the faces of a chunk are detected together, on every CPU core
    (dlib), where one story's frames would keep only a few of them busy."""
    todo = list(dict.fromkeys(files))
    located: dict[Path, Located] = {}
    with tqdm(total=len(todo), desc="evaluate: locating the character", unit="frame") as bar:
        for start in range(0, len(todo), LOCATE_CHUNK):
            chunk = todo[start : start + LOCATE_CHUNK]
            located.update(zip(chunk, locator.locate([Image.open(f).convert("RGB") for f in chunk]), strict=True))
            bar.update(len(chunk))
    return located


def retried(mode_dir: Path, story_ids: list[str], mode: str) -> bool:
    """Whether any frame kept another attempt than its first (otherwise the first attempts are the kept frames)."""
    for story_id in story_ids:
        meta, _ = story_files(Path(mode_dir) / story_id, mode, "kept")
        if any(r.get("kept_attempt", 1) != 1 for r in meta["frames"]):
            return True
    return False


def frame_checks(mode_dir: Path, story_ids: list[str], mode: str) -> dict:
    """The thresholds generate judged a mode's frames by (its stories' metadata.json): each value and how it was
    reached (calibrated, fixed, fallback). None when the stories differ (a story's render hash holds the values, so
    one generate run leaves them all alike) or predate the record."""
    seen = [story_files(Path(mode_dir) / story_id, mode, "kept")[0].get("thresholds") or {} for story_id in story_ids]
    checks: dict = {}
    for key in ("clip_threshold", "likeness_threshold"):
        found = {((t.get(key) or {}).get("value"), (t.get(key) or {}).get("source")) for t in seen}
        checks[key], checks[f"{key}_source"] = found.pop() if len(found) == 1 else (None, None)
    return checks


def _mean(series: pd.Series) -> float | None:
    values = series.dropna()
    return _round(values.mean()) if len(values) else None


def summarise(frames: pd.DataFrame, stories: dict[str, dict]) -> dict:
    """The figures `dvc metrics diff` compares. None means "no frame could be scored" (see the rates and counts).

    The ViStoryBench figures are means over stories of each story's figure, as its leaderboard averages them.
    """
    later = frames[frames["frame"] > 1]
    wanted = frames["story_id"].unique()
    per_story = [stories[s] for s in wanted]
    vistorybench = {
        key: _round(float(np.mean(values))) if (values := [s[key] for s in per_story if s[key] is not None]) else None
        for key in per_story[0]
    }
    return {
        "frames": int(len(frames)),
        "clip_text_score": _mean(frames["clip_text_score"]),
        "clip_image_to_first": _mean(later["clip_image_to_first"]),
        **vistorybench,
        "character_detection_rate": _round(frames["character_detected"].mean()),
        "character_whole_frame_fallbacks": int((~frames["character_detected"]).sum()),
        "character_to_first": _mean(later["character_to_first"]),
        "character_pairwise": _mean(frames["character_pairwise"]),
        "character_to_references": _mean(frames["character_to_references"]),
        "face_detection_rate": _round(frames["face_detected"].mean()),
        "face_in_box_rate": _round(frames["face_in_box"].mean()),
        "face_whole_frame_fallbacks": int((frames["face_detected"] & ~frames["face_in_box"]).sum()),
        "face_similarity_to_first": _mean(later["face_similarity_to_first"]),
        "face_pairwise": _mean(frames["face_pairwise"]),
        "face_pairs_scored": int(later["face_similarity_to_first"].notna().sum()),
        "face_pairs_possible": int(len(later)),
        "attempts_per_frame": _round(frames["attempts"].mean()),
        # what the retry loop costs: the share of frames rendered more than once (attempts_per_frame: how often)
        "frames_redone": _round((frames["attempts"] > 1).mean()),
        "seconds_per_frame": _round(frames["seconds"].mean()),
    }


def summarise_by_story(frames: pd.DataFrame, stories: dict[str, dict]) -> dict[str, dict]:
    return {story: summarise(group, stories) for story, group in frames.groupby("story_id", sort=False)}
