"""A random-weight InsightFace model pack in buffalo_l's layout, built offline: the tiny profile's InsightFace.

`FaceAnalysis` picks each model of a pack by its signature alone (insightface/model_zoo/model_zoo.py): a graph with
9 outputs is an SCRFD detector with keypoints (scores, box distances and 5 keypoints at strides 8/16/32, two anchors
a cell), and one with a square input of 112 px is an ArcFace recogniser. The two files written here carry exactly
those signatures, as small graphs of real ONNX operators (convolutions, pooling, a dense layer) with seeded random
weights, so insightface loads, prepares and runs them through the same code as the released pack.

Their faces are meaningless. Random weights detect nothing, so the detector adds a fixed term to its scores: the
stride-32 cell at the centre of its input is a confident face (box a quarter of the input's side, keypoints where
ArcFace's alignment template puts eyes, nose and mouth), every other cell is not. Every image therefore has exactly
one face, at the centre of the detector's letterboxed input (the image's centre for a square image; none for an
image more than 8:3 wide or tall, where that centre is padding), and its embedding is a random projection of the
aligned crop. Only the plumbing is checked: detection, alignment, embeddings,
face crops and the face figures, never whether a face is found or recognised.

buffalo_l's landmark and gender/age models are left out: the face backend loads detection and recognition only.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from storyboard import TINY_NOTICE
from storyboard.fsutil import atomic_path

logger = logging.getLogger(__name__)

PACK_NAME = "buffalo_l"
DETECTOR_FILE = "det_10g.onnx"
RECOGNISER_FILE = "w600k_r50.onnx"
# Bump when a graph below changes, so a pack built by older code is rebuilt rather than reused.
PACK_VERSION = 1
OPSET = 13
STRIDES = (8, 16, 32)
ANCHORS = 2  # per cell, as in buffalo_l's SCRFD-10GF
EMBEDDING_SIZE = 512
RECOGNISER_SIDE = 112
# ArcFace's 5-point template in a 112 px crop (insightface.utils.face_align.arcface_dst): eyes, nose, mouth corners.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
FACE_SHARE = 0.25  # the fixed face's box side, as a share of the detector input's side
FACE_LOGIT = 6.0  # score logit of the centre cell (sigmoid ~0.998) ...
FACE_LOGIT_PER_CELL = 12.0  # ... falling this much per cell away from it (a neighbour scores ~0.002)
NO_FACE_LOGIT = -12.0  # strides 8 and 16 never fire


def pack_dir(root: Path) -> Path:
    """Where the pack lies under `root`: FaceAnalysis(name='buffalo_l', root=root) reads <root>/models/buffalo_l."""
    return Path(root) / "models" / PACK_NAME


def ensure_pack(root: Path, *, seed: int) -> Path:
    """Build the pack under `root` unless this version with this seed is there; returns `root`."""
    root = Path(root)
    built = pack_dir(root) / "BUILT.json"
    try:
        done = json.loads(built.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        done = None
    if done != _stamp(seed):
        build_pack(root, seed=seed)
    return root


def build_pack(root: Path, *, seed: int) -> None:
    """Write the detector and recogniser under <root>/models/buffalo_l/ (atomically, as one folder).

    Args:
        root: what `models.*.face_model_root` names (the folder that holds models/).
        seed: seeds every random weight; the same seed writes the same bytes.
    """
    import onnx

    rng = np.random.default_rng(seed)
    target = pack_dir(root)
    logger.info("building a random-weight InsightFace pack (seed %d) in %s", seed, target)
    with atomic_path(target) as folder:
        folder.mkdir(parents=True)
        onnx.save_model(_detector(rng), str(folder / DETECTOR_FILE))
        onnx.save_model(_recogniser(rng), str(folder / RECOGNISER_FILE))
        (folder / "README.txt").write_text(f"{TINY_NOTICE}\n{__doc__}", encoding="utf-8")
        (folder / "BUILT.json").write_text(json.dumps(_stamp(seed), indent=2) + "\n", encoding="utf-8")


def _stamp(seed: int) -> dict:
    return {"seed": seed, "pack_version": PACK_VERSION, "notice": TINY_NOTICE}


class _Graph:
    """Collects nodes and initializers; names are generated, and none starts with "Sub" or "Mul": ArcFaceONNX
    reads such names among a graph's first nodes as an MXNet export with its own input scaling."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng, self.nodes, self.weights = rng, [], []

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.weights.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str, **attrs) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op_type, inputs, [name], name=f"node_{name}", **attrs))
        return name

    def conv(self, x: str, name: str, cin: int, cout: int, *, kernel: int, stride: int, std: float | None = None):
        """A convolution with random weights (He scale unless `std`); padding keeps ceil(size / stride)."""
        std = np.sqrt(2.0 / (cin * kernel * kernel)) if std is None else std
        w = self.const(f"{name}.weight", self.rng.normal(0, std, (cout, cin, kernel, kernel)).astype(np.float32))
        b = self.const(f"{name}.bias", np.zeros(cout, dtype=np.float32))
        pad = kernel // 2
        return self.op("Conv", [x, w, b], name, kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[pad] * 4)

    def model(self, name: str, inputs: list, outputs: list):
        from onnx import helper

        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.weights)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="storyboard")
        # The IR version of this opset, not the onnx package's newest: older onnxruntime builds load it too.
        model.ir_version = 7
        return model


def _detector(rng: np.random.Generator):
    """SCRFD's signature: input 1x3xHxW (H, W symbolic), outputs scores (N,1), boxes (N,4), keypoints (N,10) at
    strides 8, 16, 32 in that order, N = (H/stride)*(W/stride)*2."""
    import onnx
    from onnx import TensorProto, helper

    g = _Graph(rng)
    x, cin, levels = "input.1", 3, {}
    for i, (cout, stride) in enumerate(((8, 2), (16, 4), (16, 8), (16, 16), (16, 32))):
        x = g.op("Relu", [g.conv(x, f"backbone{i}", cin, cout, kernel=3, stride=2)], f"backbone{i}.relu")
        cin = cout
        if stride in STRIDES:
            levels[stride] = x
    outputs = {}
    for stride, feature in levels.items():
        head = {
            kind: g.conv(feature, f"{kind}{stride}.conv", cin, ANCHORS * size, kernel=1, stride=1, std=0.02)
            for kind, size in (("score", 1), ("bbox", 4), ("kps", 10))
        }
        if stride == max(STRIDES):
            logit, bbox, kps = _fixed_face(g, head)
        else:
            no_face = g.const(f"no_face{stride}", np.float32(NO_FACE_LOGIT))
            logit, bbox, kps = g.op("Add", [head["score"], no_face], f"logit{stride}"), head["bbox"], head["kps"]
        outputs[f"score_{stride}"] = g.op("Sigmoid", [logit], f"score_{stride}.sigmoid"), 1
        outputs[f"bbox_{stride}"] = bbox, 4
        outputs[f"kps_{stride}"] = kps, 10
    order = [f"{kind}_{stride}" for kind in ("score", "bbox", "kps") for stride in STRIDES]
    outs = []
    for name in order:
        tensor, size = outputs[name]
        # NCHW -> (cells x anchors, size): row order y, x, anchor, as SCRFD lays its anchor centres out.
        nhwc = g.op("Transpose", [tensor], f"{name}.nhwc", perm=[0, 2, 3, 1])
        g.op("Reshape", [nhwc, g.const(f"{name}.shape", np.array([-1, size], dtype=np.int64))], name)
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"{name}_rows", size]))
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])
    model = g.model("scrfd_random", [image], outs)
    onnx.checker.check_model(model, full_check=True)
    return model


def _fixed_face(g: _Graph, head: dict[str, str]) -> tuple[str, str, str]:
    """Score logits and box and keypoint distances (in cells) of the coarsest level: its random heads plus the fixed
    face at the centre cell."""
    ones = g.op("ConstantOfShape", [g.op("Shape", [head["score"]], "face.shape")], "face.ones", value=_one())
    minus_one, half = g.const("face.minus_one", np.float32(-1.0)), g.const("face.half", np.float32(0.5))
    # Cell indices from the feature map's own shape (cumulative sums of ones), so any input size works.
    counts, distances = [], []
    for axis, name in ((3, "x"), (2, "y")):
        cumulative = g.op("CumSum", [ones, g.const(f"face.axis_{name}", np.int64(axis))], f"face.cum_{name}")
        counts.append(g.op("ReduceMax", [cumulative], f"face.cells_{name}", keepdims=1))
        index = g.op("Add", [cumulative, minus_one], f"face.index_{name}")
        centre = g.op("Mul", [counts[-1], half], f"face.centre_{name}")  # a half for an odd count: two cells tie
        distances.append(g.op("Abs", [g.op("Sub", [index, centre], f"face.off_{name}")], f"face.dist_{name}"))
    away = g.op("Add", distances, "face.away")
    drop = g.op("Mul", [away, g.const("face.slope", np.float32(-FACE_LOGIT_PER_CELL))], "face.drop")
    bonus = g.op("Add", [drop, g.const("face.peak", np.float32(FACE_LOGIT))], "face.bonus")
    logit = g.op("Add", [head["score"], bonus], "face.logit")
    # Distances scale with the input: the face's side is FACE_SHARE of it, the keypoints sit on ArcFace's template.
    side = g.op("Mul", [counts[0], g.const("face.share", np.float32(FACE_SHARE))], "face.side")
    box = np.full((1, ANCHORS * 4, 1, 1), 0.5, dtype=np.float32)  # left, top, right, bottom: half the side each
    points = (ARCFACE_TEMPLATE / RECOGNISER_SIDE - 0.5).reshape(-1)  # x, y offsets from the centre, in sides
    kps = np.tile(points, ANCHORS).reshape(1, ANCHORS * 10, 1, 1).astype(np.float32)
    box_cells = g.op("Mul", [side, g.const("face.box", box)], "face.box_cells")
    kps_cells = g.op("Mul", [side, g.const("face.kps", kps)], "face.kps_cells")
    return (
        logit,
        g.op("Add", [head["bbox"], box_cells], "face.bbox"),
        g.op("Add", [head["kps"], kps_cells], "face.kpss"),
    )


def _one():
    from onnx import TensorProto, helper

    return helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])


def _recogniser(rng: np.random.Generator):
    """ArcFace's signature: input Nx3x112x112, output Nx512 (a random projection of pooled conv features)."""
    import onnx
    from onnx import TensorProto, helper

    g = _Graph(rng)
    x, cin = "input.1", 3
    for i, cout in enumerate((16, 32, 64)):
        x = g.op("Relu", [g.conv(x, f"conv{i}", cin, cout, kernel=3, stride=2)], f"conv{i}.relu")
        cin = cout
    pooled = g.op("Flatten", [g.op("GlobalAveragePool", [x], "pool")], "pooled")
    weight = g.const("fc.weight", rng.normal(0, 1 / np.sqrt(cin), (cin, EMBEDDING_SIZE)).astype(np.float32))
    bias = g.const("fc.bias", rng.normal(0, 0.1, EMBEDDING_SIZE).astype(np.float32))
    g.op("Gemm", [pooled, weight, bias], "embedding")
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, RECOGNISER_SIDE, RECOGNISER_SIDE])
    out = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["None", EMBEDDING_SIZE])
    model = g.model("arcface_random", [image], [out])
    onnx.checker.check_model(model, full_check=True)
    return model
