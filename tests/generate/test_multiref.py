"""generate@multiref: FLUX.2 klein (tiny) renders each frame from reference images of the character, no LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import insightface
import numpy as np
import pytest
from PIL import Image

from storyboard.generate.references import choose_references, fit
from storyboard.generate.run import render_plans
from storyboard.models.faces import load_face_backend
from storyboard.models.loading import ModelLoadError, load_multiref_pipeline
from storyboard.story.planners import OfflinePlanner, plan_story

FACE_PHOTO = Path(insightface.__file__).parent / "data" / "images" / "Tom_Hanks_54745.png"


def _settings(tiny_settings, **multiref):
    m = tiny_settings.generate.multiref.model_copy(update={"steps": 2, **multiref})
    generate = tiny_settings.generate.model_copy(update={"max_retries": 0, "frames_per_batch": 8, "multiref": m})
    return tiny_settings.model_copy(update={"generate": generate})


def _frames(folder):
    return [np.asarray(Image.open(p), dtype=np.int16) for p in sorted(folder.glob("frame_*.png"))]


def _plan(settings):
    plan = plan_story(OfflinePlanner(settings.plan), settings.stories[0], settings.character)
    return plan.model_copy(update={"frames": plan.frames[:3]})


def _sheet(folder: Path, colour) -> Path:
    folder.mkdir(parents=True)
    Image.new("RGB", (96, 128), colour).save(folder / "front.png")
    (folder / "README.md").write_text("not an image: ignored")
    return folder


def test_the_rule_takes_the_clearest_face_then_the_tallest_figure(tiny_models):
    faces = load_face_backend(tiny_models, 0.5)
    face = Image.open(FACE_PHOTO).convert("RGB")
    square, tall, taller = (Image.new("RGB", size, "white") for size in ((100, 100), (100, 200), (100, 300)))
    images = [("square.png", square), ("tall.png", tall), ("face.png", face), ("taller.png", taller)]
    chosen = choose_references(images, faces, 3)
    assert [(r.name, r.why) for r in chosen] == [
        ("face.png", "clearest_face"),
        ("taller.png", "fullest_figure"),
        ("tall.png", "fullest_figure"),
    ]
    # without a face anywhere, figures only
    assert [r.name for r in choose_references(images[:2], faces, 2)] == ["tall.png", "square.png"]


def test_references_are_scaled_within_what_flux2_reads():
    assert fit(Image.new("RGB", (400, 200)), 128).size == (128, 64)
    # a strip is cropped to 8:1 about its centre, and no side ends below 64 px
    assert fit(Image.new("RGB", (1000, 50)), 128).size == (512, 64)


def test_multiref_renders_from_the_training_set_and_resumes(tmp_path, tiny_settings, tiny_dataset):
    settings = _settings(tiny_settings)
    plan = _plan(settings)
    out = {"multiref": tmp_path / "multiref"}
    render_plans(settings, ["multiref"], [plan], out, None, tiny_dataset, references_dir=tmp_path / "none")
    story = out["multiref"] / plan.story_id
    meta = json.loads((story / "metadata.json").read_text())
    assert meta["mode"] == "multiref" and meta["lora_sha256"] is None
    assert len(_frames(story)) == len(plan.frames) and meta["resolution"] == 64
    assert len(meta["references"]) == settings.generate.multiref.references
    assert {r["why"] for r in meta["references"]} <= {"clearest_face", "fullest_figure"}
    assert all(len(f["attempts"]) == 1 for f in meta["frames"])
    assert (meta["sampling"]["sampler"], meta["sampling"]["steps"]) == (None, 2)  # multiref's steps, not SDXL's
    mtime = (story / "metadata.json").stat().st_mtime_ns
    render_plans(settings, ["multiref"], [plan], out, None, tiny_dataset, references_dir=tmp_path / "none")
    assert (story / "metadata.json").stat().st_mtime_ns == mtime  # same inputs: kept
    # SDXL's knobs are not multiref's (the sampler's LoRAs are SDXL's too): its stories are kept
    sdxl = settings.generate.model_copy(
        update={"steps": 7, "lora_scale": 0.3, "negative_prompt": "x", "sampler": "lightning"}
    )
    render_plans(settings.model_copy(update={"generate": sdxl}), ["multiref"], [plan], out, None, tiny_dataset)
    assert (story / "metadata.json").stat().st_mtime_ns == mtime


def test_the_reference_sheet_is_what_every_frame_is_rendered_from(tmp_path, tiny_settings, tiny_dataset):
    settings = _settings(tiny_settings)
    plan = _plan(settings)
    red, blue = _sheet(tmp_path / "red", (220, 20, 20)), _sheet(tmp_path / "blue", (20, 20, 220))
    outs = {}
    for name, sheet in (("red", red), ("blue", blue)):
        outs[name] = tmp_path / f"out-{name}"
        render_plans(settings, ["multiref"], [plan], {"multiref": outs[name]}, None, tiny_dataset, references_dir=sheet)
    meta = json.loads((outs["red"] / plan.story_id / "metadata.json").read_text())
    assert meta["references"] == [{"name": "front.png", "why": "sheet"}]
    assert meta["selection"]["reference_face_backend"] is None
    red_frames, blue_frames = _frames(outs["red"] / plan.story_id), _frames(outs["blue"] / plan.story_id)
    assert all(np.abs(a - b).max() > 0 for a, b in zip(red_frames, blue_frames, strict=True))
    # editing the sheet re-renders the story
    mtime = (outs["red"] / plan.story_id / "metadata.json").stat().st_mtime_ns
    Image.new("RGB", (96, 128), (20, 220, 20)).save(red / "front.png")
    render_plans(settings, ["multiref"], [plan], {"multiref": outs["red"]}, None, tiny_dataset, references_dir=red)
    assert (outs["red"] / plan.story_id / "metadata.json").stat().st_mtime_ns != mtime


def test_frame_1_as_a_further_reference_changes_only_the_later_frames(tmp_path, tiny_settings, tiny_dataset):
    plan = _plan(tiny_settings)
    sheet = _sheet(tmp_path / "sheet", (200, 120, 40))
    frames = {}
    for first_frame in (False, True):
        out = tmp_path / str(first_frame)
        settings = _settings(tiny_settings, first_frame=first_frame)
        # a frame per batch in both runs, so that nothing but the extra reference tells them apart
        settings = settings.model_copy(
            update={"generate": settings.generate.model_copy(update={"frames_per_batch": 1})}
        )
        render_plans(settings, ["multiref"], [plan], {"multiref": out}, None, tiny_dataset, references_dir=sheet)
        frames[first_frame] = _frames(out / plan.story_id)
    (plain_first, *plain_rest), (with_first, *with_rest) = frames[False], frames[True]
    assert np.array_equal(plain_first, with_first)
    assert all(np.abs(a - b).max() > 0 for a, b in zip(plain_rest, with_rest, strict=True))


def test_calibrated_thresholds_decide_its_retries_and_an_sdxl_sampler_is_ignored(
    tmp_path, tiny_settings, tiny_dataset, caplog
):
    settings = _settings(tiny_settings)
    calibration = settings.generate.calibration.model_copy(update={"clip_percentile": 50, "likeness_percentile": 50})
    generate = settings.generate.model_copy(
        update={"max_retries": 1, "calibration": calibration, "sampler": "lightning"}
    )
    settings = settings.model_copy(update={"generate": generate})
    plan = plan_story(OfflinePlanner(settings.plan), settings.stories[0], settings.character)
    out = tmp_path / "multiref"
    with caplog.at_level("WARNING", logger="storyboard.generate.multiref"):
        render_plans(settings, ["multiref"], [plan], {"multiref": out}, None, tiny_dataset)
    assert "generate.sampler lightning is not used" in caplog.text
    meta = json.loads((out / plan.story_id / "metadata.json").read_text())
    assert meta["sampling"]["sampler"] is None and meta["sampling"]["steps"] == 2  # multiref's own, not lightning's 4
    t = meta["thresholds"]
    assert t["clip_threshold"]["source"] == t["likeness_threshold"]["source"] == "calibrated"
    clip, like = t["clip_threshold"]["value"], t["likeness_threshold"]["value"]
    fixed = settings.generate.calibration
    assert (clip, like) != (fixed.clip_fallback, fixed.likeness_fallback)
    for frame in meta["frames"]:
        first = frame["attempts"][0]
        failed = first["clip_text_score"] < clip or (first["likeness"] is not None and first["likeness"] < like)
        assert (len(frame["attempts"]) == 2) == failed, frame["index"]
    redone = sum(len(frame["attempts"]) == 2 for frame in meta["frames"])
    assert 0 < redone < len(meta["frames"])  # the median thresholds split this story's frames


def test_a_missing_klein_folder_names_the_key_and_the_fix(tmp_path, tiny_models, cpu):
    models = tiny_models.model_copy(update={"multiref": str(tmp_path)})
    with pytest.raises(ModelLoadError, match=r"models\.sdxl\.multiref.*model_index\.json"):
        load_multiref_pipeline(models, cpu)
