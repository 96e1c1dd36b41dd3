"""Fixtures of the generate tests: a LoRA trained in a few steps, and the CLIP scorer."""

from __future__ import annotations

import pytest

from storyboard.models.clip import ClipScorer
from storyboard.select.sweep import export_lora
from storyboard.train.lora import train_lora
from storyboard.train.steps import read_steps


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, tiny_dataset, tiny_settings, tiny_models, cpu):
    root = tmp_path_factory.mktemp("lora")
    settings = tiny_settings.train.model_copy(
        update={"max_steps": 4, "checkpoint_every": 4, "rank": 4, "learning_rate": 0.05}
    )
    train_lora(
        tiny_dataset,
        root / "steps",
        live_dir=root / "live",
        checkpoint_root=root / "ckpt",
        settings=settings,
        models=tiny_models,
        device=cpu,
    )
    saved = read_steps(root / "steps")
    export_lora(saved, saved.steps[-1].step, root / "lora")  # select.step: last
    return root / "lora"


@pytest.fixture(scope="module")
def scorer(tiny_models, cpu):
    return ClipScorer(tiny_models.clip, cpu)
