"""Render a story plan in one of four modes, with a two-part CLIP check per frame and retries for the weak ones.

- baseline:   SDXL alone (no LoRA), the same prompts: what the character looks like without our training.
- lora:       SDXL + our LoRA (fused into the UNet: no per-step LoRA cost).
- ref_guided: frame 1 from the LoRA alone; every later frame with the LoRA, an IP-Adapter fed frame 1 (its face
              crop when a face is found) and a ControlNet OpenPose condition drawn from the planner's pose label.
              With generate.reference: faceid, an IP-Adapter FaceID fed the face-recognition embedding of frame 1's
              face instead (the training images' mean face when frame 1 has none). ip_reference.py takes
              that input from frame 1.
- multiref:   no LoRA: FLUX.2 klein fed reference images of the character (multiref.py, a subclass that swaps the
              pipeline call; the checks, retries and batching here are the same).

The check: each attempt gets a text score (CLIP cosine of frame and scene text) and a likeness score (DINOv2 image
cosine to frame 1, averaged with the mean cosine to the training images when they are given). DINOv2, not CLIP:
evaluate scores characters with CLIP image features (ViStoryBench's CIDS), and a figure must not come from the
model that picked the frame. Each frame's first attempt is kept beside it, so evaluate can measure what the
retries changed. A frame below either threshold (calibrated on the training pictures unless fixed: calibration.py)
is redone with a new seed, up to `max_retries` times; the attempt kept is the one whose worse margin,
min(text - text threshold, likeness - likeness threshold), is largest: the one closest to passing both.

Frames of a story go through the pipeline in batches of generate.frames_per_batch (ref_guided: frame 1 alone, then
the later ones), each frame with its own seeded generator; retries are batched too. The story's prompts are
encoded once, whole (compel, storyboard/models/prompts.py), and every attempt reuses their rows. Under `accelerate
launch` the batches of a story spread over the processes (sharing.py): the frames are the same bytes as one
process renders. ref_guided's pose condition is the planned pose framed for the planned shot (close-up, medium,
wide).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import replace

import torch
from PIL import Image

from storyboard.generate.calibration import Thresholds
from storyboard.generate.frames import Attempt, RenderedFrame, frame_prompt
from storyboard.generate.ip_reference import IdentitySource, IpReference, IpReferences
from storyboard.generate.sharing import SOLO, Group, batch_size, frame_batches
from storyboard.models.clip import ClipScorer
from storyboard.models.compiling import compile_in_place
from storyboard.models.faces import FaceBackend
from storyboard.models.kernels import apply_layouts, attention
from storyboard.models.likeness import LikenessScorer
from storyboard.models.loading import Device, faceid_input_size, native_resolution, over_same_modules
from storyboard.models.prompts import PromptEmbeds, encode_prompts
from storyboard.models.quantizing import quantize_in_place
from storyboard.settings import Character, Generate, Mode
from storyboard.story.plan import StoryPlan
from storyboard.story.poses import Shot, frame_pose, get_pose, render_openpose

logger = logging.getLogger(__name__)

SEED_STRIDE = 1000  # attempt k of frame i uses seed + k * SEED_STRIDE + i


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
        *,
        likeness_features: torch.Tensor | None = None,
        faces: FaceBackend | None = None,
        training_images: Sequence[Image.Image] = (),
        likeness: LikenessScorer | None = None,
        thresholds: Thresholds | None = None,
    ):
        """Wrap a ready pipeline (`load_renderers` is the usual way to get one). `scorer`: CLIP, for the text
        check; `likeness`: DINOv2, for the likeness check (None: no likeness check, as in the speed benchmarks);
        `likeness_features`: its features of the training images, which the likeness check compares frames with
        besides frame 1; `training_images`: the fallback identity of generate.reference: faceid; `thresholds`: the
        checks' thresholds as calibrated for this run (calibration.py; None: the fixed values and fallbacks)."""
        self.mode, self.pipe, self.settings, self.character, self.scorer = mode, pipe, settings, character, scorer
        self.device, self.likeness, self.likeness_features = device, likeness, likeness_features
        self.thresholds = thresholds or Thresholds.fixed(settings)
        self.ip_references = IpReferences(settings.reference, faces, training_images)
        self.faceid = mode == "ref_guided" and settings.reference == "faceid"
        # ref_guided's frame 1 is the LoRA alone: a plain SDXL pipeline over the same modules renders it without
        # running the ControlNet, which a ControlNet pipeline runs even at scale 0.
        self.first_pipe = None
        if mode == "ref_guided":
            from diffusers import StableDiffusionXLPipeline

            self.first_pipe = over_same_modules(StableDiffusionXLPipeline, pipe)
        self._apply_knobs()
        self.resolution = settings.resolution or native_resolution(self.pipe)
        self._encoded: tuple[list[str], PromptEmbeds] | None = None  # the last story's prompts, encoded once

    @property
    def identity_from(self) -> IdentitySource | None:
        """Where the last render's FaceID identity came from."""
        return self.ip_references.identity_from

    def _apply_knobs(self) -> None:
        s, pipe = self.settings, self.pipe
        # Quantized first (while the weights are on the device, before any offloading), compiled last (so the
        # quantizing fuses into the compiled kernels); both in place: the pipeline for ref_guided's frame 1
        # shares these modules and gets the same ones.
        denoisers = [pipe.unet] + ([pipe.controlnet] if getattr(pipe, "controlnet", None) is not None else [])
        # Fused projections before quantizing, which then quantizes the fused layers.
        apply_layouts(pipe, channels_last=s.channels_last, fuse_qkv=s.fuse_qkv)
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

    @property
    def conditions_on_first(self) -> bool:
        """Whether later frames are conditioned on frame 1 (so it is settled first, alone)."""
        return self.mode == "ref_guided"

    def _first_reference(self, first: Image.Image, story_id: str) -> IpReference:
        """What the later frames are conditioned on, taken from frame 1."""
        return self.ip_references.of(first, story_id)

    def sampling(self) -> dict:
        """What the frames are sampled with (a story's metadata): generate.sampler's steps and guidance replace the
        generate section's when it is not standard."""
        s = self.settings
        return {
            "sampler": s.sampler,
            "steps": s.steps,
            "guidance_scale": s.guidance_scale,
            "scheduler": type(self.pipe.scheduler).__name__,
        }

    def encode(self, prompts: list[str]) -> PromptEmbeds:
        """Every word of `prompts` and of the negative prompt through both text encoders (compel), in one call."""
        return encode_prompts(self.pipe, prompts, self.settings.negative_prompt)

    def _embeds_of(self, frames: list[RenderedFrame]) -> PromptEmbeds:
        """The frames' rows of the story's encoded prompts; prompts not encoded yet are encoded now, together."""
        prompts = [f.prompt for f in frames]
        if self._encoded is None or not set(prompts) <= set(self._encoded[0]):
            self._encoded = (prompts, self.encode(prompts))
        known, embeds = self._encoded
        return embeds.rows([known.index(p) for p in prompts])

    def _run(
        self,
        embeds: PromptEmbeds,
        seeds: list[int],
        poses: list[tuple[str, Shot]] | None,
        ip_reference: IpReference | None,
    ) -> list[Image.Image]:
        """One pipeline call: a batch of encoded prompts, one seed each; `poses`: (pose, shot) per frame."""
        s = self.settings
        kwargs = dict(
            **embeds.pipeline_kwargs(),
            num_inference_steps=s.steps,
            guidance_scale=s.guidance_scale,
            height=self.resolution,
            width=self.resolution,
            generator=[torch.Generator(device="cpu").manual_seed(seed) for seed in seeds],
            output_type="pt",
        )
        if self.mode == "ref_guided":
            if ip_reference is None:
                # Frame 1 is the LoRA alone: no ControlNet, and the IP-Adapter scaled to zero, which its attention
                # skips (the UNet still wants its input, so the encoder sees a blank image once; FaceID: zeros).
                self.pipe.set_ip_adapter_scale(0.0)
                with self._faceid_lora_off():
                    return _pil_images(self.first_pipe(**kwargs, **self._ip_adapter_input(None)).images)
            self.pipe.set_ip_adapter_scale(s.ip_adapter_scale)
            conditions = [
                render_openpose(frame_pose(get_pose(pose), shot), self.resolution, self.resolution)
                for pose, shot in poses or []
            ]
            kwargs.update(
                image=conditions,
                controlnet_conditioning_scale=s.controlnet_scale,
                **self._ip_adapter_input(ip_reference),
            )
        return _pil_images(self.pipe(**kwargs).images)

    def _ip_adapter_input(self, ip_reference: IpReference | None) -> dict:
        """The pipeline argument that feeds the IP-Adapter; None: an input that its scale of 0 ignores.

        FaceID takes embeddings, not images, in the layout of diffusers' SDXL pipelines: one tensor per adapter,
        (negative, positive) stacked on dim 0 when classifier-free guidance runs, each (1 image, embedding size);
        the pipeline repeats it for every prompt of the batch. The negative is zeros, as in h94's own code.
        """
        if not self.faceid:
            blank = Image.new("RGB", (self.resolution, self.resolution))
            return {"ip_adapter_image": blank if ip_reference is None else ip_reference}
        unet = self.pipe.unet
        identity = torch.zeros(faceid_input_size(self.pipe)) if ip_reference is None else ip_reference
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

    def _attempt(self, frames: list[RenderedFrame], attempt: int, ip_reference: IpReference | None) -> None:
        """Render one attempt of `frames` as a batch and record their text scores and likeness features."""
        seeds = [self.settings.seed + attempt * SEED_STRIDE + f.index for f in frames]
        t0 = time.perf_counter()
        poses = [(f.frame.pose, f.frame.shot) for f in frames]
        with attention(self.settings.attention):
            images = self._run(self._embeds_of(frames), seeds, poses, ip_reference)
        seconds = (time.perf_counter() - t0) / len(frames)
        texts = self.scorer.text_scores(images, [f.frame.scene for f in frames])
        features = self.likeness.image_features(images) if self.likeness is not None else [None] * len(images)
        for f, image, seed, text, feat in zip(frames, images, seeds, texts, features, strict=True):
            f.attempts.append(
                Attempt(seed=seed, clip_text_score=round(text, 5), likeness=None, seconds=round(seconds, 3))
            )
            f.images.append(image)
            f.features.append(feat)

    def _likeness(self, feature: torch.Tensor | None, anchor: torch.Tensor | None) -> float | None:
        if feature is None:
            return None
        parts = []
        if anchor is not None:
            parts.append(float(feature @ anchor))
        if self.likeness_features is not None:
            parts.append(float((self.likeness_features @ feature).mean()))
        return round(sum(parts) / len(parts), 5) if parts else None

    def _margin(self, a: Attempt) -> float:
        t = self.thresholds
        text = a.clip_text_score - t.clip.value
        return text if a.likeness is None else min(text, a.likeness - t.likeness.value)

    def _settle(
        self, frames: list[RenderedFrame], anchor: torch.Tensor | None, ip_reference: IpReference | None
    ) -> None:
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
            self._attempt(pending, attempt, ip_reference)

    def render(self, plan: StoryPlan, first: RenderedFrame | None = None, group: Group = SOLO) -> list[RenderedFrame]:
        """Render a plan. ref_guided may be given `first`: frame 1 as the lora mode settled it, which is exactly
        what ref_guided would render for it (the LoRA alone, same prompt and seeds), so it is not rendered again.

        Frames render in batches of `frames_per_batch` (ref_guided: frame 1 alone, then the later ones), each batch
        on one process of `group`; every process returns the whole story, the same whatever the group's size.
        """
        frames = [
            RenderedFrame(index=i, frame=f, prompt=frame_prompt(f, self.character, self.settings.style))
            for i, f in enumerate(plan.frames, start=1)
        ]
        self._encoded = None
        self._embeds_of(frames)  # the whole story in one encoding; attempts and retries take their rows
        per_batch = self.settings.frames_per_batch
        if self.conditions_on_first:
            # Later frames are conditioned on frame 1, so it is settled first, alone, by the main process.
            if first is not None and first.prompt == frames[0].prompt:
                frames[0], anchor = first, self._anchor(first)  # every process has it from its lora share
            else:
                if group.is_main:
                    self._attempt(frames[:1], 0, None)
                    self._settle(frames[:1], None, None)
                frames[0], anchor = self._shared_first(frames[0], group)
            ip_reference = self._first_reference(frames[0].image, plan.story_id)
            later = frames[1:]
            mine = group.share(frame_batches(later, batch_size(len(later), per_batch, group.size)))
            for batch in mine:
                self._attempt(batch, 0, ip_reference)
        else:
            # No frame conditions another: frame 1 renders in the first batch (the main process's), and only the
            # likeness check waits for it (the later frames are judged against it).
            ip_reference = None
            mine = group.share(frame_batches(frames, batch_size(len(frames), per_batch, group.size)))
            for batch in mine:
                self._attempt(batch, 0, None)
            if group.is_main:
                self._settle(frames[:1], None, None)
            frames[0], anchor = self._shared_first(frames[0], group)
        for batch in mine:
            self._settle([f for f in batch if f.index != 1], anchor, ip_reference)
        done = {f.index: _kept(f) for batch in mine for f in batch}
        for share in group.all_gather(done):
            done.update(share)
        return [frames[0] if f.index == 1 else done[f.index] for f in frames]

    def _shared_first(self, first: RenderedFrame, group: Group) -> tuple[RenderedFrame, torch.Tensor | None]:
        """Frame 1 as the main process settled it, and its likeness features (the anchor), on every process: sent,
        not rendered again, so each process judges against the very same frame."""
        if group.is_main:
            anchor = self._anchor(first)
            sent = (_kept(first), None if anchor is None else anchor.cpu())
        else:
            sent = None
        kept, anchor = group.broadcast(sent)
        return kept, None if anchor is None else anchor.to(self.device.device)

    def _anchor(self, first: RenderedFrame) -> torch.Tensor | None:
        """Frame 1's likeness features: what later frames must resemble."""
        if self.likeness is None:
            return None
        return first.features[first.best] if first.features else self.likeness.image_features([first.image])[0]


def _pil_images(images: torch.Tensor) -> list[Image.Image]:
    """The pipeline's decoded frames (in [0, 1], on the device) as PIL images, the same bytes as its own "pil"
    output: that one scales and rounds on the host in float32, which costs the host more than the GPU's decode."""
    pixels = (images.float() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(p) for p in pixels]


def _kept(frame: RenderedFrame) -> RenderedFrame:
    """The frame as it leaves the renderer: the kept image, the first attempt when another was kept, and every
    attempt's record; not every attempt's image (a frame 1 reused from lora has been through here already)."""
    first_image = (frame.images[0] if frame.best != 0 else None) if frame.images else frame.first_image
    return replace(frame, images=[], features=[], first_image=first_image)
