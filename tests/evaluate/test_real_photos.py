"""The face figures on real photographs, through the whole evaluate path: locate, crop, embed, aggregate.

Photos that ship in installed packages: scikit-image's astronaut (Eileen Collins), insightface's aligned Tom Hanks
and its group photo t1.jpg (six people). A story of one person, mirrored, rescaled, cropped and relit, must score
clearly above a story of different people, by the same code that scores generated frames.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image, ImageEnhance, ImageOps
from test_scores import write_story

from storyboard.evaluate.scores import Locator, score_story, summarise
from storyboard.models.clip import ClipScorer
from storyboard.models.detector import CharacterDetector
from storyboard.models.faces import DlibFaceBackend

IMAGES = Path(next(iter(importlib.util.find_spec("insightface").submodule_search_locations))) / "data" / "images"


def astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


def same_person(photo: Image.Image) -> list[Image.Image]:
    w, h = photo.size
    return [
        photo,
        ImageOps.mirror(photo),
        photo.crop((w // 10, 0, w, h * 9 // 10)).resize((w * 3 // 4, h * 3 // 4)),
        ImageEnhance.Brightness(photo).enhance(1.3),
    ]


def group_members(faces: DlibFaceBackend) -> list[Image.Image]:
    """Each person of t1.jpg, cropped around their face with a margin, upscaled so HOG finds the face again."""
    group = Image.open(IMAGES / "t1.jpg").convert("RGB")
    people = []
    for face in faces.detect(group):
        x0, y0, x1, y1 = face.bbox
        m = x1 - x0
        box = (max(0, x0 - m), max(0, y0 - m), min(group.width, x1 + m), min(group.height, y1 + m))
        people.append(group.crop(box).resize((300, 300 * (box[3] - box[1]) // (box[2] - box[0]))))
    return people


@pytest.fixture(scope="module")
def locator(tiny_models, cpu):
    faces = DlibFaceBackend()
    return Locator(CharacterDetector(tiny_models.detector, cpu), ClipScorer(tiny_models.clip, cpu), faces, "person.")


def _summary(folder: Path, images: list[Image.Image], locator: Locator) -> dict:
    rows, story = score_story(write_story(folder, images), "lora", locator)
    return summarise(pd.DataFrame([r.__dict__ for r in rows]), {"s1": story})


def test_same_person_scores_clearly_above_different_people(tmp_path, locator):
    people = group_members(locator.faces)
    assert len(people) >= 4, "insightface's t1.jpg should give several people"
    different = [astronaut(), *people[:3]]
    face = Image.open(IMAGES / "Tom_Hanks_54745.png").convert("RGB").resize((224, 224))

    same_a = _summary(tmp_path / "a", same_person(astronaut()), locator)
    same_b = _summary(tmp_path / "b", same_person(face), locator)
    other = _summary(tmp_path / "c", different, locator)
    for summary in (same_a, same_b, other):
        assert summary["face_detection_rate"] == 1.0  # every photo's face is found (in the box or the frame)
        assert summary["face_pairs_scored"] == summary["face_pairs_possible"] == 3
    # dlib's descriptors of all faces lie in a narrow cone (0.81-0.91 between people): the margin is in that scale
    margin = 0.05
    for same in (same_a, same_b):
        assert same["face_pairwise"] > other["face_pairwise"] + margin
        assert same["face_similarity_to_first"] > other["face_similarity_to_first"] + margin
    assert other["face_pairwise"] < 0.93, other
