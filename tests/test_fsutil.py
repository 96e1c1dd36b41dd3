"""Atomic writes: the target is either the old one or the complete new one, and no temp litter is left."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from storyboard.fsutil import atomic_path, write_bytes, write_json, write_text


def _entries(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_atomic_file_new(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp != target and tmp.name == target.name
        assert tmp.parent.parent == target.parent, "staged beside the target (same file system)"
        tmp.write_text("new", encoding="utf-8")
        assert not target.exists(), "nothing visible before the block ends"
    assert target.read_text(encoding="utf-8") == "new"
    assert _entries(target.parent) == {"out.txt"}


def test_atomic_file_replaces_existing(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old", encoding="utf-8")
    with atomic_path(target) as tmp:
        tmp.write_text("new", encoding="utf-8")
        assert target.read_text(encoding="utf-8") == "old"
    assert target.read_text(encoding="utf-8") == "new"
    assert _entries(tmp_path) == {"out.txt"}


def test_atomic_file_exception_keeps_old(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("half", encoding="utf-8")
        raise RuntimeError("boom")
    assert target.read_text(encoding="utf-8") == "old"
    assert _entries(tmp_path) == {"out.txt"}


def test_atomic_folder_new(tmp_path: Path) -> None:
    target = tmp_path / "frames"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "0.png").write_bytes(b"0")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "x.txt").write_text("x", encoding="utf-8")
    assert target.is_dir()
    assert _entries(target) == {"0.png", "sub"}
    assert (target / "sub" / "x.txt").read_text(encoding="utf-8") == "x"
    assert _entries(tmp_path) == {"frames"}


def test_atomic_folder_replaces_existing_wholly(tmp_path: Path) -> None:
    target = tmp_path / "frames"
    (target / "old_sub").mkdir(parents=True)
    (target / "0.png").write_bytes(b"old")
    (target / "stale.png").write_bytes(b"stale")
    (target / "old_sub" / "y.txt").write_text("y", encoding="utf-8")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "0.png").write_bytes(b"new")
        assert (target / "stale.png").exists(), "old folder intact until the block ends"
    assert _entries(target) == {"0.png"}, "no file of the old folder survives"
    assert (target / "0.png").read_bytes() == b"new"
    assert _entries(tmp_path) == {"frames"}


def test_atomic_folder_exception_keeps_old(tmp_path: Path) -> None:
    target = tmp_path / "frames"
    target.mkdir()
    (target / "0.png").write_bytes(b"old")
    (tmp_path / "neighbour.txt").write_text("n", encoding="utf-8")
    with pytest.raises(ValueError, match="mid-write"), atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "0.png").write_bytes(b"new")
        (tmp / "1.png").write_bytes(b"new")
        raise ValueError("mid-write")
    assert _entries(target) == {"0.png"}
    assert (target / "0.png").read_bytes() == b"old"
    assert _entries(tmp_path) == {"frames", "neighbour.txt"}, "no temp folders left in the parent"


def test_atomic_folder_replaces_a_file(tmp_path: Path) -> None:
    target = tmp_path / "thing"
    target.write_text("was a file", encoding="utf-8")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("a", encoding="utf-8")
    assert target.is_dir() and _entries(target) == {"a"}
    assert _entries(tmp_path) == {"thing"}


def test_write_json_round_trip(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    data = {"score": 0.5, "names": ["Алдар", "画像"], "nested": {"n": None, "ok": True}}
    write_json(target, data)
    text = target.read_text(encoding="utf-8")
    assert "Алдар" in text, "unicode written as text, not escapes"
    assert text.endswith("\n")
    assert json.loads(text) == data


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_write_json_refuses_nan(tmp_path: Path, bad: float) -> None:
    target = tmp_path / "m.json"
    write_json(target, {"score": 1.0})
    with pytest.raises(ValueError):
        write_json(target, {"score": bad})
    assert json.loads(target.read_text(encoding="utf-8")) == {"score": 1.0}, "old file untouched"
    assert _entries(tmp_path) == {"m.json"}


def test_write_json_refuses_nan_new_file(tmp_path: Path) -> None:
    target = tmp_path / "new.json"
    with pytest.raises(ValueError):
        write_json(target, [1.0, math.nan])
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_write_text_unicode_round_trip(tmp_path: Path) -> None:
    text = "Алдар Көсе 🐎 «ü» 画像\nline two\n\ttab, e\u0301 (combining)\n"
    target = tmp_path / "ü 画像.txt"
    write_text(target, text)
    assert target.read_bytes() == text.encode("utf-8")
    assert target.read_text(encoding="utf-8") == text


def test_write_bytes(tmp_path: Path) -> None:
    target = tmp_path / "blob.bin"
    data = bytes(range(256)) * 4
    write_bytes(target, data)
    assert target.read_bytes() == data
    write_bytes(target, b"")
    assert target.read_bytes() == b""
    assert _entries(tmp_path) == {"blob.bin"}
