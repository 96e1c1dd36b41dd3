"""The likeness model generate's retry check selects frames with: DINOv2 image features, cosine similarity.

Deliberately not the CLIP model that evaluate scores characters with (ViStoryBench's CIDS uses CLIP ViT-L/14):
a figure computed with the model that picked the kept attempt would partly measure the selection, not the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from storyboard.models.loading import SDXL, Device, load, load_model

LIKENESS_LAYOUT = "config.json and model.safetensors (a transformers Dinov2Model) and preprocessor_config.json"


class LikenessScorer:
    """L2-normalised image embeddings (the CLS token) of a `Dinov2Model` (real or tiny)."""

    def __init__(self, source: str, device: Device):
        from transformers import AutoImageProcessor, Dinov2Model

        self.source = source
        self.device = device.device
        # fp32: small, and the check's threshold must not move with the generation dtype.
        named = dict(setting=f"{SDXL}.likeness", layout=LIKENESS_LAYOUT)
        self.model = load_model("likeness model (DINOv2)", source, Dinov2Model, **named).to(self.device).eval()
        self.processor = load("likeness image processor", source, AutoImageProcessor.from_pretrained, **named)

    @torch.no_grad()
    def image_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)
        feats = self.model(pixel_values=pixels).pooler_output
        return torch.nn.functional.normalize(feats.float(), dim=-1)
