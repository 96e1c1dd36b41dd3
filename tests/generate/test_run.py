"""Several modes in one run: models loaded once and shared, ref_guided's frame 1 taken from lora, same frames."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from storyboard.generate.pipelines import load_renderers
from storyboard.generate.run import render_plans
from storyboard.story.plan import OfflinePlanner, plan_story


def _settings(tiny_settings):
    generate = tiny_settings.generate.model_copy(update={"steps": 2, "max_retries": 0, "reference": "frame"})
    return tiny_settings.model_copy(update={"generate": generate})


def _frames(folder):
    return [np.asarray(Image.open(p), dtype=np.int16) for p in sorted(folder.glob("frame_*.png"))]


def test_modes_share_one_set_of_models(tiny_settings, tiny_models, cpu, scorer, lora_dir):
    settings = _settings(tiny_settings).generate
    renderers = load_renderers(
        ("ref_guided", "baseline", "lora"), settings, tiny_settings.character, tiny_models, cpu, scorer, lora_dir
    )
    seen = [(r.mode, r.pipe.unet, r.pipe.vae, r.pipe.text_encoder_2) for r in renderers]
    assert [mode for mode, *_ in seen] == ["baseline", "lora", "ref_guided"]  # always in this order
    assert len({id(unet) for _, unet, _, _ in seen}) == 1  # one UNet: the LoRA fused into it, then the adapter
    assert len({id(vae) for _, _, vae, _ in seen}) == 1 and len({id(te) for *_, te in seen}) == 1


def test_one_run_of_all_modes_gives_the_frames_of_separate_runs(tmp_path, tiny_settings, lora_dir):
    settings = _settings(tiny_settings)
    plan = plan_story(OfflinePlanner(settings.plan), settings.stories[0], settings.character)
    together = {mode: tmp_path / "together" / mode for mode in ("baseline", "lora", "ref_guided")}
    render_plans(settings, list(together), [plan], together, lora_dir)
    for mode in together:
        alone = {mode: tmp_path / "alone" / mode}
        render_plans(settings, [mode], [plan], alone, lora_dir)
        a, b = _frames(together[mode] / plan.story_id), _frames(alone[mode] / plan.story_id)
        assert len(a) == len(b) == len(plan.frames)
        # the same frames (ref_guided's frame 1 alone is a batch of one: rounding at most)
        assert all(np.abs(x - y).max() <= 2 for x, y in zip(a, b, strict=True)), mode
    lora_first = _frames(together["lora"] / plan.story_id)[0]
    ref_first = _frames(together["ref_guided"] / plan.story_id)[0]
    assert np.array_equal(lora_first, ref_first)  # taken over, not rendered again
    meta = json.loads((together["ref_guided"] / plan.story_id / "metadata.json").read_text())
    lora_meta = json.loads((together["lora"] / plan.story_id / "metadata.json").read_text())
    assert meta["frame_1_from"] == "lora" and lora_meta["frame_1_from"] is None
    assert meta["frames"][0]["attempts"] == lora_meta["frames"][0]["attempts"]


def test_quantized_modes_in_one_run_give_the_frames_of_separate_runs(tmp_path, tiny_settings, lora_dir):
    settings = _settings(tiny_settings)
    quantized = settings.model_copy(update={"generate": settings.generate.model_copy(update={"quantize": "int8"})})
    plan = plan_story(OfflinePlanner(settings.plan), settings.stories[0], settings.character)
    modes = ("baseline", "lora")
    together = {mode: tmp_path / "together" / mode for mode in modes}
    render_plans(quantized, list(modes), [plan], together, lora_dir)
    for mode in modes:
        # baseline quantizes a copy of the UNet, so the LoRA is still fused into the unquantized weights
        alone = {mode: tmp_path / "alone" / mode}
        render_plans(quantized, [mode], [plan], alone, lora_dir)
        assert all(
            np.array_equal(x, y)
            for x, y in zip(_frames(together[mode] / plan.story_id), _frames(alone[mode] / plan.story_id), strict=True)
        ), mode
    # close to the frames of the unquantized model, not the same
    plain = {"lora": tmp_path / "plain"}
    render_plans(settings, ["lora"], [plan], plain, lora_dir)
    diffs = [
        np.abs(x - y).mean()
        for x, y in zip(_frames(together["lora"] / plan.story_id), _frames(plain["lora"] / plan.story_id), strict=True)
    ]
    assert 0 < max(diffs) < 2  # of 255
    meta = json.loads((together["lora"] / plan.story_id / "metadata.json").read_text())
    assert meta["generate"]["quantize"] == "int8"
