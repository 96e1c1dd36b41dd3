"""Render a story plan in one of three modes, with a two-part CLIP check per frame and retries for the weak ones.

- baseline:   SDXL alone (no LoRA), the same prompts: what the character looks like without our training.
- lora:       SDXL + our LoRA (fused into the UNet: no per-step LoRA cost).
- ref_guided: frame 1 from the LoRA alone; every later frame with the LoRA, an IP-Adapter fed frame 1 (its face
              crop when a face is found) and a ControlNet OpenPose condition drawn from the planner's pose label.
              With generate.reference: faceid, an IP-Adapter FaceID fed the face-recognition embedding of frame 1's
              face instead (the training images' mean face when frame 1 has none).

The check: each attempt gets a text score (CLIP cosine of frame and scene text) and a likeness score (CLIP image
cosine to frame 1, averaged with the mean cosine to the training images when they are given). A frame below
either threshold is redone with a new seed, up to `max_retries` times; the attempt kept is the one whose worse
margin, min(text - text threshold, likeness - likeness threshold), is largest: the one closest to passing both.

Frames of a story go through the pipeline as one batch, each with its own seeded generator, so a frame is the
same whether rendered alone or in a batch. Retries are batched too.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from storyboard.errors import StoryboardError
from storyboard.log import logger
from storyboard.models.clip import ClipScorer
from storyboard.models.compiling import compile_in_place
from storyboard.models.faces import FaceBackend, largest_face, mean_embedding
from storyboard.models.loading import (
    Device,
    attach_ip_adapter,
    attach_lora,
    check_faceid_fits,
    faceid_input_size,
    faceid_weights_input_size,
    load_pipeline,
    native_resolution,
    over_same_modules,
    with_controlnet,
)
from storyboard.models.quantizing import check_quantize_supported, quantize_in_place
from storyboard.settings import Character, Generate, ModelSet
from storyboard.story.plan import Frame, StoryPlan
from storyboard.story.poses import get_pose, render_openpose

Mode = Literal["baseline", "lora", "ref_guided"]
MODES: tuple[Mode, ...] = ("baseline", "lora", "ref_guided")
SEED_STRIDE = 1000  # attempt k of frame i uses seed + k * SEED_STRIDE + i
FACE_MARGIN = 0.4  # the IP-Adapter reference: the face box grown by this share on each side
# What the IP-Adapter of ref_guided's later frames gets: an image (frame 1, or its face crop), or for FaceID an
# identity embedding (1-d, the face backend's size).
Reference = Image.Image | torch.Tensor
IdentitySource = Literal["frame_1", "training_images"]


class NoFaceIdentity(StoryboardError):
    """generate.reference: faceid found no face to take the identity from; the message says what to set instead."""


@dataclass
class Attempt:
    seed: int
    clip_text_score: float
    likeness: float | None
    seconds: float


@dataclass
class RenderedFrame:
    index: int  # 1-based
    frame: Frame
    prompt: str
    attempts: list[Attempt] = field(default_factory=list)
    image: Image.Image | None = None
    best: int = 0  # index into attempts of the kept one
    images: list[Image.Image] = field(default_factory=list, repr=False)  # every attempt, until settled
    features: list[torch.Tensor] = field(default_factory=list, repr=False)  # CLIP image features per attempt

    @property
    def score(self) -> float:
        return self.attempts[self.best].clip_text_score

    @property
    def likeness(self) -> float | None:
        return self.attempts[self.best].likeness


def frame_prompt(frame: Frame, character: Character, style: str) -> str:
    """Trigger token and character description in every prompt, so every frame asks for the same person."""
    parts = [
        character.trigger,
        f"{character.name}, {character.description}",
        frame.scene,
        f"{frame.shot} shot",
        frame.setting,
    ]
    if style:
        parts.append(style)
    return ", ".join(p.strip().rstrip(".") for p in parts if p.strip())


def warn_if_truncated(pipe, prompts: list[str]) -> None:
    """CLIP text encoders read 77 tokens; say so rather than drop the end of a prompt silently."""
    tokenizer = pipe.tokenizer
    lengths = [len(tokenizer(p).input_ids) for p in prompts]
    long = [n for n in lengths if n > tokenizer.model_max_length]
    if long:
        logger.warning(
            "%d of %d prompts exceed the %d tokens the text encoders read (longest %d); their ends are dropped: "
            "shorten character.description or generate.style",
            len(long),
            len(prompts),
            tokenizer.model_max_length,
            max(long),
        )


def face_crop(image: Image.Image, faces: FaceBackend | None) -> Image.Image:
    """A square crop around the largest face with a margin, or the whole frame when no face is found."""
    face = largest_face(faces.detect(image)) if faces is not None else None
    if face is None:
        return image
    x0, y0, x1, y1 = face.bbox
    side = max(x1 - x0, y1 - y0) * (1 + 2 * FACE_MARGIN)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    box = (
        max(0, cx - side / 2),
        max(0, cy - side / 2),
        min(image.width, cx + side / 2),
        min(image.height, cy + side / 2),
    )
    return image.crop(tuple(round(v) for v in box))


class StoryRenderer:
    """Holds the loaded pipeline(s) for one mode; renders any number of plans with them."""

    def __init__(
        self,
        mode: Mode,
        pipe,
        settings: Generate,
        character: Character,
        scorer: ClipScorer,
        device: Device,
        references: torch.Tensor | None = None,
        faces: FaceBackend | None = None,
        training_images: Sequence[Image.Image] = (),
    ):
        """Wrap a ready pipeline (`load_renderers` is the usual way to get one). `training_images` are the
        fallback identity of generate.reference: faceid."""
        self.mode, self.pipe, self.settings, self.character, self.scorer = mode, pipe, settings, character, scorer
        self.device, self.references, self.faces, self.training_images = device, references, faces, training_images
        self.faceid = mode == "ref_guided" and settings.reference == "faceid"
        self.identity_from: IdentitySource | None = None  # where the last render's FaceID identity came from
        # ref_guided's frame 1 is the LoRA alone: a plain SDXL pipeline over the same modules renders it without
        # running the ControlNet, which a ControlNet pipeline runs even at scale 0.
        self.first_pipe = None
        if mode == "ref_guided":
            from diffusers import StableDiffusionXLPipeline

            self.first_pipe = over_same_modules(StableDiffusionXLPipeline, pipe)
        self._apply_knobs()
        self.resolution = settings.resolution or native_resolution(self.pipe)

    def _apply_knobs(self) -> None:
        s, pipe = self.settings, self.pipe
        # Quantized first (while the weights are on the device, before any offloading), compiled last (so the
        # quantizing fuses into the compiled kernels); both in place: the pipeline for ref_guided's frame 1
        # shares these modules and gets the same ones.
        denoisers = [pipe.unet] + ([pipe.controlnet] if getattr(pipe, "controlnet", None) is not None else [])
        for module in denoisers:
            quantize_in_place(module, s.quantize)
        if s.vae_tiling:
            pipe.vae.enable_tiling()
        if s.vae_slicing:
            pipe.vae.enable_slicing()
        if s.cpu_offload:
            pipe.enable_model_cpu_offload(device=self.device.device)
        for module in denoisers:
            compile_in_place(module, s.compile, s.compile_mode)
        if s.quantize != "none" and s.compile == "none":
            logger.warning(
                "generate.quantize: %s without generate.compile: torchao's quantized layers are meant to run "
                "compiled (which fuses the quantizing into the matmuls); set generate.compile: model",
                s.quantize,
            )
        if s.compile != "none":
            # The VAE decoder too, whole and without CUDA graphs (it runs once per batch): at 1024 px its
            # eager kernels spend most of their time converting layouts, which compiling removes.
            compile_in_place(pipe.vae.decoder, "model", "default")

    def _run(
        self, prompts: list[str], seeds: list[int], poses: list[str] | None, reference: Image.Image | None
    ) -> list[Image.Image]:
        s = self.settings
        kwargs = dict(
            prompt=prompts,
            negative_prompt=[s.negative_prompt] * len(prompts),
            num_inference_steps=s.steps,
            guidance_scale=s.guidance_scale,
            height=self.resolution,
            width=self.resolution,
            generator=[torch.Generator(device="cpu").manual_seed(seed) for seed in seeds],
        )
        if self.mode == "ref_guided":
            if reference is None:
                # Frame 1 is the LoRA alone: no ControlNet, and the IP-Adapter scaled to zero, which its attention
                # skips (the UNet still wants its input, so the encoder sees a blank image once; FaceID: zeros).
                self.pipe.set_ip_adapter_scale(0.0)
                with self._faceid_lora_off():
                    return self.first_pipe(**kwargs, **self._ip_adapter_input(None)).images
            self.pipe.set_ip_adapter_scale(s.ip_adapter_scale)
            conditions = [render_openpose(get_pose(p), self.resolution, self.resolution) for p in poses or []]
            kwargs.update(
                image=conditions, controlnet_conditioning_scale=s.controlnet_scale, **self._ip_adapter_input(reference)
            )
        return self.pipe(**kwargs).images

    def _ip_adapter_input(self, reference: Reference | None) -> dict:
        """The pipeline argument that feeds the IP-Adapter; None: an input that its scale of 0 ignores.

        FaceID takes embeddings, not images, in the layout of diffusers' SDXL pipelines: one tensor per adapter,
        (negative, positive) stacked on dim 0 when classifier-free guidance runs, each (1 image, embedding size);
        the pipeline repeats it for every prompt of the batch. The negative is zeros, as in h94's own code.
        """
        if not self.faceid:
            blank = Image.new("RGB", (self.resolution, self.resolution))
            return {"ip_adapter_image": blank if reference is None else reference}
        unet = self.pipe.unet
        identity = torch.zeros(faceid_input_size(self.pipe)) if reference is None else reference
        embeds = identity.reshape(1, 1, -1)
        # The pipelines' do_classifier_free_guidance, which they only set during a call.
        if self.settings.guidance_scale > 1 and unet.config.time_cond_proj_dim is None:
            embeds = torch.cat([torch.zeros_like(embeds), embeds])
        return {"ip_adapter_image_embeds": [embeds.to(self.device.device, unet.dtype)]}

    @contextmanager
    def _faceid_lora_off(self):
        """h94's FaceID checkpoints carry a LoRA, which diffusers loads as live adapters (faceid_0, ...) beside the
        IP-Adapter: it belongs to the identity frames, so frame 1 (the LoRA alone) renders without it."""
        unet = self.pipe.unet
        live = self.faceid and any(name.startswith("faceid_") for name in getattr(unet, "peft_config", {}))
        if live:
            unet.disable_lora()
        try:
            yield
        finally:
            if live:
                unet.enable_lora()

    def _attempt(self, frames: list[RenderedFrame], attempt: int, reference: Reference | None) -> None:
        """Render one attempt of `frames` as a batch and record their text scores and image features."""
        seeds = [self.settings.seed + attempt * SEED_STRIDE + f.index for f in frames]
        t0 = time.perf_counter()
        images = self._run([f.prompt for f in frames], seeds, [f.frame.pose for f in frames], reference)
        seconds = (time.perf_counter() - t0) / len(frames)
        features = self.scorer.image_features(images)
        texts = self.scorer.text_scores(images, [f.frame.scene for f in frames], features)
        for f, image, seed, text, feat in zip(frames, images, seeds, texts, features, strict=True):
            f.attempts.append(
                Attempt(seed=seed, clip_text_score=round(text, 5), likeness=None, seconds=round(seconds, 3))
            )
            f.images.append(image)
            f.features.append(feat)

    def _likeness(self, feature: torch.Tensor, anchor: torch.Tensor | None) -> float | None:
        parts = []
        if anchor is not None:
            parts.append(float(feature @ anchor))
        if self.references is not None:
            parts.append(float((self.references @ feature).mean()))
        return round(sum(parts) / len(parts), 5) if parts else None

    def _margin(self, a: Attempt) -> float:
        s = self.settings
        text = a.clip_text_score - s.clip_threshold
        return text if a.likeness is None else min(text, a.likeness - s.likeness_threshold)

    def _settle(self, frames: list[RenderedFrame], anchor: torch.Tensor | None, reference: Reference | None) -> None:
        """Score every attempt so far for likeness, redo the frames that fail, keep each one's best attempt."""
        s = self.settings
        pending = frames
        while True:
            for f in pending:
                for a, feat in zip(f.attempts, f.features, strict=True):
                    a.likeness = self._likeness(feat, anchor)
                f.best = max(range(len(f.attempts)), key=lambda k, f=f: (self._margin(f.attempts[k]), -k))
                f.image = f.images[f.best]
            pending = [f for f in pending if self._margin(f.attempts[f.best]) < 0 and len(f.attempts) <= s.max_retries]
            if not pending:
                return
            attempt = len(pending[0].attempts)
            logger.info("%d frame(s) below the CLIP checks; retry %d of %d", len(pending), attempt, s.max_retries)
            self._attempt(pending, attempt, reference)

    def render(self, plan: StoryPlan, first: RenderedFrame | None = None) -> list[RenderedFrame]:
        """Render a plan. ref_guided may be given `first`: frame 1 as the lora mode settled it, which is exactly
        what ref_guided would render for it (the LoRA alone, same prompt and seeds), so it is not rendered again."""
        frames = [
            RenderedFrame(index=i, frame=f, prompt=frame_prompt(f, self.character, self.settings.style))
            for i, f in enumerate(plan.frames, start=1)
        ]
        warn_if_truncated(self.pipe, [f.prompt for f in frames])
        rest = frames[1:]
        if self.mode == "ref_guided":
            # Later frames are conditioned on frame 1, so it is settled first, alone.
            if first is not None and first.prompt == frames[0].prompt:
                frames[0] = first
            else:
                self._attempt(frames[:1], 0, None)
                self._settle(frames[:1], None, None)
            first = frames[0]
            reference = self._reference(first.image, plan.story_id)
            self._attempt(rest, 0, reference)
        else:
            # One batch for the whole story; frame 1 settles first because the others are judged against it.
            first, reference = frames[0], None
            self._attempt(frames, 0, None)
            self._settle([first], None, None)
        anchor = self.scorer.image_features([first.image])[0] if not first.features else first.features[first.best]
        self._settle(rest, anchor, reference)
        for f in frames:
            f.images, f.features = [], []  # only the kept image leaves the renderer
        return frames

    def _reference(self, first: Image.Image, story_id: str) -> Reference:
        """What the IP-Adapter gets for the later frames, as generate.reference says."""
        if self.settings.reference == "frame":
            return first
        if self.settings.reference == "face":
            return face_crop(first, self.faces)
        face = largest_face(self.faces.detect(first))
        if face is not None:
            self.identity_from, identity = "frame_1", face.embedding
        elif self._training_identity is not None:
            logger.warning(
                "%s: no face found in frame 1; the IP-Adapter FaceID gets the mean face of the training images",
                story_id,
            )
            self.identity_from, identity = "training_images", self._training_identity
        else:
            raise NoFaceIdentity(
                f"{story_id}: generate.reference: faceid needs a face, and the {self.faces.name} face backend found "
                f"none in frame 1 nor in the {len(self.training_images)} training images: set generate.reference: "
                "face (the IP-Adapter then gets the whole frame 1)"
            )
        return torch.from_numpy(np.array(identity))

    @cached_property
    def _training_identity(self) -> np.ndarray | None:
        """The training images' mean face embedding, found once, on first need."""
        return mean_embedding(self.faces, self.training_images) if self.training_images else None


def load_renderers(
    modes: Sequence[Mode],
    settings: Generate,
    character: Character,
    models: ModelSet,
    device: Device,
    scorer: ClipScorer,
    lora_dir: Path | None,
    references: torch.Tensor | None = None,
    faces: FaceBackend | None = None,
    training_images: Sequence[Image.Image] = (),
) -> Iterator[StoryRenderer]:
    """One renderer per requested mode, in the order baseline, lora, ref_guided, over models loaded once.

    The modes build on each other: the LoRA is fused into the UNet that baseline used, and ref_guided adds the
    ControlNet and IP-Adapter around that same UNet. So a renderer is only valid until the next is yielded.
    """
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}; choose from {', '.join(MODES)}")
    check_quantize_supported(settings.quantize, device.device)
    faceid = "ref_guided" in modes and settings.reference == "faceid"
    if faceid:
        if faces is None:
            raise ValueError("generate.reference: faceid needs a face backend")
        check_faceid_fits(faceid_weights_input_size(models), faces, models)  # before loading, where it can
    pipe = load_pipeline(models, device)
    fused = False
    for mode in (m for m in MODES if m in modes):
        if mode != "baseline" and not fused:
            if lora_dir is None:
                raise ValueError(f"mode {mode} needs a LoRA folder")
            attach_lora(pipe, lora_dir)
            # Fused into the UNet weights: the same result as a live adapter, without its cost in every step.
            pipe.fuse_lora(adapter_names=["character"], lora_scale=settings.lora_scale)
            pipe.unload_lora_weights()
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
        yield StoryRenderer(mode, own, settings, character, scorer, device, references, faces, training_images)
