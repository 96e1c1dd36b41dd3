"""Scoring rendered stories: faces found or not, every frame still scored, metrics and tables written."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from storyboard.evaluate.faces import DlibFaceBackend
from storyboard.evaluate.report import evaluate_outputs
from storyboard.evaluate.scores import EvaluateError, score_story, summarise
from storyboard.generate.render import MODES
from storyboard.models.clip import ClipScorer

IMAGES = Path(next(iter(importlib.util.find_spec("insightface").submodule_search_locations))) / "data" / "images"


@pytest.fixture(scope="module")
def faces():
    return DlibFaceBackend()


@pytest.fixture(scope="module")
def scorer(tiny_models, cpu):
    return ClipScorer(tiny_models.clip, cpu)


def _story(folder: Path, story_id: str = "s1") -> Path:
    """Frame 1 a real face, frame 2 the same face mirrored, frame 3 no face at all."""
    face = Image.open(IMAGES / "Tom_Hanks_54745.png").convert("RGB").resize((256, 256))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8))
    story = folder / story_id
    story.mkdir(parents=True)
    records = []
    for i, image in enumerate([face, ImageOps.mirror(face), noise], start=1):
        image.save(story / f"frame_{i:02d}.png")
        records.append(
            {"index": i, "file": f"frame_{i:02d}.png", "scene": f"scene {i}", "attempts": [{}] * i, "seconds": 0.5}
        )
    (story / "metadata.json").write_text(json.dumps({"story_id": story_id, "frames": records}))
    return story


def test_faces_and_characters_scored_per_frame(tmp_path, faces, scorer):
    rows = score_story(_story(tmp_path), "lora", scorer, faces)
    assert [r.face_detected for r in rows] == [True, True, False]
    assert rows[0].face_similarity_to_first is None  # frame 1 is the reference
    assert rows[1].face_similarity_to_first > 0.95
    assert rows[2].face_similarity_to_first is None  # no face: not scored, and not hidden either
    assert rows[0].clip_image_to_first is None and all(-1 <= r.clip_image_to_first <= 1 for r in rows[1:])
    assert [r.attempts for r in rows] == [1, 2, 3]

    import pandas as pd

    summary = summarise(pd.DataFrame([r.__dict__ for r in rows]))
    assert summary["face_detection_rate"] == pytest.approx(2 / 3, abs=1e-3)
    assert (summary["face_pairs_scored"], summary["face_pairs_possible"]) == (1, 2)
    assert summary["face_similarity_to_first"] == rows[1].face_similarity_to_first
    assert summary["attempts_per_frame"] == 2.0


def test_missing_outputs_name_the_stage(tmp_path, faces, scorer):
    (tmp_path / "s1").mkdir()
    with pytest.raises(EvaluateError, match=r"generate@lora"):
        score_story(tmp_path / "s1", "lora", scorer, faces)


def test_evaluate_outputs_writes_metrics_csv_and_table(tmp_path, tiny_settings):
    outputs = tmp_path / "outputs"
    for mode in MODES:
        for story in tiny_settings.stories:
            _story(outputs / mode, story.id)
    metrics = evaluate_outputs(
        tiny_settings, outputs, tmp_path / "m/eval.json", tmp_path / "m/frames", tmp_path / "m/results.md"
    )
    saved = json.loads((tmp_path / "m/eval.json").read_text())
    assert saved == metrics
    assert saved["profile"] == "tiny" and "plumbing" in saved["notice"]
    for mode in MODES:
        assert saved[mode]["frames"] == 3 * len(tiny_settings.stories)
        assert saved[mode]["face_detection_rate"] == pytest.approx(2 / 3, abs=1e-3)
        csv = (tmp_path / f"m/frames/{mode}.csv").read_text().splitlines()
        assert csv[0].startswith("mode,story_id,frame,clip_text_score") and len(csv) == 1 + 3 * len(
            tiny_settings.stories
        )
    table = (tmp_path / "m/results.md").read_text()
    assert "plumbing" in table and "| ref_guided" in table and "face detection rate" in table
