"""A small fixed library of body poses: ControlNet OpenPose condition images and the sample character's limbs.

The planner LLM is offered `POSE_NAMES` and must pick one per frame; free text that slips through is mapped
back onto the list by `normalise_pose_label`. Each pose is the 18 OpenPose COCO keypoints of one full-body
figure in a square frame, so the same pose drives both the condition image for generation (`render_openpose`)
and the offline sample drawings (`storyboard.sample_data`).

The keypoints are built by forward kinematics from a few joint angles rather than typed in as coordinates:
every pose then has the same bone lengths, which keeps the figures anatomically consistent and makes a pose
easy to read and adjust.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

Point = tuple[float, float]
# How much of the character a frame shows: the planner picks one per frame, the condition image follows it.
Shot = Literal["close-up", "medium", "wide"]

POSE_NAMES: tuple[str, ...] = (
    "standing",
    "walking",
    "running",
    "riding",
    "sitting",
    "pointing",
    "laughing",
    "waving",
    "jumping",
    "kneeling",
    "arms_crossed",
    "looking_back",
    "talking",
    "sneaking",
)

# OpenPose COCO-18 order; the index of a name is its slot in `Pose.keypoints`.
KEYPOINT_NAMES: tuple[str, ...] = (
    "nose",
    "neck",
    "r_shoulder",
    "r_elbow",
    "r_wrist",
    "l_shoulder",
    "l_elbow",
    "l_wrist",
    "r_hip",
    "r_knee",
    "r_ankle",
    "l_hip",
    "l_knee",
    "l_ankle",
    "r_eye",
    "l_eye",
    "r_ear",
    "l_ear",
)

# The limb pairs (0-based keypoint indices) and colours of the original OpenPose renderer as used by
# controlnet_aux: ControlNet OpenPose models were trained on exactly these, so any other palette or order
# weakens the conditioning. The limb i is drawn in colour i (at 60 % brightness), keypoint i in colour i.
LIMB_SEQUENCE: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)  # fmt: skip
OPENPOSE_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip
_LIMB_BRIGHTNESS = 0.6  # controlnet_aux draws limbs at 0.6 x colour, keypoints at full colour

# Bone lengths in frame units (the frame is 1 x 1); a standing figure spans about y 0.07 (top of head) to
# 0.88 (ankles), i.e. ~7.5 heads tall, and leaves room above the head for raised arms.
_NECK_TO_HIP = 0.26
_SHOULDER_HALF = 0.08
_HIP_HALF = 0.055
_UPPER_ARM = 0.14
_FOREARM = 0.13
_THIGH = 0.20
_SHIN = 0.20

# Face keypoints on a head seen from above: (azimuth around the vertical axis in degrees, 0 = straight at the
# viewer, negative = the person's right = image left; distance from the head's axis; height above the neck).
# A head turned by `yaw` adds yaw to every azimuth; a feature whose azimuth passes ~100 degrees is hidden.
_FACE_FEATURES: dict[str, tuple[float, float, float]] = {
    "nose": (0.0, 0.05, 0.085),
    "r_eye": (-30.0, 0.044, 0.105),
    "l_eye": (30.0, 0.044, 0.105),
    "r_ear": (-90.0, 0.046, 0.09),
    "l_ear": (90.0, 0.046, 0.09),
}
_HIDDEN_BELOW = -0.2  # cos(azimuth) under this: the feature faces away from the camera


@dataclass(frozen=True)
class Pose:
    """One figure: 18 OpenPose keypoints in frame units (x right, y down, 0..1); None = not visible."""

    name: str
    keypoints: tuple[Point | None, ...]

    def __post_init__(self) -> None:
        if len(self.keypoints) != len(KEYPOINT_NAMES):
            raise ValueError(f"pose {self.name!r}: {len(self.keypoints)} keypoints, OpenPose needs 18")

    def point(self, name: str) -> Point | None:
        """The keypoint called `name` (see KEYPOINT_NAMES)."""
        return self.keypoints[KEYPOINT_NAMES.index(name)]


@dataclass(frozen=True)
class _Spec:
    """Joint angles of a pose. Angles are in degrees from straight down, positive towards image right.

    Each limb is (upper angle, lower angle) with optional length factors, which stand in for a limb pointing
    towards the camera (foreshortened). The person's right side is on the image left when facing us.
    """

    neck: Point
    torso: float = 0.0  # neck -> hip direction; negative = upper body leans towards image right
    shoulder_width: float = 1.0  # < 1: body turned sideways
    hip_width: float = 1.0
    r_arm: tuple[float, float] = (-8.0, -4.0)
    l_arm: tuple[float, float] = (8.0, 4.0)
    r_leg: tuple[float, float] = (-3.0, -1.0)
    l_leg: tuple[float, float] = (3.0, 1.0)
    r_arm_len: tuple[float, float] = (1.0, 1.0)
    l_arm_len: tuple[float, float] = (1.0, 1.0)
    r_leg_len: tuple[float, float] = (1.0, 1.0)
    l_leg_len: tuple[float, float] = (1.0, 1.0)
    head_tilt: float = 0.0  # head rolled towards image right (degrees)
    yaw: float = 0.0  # face turned towards image right (degrees)


_SPECS: dict[str, _Spec] = {
    "standing": _Spec(neck=(0.5, 0.22)),
    # Three-quarter view walking towards image right: opposite arm and leg swing forward.
    "walking": _Spec(
        neck=(0.5, 0.22), torso=-3, shoulder_width=0.55, hip_width=0.5, yaw=40,
        r_arm=(-22, -12), l_arm=(25, 45), r_leg=(20, 3), l_leg=(-18, -30),
    ),
    # Mid-flight stride: forward knee high, back foot kicked up, elbows bent, upper body leaning in.
    "running": _Spec(
        neck=(0.52, 0.3), torso=-12, shoulder_width=0.5, hip_width=0.5, yaw=45,
        r_arm=(-55, 10), l_arm=(40, 140), r_leg=(60, 0), l_leg=(-30, -115),
    ),
    # Astride a horse seen from the front: thighs spread round the barrel, hands together on the reins.
    "riding": _Spec(
        neck=(0.5, 0.3), r_arm=(-12, 45), l_arm=(12, -45), r_arm_len=(0.95, 0.9), l_arm_len=(0.95, 0.9),
        r_leg=(-50, -8), l_leg=(50, 8), r_leg_len=(0.75, 1.0), l_leg_len=(0.75, 1.0),
    ),
    # Side view on a chair: thighs level, shins down, hands resting on the knees.
    "sitting": _Spec(
        neck=(0.42, 0.36), shoulder_width=0.45, hip_width=0.4, yaw=30,
        r_arm=(15, 70), l_arm=(22, 75), r_leg=(85, 0), l_leg=(88, 3),
    ),
    "pointing": _Spec(neck=(0.55, 0.22), yaw=-30, r_arm=(-88, -90), l_arm=(8, 4), r_leg=(-6, -2), l_leg=(5, 1)),
    # Head thrown to one side, hands holding the belly, knees slightly bent.
    "laughing": _Spec(
        neck=(0.5, 0.23), head_tilt=18, r_arm=(-20, 60), l_arm=(20, -60),
        r_leg=(-8, 4), l_leg=(8, -4),
    ),
    "waving": _Spec(neck=(0.5, 0.25), l_arm=(120, 170), r_leg=(-4, -1), l_leg=(4, 1)),
    # Star jump: arms up in a V, legs spread.
    "jumping": _Spec(
        neck=(0.5, 0.28), r_arm=(-140, -155), l_arm=(140, 155), r_leg=(-22, -26), l_leg=(22, 26),
    ),
    # Side view on one knee: right knee and shin on the ground, left foot planted, left hand on that knee.
    "kneeling": _Spec(
        neck=(0.45, 0.42), shoulder_width=0.45, hip_width=0.4, yaw=35,
        r_arm=(-5, -2), l_arm=(15, 40), r_leg=(0, -92), l_leg=(80, 0),
    ),
    "arms_crossed": _Spec(
        neck=(0.5, 0.22), r_arm=(-15, 100), l_arm=(15, -100), r_arm_len=(0.85, 1.0), l_arm_len=(0.85, 1.0),
        r_leg=(-5, -2), l_leg=(5, 2),
    ),
    # Body walking away to image right, head turned back over the shoulder towards image left.
    "looking_back": _Spec(
        neck=(0.5, 0.22), shoulder_width=0.5, hip_width=0.45, yaw=-75, head_tilt=-6,
        r_arm=(-5, -2), l_arm=(10, 5), r_leg=(12, 2), l_leg=(-10, -15),
    ),
    # One hand raised palm-out in a speaking gesture, face turned to the listener.
    "talking": _Spec(neck=(0.48, 0.22), yaw=25, l_arm=(25, 110)),
    # Crouched on tiptoe, leaning forward to image right, hands raised in front.
    "sneaking": _Spec(
        neck=(0.58, 0.33), torso=-35, shoulder_width=0.45, hip_width=0.4, yaw=45,
        r_arm=(30, 150), l_arm=(10, 140), r_leg=(35, 0), l_leg=(-20, -50),
    ),
}  # fmt: skip


def _step(start: Point, angle_deg: float, length: float) -> Point:
    a = math.radians(angle_deg)
    return (start[0] + length * math.sin(a), start[1] + length * math.cos(a))


def _limb(root: Point, angles: tuple[float, float], bones: tuple[float, float], factors: tuple[float, float]):
    joint = _step(root, angles[0], bones[0] * factors[0])
    end = _step(joint, angles[1], bones[1] * factors[1])
    return joint, end


def _face(neck: Point, tilt_deg: float, yaw_deg: float) -> dict[str, Point | None]:
    """Face keypoints of a head on `neck`, rolled by `tilt_deg` and turned by `yaw_deg`."""
    tilt = math.radians(tilt_deg)
    up = (math.sin(tilt), -math.cos(tilt))  # the head's own "up" in image coordinates
    side = (math.cos(tilt), math.sin(tilt))  # the head's own "image right"
    out: dict[str, Point | None] = {}
    for name, (azimuth, radius, height) in _FACE_FEATURES.items():
        turned = math.radians(azimuth + yaw_deg)
        if math.cos(turned) < _HIDDEN_BELOW:
            out[name] = None
            continue
        lateral = radius * math.sin(turned)
        out[name] = (neck[0] + up[0] * height + side[0] * lateral, neck[1] + up[1] * height + side[1] * lateral)
    return out


def _build(name: str, spec: _Spec) -> Pose:
    neck = spec.neck
    down = math.radians(spec.torso)
    # Unit vector across the body, pointing to image right (the person's left when facing us).
    across = (math.cos(down), -math.sin(down))
    hip_centre = _step(neck, spec.torso, _NECK_TO_HIP)
    sw, hw = _SHOULDER_HALF * spec.shoulder_width, _HIP_HALF * spec.hip_width
    r_shoulder = (neck[0] - across[0] * sw, neck[1] - across[1] * sw)
    l_shoulder = (neck[0] + across[0] * sw, neck[1] + across[1] * sw)
    r_hip = (hip_centre[0] - across[0] * hw, hip_centre[1] - across[1] * hw)
    l_hip = (hip_centre[0] + across[0] * hw, hip_centre[1] + across[1] * hw)
    arm, leg = (_UPPER_ARM, _FOREARM), (_THIGH, _SHIN)
    r_elbow, r_wrist = _limb(r_shoulder, spec.r_arm, arm, spec.r_arm_len)
    l_elbow, l_wrist = _limb(l_shoulder, spec.l_arm, arm, spec.l_arm_len)
    r_knee, r_ankle = _limb(r_hip, spec.r_leg, leg, spec.r_leg_len)
    l_knee, l_ankle = _limb(l_hip, spec.l_leg, leg, spec.l_leg_len)
    points: dict[str, Point | None] = {
        "neck": neck,
        "r_shoulder": r_shoulder, "r_elbow": r_elbow, "r_wrist": r_wrist,
        "l_shoulder": l_shoulder, "l_elbow": l_elbow, "l_wrist": l_wrist,
        "r_hip": r_hip, "r_knee": r_knee, "r_ankle": r_ankle,
        "l_hip": l_hip, "l_knee": l_knee, "l_ankle": l_ankle,
    }  # fmt: skip
    points |= _face(neck, spec.head_tilt, spec.yaw)
    keypoints = tuple(None if (p := points[k]) is None else (round(p[0], 4), round(p[1], 4)) for k in KEYPOINT_NAMES)
    return Pose(name=name, keypoints=keypoints)


POSES: dict[str, Pose] = {name: _build(name, _SPECS[name]) for name in POSE_NAMES}


def get_pose(name: str) -> Pose:
    """The pose called `name`; KeyError naming the known poses otherwise."""
    try:
        return POSES[name]
    except KeyError:
        raise KeyError(f"unknown pose {name!r}; known poses: {', '.join(POSE_NAMES)}") from None


# Shot framing, in pose units (a standing figure is ~0.81 tall). The top of the head sits this far above the neck.
_HEAD_ABOVE_NECK = 0.15
_CLOSE_UP_BELOW_NECK = 0.05  # head and shoulders: the window ends just below the shoulder line
_MEDIUM_BELOW_HIP = 0.07  # upper body: the window ends just below the hips
_HEADROOM = 0.03
_WIDE_FIGURE_HEIGHT = 0.6  # a wide shot shows the whole figure at this share of the frame height


def _window(pose: Pose, shot: Shot) -> tuple[float, float, float]:
    """The square of the pose's unit frame that a `shot` shows: (left, top, side)."""
    neck = pose.point("neck")
    hips = [pose.point("r_hip"), pose.point("l_hip")]
    hip = (sum(h[0] for h in hips) / 2, max(h[1] for h in hips))
    head_top = neck[1] - _HEAD_ABOVE_NECK - _HEADROOM
    if shot == "close-up":
        side, centre_x = neck[1] + _CLOSE_UP_BELOW_NECK - head_top, neck[0]
    elif shot == "medium":
        side, centre_x = hip[1] + _MEDIUM_BELOW_HIP - head_top, (neck[0] + hip[0]) / 2
    else:
        points = [p for p in pose.keypoints if p is not None]
        top = min(head_top + _HEADROOM, *(p[1] for p in points))
        bottom = max(p[1] for p in points)
        left, right = min(p[0] for p in points), max(p[0] for p in points)
        side = max(bottom - top, right - left) / _WIDE_FIGURE_HEIGHT
        return (left + right - side) / 2, (top + bottom - side) / 2, side
    return centre_x - side / 2, head_top, side


def frame_pose(pose: Pose, shot: Shot) -> Pose:
    """`pose` as a `shot` frames it: close-up = head and shoulders filling the frame, medium = the upper body down
    to the hips, wide = the whole figure at ~60 % of the frame height.

    Keypoints that fall outside the frame are dropped, as an OpenPose detector run on such a shot would miss them,
    so the condition looks like those the ControlNet was trained on; what stays keeps the pose's own angles
    (a close-up of "laughing" still has its tilted head, one of "looking_back" its turned face).
    """
    left, top, side = _window(pose, shot)
    keypoints = []
    for p in pose.keypoints:
        q = None if p is None else ((p[0] - left) / side, (p[1] - top) / side)
        keypoints.append(q if q is not None and 0.0 <= q[0] <= 1.0 and 0.0 <= q[1] <= 1.0 else None)
    return Pose(name=pose.name, keypoints=tuple(keypoints))


def _limb_polygon(a: tuple[float, float], b: tuple[float, float], half_width: float) -> list[tuple[float, float]]:
    """The filled ellipse spanning a..b that OpenPose draws for a limb (cv2.ellipse2Poly equivalent)."""
    (x0, y0), (x1, y1) = a, b
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half_length = math.hypot(x1 - x0, y1 - y0) / 2
    angle = math.atan2(y1 - y0, x1 - x0)
    t = np.linspace(0.0, 2 * math.pi, 72, endpoint=False)
    ex, ey = half_length * np.cos(t), half_width * np.sin(t)
    xs = cx + ex * math.cos(angle) - ey * math.sin(angle)
    ys = cy + ex * math.sin(angle) + ey * math.cos(angle)
    return list(zip(xs.tolist(), ys.tolist(), strict=True))


def render_openpose(pose: Pose, width: int, height: int) -> Image.Image:
    """The ControlNet OpenPose condition image of `pose`: coloured skeleton on black, `width` x `height` RGB.

    The pose's unit square is fitted to the centred min(width, height) square so the figure keeps its
    proportions in any frame shape. Limb and dot sizes follow controlnet_aux (4 px at 512 px), scaled.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    pixels = [None if p is None else (left + p[0] * side, top + p[1] * side) for p in pose.keypoints]
    stick = max(1.0, 4.0 * side / 512)
    radius = max(1.0, 4.0 * side / 512)

    image = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    for (i, j), colour in zip(LIMB_SEQUENCE, OPENPOSE_COLORS, strict=False):
        a, b = pixels[i], pixels[j]
        if a is None or b is None:
            continue
        dim = tuple(int(c * _LIMB_BRIGHTNESS) for c in colour)
        draw.polygon(_limb_polygon(a, b, stick), fill=dim)
    for p, colour in zip(pixels, OPENPOSE_COLORS, strict=True):
        if p is not None:
            draw.ellipse((p[0] - radius, p[1] - radius, p[0] + radius, p[1] + radius), fill=colour)
    return image


# Keyword rules for free-text pose labels, tried in this order; the first that matches wins. Whole-body
# states (mounted, seated, kneeling, airborne, crouched) come first because they decide the silhouette even
# when a gesture is also named ("sits and points" is drawn seated); then locomotion; then arm and head
# gestures; anything unmatched is drawn standing. Patterns match at word starts, so "rides", "riding" and
# "rode" all hit the riding rule.
_LABEL_RULES: tuple[tuple[str, str], ...] = (
    ("riding", r"\b(rid(e|es|er|ers|ing)|rode|horseback|mounted|on (a |his |her |the )?(horse|camel|donkey)|gallop)"),
    ("kneeling", r"\b(kneel|knelt|on (one|his|her|both) knees?|bows? down|prostrat)"),
    ("sitting", r"\b(sit|sits|sat|seated|sitting|squat|perch)"),
    ("jumping", r"\b(jump|leap|hop(s|ped|ping)?\b|spring(s|ing)? up|bounc)"),
    ("sneaking", r"\b(sneak|snuck|creep|crept|tiptoe|crouch|prowl|stealth|slink)"),
    ("running", r"\b(run|runs|ran|running|sprint|dash|flee|fled|chas|rush|hurr(y|ies|ied))"),
    ("looking_back", r"\b(look(s|ing)? back|glanc\w* back|over (his|her|the|one'?s) shoulder|turn\w* (around|back))"),
    ("walking", r"\b(walk|stroll|wander|march|stride|strode|steps?\b|approach|arriv|enter|leav|go(es)?\b|went)"),
    ("arms_crossed", r"\b(arms? (are )?(crossed|folded)|cross\w* (his |her )?arms|fold\w* (his |her )?arms)"),
    ("pointing", r"\b(point|indicat|show(s|ing)? the way)"),
    ("waving", r"\b(wav|greet|farewell|hail|beckon)"),
    ("laughing", r"\b(laugh|chuckl|giggl|grin\b|grins|grinning|smil)"),
    ("talking", r"\b(talk|speak|spoke|say|said|tell|told|ask|shout|argu|chat|explain|bargain|haggl|"
                r"reply|answer|whisper|call)"),
    ("standing", r"\b(stand|stood|wait)"),
)  # fmt: skip
_DEFAULT_POSE = "standing"


def normalise_pose_label(label: str) -> str:
    """Map a planner's free-text pose ("Running", "riding a horse", "points at the merchant") to a pose name.

    Rule: a label that already is a pose name (any case, spaces or hyphens for underscores) is kept; else the
    first rule of `_LABEL_RULES` whose keywords occur in it wins (whole-body states before locomotion before
    gestures); else "standing", the neutral pose that suits any scene.
    """
    text = re.sub(r"[\s_\-]+", " ", label.strip().lower())
    as_name = text.replace(" ", "_")
    if as_name in POSES:
        return as_name
    for name, pattern in _LABEL_RULES:
        if re.search(pattern, text):
            return name
    return _DEFAULT_POSE
