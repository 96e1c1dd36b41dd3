"""The modes, and what rendering a frame yields: its prompt, every attempt's seed and scores, the image kept."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from PIL import Image

from storyboard.log import logger
from storyboard.settings import Character
from storyboard.story.plan import Frame

Mode = Literal["baseline", "lora", "ref_guided"]
MODES: tuple[Mode, ...] = ("baseline", "lora", "ref_guided")


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
