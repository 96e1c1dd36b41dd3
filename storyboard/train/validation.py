"""Validation samples: fixed-seed pictures from the LoRA as it trains."""

from __future__ import annotations

import torch
from PIL import Image

from storyboard.models.prompts import encode_prompts
from storyboard.settings import Train
from storyboard.train.trainer import LoraTrainer


def validation_images(trainer: LoraTrainer, settings: Train) -> list[Image.Image]:
    """Fixed-seed samples from the LoRA as it is now, with the frozen parts already in memory."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    parts, unwrap = trainer.parts, trainer.plain
    v = settings.validation
    pipe = StableDiffusionXLPipeline(
        vae=parts.vae,
        text_encoder=unwrap(trainer.text_encoders[0]) if trainer.text_encoders else parts.text_encoders[0],
        text_encoder_2=unwrap(trainer.text_encoders[1]) if trainer.text_encoders else parts.text_encoders[1],
        tokenizer=parts.tokenizers[0],
        tokenizer_2=parts.tokenizers[1],
        unet=unwrap(trainer.unet),
        scheduler=EulerDiscreteScheduler.from_config(parts.scheduler.config),
    )
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator(device=parts.device).manual_seed(v.seed)
    # Eager, even with train.compile: a few samples now and then don't repay compiling inference graphs.
    with torch.no_grad(), trainer.accelerator.autocast(), torch.compiler.set_stance("force_eager"):
        # Whole prompts, as generate reads them (compel): a sample shows what a frame's prompt would give.
        embeds = encode_prompts(pipe, list(v.prompts))
        return pipe(**embeds.pipeline_kwargs(), num_inference_steps=v.steps, generator=generator).images
