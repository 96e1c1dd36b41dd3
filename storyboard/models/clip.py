"""CLIP scoring: one model, one scale (cosine similarity in [-1, 1]), used by generate and evaluate alike."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from storyboard.models.checks import check_processor
from storyboard.models.loading import SDXL, Device, load, load_model

CLIP_LAYOUT = (
    "config.json and model.safetensors (a transformers CLIPModel) with its processor's files "
    "(tokenizer.json or vocab.json and merges.txt; processor_config.json or preprocessor_config.json)"
)


class ClipScorer:
    """Text-image and image-image cosine similarities from a `CLIPModel` (real or tiny)."""

    def __init__(self, source: str, device: Device):
        from transformers import CLIPModel, CLIPProcessor

        self.source = source
        self.device = device.device
        # CLIP runs in fp32: it is small, and scores must not move with the generation dtype.
        named = dict(setting=f"{SDXL}.clip", layout=CLIP_LAYOUT)
        self.model = load_model("CLIP scoring model", source, CLIPModel, **named).to(self.device).eval()
        vocab = self.model.config.text_config.vocab_size

        def fits(processor) -> None:
            check_processor(processor, vocab, source=source, reader="config.json's text model")

        self.processor = load("CLIP processor", source, CLIPProcessor.from_pretrained, check=fits, **named)

    @classmethod
    def from_model(cls, model, processor, device: Device, source: str = "in-memory") -> ClipScorer:
        """Wrap a model built elsewhere (the GPU benchmarks build full-size CLIP from its config)."""
        scorer = cls.__new__(cls)
        scorer.source, scorer.device = source, device.device
        scorer.model, scorer.processor = model.to(device.device).eval(), processor
        return scorer

    @torch.no_grad()
    def image_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)
        feats = self.model.get_image_features(pixel_values=pixels)
        feats = getattr(feats, "pooler_output", feats)
        return torch.nn.functional.normalize(feats.float(), dim=-1)

    @torch.no_grad()
    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        # CLIP sees 77 tokens; longer scene texts are truncated here, the same way for every frame.
        tokens = self.processor.tokenizer(
            list(texts), padding=True, truncation=True, max_length=77, return_tensors="pt"
        ).to(self.device)
        feats = self.model.get_text_features(**tokens)
        feats = getattr(feats, "pooler_output", feats)
        return torch.nn.functional.normalize(feats.float(), dim=-1)

    def text_scores(
        self, images: Sequence[Image.Image], texts: Sequence[str], features: torch.Tensor | None = None
    ) -> list[float]:
        """Cosine similarity of each image with its own text; `features`: the images' features, when the caller
        has them already (preparing the images is most of the cost at 1024 px)."""
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
        if not images:
            return []
        features = self.image_features(images) if features is None else features
        sims = (features * self.text_features(texts)).sum(-1)
        return [float(s) for s in sims.cpu()]

    def image_scores(self, images: Sequence[Image.Image], reference: Image.Image) -> list[float]:
        """Cosine similarity of each image with one reference image."""
        if not images:
            return []
        feats = self.image_features([reference, *images])
        return [float(s) for s in (feats[1:] @ feats[0]).cpu()]
