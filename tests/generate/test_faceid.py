"""ref_guided with generate.reference: faceid on the tiny profile: the identity embedding steers the later frames.

Tiny frames are noise, in which no real detector finds a face, so a FaceBackend test double stands in: it "finds"
one face, with a fixed embedding, in the images it was given, and none elsewhere.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from test_render import PLAN, _pixels, _renderer

from storyboard.generate import run
from storyboard.generate.ip_reference import NoFaceIdentity
from storyboard.generate.pipelines import load_renderers
from storyboard.generate.run import render_plans
from storyboard.models.faces import Face
from storyboard.models.loading import ModelLoadError
from storyboard.story.planners import OfflinePlanner, plan_story


def _unit(seed: int, size: int = 128) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(size).astype(np.float32)
    return vector / np.linalg.norm(vector)


class KnownFaces:
    """A FaceBackend double: one whole-image face with a fixed embedding in every image (`everywhere`) or only in
    the images it was shown (`known`, matched by pixels)."""

    name = "known-faces"

    def __init__(self, everywhere: np.ndarray | None = None, known=(), embedding_size: int = 128):
        self.everywhere, self.embedding_size = everywhere, embedding_size
        self.known = {image.tobytes(): embedding for image, embedding in known}

    def detect(self, image: Image.Image) -> list[Face]:
        embedding = self.known.get(image.convert("RGB").tobytes(), self.everywhere)
        if embedding is None:
            return []
        return [Face(bbox=(0, 0, image.width, image.height), score=1.0, embedding=embedding)]

    def detect_many(self, images) -> list[list[Face]]:
        return [self.detect(image) for image in images]


def _faceid(tiny_settings, tiny_models, cpu, scorer, lora_dir, faces, training_images=(), **generate):
    settings = tiny_settings.generate.model_copy(
        update={"steps": 3, "reference": "faceid", "clip_threshold": -1.0, "likeness_threshold": -1.0, **generate}
    )
    (renderer,) = load_renderers(
        ("ref_guided",),
        settings,
        tiny_settings.character,
        tiny_models,
        cpu,
        scorer,
        lora_dir,
        faces=faces,
        training_images=training_images,
    )
    return renderer


def test_the_identity_changes_the_frames_and_scale_0_ignores_it(tiny_settings, tiny_models, cpu, scorer, lora_dir):
    renderer = _faceid(tiny_settings, tiny_models, cpu, scorer, lora_dir, KnownFaces(), ip_adapter_scale=1.0)
    args = (renderer.encode(["a", "b"]), [7, 8], [("standing", "medium"), ("riding", "wide")])
    a, b = (renderer._run(*args, ip_reference=torch.from_numpy(_unit(seed))) for seed in (1, 2))
    assert all(np.abs(_pixels(x) - _pixels(y)).mean() > 0.1 for x, y in zip(a, b, strict=True))

    off = _faceid(tiny_settings, tiny_models, cpu, scorer, lora_dir, KnownFaces(), ip_adapter_scale=0.0)
    args = (off.encode(["a", "b"]), *args[1:])
    with_identity = off._run(*args, ip_reference=torch.from_numpy(_unit(1)))
    without = off._run(*args, ip_reference=torch.zeros(128))
    assert all(np.array_equal(_pixels(x), _pixels(y)) for x, y in zip(with_identity, without, strict=True))


def test_ref_guided_faceid_renders_a_plan(tiny_settings, tiny_models, cpu, scorer, lora_dir):
    identity = _unit(1)
    renderer = _faceid(tiny_settings, tiny_models, cpu, scorer, lora_dir, KnownFaces(everywhere=identity))
    frames = renderer.render(PLAN)
    assert [f.index for f in frames] == [1, 2, 3] and all(f.image.size == (64, 64) for f in frames)
    assert renderer.identity_from == "frame_1"
    assert np.array_equal(renderer.ip_references.of(frames[0].image, PLAN.story_id).numpy(), identity)
    # frame 1 is the LoRA alone: zero embeddings at scale 0, and the FaceID LoRA off (up to batch rounding)
    lora = _renderer("lora", tiny_settings, tiny_models, cpu, scorer, lora_dir, clip_threshold=-1.0).render(PLAN)
    assert np.abs(_pixels(lora[0].image) - _pixels(frames[0].image)).max() <= 2
    assert np.abs(_pixels(lora[1].image) - _pixels(frames[1].image)).mean() > 0.1


def test_no_face_in_frame_1_falls_back_to_the_training_images(
    tiny_settings, tiny_models, cpu, scorer, lora_dir, caplog
):
    training = [Image.new("RGB", (64, 64), colour) for colour in ("red", "blue", "green")]
    faces = KnownFaces(known=[(training[0], _unit(1)), (training[1], _unit(2))])  # no face in the green one
    renderer = _faceid(tiny_settings, tiny_models, cpu, scorer, lora_dir, faces, training)
    with caplog.at_level(logging.WARNING, logger="storyboard"):
        identity = renderer.ip_references.of(Image.new("RGB", (64, 64), "white"), "story-x")
    mean = (_unit(1) + _unit(2)) / 2
    assert np.allclose(identity.numpy(), mean / np.linalg.norm(mean), atol=1e-6)
    assert renderer.identity_from == "training_images"
    assert "story-x: no face found in frame 1" in caplog.text

    nowhere = _faceid(tiny_settings, tiny_models, cpu, scorer, lora_dir, KnownFaces(), training)
    with pytest.raises(NoFaceIdentity, match="nor in the 3 training images: set generate.reference: face"):
        nowhere.render(PLAN)


@pytest.mark.parametrize("where", ["frame_1", "training_images"])
def test_metadata_says_whose_face_the_identity_is(where, tmp_path, tiny_settings, tiny_dataset, lora_dir, monkeypatch):
    from storyboard.dataset import load_training_images

    training = load_training_images(tiny_dataset)
    faces = KnownFaces(_unit(1)) if where == "frame_1" else KnownFaces(known=[(training[0], _unit(2))])
    # The face backend of the run: our double instead of dlib (which finds no face in noise or in these drawings).
    monkeypatch.setattr(run, "load_face_backend", lambda models, min_score: faces)
    generate = tiny_settings.generate.model_copy(update={"steps": 2, "max_retries": 0, "reference": "faceid"})
    settings = tiny_settings.model_copy(update={"generate": generate})
    plan = plan_story(OfflinePlanner(settings.plan), settings.stories[0], settings.character)
    render_plans(settings, ["ref_guided"], [plan], {"ref_guided": tmp_path}, lora_dir, dataset_dir=tiny_dataset)
    meta = json.loads((tmp_path / plan.story_id / "metadata.json").read_text())
    assert meta["identity_from"] == where and meta["generate"]["reference"] == "faceid"
    assert len(meta["frames"]) == len(plan.frames)


def test_a_backend_of_another_embedding_size_fails_before_loading(tiny_settings, tiny_models, cpu, scorer, lora_dir):
    # base points nowhere: the size check must come first, or loading would fail with another error
    models = tiny_models.model_copy(update={"base": str(lora_dir / "no-such-model")})
    arcface = KnownFaces(_unit(1, 512), embedding_size=512)
    with pytest.raises(
        ModelLoadError, match=r"reads 128-d face embeddings, but the known-faces face backend makes 512"
    ):
        _faceid(tiny_settings, models, cpu, scorer, lora_dir, arcface)


def test_same_params_and_seed_give_the_same_frames_with_faceid(tiny_settings, tiny_models, cpu, scorer, lora_dir):
    faces = KnownFaces(everywhere=_unit(1))
    a = _faceid(tiny_settings, tiny_models, cpu, scorer, lora_dir, faces).render(PLAN)
    b = _faceid(tiny_settings, tiny_models, cpu, scorer, lora_dir, faces).render(PLAN)
    for x, y in zip(a, b, strict=True):
        assert [t.seed for t in x.attempts] == [t.seed for t in y.attempts]
        assert np.array_equal(_pixels(x.image), _pixels(y.image))
