"""The thresholds of generate's two frame checks, calibrated on the user's own training pictures.

A fixed cosine fits neither every model nor every character: DINOv2's likeness of one character across poses runs
on another scale than CLIP's, and a text score depends on the captioner's style. The training pictures already say
what "this character" and "matches its text" look like, so `auto` (the default) takes, once per run and with the
very models of the checks:

- likeness: a low percentile of every ordered pair (i, j) of training pictures scored as the check scores a frame
  (StoryRenderer._likeness): the mean of picture i's cosine to picture j (standing for frame 1) and its mean cosine
  to the other training pictures (all but itself: a frame is never one of them);
- text: a low percentile of the training pictures' CLIP scores against their own captions, the trigger token left
  out (CLIP doesn't know it, and the scene texts a frame is checked against never carry it).

The percentiles are numpy's (linear interpolation between order statistics); the values are rounded to 3
decimals, so that another GPU's rounding can't re-render a story (the render hash holds these values, not the
percentiles: a changed percentile that yields the same values renders nothing). Without a training set, with fewer
usable pictures than `generate.calibration.min_images`, or with captions that are one text for every picture
(template captions), a threshold falls back to its fixed fallback value, with a warning. docs/frame-checks.md.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image

from storyboard.models.clip import ClipScorer
from storyboard.settings import Generate

logger = logging.getLogger(__name__)

DECIMALS = 3
Source = Literal["fixed", "calibrated", "fallback"]


@dataclass(frozen=True)
class Threshold:
    """One check's threshold and where it came from."""

    value: float
    source: Source
    percentile: float | None = None  # calibrated: the percentile taken
    scores: int = 0  # calibrated: how many scores it was taken over (pictures for text, ordered pairs for likeness)
    reason: str | None = None  # fallback: why the training set could not say


@dataclass(frozen=True)
class Thresholds:
    """Both checks' thresholds, as the renderer applies them."""

    clip: Threshold
    likeness: Threshold
    pictures: int = 0  # training pictures seen

    def values(self) -> dict[str, float]:
        """What a story's render hash holds: the values alone, however they were reached."""
        return {"clip_threshold": self.clip.value, "likeness_threshold": self.likeness.value}

    def record(self) -> dict:
        """For a story's metadata.json (evaluate reads it into metrics/eval.json)."""
        return {
            "clip_threshold": asdict(self.clip),
            "likeness_threshold": asdict(self.likeness),
            "training_pictures": self.pictures,
        }

    @classmethod
    def fixed(cls, settings: Generate) -> Thresholds:
        """The thresholds without a training set: the fixed values, and the fallbacks for `auto`."""
        return calibrate(settings, images=[], captions=[], trigger="", scorer=None, likeness_features=None)


def pairwise_likeness(features: torch.Tensor) -> torch.Tensor:
    """The likeness check's score of every ordered pair (i, j), i != j, of L2-normalised features (see the module
    docstring): (cos(i, j) + mean over k != i of cos(i, k)) / 2, flattened."""
    n = len(features)
    sims = (features @ features.T).double().cpu()
    others = ~torch.eye(n, dtype=torch.bool)
    to_references = (sims * others).sum(dim=1) / (n - 1)
    return ((sims + to_references[:, None]) / 2)[others]


def caption_text(caption: str, trigger: str) -> str:
    """A training caption as the text check would read it: without the trigger token the caption stage put first."""
    if not trigger:
        return caption.strip()
    return re.sub(rf"^\W*{re.escape(trigger)}(?!\w)[\W_]*", "", caption.strip(), flags=re.IGNORECASE).strip()


def _percentile(scores: Sequence[float] | torch.Tensor, q: float) -> float:
    return round(float(np.percentile(np.asarray(scores, dtype=np.float64), q)), DECIMALS)


def _clip_threshold(
    settings: Generate, images: Sequence[Image.Image], captions: Sequence[str | None], trigger: str, scorer
) -> Threshold:
    c = settings.calibration
    if settings.clip_threshold != "auto":
        return Threshold(float(settings.clip_threshold), "fixed")
    pairs = [(image, caption_text(text, trigger)) for image, text in zip(images, captions, strict=True) if text]
    pairs = [(image, text) for image, text in pairs if text]
    if not images:
        reason = "no training set (a run without a dataset)"
    elif len(pairs) < c.min_images:
        reason = f"{len(pairs)} captioned pictures, fewer than generate.calibration.min_images ({c.min_images})"
    elif len({text for _, text in pairs}) == 1:
        reason = "the captions are one text for every picture (template captions), which describes none of them"
    else:
        scores = scorer.text_scores([image for image, _ in pairs], [text for _, text in pairs])
        return Threshold(_percentile(scores, c.clip_percentile), "calibrated", c.clip_percentile, len(scores))
    return Threshold(c.clip_fallback, "fallback", reason=reason)


def _likeness_threshold(settings: Generate, features: torch.Tensor | None) -> Threshold:
    c = settings.calibration
    if settings.likeness_threshold != "auto":
        return Threshold(float(settings.likeness_threshold), "fixed")
    count = 0 if features is None else len(features)
    if count == 0:
        reason = "no training set (a run without a dataset)"
    elif count < c.min_images:
        reason = f"{count} training pictures, fewer than generate.calibration.min_images ({c.min_images})"
    else:
        scores = pairwise_likeness(features)
        return Threshold(_percentile(scores, c.likeness_percentile), "calibrated", c.likeness_percentile, len(scores))
    return Threshold(c.likeness_fallback, "fallback", reason=reason)


def calibrate(
    settings: Generate,
    *,
    images: Sequence[Image.Image],
    captions: Sequence[str | None],
    trigger: str,
    scorer: ClipScorer | None,
    likeness_features: torch.Tensor | None,
) -> Thresholds:
    """The thresholds of this run's frame checks; each fallback is logged as a warning.

    Args:
        settings: the generate section (thresholds, `calibration`).
        images: the training pictures (none: a run without a dataset).
        captions: their captions, in the same order (None: no caption).
        trigger: the LoRA trigger token, left out of the captions.
        scorer: the CLIP scorer of the text check (used only when the text threshold is calibrated).
        likeness_features: the likeness model's features of `images`, the very ones the check compares frames with.
    """
    thresholds = Thresholds(
        _clip_threshold(settings, images, captions, trigger, scorer),
        _likeness_threshold(settings, likeness_features),
        pictures=len(images),
    )
    for key, t in (("clip_threshold", thresholds.clip), ("likeness_threshold", thresholds.likeness)):
        if t.source == "fallback":
            fallback = key.replace("_threshold", "_fallback")
            logger.warning("generate.%s auto: %s; using generate.calibration.%s (%s)", key, t.reason, fallback, t.value)
        elif t.source == "calibrated":
            logger.info(
                "generate.%s auto: %.3f, percentile %g of %d scores of the training pictures",
                key,
                t.value,
                t.percentile,
                t.scores,
            )
    return thresholds


def needs_training_set(settings: Generate) -> bool:
    """Whether some threshold is `auto`, so the training pictures must be scored before any story is judged."""
    return "auto" in (settings.clip_threshold, settings.likeness_threshold)
