from __future__ import annotations

import pytest
from PIL import Image

from storyboard.models.clip import ClipScorer


@pytest.fixture(scope="module")
def scorer(tiny_models, cpu):
    return ClipScorer(tiny_models.clip, cpu)


def test_scores_are_cosines(scorer):
    red, blue = Image.new("RGB", (64, 64), "red"), Image.new("RGB", (64, 64), "blue")
    same = scorer.image_scores([red], red)
    assert same[0] == pytest.approx(1.0, abs=1e-5)
    scores = scorer.text_scores([red, blue], ["a red square", "a blue square"])
    assert len(scores) == 2 and all(-1 <= s <= 1 for s in scores)
    assert scorer.text_scores([], []) == []


def test_long_text_is_truncated_not_rejected(scorer):
    text = "a man riding a horse " * 40
    assert -1 <= scorer.text_scores([Image.new("RGB", (64, 64))], [text])[0] <= 1


def test_mismatched_lengths_fail(scorer):
    with pytest.raises(ValueError, match="2 images but 1 texts"):
        scorer.text_scores([Image.new("RGB", (8, 8))] * 2, ["x"])


def test_text_scores_from_given_features_equal_those_from_the_images(scorer):
    images = [Image.new("RGB", (64, 64), c) for c in ("red", "blue")]
    texts = ["a red square", "a blue square"]
    given = scorer.text_scores(images, texts, scorer.image_features(images))
    assert given == pytest.approx(scorer.text_scores(images, texts), abs=1e-6)
