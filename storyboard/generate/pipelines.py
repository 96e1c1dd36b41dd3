"""One renderer per mode, over models loaded once: the modes build on each other."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image

from storyboard.generate.calibration import Thresholds
from storyboard.generate.multiref import MultirefRenderer
from storyboard.generate.references import Reference
from storyboard.generate.renderer import StoryRenderer
from storyboard.generate.samplers import sampler_of, use_scheduler
from storyboard.models.clip import ClipScorer
from storyboard.models.faces import FaceBackend
from storyboard.models.likeness import LikenessScorer
from storyboard.models.loading import (
    Device,
    attach_ip_adapter,
    attach_lora,
    check_faceid_fits,
    faceid_input_size,
    faceid_weights_input_size,
    fuse_sampler_lora,
    load_multiref_pipeline,
    load_pipeline,
    over_same_modules,
    with_controlnet,
)
from storyboard.models.quantizing import check_quantize_supported
from storyboard.settings import MODES, Character, Generate, Mode, ModelSet


def load_renderers(
    modes: Sequence[Mode],
    settings: Generate,
    character: Character,
    models: ModelSet,
    device: Device,
    scorer: ClipScorer,
    lora_dir: Path | None,
    *,
    likeness_features: torch.Tensor | None = None,
    faces: FaceBackend | None = None,
    training_images: Sequence[Image.Image] = (),
    likeness: LikenessScorer | None = None,
    thresholds: Thresholds | None = None,
    references: Sequence[Reference] = (),
) -> Iterator[StoryRenderer]:
    """One renderer per requested mode, in the order baseline, lora, ref_guided, multiref, over models loaded once.

    The SDXL modes build on each other: the LoRA is fused into the UNet that baseline used, and ref_guided adds the
    ControlNet and IP-Adapter around that same UNet. So a renderer is only valid until the next is yielded.
    multiref loads its own pipeline (FLUX.2 klein) last, fed `references`.
    """
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}; choose from {', '.join(MODES)}")
    check_quantize_supported(settings.quantize, device.device)
    sdxl_modes = [m for m in modes if m != "multiref"]
    if sdxl_modes:
        yield from _sdxl_renderers(
            sdxl_modes, settings, character, models, device, scorer, lora_dir, likeness_features=likeness_features,
            faces=faces, training_images=training_images, likeness=likeness, thresholds=thresholds,
        )  # fmt: skip
    if "multiref" in modes:
        yield MultirefRenderer(
            load_multiref_pipeline(models, device),
            settings,
            character,
            scorer,
            device,
            references=references,
            likeness_features=likeness_features,
            likeness=likeness,
            thresholds=thresholds,
        )


def _sdxl_renderers(
    modes: Sequence[Mode],
    settings: Generate,
    character: Character,
    models: ModelSet,
    device: Device,
    scorer: ClipScorer,
    lora_dir: Path | None,
    *,
    likeness_features: torch.Tensor | None,
    faces: FaceBackend | None,
    training_images: Sequence[Image.Image],
    likeness: LikenessScorer | None,
    thresholds: Thresholds | None,
) -> Iterator[StoryRenderer]:
    faceid = "ref_guided" in modes and settings.reference == "faceid"
    if faceid:
        if faces is None:
            raise ValueError("generate.reference: faceid needs a face backend")
        check_faceid_fits(faceid_weights_input_size(models), faces, models)  # before loading, where it can
    pipe = load_pipeline(models, device)
    settings = _with_sampler(pipe, models, settings)
    fused = False
    for mode in (m for m in MODES if m in modes):
        if mode != "baseline" and not fused:
            _fuse_character_lora(pipe, lora_dir, settings.lora_scale, mode)
            fused = True
        if mode == "ref_guided":
            pipe = with_controlnet(pipe, models, device)
            attach_ip_adapter(pipe, models, settings.ip_adapter_scale, faceid=faceid)
            if faceid:
                check_faceid_fits(faceid_input_size(pipe), faces, models)
        own = pipe
        if mode == "baseline" and settings.quantize != "none" and len(set(modes)) > 1:
            # Quantizing can't be undone, and the LoRA is fused into these weights next: baseline quantizes a copy.
            from diffusers import StableDiffusionXLPipeline

            own = over_same_modules(StableDiffusionXLPipeline, pipe, unet=copy.deepcopy(pipe.unet))
        yield StoryRenderer(
            mode,
            own,
            settings,
            character,
            scorer,
            device,
            likeness_features=likeness_features,
            faces=faces,
            training_images=training_images,
            likeness=likeness,
            thresholds=thresholds,
        )


def _with_sampler(pipe, models: ModelSet, settings: Generate) -> Generate:
    """Set generate.sampler up on the pipeline when it is not standard; the generate settings it samples with."""
    sampler = sampler_of(settings.sampler)
    if sampler is None:
        return settings
    # Every mode samples with it: fused before the character's LoRA, the scheduler shared by every pipeline.
    fuse_sampler_lora(pipe, models, sampler)
    use_scheduler(pipe, sampler)
    return settings.model_copy(update={"steps": sampler.steps, "guidance_scale": sampler.guidance_scale})


def _fuse_character_lora(pipe, lora_dir: Path | None, lora_scale: float, mode: Mode) -> None:
    """Fuse the character's LoRA into the pipeline's UNet, for `mode`, the first that needs it."""
    if lora_dir is None:
        raise ValueError(f"mode {mode} needs a LoRA folder")
    attach_lora(pipe, lora_dir)
    # Fused into the UNet weights: the same result as a live adapter, without its cost in every step.
    pipe.fuse_lora(adapter_names=["character"], lora_scale=lora_scale)
    pipe.unload_lora_weights()
