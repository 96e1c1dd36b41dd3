"""The character detector and the likeness model: real transformers classes, tiny ones built offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from storyboard.models.detector import CharacterDetector, detector_prompt
from storyboard.models.likeness import LikenessScorer


def test_tiny_grounding_dino_loads_and_boxes_lie_in_the_image(tiny_models, cpu):
    from transformers import GroundingDinoForObjectDetection

    detector = CharacterDetector(tiny_models.detector, cpu)
    assert isinstance(detector.model, GroundingDinoForObjectDetection)
    # its BERT tokenizer spells any prompt out of its own vocab: no [UNK] stub
    tokens = detector.processor.tokenizer.tokenize("aldar kose.")
    assert "[UNK]" not in tokens and tokens[:2] == ["a", "##l"]
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 160, 3), dtype=np.uint8))
    (boxes,) = detector.detect_many([image], "character.")
    scores = [b.score for b in boxes]
    assert scores == sorted(scores, reverse=True) and all(0.25 < s <= 1 for s in scores)
    for b in boxes:
        x0, y0, x1, y1 = b.bbox
        assert 0 <= x0 < x1 <= 160 and 0 <= y0 < y1 <= 96
        assert b.crop(image).size == (x1 - x0, y1 - y0)
    assert detector.best([image], "character.") == [boxes[0] if boxes else None]


def test_detecting_together_finds_what_one_at_a_time_finds(tiny_models, cpu, monkeypatch):
    """Images of one size share a batch (a story's frames, the references); other sizes get their own, so no image
    is padded: the boxes are those of one image per call."""
    import storyboard.models.detector as detector_module

    detector = CharacterDetector(tiny_models.detector, cpu)
    rng = np.random.default_rng(1)
    sizes = [(160, 96), (160, 96), (96, 128), (160, 96), (96, 128)]
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    alone = [detector.detect_many([image], "character.")[0] for image in images]
    calls = []
    batch = detector._detect_batch
    monkeypatch.setattr(
        detector, "_detect_batch", lambda ims, prompt: calls.append([im.size for im in ims]) or batch(ims, prompt)
    )
    monkeypatch.setattr(detector_module, "BATCH", 2)
    together = detector.detect_many(images, "character.")
    assert calls == [[(160, 96)] * 2, [(160, 96)], [(96, 128)] * 2]
    assert any(alone), "the tiny detector found nothing: the comparison would be empty"
    for one, many in zip(alone, together, strict=True):
        assert [b.bbox for b in one] == [b.bbox for b in many]
        assert [b.score for b in one] == pytest.approx([b.score for b in many], abs=1e-4)


def test_detector_prompt_is_grounding_dinos_form():
    assert detector_prompt("character", "Aldar Kose", "a trickster") == "character."
    assert detector_prompt("{name}, {description}", "Aldar Kose", "a Trickster.") == "aldar kose, a trickster."


def test_tiny_likeness_model_is_dinov2(tiny_models, cpu):
    from transformers import Dinov2Model

    likeness = LikenessScorer(tiny_models.likeness, cpu)
    assert isinstance(likeness.model, Dinov2Model)
    images = [Image.new("RGB", (64, 48), c) for c in ("red", "red", "blue")]
    feats = likeness.image_features(images)
    assert torch.allclose(feats.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert float(feats[0] @ feats[1]) > 0.999  # same picture, same features
