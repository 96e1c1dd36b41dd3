"""Scoring rendered stories: the character located, faces found or not, every frame still scored, metrics written."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from storyboard.evaluate.report import evaluate_outputs
from storyboard.evaluate.scores import EvaluateError, Locator, score_story, summarise
from storyboard.models.clip import ClipScorer
from storyboard.models.detector import CharacterDetector
from storyboard.models.faces import DlibFaceBackend, InsightFaceBackend
from storyboard.models.tiny import tiny_model_set
from storyboard.settings import MODES

IMAGES = Path(next(iter(importlib.util.find_spec("insightface").submodule_search_locations))) / "data" / "images"


@pytest.fixture(scope="module")
def faces():
    return DlibFaceBackend()


@pytest.fixture(scope="module")
def locator(tiny_models, cpu, faces):
    return Locator(CharacterDetector(tiny_models.detector, cpu), ClipScorer(tiny_models.clip, cpu), faces, "character.")


def write_story(folder: Path, images: list[Image.Image], story_id: str = "s1", first: dict | None = None) -> Path:
    """A story folder as generate writes it; `first`: frame index -> the image of its first attempt."""
    story = folder / story_id
    story.mkdir(parents=True)
    records = []
    for i, image in enumerate(images, start=1):
        image.save(story / f"frame_{i:02d}.png")
        record = {"index": i, "file": f"frame_{i:02d}.png", "scene": f"scene {i}", "attempts": [{}] * i}
        if first and i in first:
            (story / "first_attempts").mkdir(exist_ok=True)
            first[i].save(story / f"first_attempts/frame_{i:02d}.png")
            record |= {"kept_attempt": 2, "first_attempt_file": f"first_attempts/frame_{i:02d}.png"}
        records.append({**record, "seconds": 0.5})
    (story / "metadata.json").write_text(json.dumps({"story_id": story_id, "frames": records}))
    return story


def _story(folder: Path, story_id: str = "s1") -> Path:
    """Frame 1 a real face, frame 2 the same face mirrored, frame 3 no face at all."""
    face = Image.open(IMAGES / "Tom_Hanks_54745.png").convert("RGB").resize((256, 256))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8))
    return write_story(folder, [face, ImageOps.mirror(face), noise], story_id)


def test_faces_and_characters_scored_per_frame(tmp_path, locator):
    rows, story = score_story(_story(tmp_path), "lora", locator)
    assert [r.face_detected for r in rows] == [True, True, False]
    assert rows[0].face_similarity_to_first is None  # frame 1 is the reference
    assert rows[1].face_similarity_to_first > 0.95
    assert rows[2].face_similarity_to_first is None  # no face: not scored, and not hidden either
    assert rows[0].clip_image_to_first is None and all(-1 <= r.clip_image_to_first <= 1 for r in rows[1:])
    assert [r.attempts for r in rows] == [1, 2, 3] and {r.attempt for r in rows} == {"kept"}
    assert all(-1 <= r.character_pairwise <= 1 for r in rows)
    assert rows[0].face_pairwise == rows[1].face_pairwise and rows[2].face_pairwise is None
    assert all(r.character_to_references is None for r in rows)  # no references given
    for r in rows:  # a box is reported exactly when the detector found the character
        assert (r.character_box is not None) == r.character_detected
    assert 0 <= story["vistorybench_occm"] <= 100 and story["vistorybench_cross_cids"] is None

    summary = summarise(pd.DataFrame([r.__dict__ for r in rows]), {"s1": story})
    assert summary["face_detection_rate"] == pytest.approx(2 / 3, abs=1e-3)
    assert (summary["face_pairs_scored"], summary["face_pairs_possible"]) == (1, 2)
    assert summary["face_similarity_to_first"] == rows[1].face_similarity_to_first
    assert summary["attempts_per_frame"] == 2.0
    detected = sum(r.character_detected for r in rows)
    assert summary["character_whole_frame_fallbacks"] == 3 - detected
    assert summary["face_whole_frame_fallbacks"] == sum(r.face_detected and not r.face_in_box for r in rows)
    assert summary["vistorybench_self_cids"] == pytest.approx(story["vistorybench_self_cids"], abs=1e-4)


def test_face_figures_through_insightface(tmp_path, tiny_settings, tiny_models, cpu):
    """evaluate's face figures with InsightFace on the tiny profile: the real FaceAnalysis on its random-weight pack,
    whose one meaningless face per image (the noise frame too) is found, embedded in 512-d and compared."""
    tiny = tiny_settings.models.tiny.model_copy(update={"face_backend": "insightface"})
    settings = tiny_settings.model_copy(update={"models": tiny_settings.models.model_copy(update={"tiny": tiny})})
    locator = Locator.of_evaluate(settings, tiny_model_set(tiny), cpu)
    assert isinstance(locator.faces, InsightFaceBackend)
    rows, story = score_story(_story(tmp_path), "lora", locator)
    assert [r.face_detected for r in rows] == [True, True, True]
    assert rows[0].face_similarity_to_first is None and all(-1 <= r.face_similarity_to_first <= 1 for r in rows[1:])
    assert all(-1 <= r.face_pairwise <= 1 for r in rows)
    summary = summarise(pd.DataFrame([r.__dict__ for r in rows]), {"s1": story})
    assert summary["face_detection_rate"] == 1.0
    assert (summary["face_pairs_scored"], summary["face_pairs_possible"]) == (2, 2)
    face = Image.open(IMAGES / "Tom_Hanks_54745.png").convert("RGB").resize((256, 256))
    refs = locator.references([face, ImageOps.mirror(face)])
    assert refs.faces is not None and refs.faces.shape == (2, InsightFaceBackend.embedding_size)


def test_nothing_detected_falls_back_to_the_whole_frame_and_counts_it(tmp_path, locator, monkeypatch):
    import storyboard.models.detector as detector

    monkeypatch.setattr(detector, "BOX_THRESHOLD", 1.01)  # no score passes: the real detector finds nothing
    rows, story = score_story(_story(tmp_path), "lora", locator)
    assert not any(r.character_detected for r in rows) and all(r.character_box is None for r in rows)
    assert [r.face_detected for r in rows] == [True, True, False]  # faces are still searched, in the whole frame
    assert not any(r.face_in_box for r in rows)
    assert rows[1].character_to_first > 0.9  # the whole frames were scored
    # ViStoryBench counts undetected shots as missing: no crop, CIDS 0, OCCM 100 * e^-1
    assert story["vistorybench_self_cids"] == 0.0 and story["vistorybench_self_cids_face"] == 0.0
    assert story["vistorybench_occm"] == pytest.approx(100 * np.exp(-1), abs=1e-3)
    summary = summarise(pd.DataFrame([r.__dict__ for r in rows]), {"s1": story})
    assert summary["character_detection_rate"] == 0.0 and summary["character_whole_frame_fallbacks"] == 3
    assert summary["face_whole_frame_fallbacks"] == 2


def test_cross_figure_against_references(tmp_path, locator):
    face = Image.open(IMAGES / "Tom_Hanks_54745.png").convert("RGB").resize((256, 256))
    refs = locator.references([face, ImageOps.mirror(face)])
    assert refs.faces is not None and refs.faces.shape == (2, DlibFaceBackend.embedding_size)
    rows, story = score_story(_story(tmp_path), "lora", locator, refs)
    assert all(-1 <= r.character_to_references <= 1 for r in rows)
    assert -1 <= story["vistorybench_cross_cids"] <= 1


def test_first_attempts_are_scored_from_their_own_files(tmp_path, locator):
    face = Image.open(IMAGES / "Tom_Hanks_54745.png").convert("RGB").resize((256, 256))
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 255, (256, 256, 3), dtype=np.uint8))
    story = write_story(tmp_path, [face, ImageOps.mirror(face)], first={2: noise})
    located: dict = {}
    kept, _ = score_story(story, "lora", locator, located_files=located)
    assert len(located) == 2
    first, _ = score_story(story, "lora", locator, attempt="first", located_files=located)
    assert kept[1].face_detected and not first[1].face_detected  # frame 2's first attempt was the noise
    assert first[0].clip_text_score == kept[0].clip_text_score  # frame 1 was kept at its first attempt
    # frame 1 is the same file in both passes: located once; frame 2's first attempt is its own file
    assert sorted(f.name for f in located) == ["frame_01.png", "frame_02.png", "frame_02.png"]
    assert first[0].face_detected == kept[0].face_detected and first[0].character_box == kept[0].character_box


def test_a_modes_files_are_located_once_in_chunks_and_scored_alike(tmp_path, locator, monkeypatch):
    """evaluate locates every file of a mode up front, a chunk of frames at a time (their faces detected together):
    each file once, the kept frames and the first attempts of retried ones, with the boxes and faces that scoring
    a story alone finds."""
    import storyboard.evaluate.scores as scores

    face = Image.open(IMAGES / "Tom_Hanks_54745.png").convert("RGB").resize((256, 256))
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 255, (256, 256, 3), dtype=np.uint8))
    write_story(tmp_path, [face, ImageOps.mirror(face)], "s1", first={2: noise})
    write_story(tmp_path, [ImageOps.mirror(face), noise, face], "s2")
    files = scores.mode_files(tmp_path, "lora", ["s1", "s2"])
    names = [str(f.relative_to(tmp_path)) for f in files]
    assert names[:5] == ["s1/frame_01.png", "s1/frame_02.png", "s2/frame_01.png", "s2/frame_02.png", "s2/frame_03.png"]
    assert names[5:] == ["s1/frame_01.png", "s1/first_attempts/frame_02.png", *names[2:5]]  # the first attempts
    chunks = []
    locate = locator.locate
    monkeypatch.setattr(locator, "locate", lambda images: chunks.append(len(images)) or locate(images))
    monkeypatch.setattr(scores, "LOCATE_CHUNK", 4)
    located = scores.locate_files(files, locator)
    assert chunks == [4, 2] and set(located) == set(files)
    for story_id in ("s1", "s2"):
        alone: dict = {}
        rows, _ = score_story(tmp_path / story_id, "lora", locator, located_files=alone)
        together, _ = score_story(tmp_path / story_id, "lora", locator, located_files=located)
        assert together == rows
    with pytest.raises(EvaluateError, match=r"s3 missing: rerun `dvc repro generate@lora`"):
        scores.mode_files(tmp_path, "lora", ["s1", "s3"])


def test_first_attempt_missing_names_the_fix(tmp_path, locator):
    story = _story(tmp_path)
    meta = json.loads((story / "metadata.json").read_text())
    meta["frames"][1]["kept_attempt"] = 2
    (story / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(EvaluateError, match=r"first attempt was not saved.*generate@lora"):
        score_story(story, "lora", locator, attempt="first")


def test_missing_outputs_name_the_stage(tmp_path, locator):
    (tmp_path / "s1").mkdir()
    with pytest.raises(EvaluateError, match=r"generate@lora"):
        score_story(tmp_path / "s1", "lora", locator)


def test_evaluate_outputs_writes_metrics_csv_and_table(tmp_path, tiny_settings, tiny_dataset):
    outputs = tmp_path / "outputs"
    for mode in MODES:
        for story in tiny_settings.stories:
            _story(outputs / mode, story.id)
    # lora's stories say which thresholds judged them (generate's metadata.json); the others predate the record
    checks = {
        "clip_threshold": {"value": 0.213, "source": "calibrated", "percentile": 5.0, "scores": 12, "reason": None},
        "likeness_threshold": {"value": 0.7, "source": "fallback", "percentile": None, "scores": 0, "reason": "few"},
        "training_pictures": 3,
    }
    for story in tiny_settings.stories:
        meta_path = outputs / "lora" / story.id / "metadata.json"
        meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "thresholds": checks}))
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
    assert "antelopev2" in saved["vistorybench"]  # the differences from ViStoryBench's recipe, named
    for mode in MODES:
        m = saved[mode]
        assert m["frames"] == 3 * len(tiny_settings.stories)
        assert m["face_detection_rate"] == pytest.approx(2 / 3, abs=1e-3)
        assert m["character_to_references"] is not None  # the tiny dataset served as references
        for key in ("vistorybench_self_cids", "vistorybench_cross_cids", "vistorybench_occm"):
            assert m[key] is not None
        assert 0 <= m["character_detection_rate"] <= 1 and 0 <= m["face_in_box_rate"] <= 1
        # no retries: the first attempts are the kept frames
        assert m["vistorybench_self_cids_first_attempt"] == m["vistorybench_self_cids"]
        assert set(m["stories"]) == {s.id for s in tiny_settings.stories}
        assert m["stories"][tiny_settings.stories[0].id]["frames"] == 3
        assert "clip_text_score_first_attempt" in m["stories"][tiny_settings.stories[0].id]
        csv = (tmp_path / f"m/frames/{mode}.csv").read_text().splitlines()
        assert csv[0].startswith("mode,story_id,frame,attempt,clip_text_score") and len(csv) == 1 + 3 * len(
            tiny_settings.stories
        )
        assert (tmp_path / f"m/frames/{mode}_first_attempt.csv").exists()
        # write_story gives frame i i attempts: frames 2 and 3 of each story were redone
        assert m["frames_redone"] == pytest.approx(2 / 3, abs=1e-3) and m["attempts_per_frame"] == 2.0
    assert saved["lora"]["clip_threshold"] == 0.213 and saved["lora"]["clip_threshold_source"] == "calibrated"
    assert saved["lora"]["likeness_threshold"] == 0.7 and saved["lora"]["likeness_threshold_source"] == "fallback"
    assert saved["baseline"]["clip_threshold"] is None and saved["baseline"]["clip_threshold_source"] is None
    table = (tmp_path / "m/results.md").read_text()
    assert "plumbing" in table and "| ref_guided" in table and "| multiref" in table and "face detection rate" in table
    assert "Self-CIDS (ViStoryBench)" in table and "Self-CIDS, first attempts" in table
    checks_table = table.split("## Frame checks", 1)[1].split("\n## ", 1)[0]
    assert "text threshold" in checks_table and "frames redone" in checks_table and "calibrated" in checks_table
    assert all(f"## {s.id}" in table for s in tiny_settings.stories)
    assert (tmp_path / "report/index.html").exists() and len(
        list((tmp_path / "report/assets").rglob("*.png"))
    ) == 3 * len(tiny_settings.stories) * len(MODES)
