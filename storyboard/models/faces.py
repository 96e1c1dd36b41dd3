"""Face detection and identity embeddings for the face-consistency metric, behind one small interface.

Both backends return the same thing: every face in an image as a pixel bounding box, a detector score and an
L2-normalised float32 embedding, largest face first, so the metric compares identities with `cosine_similarity`
whichever backend made the embeddings.

- `DlibFaceBackend`: dlib's HOG frontal detector, 5-point landmarks and ResNet descriptor (128-d). The weights ship
  in the `face_recognition_models` package, so it runs offline on CPU; the tiny profile and the tests use it.
- `InsightFaceBackend`: an InsightFace model pack (buffalo_l: SCRFD detector + ArcFace, 512-d). The pack must already
  be on disk: this module never lets insightface download, it raises `FaceModelMissing` with instructions instead.

The two similarity scales differ, so a threshold tuned on one backend does not carry over to the other. dlib
descriptors of all faces lie in a narrow cone: on real photos (tests/evaluate/test_faces.py) the same face mirrored,
rescaled, brightened or cropped scores 0.987-0.999, while different people score 0.81-0.91.

Licences, as stated in the installed packages (check again when versions change; this is not legal advice):
- insightface 2.1 (PyPI metadata, "License" section): the library code is MIT, but "the pretrained models provided
  with this library are for non-commercial research only, whether downloaded automatically or manually" -- buffalo_l
  included.
- dlib 20.0 (`dlib-bin` wheel): Boost Software License 1.0.
- face_recognition_models 0.3.0 (the dlib weights used here): its README says the models were created by Davis King
  (dlib-models) and "are licensed in the public domain or under CC0 1.0 Universal"; the LICENSE file it ships is the
  CC0 1.0 text (its metadata classifier says MIT). Neither text restricts the weights to non-commercial use.
"""

from __future__ import annotations

import logging

import importlib.util
import os
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from storyboard.errors import StoryboardError

logger = logging.getLogger(__name__)


if TYPE_CHECKING:
    from storyboard.settings import ModelSet, TinyModels

DEFAULT_INSIGHTFACE_ROOT = Path("~/.insightface")
INSIGHTFACE_DET_SIZE = (640, 640)

# The 5-point predictor is what dlib's ResNet descriptor was trained to align with, and is 10x smaller than the 68.
DLIB_SHAPE_MODEL = "shape_predictor_5_face_landmarks.dat"
DLIB_RECOGNITION_MODEL = "dlib_face_recognition_resnet_model_v1.dat"


class FaceModelMissing(StoryboardError):
    """A face model is not on disk (or not loadable); the message says where to put it and what to do instead."""


@dataclass(frozen=True, eq=False)  # eq=False: generated == and hash would compare numpy arrays and raise
class Face:
    """One detected face. bbox is (x0, y0, x1, y1) in pixels, clamped to the image, x1/y1 exclusive like PIL crop."""

    bbox: tuple[int, int, int, int]
    score: float
    embedding: np.ndarray  # L2-normalised float32, read-only

    @property
    def area(self) -> int:
        x0, y0, x1, y1 = self.bbox
        return max(0, x1 - x0) * max(0, y1 - y0)


@runtime_checkable
class FaceBackend(Protocol):
    name: str
    embedding_size: int  # the length of Face.embedding: what an IP-Adapter FaceID must read

    def detect(self, image: Image.Image) -> list[Face]:
        """All faces in `image`, largest first."""
        ...

    def detect_many(self, images: Sequence[Image.Image]) -> list[list[Face]]:
        """`detect` of each image, in order (a backend may spread them over CPU cores)."""
        ...


# --- shared helpers ---------------------------------------------------------------------------------------------


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of the angle between two embeddings (1: same direction); float64 maths so float32 inputs don't drift."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"embeddings differ in size: {a.size} vs {b.size} (made by different backends?)")
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0.0 or not np.isfinite(norms):
        raise ValueError("cosine similarity of a zero or non-finite embedding is undefined")
    return float(np.dot(a, b) / norms)


def largest_face(faces: Iterable[Face]) -> Face | None:
    """The face with the largest box (the character in a frame is usually the biggest face), or None."""
    return max(faces, key=lambda f: (f.area, f.score), default=None)


def mean_embedding(backend: FaceBackend, images: Iterable[Image.Image]) -> np.ndarray | None:
    """The L2-normalised mean embedding of the largest face of each image: one identity for a set of pictures of
    one person; None when no image has a face."""
    found = [face.embedding for face in map(largest_face, backend.detect_many(list(images))) if face is not None]
    return _unit(np.mean(found, axis=0)) if found else None


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """HxWx3 C-contiguous uint8 RGB, the layout dlib takes; grey, palette, alpha and CMYK images are converted."""
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def to_bgr_array(image: Image.Image) -> np.ndarray:
    """HxWx3 C-contiguous uint8 BGR, the OpenCV layout InsightFace's models were trained on."""
    return np.ascontiguousarray(to_rgb_array(image)[:, :, ::-1])


def _unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32).ravel()
    norm = float(np.linalg.norm(vector))
    if norm == 0.0 or not np.isfinite(norm):
        raise ValueError("face embedding has zero or non-finite norm")
    unit = vector / np.float32(norm)
    unit.setflags(write=False)  # Face is frozen; keep its array from being edited in place too
    return unit


def _clamp_bbox(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int] | None:
    """Round and clip a box to the image (detectors return boxes past the border); None if nothing is left."""
    x0, y0, x1, y1 = (int(round(float(v))) for v in box[:4])
    x0, x1 = min(max(x0, 0), width), min(max(x1, 0), width)
    y0, y1 = min(max(y0, 0), height), min(max(y1, 0), height)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def _largest_first(faces: list[Face]) -> list[Face]:
    return sorted(faces, key=lambda f: (f.area, f.score), reverse=True)


# --- dlib -------------------------------------------------------------------------------------------------------


def dlib_model_dir() -> Path:
    """The folder of dlib weights inside the installed `face_recognition_models` package.

    Found via the import spec rather than by importing the package: its __init__ imports pkg_resources, which warns
    and is gone from setuptools 81+.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FaceModelMissing(
            "dlib face backend needs the face_recognition_models package (the dlib weights): "
            "pip install face-recognition-models"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    missing = [name for name in (DLIB_SHAPE_MODEL, DLIB_RECOGNITION_MODEL) if not (folder / name).is_file()]
    if missing:
        raise FaceModelMissing(
            f"dlib face backend: {', '.join(missing)} missing from {folder}; reinstall face-recognition-models"
        )
    return folder


class DlibFaceBackend:
    """dlib HOG frontal detector + 5-point alignment + ResNet descriptor; CPU only, offline, weights load once.

    `score` is the HOG detector's SVM margin (not a probability): 0 is dlib's trained operating point; real faces
    in the test photos score 0.37-2.8, and false faces do occur near the cut (the mission patch in skimage's
    astronaut photo scores 0.12). `adjust_threshold` moves that cut; below 0 it admits more of them (a -0.48 box on
    the glasses and poker chips of insightface's t1.jpg), so the default keeps dlib's own threshold.
    `evaluate.face_min_score` is a 0-1 confidence for InsightFace and is deliberately not applied here.
    """

    name = "dlib"
    embedding_size = 128

    def __init__(self, upsample: int = 1, adjust_threshold: float = 0.0, threads: int | None = None) -> None:
        if upsample < 0:
            raise ValueError(f"upsample must be >= 0, got {upsample}")
        self.model_dir = dlib_model_dir()
        # Upsampling finds faces down to ~40 px (HOG's window is 80 px) at ~4x the detection time per level.
        self.upsample = upsample
        self.adjust_threshold = adjust_threshold
        # dlib releases the GIL while it detects: 1024 px frames (about 0.3-1 s each at upsample 1) are spread over
        # the cores, each thread with its own models (dlib's detector and ResNet are not safe to share).
        self.threads = threads or _usable_cores()
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        started = time.perf_counter()
        self._models()
        logger.info("dlib face backend: models from %s loaded in %.2f s", self.model_dir, time.perf_counter() - started)

    def _models(self):
        """This thread's detector, shape predictor and descriptor, loaded on its first call."""
        models = getattr(self._local, "models", None)
        if models is None:
            import dlib  # lazy: an insightface-only run should not need dlib importable

            models = (
                dlib.get_frontal_face_detector(),
                dlib.shape_predictor(str(self.model_dir / DLIB_SHAPE_MODEL)),
                dlib.face_recognition_model_v1(str(self.model_dir / DLIB_RECOGNITION_MODEL)),
            )
            self._local.models = models
        return models

    def detect(self, image: Image.Image) -> list[Face]:
        detector, shapes, encoder = self._models()
        rgb = to_rgb_array(image)
        height, width = rgb.shape[:2]
        rects, scores, _ = detector.run(rgb, self.upsample, self.adjust_threshold)
        faces: list[Face] = []
        for rect, score in zip(rects, scores, strict=True):
            # dlib rectangles are inclusive; +1 makes x1/y1 exclusive like every other box in this package.
            bbox = _clamp_bbox((rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1), width, height)
            if bbox is None:
                continue
            # The unclamped rect goes to the shape predictor: it copes with faces cut by the border.
            descriptor = encoder.compute_face_descriptor(rgb, shapes(rgb, rect))
            faces.append(Face(bbox=bbox, score=float(score), embedding=_unit(np.asarray(descriptor))))
        return _largest_first(faces)

    def detect_many(self, images: Sequence[Image.Image]) -> list[list[Face]]:
        if len(images) < 2 or self.threads < 2:
            return [self.detect(image) for image in images]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="dlib-faces")
        return list(self._pool.map(self.detect, images))


def _usable_cores() -> int:
    """The cores this process may run on (a container's or taskset's share); all of them where the OS cannot say."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


# --- InsightFace ------------------------------------------------------------------------------------------------


def insightface_model_dir(model_name: str, root: str | Path | None) -> Path:
    """Where FaceAnalysis(name=model_name, root=root) would look: <root>/models/<model_name>, absolute."""
    base = Path(root) if root else DEFAULT_INSIGHTFACE_ROOT
    return (base.expanduser() / "models" / model_name).absolute()


def _model_pack_problem(model_dir: Path) -> str | None:
    """Why `model_dir` is not a loadable model pack, or None if it looks like one."""
    if not model_dir.is_dir():
        return "the folder does not exist"
    if any(model_dir.glob("*.onnx")):
        return None
    nested = sorted(model_dir.rglob("*.onnx"))
    if (model_dir / "manifest.json").is_file() and nested:
        return None  # insightface 2.x manifest package: the manifest says where its .onnx files are
    if nested:
        # Some zips (antelopev2) unpack into <name>/<name>/; FaceAnalysis only looks one level deep.
        return f"the .onnx files are one level too deep (in {nested[0].parent}); move them up into {model_dir}"
    return "the folder has no .onnx files (an offline download attempt leaves it empty)"


def _missing_message(model_name: str, model_dir: Path, problem: str) -> str:
    return (
        f"InsightFace model pack {model_name!r} (models.sdxl.face_model) is not usable: {problem}.\n"
        f"  Put the pack's .onnx files in: {model_dir}/\n"
        f'  To get it, on a machine with internet: python -c "from insightface.app import FaceAnalysis; '
        f"FaceAnalysis(name='{model_name}')\" downloads it to ~/.insightface/models/{model_name}/ on first use; "
        f"copy that folder here (or set models.sdxl.face_model_root to the folder that holds "
        f"models/{model_name}/). This pipeline never downloads it itself.\n"
        f"  Offline alternative: set models.sdxl.face_backend: dlib in params.yaml (weights ship in the "
        f"face_recognition_models package).\n"
        f"  Note: InsightFace's released model packs are for non-commercial research use only."
    )


def _is_model_load_error(err: Exception) -> bool:
    """Errors that mean "the pack is missing or broken" rather than a bug worth its own traceback."""
    # AssertionError: no detection model in the folder (insightface asserts, with no message).
    # OSError: ConnectionError and requests' errors, should a download be attempted after all.
    # onnxruntime's own classes (InvalidProtobuf, NoSuchFile, ...): a truncated or non-ONNX file, e.g. a half copy.
    return isinstance(err, AssertionError | OSError) or type(err).__module__.startswith("onnxruntime")


def _onnx_providers() -> list[str]:
    import onnxruntime

    # CUDA first when this onnxruntime build has it; CPU always stays as the fallback.
    cuda = ["CUDAExecutionProvider"] if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else []
    return [*cuda, "CPUExecutionProvider"]


class InsightFaceBackend:
    """InsightFace FaceAnalysis (SCRFD detection + ArcFace recognition) from a model pack already on disk.

    Never downloads: the pack folder is checked before FaceAnalysis is built, and is then passed as an absolute
    path, which insightface loads as-is instead of calling its downloader. Load failures (empty folder -> bare
    AssertionError, connection errors) become FaceModelMissing with instructions.
    Licence: InsightFace's code is MIT but its released model packs (buffalo_l included) are for non-commercial
    research only; dlib's weights (DlibFaceBackend) carry no such restriction -- see the module docstring.
    """

    name = "insightface"
    embedding_size = 512  # ArcFace, in every InsightFace model pack (buffalo_l, antelopev2)

    def __init__(self, model_name: str = "buffalo_l", root: str | None = None, min_score: float = 0.5) -> None:
        self.model_name = model_name
        self.min_score = min_score
        self.model_dir = insightface_model_dir(model_name, root)
        problem = _model_pack_problem(self.model_dir)
        if problem is not None:
            raise FaceModelMissing(_missing_message(model_name, self.model_dir, problem))

        from insightface.app import FaceAnalysis  # lazy: heavy import, and absent from dlib-only setups

        providers = _onnx_providers()
        started = time.perf_counter()
        try:
            self._app = FaceAnalysis(
                name=str(self.model_dir),
                root=str(self.model_dir.parent.parent),
                providers=providers,
                # Landmark and age/gender models would run on every face for nothing.
                allowed_modules=["detection", "recognition"],
            )
            # ctx_id < 0 pins the sessions to CPU; det_thresh makes the detector itself drop weak faces.
            ctx_id = 0 if providers[0] == "CUDAExecutionProvider" else -1
            self._app.prepare(ctx_id=ctx_id, det_thresh=min_score, det_size=INSIGHTFACE_DET_SIZE)
        except Exception as err:
            if not _is_model_load_error(err):
                raise
            detail = f"insightface could not load it ({type(err).__name__}: {err or 'no message'})"
            raise FaceModelMissing(_missing_message(model_name, self.model_dir, detail)) from err
        if "recognition" not in self._app.models:
            raise FaceModelMissing(
                _missing_message(model_name, self.model_dir, "the pack has no recognition (ArcFace) model")
            )
        logger.info(
            "insightface face backend: %s on %s loaded in %.2f s",
            self.model_dir,
            providers[0],
            time.perf_counter() - started,
        )

    def detect(self, image: Image.Image) -> list[Face]:
        bgr = to_bgr_array(image)
        height, width = bgr.shape[:2]
        faces: list[Face] = []
        for found in self._app.get(bgr):
            score = float(found.det_score)
            embedding = found.normed_embedding
            if score < self.min_score or embedding is None:
                continue
            bbox = _clamp_bbox(found.bbox, width, height)
            if bbox is None:
                continue
            faces.append(Face(bbox=bbox, score=score, embedding=_unit(embedding)))
        return _largest_first(faces)

    def detect_many(self, images: Sequence[Image.Image]) -> list[list[Face]]:
        # onnxruntime already spreads one image over the cores (or runs it on the GPU)
        return [self.detect(image) for image in images]


def load_face_backend(models: ModelSet | TinyModels, min_score: float) -> FaceBackend:
    """The backend `models.face_backend` names; `min_score` (evaluate.face_min_score) applies to InsightFace only."""
    if models.face_backend == "dlib":
        return DlibFaceBackend()
    if models.face_backend == "insightface":
        # TinyModels has no face_model fields; it gets InsightFace's defaults.
        return InsightFaceBackend(
            model_name=getattr(models, "face_model", "buffalo_l"),
            root=getattr(models, "face_model_root", None),
            min_score=min_score,
        )
    raise ValueError(f"unknown face backend {models.face_backend!r} (expected 'insightface' or 'dlib')")
