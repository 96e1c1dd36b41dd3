"""Opening user images: odd modes, rotations, animations and broken files, all generated here with PIL."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from storyboard.images import BadImage, content_hash, list_images, load_rgb

BG = (10, 20, 30)
RED = (255, 0, 0)


def _close(actual: tuple[int, ...], expected: tuple[int, ...], tol: int = 3) -> bool:
    return all(abs(a - e) <= tol for a, e in zip(actual, expected, strict=True))


def _check_rgb(image: Image.Image, size: tuple[int, int]) -> None:
    assert image.mode == "RGB"
    assert image.size == size


def test_plain_rgb_png(tmp_path: Path) -> None:
    path = tmp_path / "plain.png"
    Image.new("RGB", (12, 7), RED).save(path)
    image = load_rgb(path)
    _check_rgb(image, (12, 7))
    assert image.getpixel((5, 3)) == RED


def test_rgba_composited_on_background(tmp_path: Path) -> None:
    path = tmp_path / "rgba.png"
    im = Image.new("RGBA", (10, 6), (*RED, 255))
    im.putpixel((0, 0), (0, 255, 0, 0))  # fully transparent: its colour must not show
    im.putpixel((1, 0), (255, 255, 255, 128))  # half transparent white
    im.save(path)
    image = load_rgb(path, background=BG)
    _check_rgb(image, (10, 6))
    assert image.getpixel((0, 0)) == BG
    assert _close(image.getpixel((1, 0)), tuple((255 + c) // 2 for c in BG), tol=2)
    assert image.getpixel((9, 5)) == RED


def test_rgba_default_background_is_white(tmp_path: Path) -> None:
    path = tmp_path / "clear.png"
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(path)
    assert load_rgb(path).getpixel((2, 2)) == (255, 255, 255)


def test_palette_with_transparency(tmp_path: Path) -> None:
    path = tmp_path / "palette.png"
    im = Image.new("P", (10, 6), 1)
    im.putpalette([0, 0, 0, *RED, 0, 0, 255] + [0] * (256 * 3 - 9))
    im.putpixel((0, 0), 2)  # blue, but index 2 is the transparent one
    im.save(path, transparency=2)
    with Image.open(path) as check:
        assert check.mode == "P" and check.info.get("transparency") == 2
    image = load_rgb(path, background=BG)
    _check_rgb(image, (10, 6))
    assert image.getpixel((0, 0)) == BG
    assert image.getpixel((5, 3)) == RED


def test_palette_without_transparency(tmp_path: Path) -> None:
    path = tmp_path / "palette.gif"
    im = Image.new("P", (5, 5), 1)
    im.putpalette([0, 0, 0, *RED] + [0] * (256 * 3 - 6))
    im.save(path)
    image = load_rgb(path, background=BG)
    _check_rgb(image, (5, 5))
    assert image.getpixel((2, 2)) == RED


def test_la_greyscale_with_alpha(tmp_path: Path) -> None:
    path = tmp_path / "la.png"
    im = Image.new("LA", (8, 4), (100, 255))
    im.putpixel((0, 0), (200, 0))
    im.save(path)
    with Image.open(path) as check:
        assert check.mode == "LA"
    image = load_rgb(path, background=BG)
    _check_rgb(image, (8, 4))
    assert image.getpixel((0, 0)) == BG
    assert image.getpixel((4, 2)) == (100, 100, 100)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 8), (0, 255, 255, 0)).save(path, quality=95)  # pure red in CMYK
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    image = load_rgb(path)
    _check_rgb(image, (16, 8))
    assert _close(image.getpixel((8, 4)), RED, tol=8)


@pytest.mark.parametrize(("mode", "dtype", "suffix"), [("I;16", "<u2", ".png"), ("I;16B", ">u2", ".tif")])
def test_16_bit_greyscale_scaled_not_clipped(tmp_path: Path, mode: str, dtype: str, suffix: str) -> None:
    path = tmp_path / f"grey16{suffix}"
    values = np.array([[0, 32768, 65535, 4096]], dtype=dtype)
    Image.frombytes(mode, (4, 1), values.tobytes()).save(path)
    with Image.open(path) as check:
        assert check.mode == mode
    image = load_rgb(path)
    _check_rgb(image, (4, 1))
    assert image.getpixel((0, 0)) == (0, 0, 0)
    assert _close(image.getpixel((1, 0)), (128, 128, 128), tol=1), "mid-grey stays mid-grey, not white"
    assert _close(image.getpixel((2, 0)), (255, 255, 255), tol=1)
    assert _close(image.getpixel((3, 0)), (16, 16, 16), tol=1)


def test_exif_orientation_applied(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    im.paste(RED, (0, 0, 10, 20))  # red band on the left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    im.save(path, exif=exif, quality=95)
    image = load_rgb(path)
    _check_rgb(image, (20, 40))
    # rotated clockwise, the left edge becomes the top edge
    assert _close(image.getpixel((10, 2)), RED, tol=10)
    assert _close(image.getpixel((10, 37)), (0, 0, 255), tol=10)


def test_animated_gif_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (10, 6), c) for c in (RED, (0, 255, 0), (0, 0, 255))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(path) as check:
        assert getattr(check, "n_frames", 1) == 3
    image = load_rgb(path)
    _check_rgb(image, (10, 6))
    assert image.getpixel((5, 3)) == RED


def test_result_outlives_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gone.png"
    Image.new("RGB", (3, 3), RED).save(path)
    image = load_rgb(path)
    path.unlink()
    assert image.getpixel((1, 1)) == RED


def _bad(path: Path, match: str) -> None:
    with pytest.raises(BadImage, match=match) as exc:
        load_rgb(path)
    assert str(path) in str(exc.value)


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    _bad(path, "empty file")


def test_truncated_png(tmp_path: Path) -> None:
    full = tmp_path / "full.png"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(full)
    data = full.read_bytes()
    path = tmp_path / "truncated.png"
    path.write_bytes(data[: len(data) // 2])
    _bad(path, "truncated")


def test_text_named_png(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n", encoding="utf-8")
    _bad(path, "not an image")


def test_header_only_png(tmp_path: Path) -> None:
    full = tmp_path / "full.png"
    Image.new("RGB", (8, 8), RED).save(full)
    path = tmp_path / "header.png"
    path.write_bytes(full.read_bytes()[:20])
    with pytest.raises(BadImage) as exc:
        load_rgb(path)
    assert str(path) in str(exc.value)


NAMES = [
    "a.PNG",
    "b.JpG",
    "c.jpeg",
    "d.webp",
    "with space (1).png",
    "braces {x}.jpg",
    "[brackets]*.png",
    "ünïcödé 画像.png",
    "sub/dir/deep.Tiff",
    "sub/e.bmp",
]


def _populate(folder: Path) -> None:
    for name in NAMES:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")  # list_images goes by name only
    (folder / "caption.txt").write_text("a caption", encoding="utf-8")
    (folder / "sub" / "notes.TXT").write_text("n", encoding="utf-8")
    (folder / "noext").write_bytes(b"x")
    (folder / "folder.png").mkdir()  # a folder with an image-like name is not an image


def test_list_images_finds_all_and_only_images(tmp_path: Path) -> None:
    _populate(tmp_path)
    found = list_images(tmp_path)
    assert {p.relative_to(tmp_path).as_posix() for p in found} == set(NAMES)
    assert all(p.is_file() for p in found)


def test_list_images_stable_order(tmp_path: Path) -> None:
    _populate(tmp_path / "one")
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    first = list_images(tmp_path / "one")
    assert first == sorted(first)
    assert first == list_images(tmp_path / "one")
    assert [p.relative_to(tmp_path / "one") for p in first] == [
        p.relative_to(tmp_path / "two") for p in list_images(tmp_path / "two")
    ]


def test_list_images_loads_odd_names(tmp_path: Path) -> None:
    for name in ("with space (1).png", "braces {x}.jpg", "ünïcödé 画像.PNG"):
        Image.new("RGB", (4, 4), RED).save(tmp_path / name, format="JPEG" if name.endswith(".jpg") else "PNG")
    found = list_images(tmp_path)
    assert len(found) == 3
    for path in found:
        assert _close(load_rgb(path).getpixel((2, 2)), RED, tol=8)


def test_list_images_empty_folder(tmp_path: Path) -> None:
    assert list_images(tmp_path) == []


def test_content_hash_follows_bytes_not_names(tmp_path: Path) -> None:
    a = tmp_path / "a.png"
    Image.new("RGB", (6, 6), RED).save(a)
    b = tmp_path / "renamed copy {1}.PNG"
    shutil.copyfile(a, b)
    c = tmp_path / "other.png"
    Image.new("RGB", (6, 6), (0, 0, 255)).save(c)
    assert content_hash(a) == content_hash(b)
    assert content_hash(a) != content_hash(c)
    assert len(content_hash(a)) == 64 and int(content_hash(a), 16) >= 0


def test_content_hash_of_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert content_hash(path) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
