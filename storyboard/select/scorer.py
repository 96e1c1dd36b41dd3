"""How a saved step is scored: evaluate's identity figure and CLIP text alignment of its validation samples.

Identity is evaluate's character-to-training-set figure (CLIP features of the character crop, around the largest
face, against the training images' crops), so a step is chosen by the figure the evaluate stage reports; text
alignment is the CLIP cosine of each sample and its prompt.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Protocol

from PIL import Image

from storyboard.settings import ModelSet, Settings


class StepScorer(Protocol):
    key: str  # names the scoring (models, thresholds): scores kept under another key are not reused

    def __call__(self, step: int, images: list[Image.Image], prompts: list[str]) -> tuple[float, float]:
        """(identity, text alignment) of one step's validation samples."""
        ...


class ClipStepScorer:
    """The real scorer: evaluate's own locator (character box, CLIP ViT-L/14 crop features, its face backend) against
    the training images' crops, and CLIP text alignment; loaded on first use."""

    def __init__(self, settings: Settings, models: ModelSet, device, dataset_dir: Path):
        self.settings, self.models, self.device, self.dataset_dir = settings, models, device, dataset_dir
        from storyboard.evaluate.independence import evaluate_face_backend

        e, c = settings.evaluate, settings.character
        what = [models.clip, models.detector, evaluate_face_backend(settings), models.face_model]
        what += [models.face_model_root, e.face_min_score, e.detector_prompt, c.name, c.description]
        self.key = hashlib.sha256(json.dumps(what).encode()).hexdigest()[:12]

    @classmethod
    def from_parts(cls, locator, references) -> ClipStepScorer:
        """Wrap a locator built elsewhere (the GPU benchmark builds full-size CLIP from its config)."""
        scorer = cls.__new__(cls)
        scorer.key = f"{locator.scorer.source}-{locator.faces.name}"
        scorer.__dict__["_parts"] = (locator, references)
        return scorer

    @cached_property
    def _parts(self):
        from storyboard.dataset import load_training_images
        from storyboard.evaluate.scores import Locator

        locator = Locator.of_evaluate(self.settings, self.models, self.device)
        references = locator.references(load_training_images(self.dataset_dir), faces=False)
        if references is None:
            raise ValueError(f"{self.dataset_dir} has no training images to score identity against")
        return locator, references

    def __call__(self, step: int, images: list[Image.Image], prompts: list[str]) -> tuple[float, float]:
        locator, references = self._parts
        clip = locator.scorer
        crops = clip.image_features(locator.crops(images)[1])
        identity = float((crops @ references.clip.T).mean())
        texts = clip.text_scores(images, prompts, clip.image_features(images))
        return identity, sum(texts) / len(texts)
