"""The random-weight InsightFace pack: insightface takes it for buffalo_l, by the same signatures, offline."""

from __future__ import annotations

import importlib.util
import json
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from storyboard.models.insightface_pack import (
    DETECTOR_FILE,
    FACE_SHARE,
    PACK_VERSION,
    RECOGNISER_FILE,
    build_pack,
    ensure_pack,
    pack_dir,
)

IMAGES = Path(next(iter(importlib.util.find_spec("insightface").submodule_search_locations))) / "data" / "images"


@pytest.fixture(scope="module")
def pack_root(tmp_path_factory) -> Path:
    return ensure_pack(tmp_path_factory.mktemp("insightface"), seed=0)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    attempts: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("network blocked by test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def test_faceanalysis_takes_it_for_buffalo_l(pack_root: Path, no_network: list[object]) -> None:
    """Loaded by name from its root, as a user loads the released pack: every model routed by its signature."""
    from insightface.app import FaceAnalysis
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.model_zoo.scrfd import SCRFD

    assert sorted(p.name for p in pack_dir(pack_root).glob("*.onnx")) == [DETECTOR_FILE, RECOGNISER_FILE]
    app = FaceAnalysis(name="buffalo_l", root=str(pack_root), providers=["CPUExecutionProvider"])
    assert set(app.models) == {"detection", "recognition"}
    detector, recogniser = app.models["detection"], app.models["recognition"]
    assert isinstance(detector, SCRFD) and isinstance(recogniser, ArcFaceONNX)
    # SCRFD-10GF's layout: three strides, two anchors a cell, keypoints; ArcFace's 112 px input, PyTorch scaling
    assert (detector.fmc, detector._feat_stride_fpn, detector._num_anchors, detector.use_kps) == (
        3,
        [8, 16, 32],
        2,
        True,
    )
    assert not detector.batched
    assert recogniser.input_size == (112, 112) and (recogniser.input_mean, recogniser.input_std) == (127.5, 127.5)
    assert recogniser.output_shape[-1] == 512

    app.prepare(ctx_id=-1, det_thresh=0.5, det_size=(640, 640))
    photo = np.ascontiguousarray(np.asarray(Image.open(IMAGES / "t1.jpg").convert("RGB"))[:, :, ::-1])
    (face,) = app.get(photo)  # one face, wherever the people are: the pack's faces are meaningless
    assert face.det_score > 0.99 and face.kps.shape == (5, 2) and face.embedding.shape == (512,)
    x0, y0, x1, y1 = face.bbox
    height, width = photo.shape[:2]
    scale = width / 640  # t1.jpg is wider than tall: letterboxed to the detector's width
    assert (x0 + x1) / 2 == pytest.approx(320 * scale, abs=scale) and (y0 + y1) / 2 == pytest.approx(
        320 * scale, abs=scale
    )
    assert x1 - x0 == pytest.approx(FACE_SHARE * 640 * scale, rel=0.05)
    assert all(x0 < kx < x1 and y0 < ky < y1 for kx, ky in face.kps)  # eyes, nose, mouth inside the box
    assert face.kps[0][0] < face.kps[1][0] and face.kps[0][1] < face.kps[3][1]  # left eye left of right, above mouth
    assert no_network == []


def test_the_same_seed_writes_the_same_bytes(tmp_path: Path, pack_root: Path) -> None:
    build_pack(tmp_path / "a", seed=0)
    build_pack(tmp_path / "b", seed=1)
    for name in (DETECTOR_FILE, RECOGNISER_FILE):
        same = (pack_dir(tmp_path / "a") / name).read_bytes()
        assert same == (pack_dir(pack_root) / name).read_bytes()
        assert same != (pack_dir(tmp_path / "b") / name).read_bytes()


def test_ensure_pack_rebuilds_only_another_version_or_seed(tmp_path: Path) -> None:
    root = ensure_pack(tmp_path, seed=3)
    detector = pack_dir(root) / DETECTOR_FILE
    built = detector.stat().st_mtime_ns
    ensure_pack(tmp_path, seed=3)
    assert detector.stat().st_mtime_ns == built  # kept

    stamp = pack_dir(root) / "BUILT.json"
    stamp.write_text(json.dumps(json.loads(stamp.read_text()) | {"pack_version": PACK_VERSION - 1}))
    ensure_pack(tmp_path, seed=3)
    assert json.loads(stamp.read_text())["pack_version"] == PACK_VERSION
    first = detector.read_bytes()
    ensure_pack(tmp_path, seed=4)
    assert json.loads(stamp.read_text())["seed"] == 4 and detector.read_bytes() != first
    assert "plumbing" in (pack_dir(root) / "README.txt").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]  # no temp folders left behind
