"""The built-in sample set: files, captions, formats and determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from storyboard.sample_data import draw_sample_set
from storyboard.settings import Character

CHARACTER = Character(name="Nasreddin", trigger="nsrdn_man", description="a man in a striped robe and fur hat")


@pytest.fixture(scope="module")
def sample_set(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("samples") / "set"
    return draw_sample_set(out, CHARACTER, count=12, size=128, seed=7)


def test_writes_images_and_captions(sample_set: list[Path]) -> None:
    out = sample_set[0].parent
    images = sorted(p for p in out.iterdir() if p.suffix in {".png", ".jpg"})
    captions = sorted(out.glob("*.txt"))
    assert images == sorted(sample_set) and len(images) == 12
    assert len(captions) == 12
    assert {p.stem for p in captions} == {p.stem for p in images}
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "no staging folder left behind"


def test_captions_start_with_trigger(sample_set: list[Path]) -> None:
    for image in sample_set:
        caption = image.with_suffix(".txt").read_text(encoding="utf-8").strip()
        assert caption.startswith(f"{CHARACTER.trigger}, {CHARACTER.name}, ")
        assert caption.endswith("flat cartoon illustration")


def test_mixes_png_and_jpeg(sample_set: list[Path]) -> None:
    suffixes = [p.suffix for p in sample_set]
    assert suffixes.count(".jpg") == 4 and suffixes.count(".png") == 8
    assert sample_set[0].name == "sample_01.png" and sample_set[2].name == "sample_03.jpg"
    for path in sample_set:
        with Image.open(path) as im:
            assert im.format == ("JPEG" if path.suffix == ".jpg" else "PNG")
            assert im.size == (128, 128) and im.mode == "RGB"


def test_images_differ_from_each_other(sample_set: list[Path]) -> None:
    arrays = [np.asarray(Image.open(p), dtype=np.int16) for p in sample_set]
    for i in range(len(arrays)):
        for j in range(i + 1, len(arrays)):
            assert np.abs(arrays[i] - arrays[j]).mean() > 5, (sample_set[i].name, sample_set[j].name)


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = draw_sample_set(tmp_path / "a", CHARACTER, count=3, size=64, seed=1)
    b = draw_sample_set(tmp_path / "b", CHARACTER, count=3, size=64, seed=1)
    c = draw_sample_set(tmp_path / "c", CHARACTER, count=3, size=64, seed=2)
    pngs = [i for i, p in enumerate(a) if p.suffix == ".png"]
    assert pngs
    for i in pngs:
        assert a[i].read_bytes() == b[i].read_bytes()
    assert any(a[i].read_bytes() != c[i].read_bytes() for i in pngs)


def test_replaces_an_old_set(tmp_path: Path) -> None:
    out = tmp_path / "set"
    draw_sample_set(out, CHARACTER, count=4, size=64, seed=0)
    paths = draw_sample_set(out, CHARACTER, count=2, size=64, seed=0)
    assert sorted(p.name for p in out.iterdir()) == ["sample_01.png", "sample_01.txt", "sample_02.png", "sample_02.txt"]
    assert all(p.exists() for p in paths)
