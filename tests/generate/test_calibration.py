"""Thresholds calibrated on the training pictures (tiny profile): the stated percentiles, fixed values, fallbacks,
and the render hash, which moves with the computed values and with nothing else of the calibration."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest

from storyboard.dataset import load_training_captions, load_training_images
from storyboard.generate.calibration import Threshold, Thresholds, calibrate, pairwise_likeness
from storyboard.generate.inputs import StoryInputs
from storyboard.generate.renderer import StoryRenderer
from storyboard.generate.run import render_plans
from storyboard.models.likeness import LikenessScorer
from storyboard.story.planners import OfflinePlanner, plan_story


@pytest.fixture(scope="module")
def likeness(tiny_models, cpu):
    return LikenessScorer(tiny_models.likeness, cpu)


@pytest.fixture(scope="module")
def pictures(tiny_dataset):
    return load_training_images(tiny_dataset), load_training_captions(tiny_dataset)


def _generate(tiny_settings, **update):
    calibration = tiny_settings.generate.calibration.model_copy(update=update.pop("calibration", {}))
    return tiny_settings.generate.model_copy(update={"calibration": calibration, **update})


def _calibrate(settings, pictures, scorer, likeness, trigger, count=None):
    images, captions = pictures
    images, captions = images[:count], captions[:count]
    features = likeness.image_features(images) if images else None
    return calibrate(
        settings, images=images, captions=captions, trigger=trigger, scorer=scorer, likeness_features=features
    )


def test_auto_thresholds_are_the_stated_percentiles(tiny_settings, pictures, scorer, likeness):
    settings = _generate(tiny_settings, calibration={"clip_percentile": 30, "likeness_percentile": 10})
    trigger = tiny_settings.character.trigger
    t = _calibrate(settings, pictures, scorer, likeness, trigger)
    images, captions = pictures
    n = len(images)
    assert n >= settings.calibration.min_images and t.pictures == n

    # Each picture on its own through the checks' models, the formula written out pair by pair.
    feats = np.stack([likeness.image_features([im])[0].numpy() for im in images]).astype(np.float64)
    pair_scores = [
        (feats[i] @ feats[j] + np.mean([feats[i] @ feats[k] for k in range(n) if k != i])) / 2
        for i in range(n)
        for j in range(n)
        if j != i
    ]
    assert t.likeness == Threshold(pytest.approx(np.percentile(pair_scores, 10), abs=1.5e-3), "calibrated", 10, 30)
    # the trigger token the caption stage put first is not what CLIP reads
    assert all(c.startswith(f"{trigger}, ") for c in captions)
    texts = [c.removeprefix(f"{trigger}, ") for c in captions]
    text_scores = [scorer.text_scores([im], [text])[0] for im, text in zip(images, texts, strict=True)]
    assert t.clip == Threshold(pytest.approx(np.percentile(text_scores, 30), abs=1.5e-3), "calibrated", 30, n)
    assert t.clip.value == round(t.clip.value, 3)

    # The pairs are scored as the renderer scores a frame: picture j as frame 1, the others as the training set.
    f = likeness.image_features(images)
    for i, j in ((0, 1), (3, 2)):
        others = f[[k for k in range(n) if k != i]]
        renderer = SimpleNamespace(likeness_features=others)
        by_renderer = StoryRenderer._likeness(renderer, f[i], f[j])
        by_pairs = pairwise_likeness(f).reshape(n, n - 1)[i, j - (j > i)]
        assert by_renderer == pytest.approx(float(by_pairs), abs=1e-5)


def test_a_fixed_value_overrides(tiny_settings, pictures, likeness):
    settings = _generate(tiny_settings, clip_threshold=0.123)
    # no CLIP needed for a fixed text threshold; the likeness one is still calibrated
    t = _calibrate(settings, pictures, None, likeness, tiny_settings.character.trigger)
    assert t.clip == Threshold(0.123, "fixed")
    assert t.likeness.source == "calibrated"
    both = _generate(tiny_settings, clip_threshold=0.3, likeness_threshold=-0.5)
    assert Thresholds.fixed(both).values() == {"clip_threshold": 0.3, "likeness_threshold": -0.5}


def test_one_image_and_too_few_fall_back_with_a_warning(tiny_settings, pictures, scorer, likeness, caplog):
    settings = _generate(tiny_settings, calibration={"clip_fallback": 0.21, "likeness_fallback": 0.42})
    trigger = tiny_settings.character.trigger
    with caplog.at_level(logging.WARNING, logger="storyboard"):
        one = _calibrate(settings, pictures, scorer, likeness, trigger, count=1)
    assert one.values() == {"clip_threshold": 0.21, "likeness_threshold": 0.42}
    assert one.clip.source == one.likeness.source == "fallback" and one.pictures == 1
    assert "1 training pictures, fewer than generate.calibration.min_images" in one.likeness.reason
    assert "generate.likeness_threshold auto" in caplog.text and "likeness_fallback" in caplog.text
    few = _generate(tiny_settings, calibration={"min_images": 5})
    assert _calibrate(few, pictures, scorer, likeness, trigger, count=4).likeness.source == "fallback"
    assert _calibrate(few, pictures, scorer, likeness, trigger, count=5).likeness.source == "calibrated"


def test_template_captions_fall_back_for_the_text_check_only(tiny_settings, pictures, scorer, likeness):
    images, captions = pictures
    trigger = tiny_settings.character.trigger
    template = [f"{trigger}, {tiny_settings.character.name}, a character illustration"] * len(images)
    t = _calibrate(tiny_settings.generate, (images, template), scorer, likeness, trigger)
    assert t.clip.source == "fallback" and "template" in t.clip.reason
    assert t.likeness.source == "calibrated"
    missing = [None] * len(images)
    assert _calibrate(tiny_settings.generate, (images, missing), scorer, likeness, trigger).clip.source == "fallback"


def test_no_dataset_renders_with_the_fallbacks(tmp_path, tiny_settings, lora_dir):
    generate = tiny_settings.generate.model_copy(update={"steps": 2, "max_retries": 0})
    settings = tiny_settings.model_copy(update={"generate": generate})
    assert generate.clip_threshold == generate.likeness_threshold == "auto"  # the shipped default
    plan = plan_story(OfflinePlanner(settings.plan), settings.stories[0], settings.character)
    render_plans(settings, ["baseline"], [plan], {"baseline": tmp_path}, lora_dir, dataset_dir=None)
    record = json.loads((tmp_path / plan.story_id / "metadata.json").read_text())["thresholds"]
    c = generate.calibration
    assert record["clip_threshold"]["value"] == c.clip_fallback and record["clip_threshold"]["source"] == "fallback"
    assert record["likeness_threshold"]["value"] == c.likeness_fallback
    assert "no training set" in record["likeness_threshold"]["reason"] and record["training_pictures"] == 0


def _hash(settings, thresholds, mode="lora"):
    models = SimpleNamespace(model_dump=lambda **_: {k: k for k in ("base", "vae", "clip", "likeness")})
    plan = plan_story(OfflinePlanner(settings.plan), settings.stories[0], settings.character)
    return StoryInputs(settings, mode, models, "lora-sha", None, thresholds=thresholds).of(plan)


def test_the_render_hash_holds_the_values_not_how_they_were_reached(tiny_settings):
    calibrated = Thresholds(Threshold(0.2, "calibrated", 5, 12), Threshold(0.5, "calibrated", 5, 132), 12)
    base = _hash(tiny_settings, calibrated)
    # another percentile, or a fixed number, that gives the same values: the same inputs
    other = tiny_settings.generate.model_copy(
        update={
            "clip_threshold": 0.2,
            "calibration": tiny_settings.generate.calibration.model_copy(update={"clip_percentile": 50}),
        }
    )
    same = Thresholds(Threshold(0.2, "fixed"), Threshold(0.5, "calibrated", 50, 132), 12)
    assert _hash(tiny_settings.model_copy(update={"generate": other}), same) == base
    # values that moved: a story to render again
    moved = Thresholds(Threshold(0.2, "calibrated", 5, 13), Threshold(0.501, "calibrated", 5, 156), 13)
    assert _hash(tiny_settings, moved) != base


def test_calibrated_thresholds_decide_the_retries_and_reach_the_metadata(
    tmp_path, tiny_settings, tiny_dataset, lora_dir
):
    calibration = tiny_settings.generate.calibration.model_copy(
        update={"clip_percentile": 50, "likeness_percentile": 50}
    )
    generate = tiny_settings.generate.model_copy(update={"steps": 2, "max_retries": 1, "calibration": calibration})
    settings = tiny_settings.model_copy(update={"generate": generate})
    plan = plan_story(OfflinePlanner(settings.plan), settings.stories[0], settings.character)
    out = tmp_path / "lora"
    render_plans(settings, ["lora"], [plan], {"lora": out}, lora_dir, dataset_dir=tiny_dataset)
    meta = json.loads((out / plan.story_id / "metadata.json").read_text())
    t = meta["thresholds"]
    assert t["clip_threshold"]["source"] == t["likeness_threshold"]["source"] == "calibrated"
    assert t["training_pictures"] == len(load_training_images(tiny_dataset))
    clip, like = t["clip_threshold"]["value"], t["likeness_threshold"]["value"]
    for frame in meta["frames"]:
        first = frame["attempts"][0]
        failed = first["clip_text_score"] < clip or (first["likeness"] is not None and first["likeness"] < like)
        assert (len(frame["attempts"]) == 2) == failed, frame["index"]
    redone = sum(len(frame["attempts"]) == 2 for frame in meta["frames"])
    assert 0 < redone < len(meta["frames"])  # the median thresholds split this story's frames

    # A fixed value equal to the calibrated one: the same inputs, nothing rendered again; another value renders.
    stamp = (out / plan.story_id / "metadata.json").stat().st_mtime_ns
    fixed = settings.model_copy(update={"generate": generate.model_copy(update={"clip_threshold": clip})})
    render_plans(fixed, ["lora"], [plan], {"lora": out}, lora_dir, dataset_dir=tiny_dataset)
    assert (out / plan.story_id / "metadata.json").stat().st_mtime_ns == stamp
    moved = settings.model_copy(update={"generate": generate.model_copy(update={"clip_threshold": clip + 0.01})})
    render_plans(moved, ["lora"], [plan], {"lora": out}, lora_dir, dataset_dir=tiny_dataset)
    assert (out / plan.story_id / "metadata.json").stat().st_mtime_ns != stamp
