"""Face backends on real photos: dlib must tell one face from another; InsightFace runs a random-weight pack in
buffalo_l's layout through the real FaceAnalysis, and never tries to download one."""

from __future__ import annotations

import importlib.util
import itertools
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import requests
import skimage.data
from PIL import Image, ImageEnhance, ImageOps

from storyboard.models.faces import (
    INSIGHTFACE_DET_SIZE,
    DlibFaceBackend,
    Face,
    FaceBackend,
    FaceModelMissing,
    InsightFaceBackend,
    cosine_similarity,
    insightface_model_dir,
    largest_face,
    load_face_backend,
)
from storyboard.models.insightface_pack import ensure_pack
from storyboard.settings import ModelSet, TinyModels

# Real photos that ship inside the insightface package: t1.jpg has six people, Tom_Hanks_54745.png one aligned face.
IMAGES = Path(next(iter(importlib.util.find_spec("insightface").submodule_search_locations))) / "data" / "images"
# Measured here: same face >= 0.987, different people <= 0.906; the margin leaves room for dlib build differences.
MARGIN = 0.05


@pytest.fixture(scope="module")
def dlib_backend() -> DlibFaceBackend:
    return DlibFaceBackend()


@pytest.fixture(scope="module")
def hanks() -> Image.Image:
    return Image.open(IMAGES / "Tom_Hanks_54745.png").convert("RGB")


@pytest.fixture(scope="module")
def t1_image() -> Image.Image:
    return Image.open(IMAGES / "t1.jpg").convert("RGB")


@pytest.fixture(scope="module")
def t1_faces(dlib_backend: DlibFaceBackend, t1_image: Image.Image) -> list[Face]:
    return dlib_backend.detect(t1_image)


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    # Top half only: the mission patch lower down also passes dlib's detector (score 0.12) at nearly the face's size.
    return Image.fromarray(skimage.data.astronaut()).crop((0, 0, 512, 256))


def only_face(backend: FaceBackend, image: Image.Image, label: str) -> Face:
    faces = backend.detect(image)
    assert len(faces) == 1, f"{label}: expected one face, got {len(faces)}: {[f.bbox for f in faces]}"
    return faces[0]


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.3f}" for k, v in sorted(values.items(), key=lambda kv: kv[1]))


# --- dlib on real photos ----------------------------------------------------------------------------------------


def test_dlib_embedding_is_unit_float32_and_read_only(dlib_backend: DlibFaceBackend, hanks: Image.Image) -> None:
    face = only_face(dlib_backend, hanks, "Tom Hanks")
    assert face.embedding.dtype == np.float32
    assert face.embedding.shape == (128,)
    assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5)
    assert not face.embedding.flags.writeable
    x0, y0, x1, y1 = face.bbox
    assert 0 <= x0 < x1 <= hanks.width and 0 <= y0 < y1 <= hanks.height
    assert face.score > 0.0  # dlib's own operating point is a margin of 0


def test_dlib_same_face_is_closer_than_different_people(
    dlib_backend: DlibFaceBackend,
    hanks: Image.Image,
    t1_faces: list[Face],
    astronaut: Image.Image,
) -> None:
    reference = only_face(dlib_backend, hanks, "Tom Hanks").embedding
    w, h = hanks.size
    variants = {
        "mirror": ImageOps.mirror(hanks),
        "down-up": hanks.resize((w // 2, h // 2), Image.BICUBIC).resize((w, h), Image.BICUBIC),
        "upscale2x": hanks.resize((w * 2, h * 2), Image.BICUBIC),
        "brighter": ImageEnhance.Brightness(hanks).enhance(1.4),
        "darker": ImageEnhance.Brightness(hanks).enhance(0.6),
        "crop": hanks.crop((4, 10, w - 4, h)),
    }
    same = {
        name: cosine_similarity(reference, only_face(dlib_backend, image, name).embedding)
        for name, image in variants.items()
    }

    astro = largest_face(dlib_backend.detect(astronaut))
    assert astro is not None, "no face found in the astronaut photo"
    people = {f"t1[{i}]": face.embedding for i, face in enumerate(t1_faces)} | {"astronaut": astro.embedding}
    different = {f"{a}~{b}": cosine_similarity(people[a], people[b]) for a, b in itertools.combinations(people, 2)}
    different |= {f"hanks~{name}": cosine_similarity(reference, emb) for name, emb in people.items()}

    assert len(different) >= 15
    closest = dict(sorted(different.items(), key=lambda kv: -kv[1])[:5])
    assert min(same.values()) > max(different.values()) + MARGIN, (
        f"same face: {_fmt(same)}\ndifferent people (closest 5): {_fmt(closest)}"
    )


def test_dlib_accepts_grey_and_alpha_images(dlib_backend: DlibFaceBackend, hanks: Image.Image) -> None:
    reference = only_face(dlib_backend, hanks, "RGB").embedding
    for mode in ("L", "RGBA", "P"):
        face = only_face(dlib_backend, hanks.convert(mode), mode)
        assert cosine_similarity(reference, face.embedding) > 0.95, mode


def test_dlib_finds_the_people_in_t1_largest_first(t1_faces: list[Face], t1_image: Image.Image) -> None:
    assert len(t1_faces) >= 4, f"found {len(t1_faces)} faces: {[f.bbox for f in t1_faces]}"
    areas = [f.area for f in t1_faces]
    assert areas == sorted(areas, reverse=True)
    assert largest_face(t1_faces) is t1_faces[0]
    for face in t1_faces:
        x0, y0, x1, y1 = face.bbox
        assert 0 <= x0 < x1 <= t1_image.width and 0 <= y0 < y1 <= t1_image.height
        assert face.area >= 40 * 40


@pytest.mark.parametrize("kind", ["solid", "noise"])
def test_dlib_no_face_gives_empty_list(dlib_backend: DlibFaceBackend, kind: str) -> None:
    if kind == "solid":
        image = Image.new("RGB", (320, 240), (90, 140, 200))
    else:
        rng = np.random.default_rng(0)
        image = Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
    assert dlib_backend.detect(image) == []


def test_dlib_detect_many_on_threads_matches_one_by_one(
    t1_image: Image.Image, hanks: Image.Image, astronaut: Image.Image
) -> None:
    """Several threads, each with its own dlib models, find exactly what one thread finds, in the images' order."""
    images = [t1_image, hanks, Image.new("RGB", (320, 240), (90, 140, 200)), astronaut, ImageOps.mirror(t1_image)]
    threaded, alone = DlibFaceBackend(threads=3), DlibFaceBackend(threads=1)
    many, one = threaded.detect_many(images), [alone.detect(image) for image in images]
    assert [len(found) for found in many] == [len(found) for found in one]
    assert [len(found) for found in many][1:4] == [1, 0, 1]
    for found_many, found_one in zip(many, one, strict=True):
        for a, b in zip(found_many, found_one, strict=True):
            assert (a.bbox, a.score) == (b.bbox, b.score)
            np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-6)
    # each of the pool's threads holds models of its own
    barrier = threading.Barrier(3, timeout=30)

    def models(_):
        barrier.wait()
        return threaded._models()

    assert len({id(m) for m in threaded._pool.map(models, range(3))}) == 3


# --- pure helpers -----------------------------------------------------------------------------------------------


def test_cosine_similarity_and_largest_face() -> None:
    a = np.array([1.0, 0.0], dtype=np.float32)
    assert cosine_similarity(a, np.array([2.0, 0.0])) == pytest.approx(1.0)
    assert cosine_similarity(a, np.array([0.0, 3.0])) == pytest.approx(0.0)
    assert cosine_similarity(a, -a) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="zero"):
        cosine_similarity(a, np.zeros(2))
    with pytest.raises(ValueError, match="size"):
        cosine_similarity(a, np.ones(3))

    small = Face(bbox=(0, 0, 10, 10), score=2.0, embedding=a)
    big = Face(bbox=(5, 5, 50, 40), score=0.1, embedding=a)
    assert largest_face([small, big]) is big
    assert largest_face([]) is None


# --- InsightFace: never downloads -------------------------------------------------------------------------------


@pytest.fixture
def network_attempts(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record (and block) every socket connect; recorded rather than raised-only, as the backend catches OSError."""
    attempts: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("network blocked by test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


@pytest.fixture
def analysis_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Replace FaceAnalysis with a recorder, so a test sees whether the backend got as far as building one."""
    calls: list[dict] = []

    class Recorder:
        def __init__(self, **kwargs: object) -> None:
            calls.append(kwargs)
            raise AssertionError("FaceAnalysis must not be built for a missing model pack")

    monkeypatch.setattr("insightface.app.FaceAnalysis", Recorder)
    return calls


def test_insightface_empty_root_raises_before_faceanalysis(
    tmp_path: Path, network_attempts: list[object], analysis_calls: list[dict]
) -> None:
    with pytest.raises(FaceModelMissing) as caught:
        InsightFaceBackend("buffalo_l", str(tmp_path), 0.5)

    message = str(caught.value)
    expected = tmp_path / "models" / "buffalo_l"
    assert str(expected) in message
    assert "face_backend: dlib" in message
    assert "~/.insightface/models/buffalo_l" in message
    assert "non-commercial" in message
    assert isinstance(caught.value, RuntimeError)
    assert analysis_calls == [], "FaceAnalysis was built: it downloads missing packs"
    assert network_attempts == []
    assert list(tmp_path.iterdir()) == [], "nothing (no empty models folder) may be created"


def test_insightface_empty_or_nested_pack_folder(
    tmp_path: Path, network_attempts: list[object], analysis_calls: list[dict]
) -> None:
    pack = insightface_model_dir("antelopev2", tmp_path)
    pack.mkdir(parents=True)
    with pytest.raises(FaceModelMissing, match="no .onnx files"):
        InsightFaceBackend("antelopev2", str(tmp_path), 0.5)

    # The antelopev2 zip unpacks one level too deep; the message should say so rather than "missing".
    (pack / "antelopev2").mkdir()
    (pack / "antelopev2" / "scrfd_10g_bnkps.onnx").write_bytes(b"stub")
    with pytest.raises(FaceModelMissing, match="one level too deep") as caught:
        InsightFaceBackend("antelopev2", str(tmp_path), 0.5)
    assert str(pack) in str(caught.value)
    assert analysis_calls == [] and network_attempts == []


@pytest.mark.parametrize(
    "error",
    [AssertionError(), requests.exceptions.ConnectionError("Max retries exceeded"), ConnectionError("refused")],
    ids=["bare-assert", "requests", "builtin"],
)
def test_insightface_load_errors_become_face_model_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    pack = insightface_model_dir("buffalo_l", tmp_path)
    pack.mkdir(parents=True)
    (pack / "det_10g.onnx").write_bytes(b"stub")

    def failing(**kwargs: object) -> None:
        raise error

    monkeypatch.setattr("insightface.app.FaceAnalysis", failing)
    with pytest.raises(FaceModelMissing) as caught:
        InsightFaceBackend("buffalo_l", str(tmp_path), 0.5)
    assert caught.value.__cause__ is error
    assert str(pack) in str(caught.value) and "dlib" in str(caught.value)


def test_insightface_corrupt_onnx_becomes_face_model_missing(tmp_path: Path, network_attempts: list[object]) -> None:
    # Real FaceAnalysis this time: a half-copied pack must give the instructions, not an onnxruntime traceback.
    pack = insightface_model_dir("buffalo_l", tmp_path)
    pack.mkdir(parents=True)
    (pack / "det_10g.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(FaceModelMissing, match="could not load it") as caught:
        InsightFaceBackend("buffalo_l", str(tmp_path), 0.5)
    assert str(pack) in str(caught.value)
    assert network_attempts == []
    assert sorted(p.name for p in pack.iterdir()) == ["det_10g.onnx"], "nothing may be downloaded next to it"


# --- InsightFace on a random-weight pack in buffalo_l's layout: the real FaceAnalysis, offline --------------------


@pytest.fixture(scope="module")
def random_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the tiny profile builds (storyboard/models/insightface_pack.py): one meaningless but confident face per
    image, at the centre of the detector's letterboxed input, with a random 512-d embedding."""
    return ensure_pack(tmp_path_factory.mktemp("insightface"), seed=0)


def test_insightface_runs_the_pack_on_real_photos(
    random_pack: Path, t1_image: Image.Image, hanks: Image.Image, network_attempts: list[object]
) -> None:
    backend = InsightFaceBackend("buffalo_l", str(random_pack), 0.5)
    assert set(backend._app.models) == {"detection", "recognition"}  # landmark and age models are not loaded
    assert backend._app.det_size == INSIGHTFACE_DET_SIZE
    grey = ImageOps.grayscale(hanks.resize((320, 320)))
    images = [t1_image, hanks, grey, ImageOps.mirror(t1_image), t1_image]
    found = backend.detect_many(images)
    assert [len(faces) for faces in found] == [1] * len(images)
    for image, (face,) in zip(images, found, strict=True):
        assert face.score > 0.99 and face.embedding.dtype == np.float32 and face.embedding.shape == (512,)
        assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5) and not face.embedding.flags.writeable
        x0, y0, x1, y1 = face.bbox
        assert 0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height
    # a square image: its face is the centre quarter; the embedding reads the aligned pixels, the same each time
    assert found[1][0].bbox == (42, 42, 70, 70)
    t1, mirrored, again = found[0][0].embedding, found[3][0].embedding, found[4][0].embedding
    assert np.array_equal(t1, again) and cosine_similarity(t1, mirrored) < 0.9999
    assert network_attempts == []


def test_insightface_drops_faces_below_min_score_and_outside_the_image(random_pack: Path, hanks: Image.Image) -> None:
    # det_thresh: the detector itself drops its face (scored ~0.998) under a stricter cut
    assert InsightFaceBackend("buffalo_l", str(random_pack), 0.999).detect(hanks) == []
    # Letterboxed into the detector's square, a 1:7 strip leaves the detector's centre in the padding: a box
    # wholly past the border is no face.
    assert InsightFaceBackend("buffalo_l", str(random_pack), 0.5).detect(Image.new("RGB", (100, 700), "grey")) == []


class _StubFound:
    def __init__(self, bbox: list[float], det_score: float, embedding: np.ndarray) -> None:
        self.bbox = np.array(bbox, dtype=np.float32)
        self.det_score = np.float32(det_score)
        self.normed_embedding = embedding


class _StubAnalysis:
    """Stands in for FaceAnalysis where the random pack can't: several faces of chosen boxes and scores, and the
    array it was handed (the pack finds one face per image, and its faces don't depend on the channel order)."""

    last: _StubAnalysis | None = None

    def __init__(self, **kwargs: object) -> None:
        self.kwargs = kwargs
        self.models = {"detection": object(), "recognition": object()}
        self.seen: np.ndarray | None = None
        _StubAnalysis.last = self

    def prepare(self, **kwargs: object) -> None:
        pass

    def get(self, img: np.ndarray) -> list[_StubFound]:
        self.seen = img
        emb = np.arange(1, 513, dtype=np.float32)
        return [
            _StubFound([10, 10, 30, 30], 0.9, emb),  # small
            _StubFound([-5, 2, 60, 70], 0.8, emb),  # large, past the left border
            _StubFound([0, 0, 80, 80], 0.3, emb),  # below min_score
        ]


def test_insightface_converts_faces_bgr_clamped_largest_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pack = insightface_model_dir("buffalo_l", tmp_path)
    pack.mkdir(parents=True)
    (pack / "w600k_r50.onnx").write_bytes(b"stub")
    monkeypatch.setattr("insightface.app.FaceAnalysis", _StubAnalysis)
    backend = InsightFaceBackend("buffalo_l", str(tmp_path), 0.5)
    app = _StubAnalysis.last
    assert app is not None
    # The absolute pack folder as `name` is what keeps insightface off its downloader.
    assert app.kwargs["name"] == str(pack)
    assert app.kwargs["providers"][-1] == "CPUExecutionProvider"

    rgb = np.zeros((50, 40, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # red in RGB must arrive as the last channel (BGR)
    faces = backend.detect(Image.fromarray(rgb))
    assert app.seen is not None and app.seen.shape == (50, 40, 3)
    assert app.seen[0, 0].tolist() == [0, 0, 200]
    assert [f.bbox for f in faces] == [(0, 2, 40, 50), (10, 10, 30, 30)]  # clamped, largest first, 0.3 dropped
    assert all(np.linalg.norm(f.embedding) == pytest.approx(1.0, abs=1e-5) for f in faces)
    assert faces[0].score == pytest.approx(0.8)


def _model_set(**overrides: object) -> ModelSet:
    fields = dict(base="b", ip_adapter="i", ip_adapter_weight="w", controlnet="c", clip="clip", face_backend="dlib")
    return ModelSet(**(fields | overrides))


def test_load_face_backend_picks_the_class(random_pack: Path) -> None:
    dlib_backend = load_face_backend(_model_set(face_backend="dlib"), 0.5)
    assert isinstance(dlib_backend, DlibFaceBackend) and isinstance(dlib_backend, FaceBackend)
    assert isinstance(load_face_backend(TinyModels(root=Path("models/tiny")), 0.5), DlibFaceBackend)

    chosen = load_face_backend(_model_set(face_backend="insightface", face_model_root=str(random_pack)), 0.7)
    assert isinstance(chosen, InsightFaceBackend) and isinstance(chosen, FaceBackend) and chosen.name == "insightface"
    assert chosen.min_score == 0.7 and chosen._app.det_thresh == 0.7
    assert chosen.model_dir == insightface_model_dir("buffalo_l", random_pack)
    assert len(chosen.detect(Image.new("RGB", (64, 64), "grey"))[0].embedding) == chosen.embedding_size


def test_load_face_backend_insightface_without_pack(tmp_path: Path, analysis_calls: list[dict]) -> None:
    with pytest.raises(FaceModelMissing, match="face_backend: dlib"):
        load_face_backend(_model_set(face_backend="insightface", face_model_root=str(tmp_path)), 0.5)
    assert analysis_calls == []


# --- InsightFace with a real pack, only where one was put by hand ------------------------------------------------

REAL_PACK = insightface_model_dir("buffalo_l", None)


@pytest.mark.skipif(
    not any(REAL_PACK.glob("*.onnx")), reason=f"no buffalo_l pack in {REAL_PACK} (never downloaded by tests)"
)
def test_insightface_real_pack_same_vs_different(hanks: Image.Image, t1_image: Image.Image) -> None:
    backend = InsightFaceBackend("buffalo_l", None, 0.5)
    # InsightFace's detector wants some context around the face; the 112 px aligned crop is padded up.
    padded = ImageOps.expand(hanks.resize((224, 224), Image.BICUBIC), border=112, fill=(128, 128, 128))
    found = largest_face(backend.detect(padded))
    found_mirror = largest_face(backend.detect(ImageOps.mirror(padded)))
    assert found is not None and found_mirror is not None
    reference, mirrored = found.embedding, found_mirror.embedding
    people = backend.detect(t1_image)
    assert len(people) >= 4
    same = cosine_similarity(reference, mirrored)
    different = max(cosine_similarity(reference, p.embedding) for p in people)
    assert same > different + MARGIN, f"same={same:.3f} different(max)={different:.3f}"
