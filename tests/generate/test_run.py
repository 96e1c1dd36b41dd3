"""Several modes in one run: models loaded once and shared, ref_guided's frame 1 taken from lora, same frames."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from storyboard.generate.pipelines import load_renderers
from storyboard.generate.renderer import StoryRenderer
from storyboard.generate.run import render_plans, render_to
from storyboard.story.planners import OfflinePlanner, plan_story


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


@pytest.mark.parametrize("retried", [False, True], ids=["kept-first", "retried"])
def test_ref_guided_takes_frame_1_from_the_lora_stage_when_its_inputs_match(tmp_path, tiny_settings, lora_dir, retried):
    """The DVC pipeline's way: generate@ref_guided reads outputs/lora (--first-from) in another process."""
    settings = _settings(tiny_settings)
    if retried:  # every frame fails the text check: frame 1 keeps some attempt and its first attempt's file
        retry = {"clip_threshold": 1.0, "max_retries": 1}
        settings = settings.model_copy(update={"generate": settings.generate.model_copy(update=retry)})
    plan = plan_story(OfflinePlanner(settings.plan), settings.stories[0], settings.character)
    render_to(settings, "lora", [plan], tmp_path / "lora", lora_dir)
    render_to(settings, "ref_guided", [plan], tmp_path / "ref", lora_dir, first_from=tmp_path / "lora")
    lora_meta = json.loads((tmp_path / "lora" / plan.story_id / "metadata.json").read_text())
    meta = json.loads((tmp_path / "ref" / plan.story_id / "metadata.json").read_text())
    assert meta["frame_1_from"] == "lora"
    assert len(lora_meta["frames"][0]["attempts"]) == (2 if retried else 1)
    assert meta["frames"][0]["attempts"] == lora_meta["frames"][0]["attempts"]
    assert np.array_equal(_frames(tmp_path / "ref" / plan.story_id)[0], _frames(tmp_path / "lora" / plan.story_id)[0])
    # the same story as one run of both modes renders
    together = {mode: tmp_path / "together" / mode for mode in ("lora", "ref_guided")}
    render_plans(settings, list(together), [plan], together, lora_dir)
    assert _files(together["ref_guided"]) == _files(tmp_path / "ref")
    # a run of both modes whose lora story is kept from before reads frame 1 from lora's folder alike
    shutil.rmtree(together["ref_guided"] / plan.story_id)
    render_plans(settings, list(together), [plan], together, lora_dir)
    assert _files(together["ref_guided"]) == _files(tmp_path / "ref")

    # lora's stories from other inputs (another lora_scale): ref_guided renders its own frame 1
    other = settings.model_copy(update={"generate": settings.generate.model_copy(update={"lora_scale": 0.5})})
    render_to(other, "ref_guided", [plan], tmp_path / "other", lora_dir, first_from=tmp_path / "lora")
    assert json.loads((tmp_path / "other" / plan.story_id / "metadata.json").read_text())["frame_1_from"] is None


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


def _files(folder):
    """Every file of a mode's output as bytes, but metadata.json without its timings (seconds differ run to run)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if path.name == "metadata.json":
                meta = json.loads(data)
                for record in [meta, *meta["frames"], *(a for f in meta["frames"] for a in f["attempts"])]:
                    for key in [k for k in record if k.startswith("seconds")]:
                        record.pop(key)
                data = json.dumps(meta, sort_keys=True).encode()
            out[path.relative_to(folder).as_posix()] = data
    return out


def test_a_rerun_keeps_finished_stories_and_renders_only_the_rest(tmp_path, tiny_settings, lora_dir):
    settings = _settings(tiny_settings)
    planner = OfflinePlanner(settings.plan)
    plans = [plan_story(planner, story, settings.character) for story in settings.stories[:2]]
    whole = tmp_path / "whole"
    render_to(settings, "lora", plans, whole, lora_dir)

    # A crash after the first story: its folder is complete, the second never got written, a temp folder is left.
    crashed = tmp_path / "crashed"
    render_to(settings, "lora", plans[:1], crashed, lora_dir)
    (crashed / f".{plans[1].story_id}.half.tmp").mkdir()
    first = (crashed / plans[0].story_id / "metadata.json").stat().st_mtime_ns
    render_to(settings, "lora", plans, crashed, lora_dir)
    assert (crashed / plans[0].story_id / "metadata.json").stat().st_mtime_ns == first  # kept, not re-rendered
    assert _files(crashed) == _files(whole)  # the same outputs as an uninterrupted run, temp folder gone


def test_only_the_story_whose_inputs_changed_is_rendered_again(tmp_path, tiny_settings, lora_dir):
    settings = _settings(tiny_settings)
    planner = OfflinePlanner(settings.plan)
    plans = [plan_story(planner, story, settings.character) for story in settings.stories[:2]]
    out = tmp_path / "out"
    render_to(settings, "baseline", plans, out, lora_dir)
    stamps = {p.story_id: (out / p.story_id / "metadata.json").stat().st_mtime_ns for p in plans}

    edited = plans[1].model_copy(deep=True)
    edited.frames[1] = edited.frames[1].model_copy(update={"scene": "Aldar Kose juggles three melons"})
    render_to(settings, "baseline", [plans[0], edited], out, lora_dir)
    assert (out / plans[0].story_id / "metadata.json").stat().st_mtime_ns == stamps[plans[0].story_id]
    meta = json.loads((out / edited.story_id / "metadata.json").read_text())
    assert meta["frames"][1]["scene"] == "Aldar Kose juggles three melons"

    # a knob baseline does not read leaves its stories alone; one it reads renders them again
    ip_only = settings.model_copy(update={"generate": settings.generate.model_copy(update={"ip_adapter_scale": 0.9})})
    before = _files(out)
    render_to(ip_only, "baseline", [plans[0], edited], out, lora_dir)
    assert (
        _files(out) == before
        and (out / plans[0].story_id / "metadata.json").stat().st_mtime_ns == stamps[plans[0].story_id]
    )
    steps = settings.model_copy(update={"generate": settings.generate.model_copy(update={"steps": 3})})
    render_to(steps, "baseline", [plans[0]], out, lora_dir)
    assert (out / plans[0].story_id / "metadata.json").stat().st_mtime_ns != stamps[plans[0].story_id]
    assert sorted(p.name for p in out.iterdir()) == [plans[0].story_id]  # the dropped story is gone


def test_a_story_rendered_before_a_failure_is_written_whole(tmp_path, tiny_settings, lora_dir, monkeypatch):
    """Stories are written on a thread while the next one renders: a failure in the next render still leaves the
    finished story's folder complete, and the failure is raised."""

    settings = _settings(tiny_settings)
    planner = OfflinePlanner(settings.plan)
    plans = [plan_story(planner, story, settings.character) for story in settings.stories[:2]]
    render = StoryRenderer.render

    def fail_on_the_second(self, plan, *args, **kwargs):
        if plan.story_id == plans[1].story_id:
            raise RuntimeError("out of memory, say")
        return render(self, plan, *args, **kwargs)

    monkeypatch.setattr(StoryRenderer, "render", fail_on_the_second)
    out = tmp_path / "lora"
    with pytest.raises(RuntimeError, match="out of memory"):
        render_plans(settings, ["lora"], plans, {"lora": out}, lora_dir)
    story = out / plans[0].story_id
    meta = json.loads((story / "metadata.json").read_text())
    assert len(meta["frames"]) == len(plans[0].frames) == len(_frames(story))
    assert (story / "contact_sheet.png").exists() and (story / "story.gif").exists()
    assert not (out / plans[1].story_id).exists()


def test_presentation_knobs_redraw_the_sheet_without_rendering(tmp_path, tiny_settings, lora_dir):
    settings = _settings(tiny_settings)
    plan = plan_story(OfflinePlanner(settings.plan), settings.stories[0], settings.character)
    story = tmp_path / "lora" / plan.story_id
    render_plans(settings, ["lora"], [plan], {"lora": tmp_path / "lora"}, lora_dir)
    frames = {p.name: p.stat().st_mtime_ns for p in story.glob("frame_*.png")}
    wide = Image.open(story / "contact_sheet.png").size
    shown = settings.generate.model_copy(update={"contact_sheet_columns": 1, "gif_frame_ms": 250})
    render_plans(
        settings.model_copy(update={"generate": shown}), ["lora"], [plan], {"lora": tmp_path / "lora"}, lora_dir
    )
    assert {p.name: p.stat().st_mtime_ns for p in story.glob("frame_*.png")} == frames  # nothing rendered
    narrow = Image.open(story / "contact_sheet.png").size
    assert narrow[0] < wide[0] and narrow[1] > wide[1]  # one column now
    with Image.open(story / "story.gif") as gif:
        assert gif.info["duration"] == 250
    meta = json.loads((story / "metadata.json").read_text())
    assert meta["generate"]["contact_sheet_columns"] == 1 and meta["generate"]["gif_frame_ms"] == 250
