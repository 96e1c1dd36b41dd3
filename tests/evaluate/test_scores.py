"""Scoring rendered stories: faces found or not, every frame still scored, metrics and tables written."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from storyboard.evaluate.report import evaluate_outputs
from storyboard.evaluate.scores import EvaluateError, score_story, summarise
from storyboard.models.clip import ClipScorer
from storyboard.models.faces import DlibFaceBackend
from storyboard.settings import MODES

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
    # character crops: around the face where one is found; pairwise over the story, face pairwise over faces only
    assert rows[1].character_to_first > 0.9
    assert all(-1 <= r.character_pairwise <= 1 for r in rows)
    assert rows[0].face_pairwise == rows[1].face_pairwise and rows[2].face_pairwise is None
    assert all(r.character_to_references is None for r in rows)  # no references given

    import pandas as pd

    summary = summarise(pd.DataFrame([r.__dict__ for r in rows]))
    assert summary["face_detection_rate"] == pytest.approx(2 / 3, abs=1e-3)
    assert (summary["face_pairs_scored"], summary["face_pairs_possible"]) == (1, 2)
    assert summary["face_similarity_to_first"] == rows[1].face_similarity_to_first
    assert summary["attempts_per_frame"] == 2.0


def test_cross_figure_against_references(tmp_path, faces, scorer):
    from storyboard.evaluate.scores import reference_features

    face = Image.open(IMAGES / "Tom_Hanks_54745.png").convert("RGB").resize((256, 256))
    refs = reference_features(scorer, [face, ImageOps.mirror(face)])
    rows = score_story(_story(tmp_path), "lora", scorer, faces, refs)
    assert all(-1 <= r.character_to_references <= 1 for r in rows)
    # the frames that are the reference's face are closer to it than the noise frame
    assert min(rows[0].character_to_references, rows[1].character_to_references) > rows[2].character_to_references


def test_character_crop_is_head_and_torso():
    from storyboard.evaluate.scores import character_crop
    from storyboard.models.faces import Face

    image = Image.new("RGB", (400, 400))
    face = Face(bbox=(180, 50, 220, 100), score=1.0, embedding=np.ones(4, dtype=np.float32) / 2)
    assert character_crop(image, face).size == (120, 200)  # 3 face widths; half a face above, 2.5 below
    assert character_crop(image, None).size == (400, 400)


def test_missing_outputs_name_the_stage(tmp_path, faces, scorer):
    (tmp_path / "s1").mkdir()
    with pytest.raises(EvaluateError, match=r"generate@lora"):
        score_story(tmp_path / "s1", "lora", scorer, faces)


def test_evaluate_outputs_writes_metrics_csv_and_table(tmp_path, tiny_settings, tiny_dataset):
    outputs = tmp_path / "outputs"
    for mode in MODES:
        for story in tiny_settings.stories:
            _story(outputs / mode, story.id)
    metrics = evaluate_outputs(
        tiny_settings,
        outputs,
        tmp_path / "m/eval.json",
        tmp_path / "m/frames",
        tmp_path / "m/results.md",
        html_dir=tmp_path / "report",
        dataset_dir=tiny_dataset,
    )
    saved = json.loads((tmp_path / "m/eval.json").read_text())
    assert saved == metrics
    assert saved["profile"] == "tiny" and "plumbing" in saved["notice"]
    for mode in MODES:
        assert saved[mode]["frames"] == 3 * len(tiny_settings.stories)
        assert saved[mode]["face_detection_rate"] == pytest.approx(2 / 3, abs=1e-3)
        assert saved[mode]["character_to_references"] is not None  # the tiny dataset served as references
        assert set(saved[mode]["stories"]) == {s.id for s in tiny_settings.stories}
        assert saved[mode]["stories"][tiny_settings.stories[0].id]["frames"] == 3
        csv = (tmp_path / f"m/frames/{mode}.csv").read_text().splitlines()
        assert csv[0].startswith("mode,story_id,frame,clip_text_score") and len(csv) == 1 + 3 * len(
            tiny_settings.stories
        )
    table = (tmp_path / "m/results.md").read_text()
    assert "plumbing" in table and "| ref_guided" in table and "face detection rate" in table
    assert all(f"## {s.id}" in table for s in tiny_settings.stories)
    assert (tmp_path / "report/index.html").exists() and len(list((tmp_path / "report/assets").rglob("*.png"))) == 27
