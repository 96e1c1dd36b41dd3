"""The pose library: keypoint sanity, OpenPose rendering and free-text label mapping."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from storyboard.story.poses import (
    KEYPOINT_NAMES,
    OPENPOSE_COLORS,
    POSE_NAMES,
    Pose,
    frame_pose,
    get_pose,
    normalise_pose_label,
    render_openpose,
)

REQUIRED = {
    "standing", "walking", "running", "riding", "sitting", "pointing", "laughing", "waving",
    "jumping", "kneeling", "arms_crossed", "looking_back", "talking", "sneaking",
}  # fmt: skip


def test_pose_names_cover_the_planner_vocabulary() -> None:
    assert REQUIRED.issubset(POSE_NAMES)
    assert len(set(POSE_NAMES)) == len(POSE_NAMES)


@pytest.mark.parametrize("name", POSE_NAMES)
def test_every_pose_has_18_keypoints_inside_the_frame(name: str) -> None:
    pose = get_pose(name)
    assert pose.name == name
    assert len(pose.keypoints) == len(KEYPOINT_NAMES) == 18
    for point in pose.keypoints:
        if point is not None:
            assert 0.0 <= point[0] <= 1.0 and 0.0 <= point[1] <= 1.0, (name, point)
    # Every body joint is visible; only face points may hide (a turned head).
    assert all(pose.keypoints[i] is not None for i in range(14))


@pytest.mark.parametrize("name", POSE_NAMES)
def test_poses_are_plausible(name: str) -> None:
    pose = get_pose(name)
    nose, neck = pose.point("nose"), pose.point("neck")
    assert nose is not None and neck is not None
    assert nose[1] < neck[1], "head above the neck"
    ankles_y = max(pose.point("r_ankle")[1], pose.point("l_ankle")[1])  # type: ignore[index]
    assert ankles_y > 0.7, "feet near the bottom of the frame"
    # Bone lengths are shared by all poses (foreshortening may only shorten them).
    upper_arm = math.dist(pose.point("r_shoulder"), pose.point("r_elbow"))  # type: ignore[arg-type]
    shin = math.dist(pose.point("l_knee"), pose.point("l_ankle"))  # type: ignore[arg-type]
    assert 0.1 < upper_arm <= 0.15
    assert 0.15 < shin <= 0.21


def test_poses_differ_from_each_other() -> None:
    for a, b in itertools.combinations(POSE_NAMES, 2):
        pa, pb = np.array(get_pose(a).keypoints[:14]), np.array(get_pose(b).keypoints[:14])
        assert np.abs(pa - pb).mean() > 0.01, (a, b)


def test_riding_spreads_the_legs_and_looking_back_turns_the_head() -> None:
    riding, standing = get_pose("riding"), get_pose("standing")

    def knee_gap(p):
        return abs(p.point("l_knee")[0] - p.point("r_knee")[0])

    assert knee_gap(riding) > 2 * knee_gap(standing)
    back = get_pose("looking_back")
    assert back.point("r_ear") is None or back.point("l_ear") is None
    assert abs(back.point("nose")[0] - back.point("neck")[0]) > 0.03  # type: ignore[index]


def test_get_pose_unknown_lists_known_names() -> None:
    with pytest.raises(KeyError) as err:
        get_pose("moonwalking")
    message = str(err.value)
    assert "moonwalking" in message
    for name in POSE_NAMES:
        assert name in message


def test_render_openpose_size_background_and_colours() -> None:
    image = render_openpose(get_pose("standing"), 320, 192)
    assert image.size == (320, 192) and image.mode == "RGB"
    pixels = np.asarray(image)
    assert tuple(pixels[0, 0]) == (0, 0, 0) and tuple(pixels[-1, -1]) == (0, 0, 0)
    lit = pixels.reshape(-1, 3).any(axis=1)
    assert 0.005 < lit.mean() < 0.3, "a skeleton, not an empty or filled frame"
    colours = {tuple(c) for c in pixels.reshape(-1, 3)[lit]}
    assert len(colours & set(OPENPOSE_COLORS)) >= 10, "keypoints in the OpenPose palette"
    # Fitted into the centred square: nothing drawn in the side bands of a landscape frame.
    band = (320 - 192) // 2
    assert not pixels[:, : band - 2].any() and not pixels[:, -(band - 2) :].any()


def test_render_openpose_differs_by_pose_and_is_deterministic() -> None:
    a1 = np.asarray(render_openpose(get_pose("waving"), 256, 256))
    a2 = np.asarray(render_openpose(get_pose("waving"), 256, 256))
    b = np.asarray(render_openpose(get_pose("sitting"), 256, 256))
    assert np.array_equal(a1, a2)
    assert not np.array_equal(a1, b)


LEGS = ("r_knee", "r_ankle", "l_knee", "l_ankle")
FACE = ("nose", "r_eye", "l_eye", "r_ear", "l_ear")


def _visible(pose: Pose, names) -> list[str]:
    return [n for n in names if pose.point(n) is not None]


def _head_size(pose: Pose) -> float:
    """Neck to the nearest visible face point: how large the head is drawn."""
    neck = pose.point("neck")
    return min(math.dist(neck, pose.point(n)) for n in _visible(pose, FACE))


@pytest.mark.parametrize("name", POSE_NAMES)
def test_shots_frame_the_pose(name: str) -> None:
    close, medium, wide = (frame_pose(get_pose(name), shot) for shot in ("close-up", "medium", "wide"))
    # close-up: head and shoulders only, large
    assert close.point("neck") and _visible(close, FACE) and _visible(close, ("r_shoulder", "l_shoulder"))
    assert not _visible(close, ("r_hip", "l_hip", *LEGS))
    assert _head_size(close) > 0.25
    # medium: the upper body down to the hips, no feet
    assert _visible(medium, ("r_hip", "l_hip")) and not _visible(medium, ("r_ankle", "l_ankle"))
    # wide: the whole figure, smaller than the frame: its larger side spans 60 % of it, centred
    assert all(p is not None for p in wide.keypoints[:14])
    xs, ys = zip(*(p for p in wide.keypoints if p is not None), strict=True)
    assert max(ys) - min(ys) <= 0.61 and max(max(xs) - min(xs), max(ys) - min(ys)) >= 0.45
    assert 0.15 < min(ys) and max(ys) < 0.85
    # the nearer the shot, the larger the head
    assert _head_size(close) > _head_size(medium) > _head_size(wide)
    # the pose's own angles carry over: the head keeps its turn (same face points hidden)
    assert [p is None for p in close.keypoints[14:]] == [p is None for p in get_pose(name).keypoints[14:]]


def test_condition_image_extent_per_shot() -> None:
    """What the ControlNet sees: the lit rows of the condition image for each shot of the standing pose."""

    def lit_rows(shot: str) -> tuple[float, float]:
        rows = np.flatnonzero(
            np.asarray(render_openpose(frame_pose(get_pose("standing"), shot), 256, 256)).any(2).any(1)
        )
        return rows[0] / 256, rows[-1] / 256

    (c0, c1), (m0, m1), (w0, w1) = lit_rows("close-up"), lit_rows("medium"), lit_rows("wide")
    assert c0 > 0.25 and c1 > 0.75  # face in the upper half, shoulders at the bottom edge
    assert m0 < 0.2 and m1 > 0.85  # head at the top, hips at the bottom
    assert 0.5 < w1 - w0 < 0.65  # the whole figure, smaller
    assert c1 - c0 < m1 - m0


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("Running", "running"),
        ("riding a horse", "riding"),
        ("points at the merchant", "pointing"),
        ("arms_crossed", "arms_crossed"),
        ("Looking Back", "looking_back"),
        ("sits by the fire and laughs", "sitting"),
        ("kneels before the judge", "kneeling"),
        ("waves goodbye", "waving"),
        ("bursts out laughing", "laughing"),
        ("argues with the donkey seller", "talking"),
        ("creeps into the yurt", "sneaking"),
        ("strolls across the steppe", "walking"),
        ("leaps over the stream", "jumping"),
        ("glances back over his shoulder", "looking_back"),
        ("with his arms crossed", "arms_crossed"),
        ("stands on the steppe", "standing"),
        ("ponders the question", "standing"),
        ("", "standing"),
    ],
)
def test_normalise_pose_label(label: str, expected: str) -> None:
    assert normalise_pose_label(label) == expected
