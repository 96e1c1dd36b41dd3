"""Render a story plan in one of three modes, with a CLIP check per frame and retries for the weak ones.

- baseline:   SDXL alone (no LoRA), the same prompts: what the character looks like without our training.
- lora:       SDXL + our LoRA.
- ref_guided: frame 1 from the LoRA alone; every later frame with the LoRA, an IP-Adapter fed frame 1 and a
              ControlNet OpenPose condition drawn from the planner's pose label.

Frames of a story go through the pipeline as one batch, each with its own seeded generator, so a frame
is the same whether rendered alone or in a batch. Retries are batched too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from PIL import Image

from storyboard.log import logger
from storyboard.models.clip import ClipScorer
from storyboard.models.loading import Device, attach_ip_adapter, attach_lora, load_pipeline, native_resolution
from storyboard.settings import Character, Generate, ModelSet
from storyboard.story.plan import Frame, StoryPlan
from storyboard.story.poses import get_pose, render_openpose

Mode = Literal["baseline", "lora", "ref_guided"]
MODES: tuple[Mode, ...] = ("baseline", "lora", "ref_guided")
SEED_STRIDE = 1000  # attempt k of frame i uses seed + k * SEED_STRIDE + i


@dataclass
class Attempt:
    seed: int
    clip_text_score: float
    seconds: float


@dataclass
class RenderedFrame:
    index: int  # 1-based
    frame: Frame
    prompt: str
    attempts: list[Attempt] = field(default_factory=list)
    image: Image.Image | None = None
    best: int = 0  # index into attempts of the kept one

    @property
    def score(self) -> float:
        return self.attempts[self.best].clip_text_score


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


class StoryRenderer:
    """Holds the loaded pipeline(s) for one mode; renders any number of plans with them."""

    def __init__(
        self,
        mode: Mode,
        settings: Generate,
        character: Character,
        models: ModelSet,
        device: Device,
        scorer: ClipScorer,
        lora_dir: Path | None,
    ):
        self.mode, self.settings, self.character, self.scorer = mode, settings, character, scorer
        self.device = device
        self.pipe = load_pipeline(models, device, controlnet=mode == "ref_guided")
        if mode != "baseline":
            if lora_dir is None:
                raise ValueError(f"mode {mode} needs a LoRA folder")
            attach_lora(self.pipe, lora_dir)
            self.pipe.set_adapters(["character"], adapter_weights=[settings.lora_scale])
        if mode == "ref_guided":
            attach_ip_adapter(self.pipe, models, settings.ip_adapter_scale)
        self.resolution = settings.resolution or native_resolution(self.pipe)

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
            conditions = [render_openpose(get_pose(p), self.resolution, self.resolution) for p in poses or []]
            if reference is None:
                # Frame 1 is the LoRA alone: ControlNet and IP-Adapter are present in the pipeline but scaled to
                # zero, which removes their contribution exactly.
                self.pipe.set_ip_adapter_scale(0.0)
                kwargs.update(image=conditions, controlnet_conditioning_scale=0.0, ip_adapter_image=conditions[0])
            else:
                self.pipe.set_ip_adapter_scale(s.ip_adapter_scale)
                kwargs.update(
                    image=conditions, controlnet_conditioning_scale=s.controlnet_scale, ip_adapter_image=reference
                )
        return self.pipe(**kwargs).images

    def _render_with_retries(self, frames: list[RenderedFrame], reference: Image.Image | None) -> None:
        """Render `frames` as one batch; redo those below the CLIP threshold, batched, keeping each one's best."""
        s = self.settings
        pending = frames
        for attempt in range(s.max_retries + 1):
            if not pending:
                break
            seeds = [s.seed + attempt * SEED_STRIDE + f.index for f in pending]
            t0 = time.perf_counter()
            images = self._run([f.prompt for f in pending], seeds, [f.frame.pose for f in pending], reference)
            scores = self.scorer.text_scores(images, [f.frame.scene for f in pending])
            seconds = (time.perf_counter() - t0) / len(pending)
            for f, image, seed, score in zip(pending, images, seeds, scores, strict=True):
                f.attempts.append(Attempt(seed=seed, clip_text_score=round(score, 5), seconds=round(seconds, 3)))
                # Keep the best-scoring attempt; ties keep the earlier one.
                if f.image is None or score > f.score:
                    f.image, f.best = image, len(f.attempts) - 1
            pending = [f for f in pending if f.score < s.clip_threshold]
            if pending and attempt < s.max_retries:
                logger.info(
                    "%d frame(s) below CLIP %.2f; retry %d of %d",
                    len(pending),
                    s.clip_threshold,
                    attempt + 1,
                    s.max_retries,
                )

    def render(self, plan: StoryPlan) -> list[RenderedFrame]:
        frames = [
            RenderedFrame(index=i, frame=f, prompt=frame_prompt(f, self.character, self.settings.style))
            for i, f in enumerate(plan.frames, start=1)
        ]
        warn_if_truncated(self.pipe, [f.prompt for f in frames])
        if self.mode == "ref_guided":
            self._render_with_retries(frames[:1], reference=None)
            self._render_with_retries(frames[1:], reference=frames[0].image)
        else:
            self._render_with_retries(frames, reference=None)
        return frames
