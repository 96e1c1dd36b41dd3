"""What rendering a frame yields: its prompt, every attempt's seed and scores, the image kept."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image

from storyboard.models.prompts import literal
from storyboard.settings import Character
from storyboard.story.plan import Frame


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
    features: list[torch.Tensor | None] = field(default_factory=list, repr=False)  # likeness features per attempt
    first_image: Image.Image | None = field(default=None, repr=False)  # the first attempt, when another was kept

    @property
    def score(self) -> float:
        return self.attempts[self.best].clip_text_score

    @property
    def likeness(self) -> float | None:
        return self.attempts[self.best].likeness


def frame_prompt(frame: Frame, character: Character, style: str) -> str:
    """Trigger token and character description in every prompt, so every frame asks for the same person.

    The prompt reaches the text encoders whole, however long (storyboard/models/prompts.py). The plan's scene and
    setting are read literally; the character description and style may use compel's weighting syntax.
    """
    parts = [
        character.trigger,
        f"{character.name}, {character.description}",
        literal(frame.scene),
        f"{frame.shot} shot",
        literal(frame.setting),
    ]
    if style:
        parts.append(style)
    return ", ".join(p.strip().rstrip(".") for p in parts if p.strip())
