"""generate@multiref: the character kept by a multi-reference image model (FLUX.2 klein), no LoRA.

Every frame is rendered from the story's references (the user's sheet or the training images the rule of
references.py picks) plus the frame's prompt (frame_prompt: trigger, character, scene, shot, setting, style); with
generate.multiref.first_frame, frame 1 as it was settled joins them for the later frames. Everything around the
pipeline call is StoryRenderer's: the story's prompts encoded once (here by the Qwen3 text encoder), frames in
batches of generate.frames_per_batch with one seeded generator each, the CLIP text and DINOv2 likeness checks, the
retries, the first attempts kept beside the frames, the sharing of batches over the GPUs of `accelerate launch`,
and the thresholds those checks apply (this run's calibrated `Thresholds`, the same values as every mode's).
generate.sampler is not read: its few-step LoRAs are SDXL's, and FLUX.2 klein is step-distilled already.

The references go through the VAE inside every pipeline call: FLUX.2 klein appends their latent tokens to the
frame's, so each reference costs about as much attention as the frame itself (reference_size bounds that).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from PIL import Image

from storyboard.generate.references import Reference, fit
from storyboard.generate.renderer import StoryRenderer, _pil_images
from storyboard.models.compiling import compile_in_place
from storyboard.models.kernels import apply_layouts
from storyboard.models.quantizing import quantize_in_place
from storyboard.story.poses import Shot

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextEmbeds:
    """A story's Qwen3 prompt embeddings (N, tokens, 3 x hidden), in the pipeline's argument name."""

    embeds: torch.Tensor

    def rows(self, index: list[int]) -> TextEmbeds:
        return TextEmbeds(self.embeds[index])

    def pipeline_kwargs(self) -> dict[str, torch.Tensor]:
        return {"prompt_embeds": self.embeds}


class MultirefRenderer(StoryRenderer):
    """StoryRenderer over a Flux2KleinPipeline: the pipeline call takes the reference images instead of a LoRA."""

    def __init__(self, pipe, settings, character, scorer, device, *, references: Sequence[Reference], **checks):
        """`references`: the story-independent references (references.load_references), scaled here to
        generate.multiref.reference_size; `checks`: StoryRenderer's likeness arguments."""
        super().__init__("multiref", pipe, settings, character, scorer, device, **checks)
        if settings.sampler != "standard":
            # A run-wide knob (every generate stage reads it), so it is ignored here rather than failing the run.
            logger.warning(
                "multiref: generate.sampler %s is not used (its LoRA is SDXL's; FLUX.2 klein is step-distilled): "
                "sampling %d steps of generate.multiref.steps",
                settings.sampler,
                settings.multiref.steps,
            )
        self.reference_size = settings.multiref.reference_size or self.resolution
        self.references = [replace(r, image=fit(r.image, self.reference_size)) for r in references]

    @property
    def conditions_on_first(self) -> bool:
        return self.settings.multiref.first_frame

    def _first_reference(self, first: Image.Image, story_id: str) -> Image.Image:
        return fit(first, self.reference_size)

    def _apply_knobs(self) -> None:
        s, pipe = self.settings, self.pipe
        apply_layouts(pipe, channels_last=s.channels_last, fuse_qkv=s.fuse_qkv)
        quantize_in_place(pipe.transformer, s.quantize)
        if s.vae_tiling:
            pipe.vae.enable_tiling()
        if s.vae_slicing:
            pipe.vae.enable_slicing()
        if s.cpu_offload:
            pipe.enable_model_cpu_offload(device=self.device.device)
        else:
            pipe.to(self.device.device)
        compile_in_place(pipe.transformer, s.compile, s.compile_mode)
        if s.compile != "none":
            compile_in_place(pipe.vae.decoder, "model", "default")

    def sampling(self) -> dict:
        """FLUX.2 klein's own steps and guidance (generate.multiref); generate.sampler is an SDXL LoRA, never here."""
        m = self.settings.multiref
        return {
            "sampler": None,
            "steps": m.steps,
            "guidance_scale": m.guidance_scale,
            "scheduler": type(self.pipe.scheduler).__name__,
        }

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextEmbeds:
        """The prompts through the Qwen3 text encoder, in one call (the pipeline's own encoding)."""
        embeds, _ = self.pipe.encode_prompt(
            prompts, device=self.pipe._execution_device, max_sequence_length=self.settings.multiref.max_sequence_length
        )
        return TextEmbeds(embeds)

    def _run(
        self,
        embeds: TextEmbeds,
        seeds: list[int],
        poses: list[tuple[str, Shot]] | None,
        ip_reference: Image.Image | None,
    ) -> list[Image.Image]:
        """One pipeline call: a batch of encoded prompts, one seed each, the references (and frame 1, when given)."""
        m = self.settings.multiref
        references = [r.image for r in self.references] + ([ip_reference] if ip_reference is not None else [])
        frames = self.pipe(
            image=references,
            **embeds.pipeline_kwargs(),
            num_inference_steps=m.steps,
            guidance_scale=m.guidance_scale,
            height=self.resolution,
            width=self.resolution,
            generator=[torch.Generator(device="cpu").manual_seed(seed) for seed in seeds],
            max_sequence_length=m.max_sequence_length,
            output_type="pt",  # converted as the SDXL modes' frames are (renderer._pil_images)
        ).images
        return _pil_images(frames)
