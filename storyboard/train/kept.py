"""The saved steps of one training run, kept beside its checkpoints: each step's LoRA and validation samples.

Over-training is the usual way a character LoRA goes wrong (it copies its training images and stops obeying the
prompt), so the final step is not necessarily the best: the select stage chooses among the saved ones. Training
keeps every saved step's LoRA (apart from `checkpoints_keep`, which rotates the full training states) and the
validation prompts' samples (fixed seeds) it drew there; at the end it publishes them as models/steps
(storyboard/train/steps.py). Samples are kept under a name derived from the validation settings, so a resumed run
draws only the steps it had not, and changed validation prompts never reuse samples that no longer apply.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from PIL import Image

from storyboard.fsutil import atomic_path
from storyboard.settings import Validation
from storyboard.train.export import LORA_WEIGHTS
from storyboard.train.progress import FAST_PNG
from storyboard.train.steps import SavedStep


class KeptSteps:
    """The per-step LoRAs and samples of one training run (`run_dir`, the checkpoint folder)."""

    def __init__(self, run_dir: Path, validation: Validation):
        # What the samples depend on; not `every`, which only says how often dvclive gets samples.
        drawn = validation.model_dump(mode="json", include={"prompts", "steps", "seed"})
        key = hashlib.sha256(json.dumps(drawn, sort_keys=True).encode()).hexdigest()
        self.loras = Path(run_dir) / "loras"
        self.folder = Path(run_dir) / f"samples-{key[:12]}"
        self.prompts = list(validation.prompts)

    def lora_dir(self, step: int) -> Path:
        return self.loras / f"step-{step:07d}"

    def saved_steps(self) -> list[int]:
        return sorted(int(p.name[5:]) for p in self.loras.glob("step-*") if (p / LORA_WEIGHTS).exists())

    def sample_paths(self, step: int) -> list[Path]:
        return [self.folder / f"step{step:07d}_{i}.png" for i in range(len(self.prompts))]

    def has_step(self, step: int) -> bool:
        return (self.lora_dir(step) / LORA_WEIGHTS).exists() and all(p.exists() for p in self.sample_paths(step))

    def save_step(self, step: int, layers: dict, images: list[Image.Image]) -> None:
        """Keep `step`'s LoRA and samples; the samples first, so a step with weights always has them."""
        from diffusers import StableDiffusionXLPipeline

        self.folder.mkdir(parents=True, exist_ok=True)
        for path, image in zip(self.sample_paths(step), images, strict=True):
            with atomic_path(path) as staged:
                image.save(staged, format="PNG", compress_level=FAST_PNG)
        with atomic_path(self.lora_dir(step)) as staged:
            StableDiffusionXLPipeline.save_lora_weights(staged, weight_name=LORA_WEIGHTS, **layers)

    def published(self, up_to: int) -> list[SavedStep]:
        """The steps of this run up to `up_to` (the final one) that have their samples, as models/steps lists them.

        A step saved before the validation prompts changed has no samples for these prompts and is left out; the
        final step always has them (training draws them before it ends)."""
        return [
            SavedStep(step, self.lora_dir(step) / LORA_WEIGHTS, self.sample_paths(step))
            for step in self.saved_steps()
            if step <= up_to and all(p.exists() for p in self.sample_paths(step))
        ]
