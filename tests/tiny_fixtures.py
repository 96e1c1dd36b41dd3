"""Session fixtures for the tiny profile: models built once, settings pointing at them, a drawn dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from storyboard.caption.backends import SidecarBackend
from storyboard.caption.dataset import caption_images
from storyboard.models.loading import Device
from storyboard.models.tiny import tiny_model_set
from storyboard.sample_data import draw_sample_set
from storyboard.settings import ModelSet, Runtime, Settings


@pytest.fixture(scope="session")
def tiny_settings(params: Settings, tmp_path_factory) -> Settings:
    """The repo's params on the tiny profile, with models built in a session temp folder."""
    root = tmp_path_factory.mktemp("tiny-models")
    models = params.models.model_copy(update={"tiny": params.models.tiny.model_copy(update={"root": root})})
    # Eager, as `make tiny` runs: compiling on a CPU only slows a plumbing check (compile has its own tests). No
    # validation prompts and the last step, not a sweep: tests that train for a LoRA don't pay for drawing and
    # scoring samples at every saved step (tests/train/test_kept_steps.py, tests/select/ do).
    validation = params.train.validation.model_copy(update={"prompts": []})
    train = params.train.model_copy(update={"compile": "none", "validation": validation})
    select = params.select.model_copy(update={"step": "last"})
    return params.model_copy(update={"profile": "tiny", "models": models, "train": train, "select": select})


@pytest.fixture(scope="session")
def tiny_models(tiny_settings: Settings) -> ModelSet:
    return tiny_model_set(tiny_settings.models.tiny)


@pytest.fixture(scope="session")
def cpu() -> Device:
    return Device.from_runtime(Runtime(device="cpu"))


@pytest.fixture(scope="session")
def tiny_dataset(tiny_settings: Settings, tmp_path_factory) -> Path:
    """The drawn sample set, captioned from its sidecars: what the caption stage gives the tiny profile."""
    work = tmp_path_factory.mktemp("dataset")
    draw_sample_set(work / "sample", tiny_settings.character, count=6, size=128, seed=0)
    settings = tiny_settings.caption.model_copy(update={"min_side": 64})
    caption_images(work / "sample", work / "dataset", SidecarBackend(), settings, tiny_settings.character)
    return work / "dataset"
