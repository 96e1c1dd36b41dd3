"""Rendering on the tiny profile: modes, seeds, batching, the CLIP retry rule, the reference's effect, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from storyboard.generate.frames import RenderedFrame, frame_prompt
from storyboard.generate.ip_reference import FACE_MARGIN, face_crop
from storyboard.generate.outputs import contact_sheet, write_story_outputs
from storyboard.generate.pipelines import load_renderers
from storyboard.generate.renderer import SEED_STRIDE
from storyboard.models.bpe import count_tokens
from storyboard.models.faces import InsightFaceBackend, load_face_backend
from storyboard.models.insightface_pack import FACE_SHARE
from storyboard.models.likeness import LikenessScorer
from storyboard.models.prompts import encode_prompts
from storyboard.models.tiny import tiny_model_set
from storyboard.story.plan import Frame, StoryPlan


def _renderer(mode, tiny_settings, tiny_models, cpu, scorer, lora_dir, **generate):
    settings = tiny_settings.generate.model_copy(update={"steps": 3, **generate})
    lora = None if mode == "baseline" else lora_dir
    likeness = LikenessScorer(tiny_models.likeness, cpu)
    return next(
        load_renderers((mode,), settings, tiny_settings.character, tiny_models, cpu, scorer, lora, likeness=likeness)
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
    batch = r._run(r.encode(["a", "b"]), [7, 8], None, None)
    alone = r._run(r.encode(["b"]), [8], None, None)
    assert np.abs(_pixels(batch[1]) - _pixels(alone[0])).max() <= 2  # same seed -> same frame, up to rounding
    assert np.abs(_pixels(batch[0]) - _pixels(batch[1])).mean() > 1


def test_every_word_of_a_long_prompt_reaches_the_unet(tiny_settings, tiny_models, cpu, scorer):
    """A word changed at the end of a 120-token prompt changes what the UNet's cross-attention reads."""
    r = _renderer("baseline", tiny_settings, tiny_models, cpu, scorer, None, steps=1)
    head = frame_prompt(PLAN.frames[1], tiny_settings.character, tiny_settings.generate.style)

    def prompt(last: str) -> str:
        return f"{head}, {', '.join(['dust on the road'] * 9)}, a {last} hat"

    def unet_text(**call) -> torch.Tensor:
        seen = []
        hook = r.pipe.unet.register_forward_pre_hook(
            lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"].clone()), with_kwargs=True
        )
        try:
            r.pipe(**call, num_inference_steps=1, height=64, width=64, output_type="latent")
        finally:
            hook.remove()
        return seen[0]

    assert 110 <= count_tokens(prompt("red")) <= 130
    red, blue = (unet_text(**r.encode([prompt(c)]).pipeline_kwargs()) for c in ("red", "blue"))
    assert red.shape[1] == 2 * 77 and not torch.equal(red, blue)
    # the negative prompt (the first half of the classifier-free guidance batch) is padded, not changed
    assert torch.equal(red[0], blue[0])
    # plain diffusers reads the first 77 tokens: there the same change never reached the UNet
    assert torch.equal(unet_text(prompt=prompt("red")), unet_text(prompt=prompt("blue")))


def test_packrat_parsing_keeps_the_embeddings(tiny_settings, tiny_models, cpu, scorer):
    """storyboard.models.prompts turns on pyparsing's packrat cache for compel's parser: weighted, escaped and
    plain prompts encode exactly as without it."""
    import pyparsing

    r = _renderer("baseline", tiny_settings, tiny_models, cpu, scorer, None, steps=1)
    prompts = ["a (red)1.4 hat, dust++ on the road", "a plain hat \\(not weighted\\)", "a long road " * 30]
    cached = encode_prompts(r.pipe, prompts, "blurry--")
    pyparsing.ParserElement.disable_memoization()
    try:
        plain = encode_prompts(r.pipe, prompts, "blurry--")
    finally:
        pyparsing.ParserElement.enable_packrat()
    for a, b in zip(cached.pipeline_kwargs().values(), plain.pipeline_kwargs().values(), strict=True):
        assert torch.equal(a, b)


def test_each_prompt_is_parsed_once_for_both_encoders_and_gives_the_same_embeddings(
    tiny_settings, tiny_models, cpu, scorer
):
    """compel parses per text encoder; the memoised parse serves both, and a parse ahead of time serves the next
    encoding: the embeddings are those of compel's own parsing."""
    from compel import Compel, CompelForSDXL

    from storyboard.models.prompts import _parsed, parse_ahead

    r = _renderer("baseline", tiny_settings, tiny_models, cpu, scorer, None, steps=1)
    prompts = ["a (red)1.4 hat, dust++ on the road", "a plain hat \\(not weighted\\)", "fur-trimmed hat " * 12]
    _parsed.cache_clear()
    memoised = encode_prompts(r.pipe, prompts, "blurry--")
    assert _parsed.cache_info().misses == len(prompts) + 1  # the negative prompt too
    parse_ahead(["a prompt parsed ahead"]).join()
    hits = _parsed.cache_info().hits
    encode_prompts(r.pipe, ["a prompt parsed ahead"], "blurry--")
    assert _parsed.cache_info().misses == len(prompts) + 2 and _parsed.cache_info().hits > hits
    assert str(Compel.parse_prompt_string(prompts[0])) == str(_parsed(prompts[0]))
    _parsed.cache_clear()
    plain = CompelForSDXL(r.pipe, device=r.pipe._execution_device)(prompts, negative_prompt=["blurry--"])
    assert torch.equal(memoised.embeds, plain.embeds) and torch.equal(memoised.pooled, plain.pooled_embeds)
    assert torch.equal(memoised.negative, plain.negative_embeds)


def test_frames_leave_the_pipeline_as_its_own_pil_output(tiny_settings, tiny_models, cpu, scorer):
    """The renderer asks for tensors and converts on the device: the bytes of the pipeline's "pil" output."""
    from storyboard.generate.renderer import _pil_images

    r = _renderer("baseline", tiny_settings, tiny_models, cpu, scorer, None, steps=2)
    call = dict(**r.encode(["a", "b"]).pipeline_kwargs(), num_inference_steps=2, height=64, width=64)
    seeded = lambda: [torch.Generator().manual_seed(s) for s in (3, 4)]  # noqa: E731
    pil = r.pipe(**call, generator=seeded()).images
    ours = _pil_images(r.pipe(**call, generator=seeded(), output_type="pt").images)
    for a, b in zip(pil, ours, strict=True):
        assert a.mode == b.mode == "RGB" and np.array_equal(np.asarray(a), np.asarray(b))


def test_auto_batches_render_a_story_in_one_call(tiny_settings, tiny_models, cpu, scorer, lora_dir):
    r = _renderer("lora", tiny_settings, tiny_models, cpu, scorer, lora_dir, max_retries=0, frames_per_batch="auto")
    calls = []
    real = r._run

    def counted(embeds, seeds, poses, ip_reference):
        calls.append(len(seeds))
        return real(embeds, seeds, poses, ip_reference)

    r._run = counted
    r.render(PLAN)
    assert calls == [len(PLAN.frames)]


def test_retry_rule_keeps_the_best_attempt(tiny_settings, tiny_models, cpu, scorer, lora_dir):
    never = _renderer(
        "lora", tiny_settings, tiny_models, cpu, scorer, lora_dir, clip_threshold=-1.0, likeness_threshold=-1.0
    )
    frames = never.render(PLAN)
    assert [len(f.attempts) for f in frames] == [1, 1, 1]

    always = _renderer("lora", tiny_settings, tiny_models, cpu, scorer, lora_dir, clip_threshold=1.0, max_retries=2)
    frames = always.render(PLAN)
    for f in frames:
        assert len(f.attempts) == 3
        margins = [always._margin(a) for a in f.attempts]
        assert f.best == int(np.argmax(margins))  # the attempt closest to passing both checks
        assert [a.seed for a in f.attempts] == [1234 + k * SEED_STRIDE + f.index for k in range(3)]
        # the kept image is the one that scored best
        best = f.attempts[f.best].clip_text_score
        assert scorer.text_scores([f.image], [f.frame.scene])[0] == pytest.approx(best, abs=1e-3)
    # frame 1 has nothing to be like (no training images given); later frames are judged against frame 1
    assert frames[0].likeness is None and all(f.likeness is not None for f in frames[1:])


def test_likeness_alone_triggers_retries(tiny_settings, tiny_models, cpu, scorer, lora_dir):
    picky = _renderer(
        "lora", tiny_settings, tiny_models, cpu, scorer, lora_dir, clip_threshold=-1.0, likeness_threshold=1.0
    )
    frames = picky.render(PLAN)
    assert len(frames[0].attempts) == 1  # text passes, nothing to be like
    assert all(len(f.attempts) == 3 for f in frames[1:])


def test_training_images_join_the_likeness(tiny_settings, tiny_models, cpu, scorer, lora_dir):
    r = _renderer(
        "lora", tiny_settings, tiny_models, cpu, scorer, lora_dir, clip_threshold=-1.0, likeness_threshold=-1.0
    )
    refs = r.likeness.image_features([Image.new("RGB", (64, 64), c) for c in ("red", "blue")])
    r.likeness_features = refs
    frames = r.render(PLAN)
    assert frames[0].likeness is not None
    # DINOv2, not the CLIP model evaluate scores characters with
    assert r.likeness.source == tiny_models.likeness != tiny_models.clip
    first = r.likeness.image_features([frames[0].image])[0]
    feat = r.likeness.image_features([frames[1].image])[0]
    expected = (float(feat @ first) + float((refs @ feat).mean())) / 2
    assert frames[1].likeness == pytest.approx(expected, abs=1e-3)


def test_face_crop_for_the_reference():
    import importlib.util
    from pathlib import Path

    from storyboard.generate.ip_reference import face_crop
    from storyboard.models.faces import DlibFaceBackend

    images = Path(next(iter(importlib.util.find_spec("insightface").submodule_search_locations))) / "data/images"
    photo = Image.new("RGB", (600, 400), "grey")
    photo.paste(Image.open(images / "Tom_Hanks_54745.png").convert("RGB").resize((200, 200)), (300, 100))
    crop = face_crop(photo, DlibFaceBackend())
    assert crop.width < 300 and abs(crop.width - crop.height) <= 2
    assert face_crop(Image.new("RGB", (64, 64)), DlibFaceBackend()).size == (64, 64)  # no face: whole frame


def test_ref_guided_face_reference_through_insightface(tiny_settings, cpu, scorer, lora_dir):
    """models.tiny.face_backend: insightface: the face crop that ref_guided's later frames get comes from the real
    FaceAnalysis, running the tiny profile's random-weight pack (its one face: the centre quarter of a frame)."""
    models = tiny_model_set(tiny_settings.models.tiny.model_copy(update={"face_backend": "insightface"}))
    faces = load_face_backend(models, tiny_settings.generate.face_min_score)
    assert isinstance(faces, InsightFaceBackend) and faces.model_dir.is_relative_to(Path(models.base).parent.absolute())
    kw = dict(clip_threshold=-1.0, ip_adapter_scale=1.0, controlnet_scale=1.0, steps=3)
    settings = tiny_settings.generate.model_copy(update={"reference": "face", **kw})
    (renderer,) = load_renderers(
        ("ref_guided",), settings, tiny_settings.character, models, cpu, scorer, lora_dir, faces=faces
    )
    frames = renderer.render(PLAN)
    first = frames[0].image
    crop = face_crop(first, faces)
    side = round(first.width * FACE_SHARE * (1 + 2 * FACE_MARGIN))
    assert abs(crop.width - side) <= 1 and crop.size == (crop.width, crop.width)
    # the later frames are those of an IP-Adapter shown exactly that crop (the same batch: the same pixels), and
    # not those of the whole frame 1
    for reference, same in ((crop, True), (first, False)):
        again = [RenderedFrame(index=f.index, frame=f.frame, prompt=f.prompt) for f in frames[1:]]
        renderer._attempt(again, 0, ip_reference=reference)
        for redone, rendered in zip(again, frames[1:], strict=True):
            assert (np.abs(_pixels(redone.images[0]) - _pixels(rendered.image)).max() == 0) == same


def test_modes_differ_and_ref_guided_uses_the_reference(tiny_settings, tiny_models, cpu, scorer, lora_dir):
    kw = dict(
        clip_threshold=-1.0, likeness_threshold=-1.0, ip_adapter_scale=1.0, controlnet_scale=1.0, reference="frame"
    )
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
    ref_renderer._attempt(other, 0, ip_reference=Image.new("RGB", (64, 64), "white"))
    assert np.abs(_pixels(other[0].images[0]) - _pixels(ref[1].image)).mean() > 0.1


def test_ref_guided_frame_1_skips_the_controlnet(tiny_settings, tiny_models, cpu, scorer, lora_dir):
    renderer = _renderer("ref_guided", tiny_settings, tiny_models, cpu, scorer, lora_dir, clip_threshold=-1.0)
    batches = []  # the batch size of every ControlNet pass
    renderer.pipe.controlnet.register_forward_pre_hook(lambda module, args: batches.append(len(args[0])))
    frames = [
        RenderedFrame(index=i, frame=f, prompt=frame_prompt(f, tiny_settings.character, ""))
        for i, f in enumerate(PLAN.frames, start=1)
    ]
    renderer._attempt(frames[:1], 0, None)
    assert batches == []  # frame 1: the LoRA alone, no ControlNet pass at all
    renderer._attempt(frames[1:], 0, ip_reference=Image.new("RGB", (64, 64), "white"))
    assert len(batches) == 3 and set(batches) == {2 * 2}  # frames 2-3 with classifier-free guidance, 3 steps


def test_story_outputs(tmp_path, tiny_settings, tiny_models, cpu, scorer, lora_dir):
    frames = _renderer(
        "lora", tiny_settings, tiny_models, cpu, scorer, lora_dir, clip_threshold=-1.0, likeness_threshold=-1.0
    ).render(PLAN)
    sheet = contact_sheet(frames, "test | lora", columns=2, notice="tiny profile: plumbing only")
    write_story_outputs(tmp_path / "story", frames, {"story_id": "test", "mode": "lora"}, sheet)
    names = sorted(p.name for p in (tmp_path / "story").iterdir())
    assert names == ["contact_sheet.png", "frame_01.png", "frame_02.png", "frame_03.png", "metadata.json", "story.gif"]
    gif = Image.open(tmp_path / "story/story.gif")
    assert gif.n_frames == 3 and gif.width >= 256
    meta = json.loads((tmp_path / "story/metadata.json").read_text())
    assert [f["index"] for f in meta["frames"]] == [1, 2, 3]
    assert all(f["prompt"] and f["seed"] and f["attempts"] for f in meta["frames"])
    assert Image.open(tmp_path / "story/contact_sheet.png").width >= 2 * 256


def test_same_params_and_seed_give_the_same_frames(tiny_settings, tiny_models, cpu, scorer, lora_dir):
    a = _renderer("ref_guided", tiny_settings, tiny_models, cpu, scorer, lora_dir).render(PLAN)
    b = _renderer("ref_guided", tiny_settings, tiny_models, cpu, scorer, lora_dir).render(PLAN)
    for x, y in zip(a, b, strict=True):
        assert [t.seed for t in x.attempts] == [t.seed for t in y.attempts]
        assert np.array_equal(_pixels(x.image), _pixels(y.image))


@pytest.mark.parametrize("compile_scope", ["none", "model"])
def test_speed_knobs_reach_every_denoiser_and_the_vae_decoder(
    compile_scope, tiny_settings, tiny_models, cpu, scorer, lora_dir
):
    settings = tiny_settings.generate.model_copy(update={"compile": compile_scope, "quantize": "int8"})
    (renderer,) = load_renderers(("ref_guided",), settings, tiny_settings.character, tiny_models, cpu, scorer, lora_dir)
    pipe = renderer.pipe
    compiled = compile_scope == "model"
    for module in (pipe.unet, pipe.controlnet):
        assert module._storyboard_quantized == "int8"
        assert (module._compiled_call_impl is not None) == compiled
    assert (pipe.vae.decoder._compiled_call_impl is not None) == compiled  # whole decoder, with the denoisers
    assert pipe.vae.encoder._compiled_call_impl is None and pipe.text_encoder._compiled_call_impl is None
    assert renderer.first_pipe.unet is pipe.unet  # ref_guided's frame 1 uses the same quantized, compiled UNet


def test_first_attempts_saved_beside_the_kept_frames(tmp_path, tiny_settings, tiny_models, cpu, scorer, lora_dir):
    r = _renderer("lora", tiny_settings, tiny_models, cpu, scorer, lora_dir, clip_threshold=1.0, max_retries=1)
    frames = r.render(PLAN)
    write_story_outputs(tmp_path / "story", frames, {"story_id": "test"}, contact_sheet(frames, "t", columns=2))
    meta = json.loads((tmp_path / "story/metadata.json").read_text())
    for f, record in zip(frames, meta["frames"], strict=True):
        first = Image.open(tmp_path / "story" / record["first_attempt_file"])
        if f.best == 0:  # kept its first attempt: the frame itself, not saved twice
            assert record["first_attempt_file"] == record["file"]
        else:
            assert record["first_attempt_file"] == f"first_attempts/frame_{f.index:02d}.png"
            assert np.abs(_pixels(first) - _pixels(f.image)).mean() > 1  # another seed, another picture
    assert any(f.best != 0 for f in frames)  # the text check can't pass at 1.0: the later attempt won somewhere


@pytest.mark.parametrize("mode", ["lora", "ref_guided"])
def test_a_few_step_sampler_fuses_its_lora_and_samples_with_its_own_schedule(
    mode, tiny_settings, tiny_models, cpu, scorer, lora_dir
):
    """generate.sampler lightning: its LoRA fused beside the character's, Euler with trailing timesteps, 4 UNet
    passes a call and no guidance (a batch of N frames is N latents, not 2N); ControlNet and IP-Adapter still run."""
    from diffusers import EulerDiscreteScheduler

    standard = _renderer(mode, tiny_settings, tiny_models, cpu, scorer, lora_dir, max_retries=0)
    before = {n: p.detach().clone() for n, p in standard.pipe.unet.named_parameters() if "attn1.to_q" in n}
    standard_frames = [f.image for f in standard.render(PLAN)]
    r = _renderer(mode, tiny_settings, tiny_models, cpu, scorer, lora_dir, max_retries=0, sampler="lightning")
    assert isinstance(r.pipe.scheduler, EulerDiscreteScheduler)
    assert r.pipe.scheduler.config.timestep_spacing == "trailing"
    assert (r.settings.steps, r.settings.guidance_scale) == (4, 0.0)
    after = dict(r.pipe.unet.named_parameters())
    assert all(not torch.equal(before[n], after[n]) for n in before)  # the distillation delta is in the weights
    assert not any("lora" in n for n in after)  # fused: no adapter layers left
    batches = []
    hook = r.pipe.unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        frames = [f.image for f in r.render(PLAN)]
    finally:
        hook.remove()
    later = len(PLAN.frames) - 1 if mode == "ref_guided" else len(PLAN.frames)
    assert batches[-4:] == [later] * 4 and len(batches) == 4 * (2 if mode == "ref_guided" else 1)
    assert all(np.abs(_pixels(a) - _pixels(b)).mean() > 1 for a, b in zip(frames, standard_frames, strict=True))


def test_a_missing_few_step_lora_names_its_key(tmp_path, tiny_settings, tiny_models, cpu, scorer, lora_dir):
    from storyboard.models.loading import ModelLoadError

    models = tiny_models.model_copy(update={"hyper_sd_lora": str(tmp_path / "nowhere")})
    settings = tiny_settings.generate.model_copy(update={"steps": 2, "sampler": "hyper-sd"})
    with pytest.raises(ModelLoadError, match="hyper_sd_lora"):
        next(load_renderers(("lora",), settings, tiny_settings.character, models, cpu, scorer, lora_dir))


def test_kernel_knobs_keep_the_frames(tiny_settings, tiny_models, cpu, scorer, lora_dir):
    plain = _renderer("lora", tiny_settings, tiny_models, cpu, scorer, lora_dir).render(PLAN)
    knobs = {"attention": "cudnn", "channels_last": True, "fuse_qkv": True}
    r = _renderer("lora", tiny_settings, tiny_models, cpu, scorer, lora_dir, **knobs)
    assert r.pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_qkv is not None
    assert r.pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(plain, r.render(PLAN), strict=True):  # other kernels: the same frames but for rounding
        assert np.abs(_pixels(a.image) - _pixels(b.image)).mean() < 1.0


def test_fused_projections_leave_the_ip_adapter_alone(tiny_settings, tiny_models, cpu, scorer, lora_dir, caplog):
    r = _renderer("ref_guided", tiny_settings, tiny_models, cpu, scorer, lora_dir, fuse_qkv=True)
    assert "IP-Adapter" in caplog.text
    assert any("IPAdapter" in type(p).__name__ for p in r.pipe.unet.attn_processors.values())


@pytest.mark.parametrize("negative", ["blurry, text", ""])
def test_short_plain_prompts_encode_in_one_batch_as_compel_encodes_them(
    negative, tiny_settings, tiny_models, cpu, scorer
):
    from storyboard.models import prompts as module

    r = _renderer("baseline", tiny_settings, tiny_models, cpu, scorer, None, steps=1)
    texts = ["aldar_kose_man, a fur-trimmed hat, medium shot", "he laughs at the merchant's horse"]
    assert all(module.is_plain(t) and module._fits(r.pipe, t) for t in texts)
    batched = encode_prompts(r.pipe, texts, negative).pipeline_kwargs()
    for a, b in zip(
        batched.values(), module._encode_compel(r.pipe, texts, negative).pipeline_kwargs().values(), strict=True
    ):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
