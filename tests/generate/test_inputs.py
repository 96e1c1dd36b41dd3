"""Every generate.* key, one by one: it moves the render hash of exactly the modes whose pixels it can change.

A key outside the hash renders nothing when it changes (presentation: the sheet and GIF are redrawn; the checks'
settings: only the threshold values they yield count, test_calibration.py); a key inside it renders that mode's
stories again. A new key fails `test_every_generate_key_has_a_decision` until it is placed in the table below.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from storyboard.generate import inputs
from storyboard.generate.calibration import Threshold, Thresholds
from storyboard.generate.inputs import StoryInputs
from storyboard.settings import ModelSet, Settings
from storyboard.story.planners import OfflinePlanner, plan_story

ALL = frozenset({"baseline", "lora", "ref_guided", "multiref"})
SDXL = frozenset({"baseline", "lora", "ref_guided"})
NONE: frozenset[str] = frozenset()
# Which modes' stories a change of each key renders again.
RERENDERS = {
    **dict.fromkeys(("steps", "guidance_scale", "negative_prompt", "sampler"), SDXL),
    "lora_scale": frozenset({"lora", "ref_guided"}),
    **dict.fromkeys(("ip_adapter_scale", "controlnet_scale", "reference", "face_min_score"), {"ref_guided"}),
    **dict.fromkeys(("resolution", "seed", "style", "max_retries", "frames_per_batch"), ALL),
    # how the frames are computed: the same pictures up to the last bits (bf16 kernels, batch shapes), or
    # slightly different ones (quantize), so a story rendered one way is not kept for another
    **dict.fromkeys(("vae_tiling", "vae_slicing", "cpu_offload", "compile", "compile_mode", "quantize"), ALL),
    **dict.fromkeys(("attention", "channels_last", "fuse_qkv"), ALL),
    # only the threshold values they yield count (test_calibration.py)
    **dict.fromkeys(("clip_threshold", "likeness_threshold"), NONE),
    **{f"calibration.{k}": NONE for k in ("clip_percentile", "likeness_percentile", "min_images")},
    **{f"calibration.{k}": NONE for k in ("clip_fallback", "likeness_fallback")},
    # presentation: the kept frames are laid out again (test_run.py)
    **dict.fromkeys(("contact_sheet_columns", "gif_frame_ms"), NONE),
    **{
        f"multiref.{k}": {"multiref"}
        for k in ("steps", "guidance_scale", "references", "reference_size", "first_frame", "max_sequence_length")
    },
}
# Another valid value for the keys whose values are names.
OTHER = {
    "sampler": "lightning",
    "reference": "frame",
    "frames_per_batch": 3,
    "compile": "blocks",
    "compile_mode": "reduce-overhead",
    "quantize": "fp8",
    "attention": "cudnn",
}
THRESHOLDS = Thresholds(Threshold(0.2, "fixed"), Threshold(0.5, "fixed"), 12)


def _leaves(data: dict, prefix: str = "") -> dict[str, object]:
    found = {}
    for key, value in data.items():
        found |= _leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return found


def _other(key: str, value: object) -> object:
    if key in OTHER:
        return OTHER[key]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    return 512 if value is None else f"{value}, another"


def _changed(settings: Settings, key: str) -> Settings:
    head, _, leaf = key.rpartition(".")
    section = getattr(settings.generate, head) if head else settings.generate
    moved = section.model_copy(update={leaf: _other(key, getattr(section, leaf))})
    generate = settings.generate.model_copy(update={head: moved}) if head else moved
    return settings.model_copy(update={"generate": generate})


def _hashes(settings: Settings) -> dict[str, str]:
    models = SimpleNamespace(model_dump=lambda **_: {name: name for name in ModelSet.model_fields})
    plan = plan_story(OfflinePlanner(settings.plan), settings.stories[0], settings.character)
    return {mode: StoryInputs(settings, mode, models, "lora-sha", None, thresholds=THRESHOLDS).of(plan) for mode in ALL}


def test_every_generate_key_has_a_decision(params):
    assert set(_leaves(params.generate.model_dump())) == set(RERENDERS)


@pytest.mark.parametrize("key", sorted(RERENDERS))
def test_a_key_renders_again_exactly_the_modes_it_reaches(params, key, monkeypatch):
    # the code's part of the hash is the same on both sides: hashing the import closure 8 times a key costs seconds
    monkeypatch.setattr(inputs, "code_fingerprint", lambda entry: entry)
    before, after = _hashes(params), _hashes(_changed(params, key))
    assert {mode for mode in ALL if before[mode] != after[mode]} == RERENDERS[key]
