"""Locate the character in a frame with Grounding DINO, the open-set detector ViStoryBench's CIDS crops with.

ViStoryBench (vistorybench/bench/content/cids_evaluator.py, `dino_detect` and `crop_img`) runs the original
GroundingDINO SwinT-OGC with the text prompt "character", a box threshold of 0.25 and a text threshold of 0.25, and
keeps the top-scoring boxes. Here the same model comes through transformers (`GroundingDinoForObjectDetection`;
`IDEA-Research/grounding-dino-tiny` is the SwinT-OGC checkpoint converted), with the same thresholds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from storyboard.models.checks import check_processor
from storyboard.models.loading import SDXL, Device, load, load_model

# ViStoryBench's defaults (CIDSEvaluator.__init__: BOX_TRESHOLD, TEXT_TRESHOLD)
BOX_THRESHOLD = 0.25
TEXT_THRESHOLD = 0.25
DETECTOR_LAYOUT = (
    "config.json and model.safetensors (a transformers GroundingDinoForObjectDetection) with its processor's files "
    "(tokenizer.json or vocab.txt; processor_config.json or preprocessor_config.json)"
)
BATCH = 8  # images per detector call: a story's frames, or the references, in a few calls


@dataclass(frozen=True)
class Box:
    """A detection: (x0, y0, x1, y1) in pixels, clamped to the image, x1/y1 exclusive like PIL crop."""

    bbox: tuple[int, int, int, int]
    score: float

    def crop(self, image: Image.Image) -> Image.Image:
        return image.crop(self.bbox)


def detector_prompt(template: str, name: str, description: str) -> str:
    """The text query: lower case and ending with a full stop, the form Grounding DINO was trained on."""
    text = template.format(name=name, description=description).strip().lower()
    return text if text.endswith(".") else text + "."


class CharacterDetector:
    """Boxes matching a text prompt, best first, from a `GroundingDinoForObjectDetection` (real or tiny)."""

    def __init__(self, source: str, device: Device):
        from transformers import GroundingDinoForObjectDetection, GroundingDinoProcessor

        self.source = source
        self.device = device.device
        # fp32 like the CLIP scorer: a metric must not move with the generation dtype.
        named = dict(setting=f"{SDXL}.detector", layout=DETECTOR_LAYOUT)
        self.model = load_model("Grounding DINO detector", source, GroundingDinoForObjectDetection, **named)
        self.model = self.model.to(self.device).eval()
        vocab = self.model.config.text_config.vocab_size

        def fits(processor) -> None:
            check_processor(processor, vocab, source=source, reader="config.json's text model")

        self.processor = load(
            "Grounding DINO processor", source, GroundingDinoProcessor.from_pretrained, check=fits, **named
        )

    @torch.no_grad()
    def detect_many(self, images: Sequence[Image.Image], prompt: str) -> list[list[Box]]:
        """Each image's boxes, best first. Images of one size go through the model together, `BATCH` at a time;
        images of different sizes never share a batch, whose padding would move their boxes."""
        found: list[list[Box]] = [[] for _ in images]
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(image.size, []).append(i)
        for indices in by_size.values():
            for start in range(0, len(indices), BATCH):
                chunk = indices[start : start + BATCH]
                for i, boxes in zip(chunk, self._detect_batch([images[i] for i in chunk], prompt), strict=True):
                    found[i] = boxes
        return found

    def _detect_batch(self, images: list[Image.Image], prompt: str) -> list[list[Box]]:
        inputs = self.processor(images=images, text=[prompt] * len(images), return_tensors="pt").to(self.device)
        outputs = self.model(**inputs)
        results = self.processor.post_process_grounded_object_detection(
            outputs,
            inputs["input_ids"],
            threshold=BOX_THRESHOLD,
            text_threshold=TEXT_THRESHOLD,
            target_sizes=[(image.height, image.width) for image in images],
        )
        out = []
        for image, result in zip(images, results, strict=True):
            boxes = []
            for score, xyxy in zip(result["scores"].tolist(), result["boxes"].tolist(), strict=True):
                bbox = _clamp(xyxy, image.width, image.height)
                if bbox is not None:
                    boxes.append(Box(bbox, round(float(score), 5)))
            out.append(sorted(boxes, key=lambda b: b.score, reverse=True))
        return out

    def best(self, images: Sequence[Image.Image], prompt: str) -> list[Box | None]:
        """The top box of each image (ViStoryBench keeps top-k, k = characters in the shot: one here), or None."""
        return [next(iter(boxes), None) for boxes in self.detect_many(images, prompt)]


def _clamp(xyxy: Sequence[float], width: int, height: int) -> tuple[int, int, int, int] | None:
    # ViStoryBench truncates the scaled box to int and clamps it to the image (crop_img); empty boxes are dropped.
    x0, y0, x1, y1 = (int(v) for v in xyxy)
    x0, x1 = min(max(x0, 0), width), min(max(x1, 0), width)
    y0, y1 = min(max(y0, 0), height), min(max(y1, 0), height)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None
