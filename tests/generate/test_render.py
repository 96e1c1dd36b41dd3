"""Rendering on the tiny profile: modes, seeds, batching, the CLIP retry rule, the reference's effect, outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from storyboard.generate.outputs import contact_sheet, write_story_outputs
from storyboard.generate.render import SEED_STRIDE, RenderedFrame, StoryRenderer, frame_prompt
from storyboard.models.clip import ClipScorer
from storyboard.story.plan import Frame, StoryPlan
from storyboard.train.lora import train_lora


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, tiny_dataset, tiny_settings, tiny_models, cpu):
    root = tmp_path_factory.mktemp("lora")
    settings = tiny_settings.train.model_copy(
        update={"max_steps": 4, "checkpoint_every": 4, "rank": 4, "learning_rate": 0.05}
    )
    train_lora(tiny_dataset, root / "lora", root / "live", root / "ckpt", settings, tiny_models, cpu)
    return root / "lora"


@pytest.fixture(scope="module")
def scorer(tiny_models, cpu):
    return ClipScorer(tiny_models.clip, cpu)


def _renderer(mode, tiny_settings, tiny_models, cpu, scorer, lora_dir, **generate):
    settings = tiny_settings.generate.model_copy(update={"steps": 3, **generate})
    return StoryRenderer(
        mode, settings, tiny_settings.character, tiny_models, cpu, scorer, None if mode == "baseline" else lora_dir
    )


PLAN = StoryPlan(
    story_id="test",
    story="Aldar Kose rides a horse and laughs.",
    planner="offline",
    frames=[
        Frame(scene="Aldar Kose faces the viewer", shot="close-up", pose="standing", setting="steppe"),
        Frame(scene="Aldar Kose rides a horse", shot="wide", pose="riding", setting="steppe"),
        Frame(scene="Aldar Kose laughs", shot="medium", pose="laughing", setting="steppe"),
    ],
)


def _pixels(image):
    return np.asarray(image, dtype=np.float32)


def test_prompt_carries_trigger_and_description(tiny_settings):
    prompt = frame_prompt(PLAN.frames[1], tiny_settings.character, "ink style")
    assert prompt.startswith(tiny_settings.character.trigger)
    assert tiny_settings.character.description in prompt and "rides a horse" in prompt and prompt.endswith("ink style")


def test_batch_gives_the_same_frames_as_one_by_one(tiny_settings, tiny_models, cpu, scorer, lora_dir):
    r = _renderer("lora", tiny_settings, tiny_models, cpu, scorer, lora_dir)
    batch = r._run(["a", "b"], [7, 8], None, None)
    alone = r._run(["b"], [8], None, None)
    assert np.abs(_pixels(batch[1]) - _pixels(alone[0])).max() <= 2  # same seed -> same frame, up to rounding
    assert np.abs(_pixels(batch[0]) - _pixels(batch[1])).mean() > 1


def test_retry_rule_keeps_the_best_attempt(tiny_settings, tiny_models, cpu, scorer, lora_dir):
    never = _renderer("lora", tiny_settings, tiny_models, cpu, scorer, lora_dir, clip_threshold=-1.0)
    frames = never.render(PLAN)
    assert [len(f.attempts) for f in frames] == [1, 1, 1]

    always = _renderer("lora", tiny_settings, tiny_models, cpu, scorer, lora_dir, clip_threshold=1.0, max_retries=2)
    frames = always.render(PLAN)
    for f in frames:
        assert len(f.attempts) == 3
        scores = [a.clip_text_score for a in f.attempts]
        assert f.best == int(np.argmax(scores))
        assert [a.seed for a in f.attempts] == [1234 + k * SEED_STRIDE + f.index for k in range(3)]
        # the kept image is the one that scored best
        assert scorer.text_scores([f.image], [f.frame.scene])[0] == pytest.approx(max(scores), abs=1e-3)


def test_modes_differ_and_ref_guided_uses_the_reference(tiny_settings, tiny_models, cpu, scorer, lora_dir):
    kw = dict(clip_threshold=-1.0, ip_adapter_scale=1.0, controlnet_scale=1.0)
    base = _renderer("baseline", tiny_settings, tiny_models, cpu, scorer, lora_dir, **kw).render(PLAN)
    lora = _renderer("lora", tiny_settings, tiny_models, cpu, scorer, lora_dir, **kw).render(PLAN)
    ref_renderer = _renderer("ref_guided", tiny_settings, tiny_models, cpu, scorer, lora_dir, **kw)
    ref = ref_renderer.render(PLAN)
    # the LoRA changes the frames; frame 1 of ref_guided is the LoRA alone (ControlNet and IP-Adapter at zero;
    # up to the rounding of a batch of 1 against a batch of 3)
    assert np.abs(_pixels(base[0].image) - _pixels(lora[0].image)).mean() > 0.1
    assert np.abs(_pixels(lora[0].image) - _pixels(ref[0].image)).max() <= 2
    # later frames follow the pose and the reference: they differ from the LoRA alone...
    assert np.abs(_pixels(lora[1].image) - _pixels(ref[1].image)).mean() > 0.1
    # ...and another reference image gives other frames (IP-Adapter really applied)
    other = [RenderedFrame(index=f.index, frame=f.frame, prompt=f.prompt) for f in ref[1:]]
    ref_renderer._render_with_retries(other, reference=Image.new("RGB", (64, 64), "white"))
    assert np.abs(_pixels(other[0].image) - _pixels(ref[1].image)).mean() > 0.1


def test_story_outputs(tmp_path, tiny_settings, tiny_models, cpu, scorer, lora_dir):
    frames = _renderer("lora", tiny_settings, tiny_models, cpu, scorer, lora_dir, clip_threshold=-1.0).render(PLAN)
    sheet = contact_sheet(frames, "test | lora", columns=2, notice="tiny profile: plumbing only")
    write_story_outputs(tmp_path / "story", frames, {"story_id": "test", "mode": "lora"}, sheet)
    names = sorted(p.name for p in (tmp_path / "story").iterdir())
    assert names == ["contact_sheet.png", "frame_01.png", "frame_02.png", "frame_03.png", "metadata.json"]
    meta = json.loads((tmp_path / "story/metadata.json").read_text())
    assert [f["index"] for f in meta["frames"]] == [1, 2, 3]
    assert all(f["prompt"] and f["seed"] and f["attempts"] for f in meta["frames"])
    assert Image.open(tmp_path / "story/contact_sheet.png").width >= 2 * 256
