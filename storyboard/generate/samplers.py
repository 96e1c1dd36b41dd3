"""Few-step sampling: a distillation LoRA fused into the UNet, with the scheduler, steps and guidance it was
distilled for, so a user iterating on stories pays a few UNet passes a frame instead of 30 with guidance.

- standard:  the base model's own scheduler, generate.steps and generate.guidance_scale.
- lightning: ByteDance's SDXL-Lightning 4-step LoRA (openrail++): Euler with trailing timesteps, 4 steps, no
             classifier-free guidance (so one UNet pass a step, and the negative prompt is not read).
- hyper-sd:  ByteDance's Hyper-SDXL 8-step CFG LoRA (openrail++): DDIM with trailing timesteps, 8 steps, guidance
             kept (the negative prompt still works).

The LoRA is fused beside the character's: both deltas go into the UNet's weights, so each step costs what the plain
UNet costs. The ControlNet and the IP-Adapter of ref_guided work on the same UNet. What the distillation does to a
character's likeness can only be seen with real weights: compare `dvc metrics diff` of a `-S generate.sampler=...`
experiment with the standard run on your own character.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

logger = logging.getLogger(__name__)

SamplerName = Literal["standard", "lightning", "hyper-sd"]


@dataclass(frozen=True)
class Sampler:
    """What a distillation LoRA was made for (its model card), and where `models.<profile>` names its file."""

    name: str
    steps: int
    guidance_scale: float
    scheduler: str  # a diffusers scheduler class, built from the base model's scheduler config
    lora_key: str  # ModelSet fields: `<lora_key>` (hub id or folder) and `<lora_key>_weight` (file)
    lora_scale: float = 1.0


SAMPLERS: dict[str, Sampler] = {
    "lightning": Sampler(
        "lightning", steps=4, guidance_scale=0.0, scheduler="EulerDiscreteScheduler", lora_key="lightning_lora"
    ),
    "hyper-sd": Sampler("hyper-sd", steps=8, guidance_scale=5.0, scheduler="DDIMScheduler", lora_key="hyper_sd_lora"),
}


def sampler_of(name: SamplerName) -> Sampler | None:
    """The few-step sampler `name` (generate.sampler); None for standard."""
    return SAMPLERS.get(name)


def use_scheduler(pipe, sampler: Sampler) -> None:
    """`pipe`'s scheduler replaced by the sampler's, with trailing timesteps (as both model cards say)."""
    import diffusers

    scheduler_class = getattr(diffusers, sampler.scheduler)
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config, timestep_spacing="trailing")
