"""What each compared figure measures: its group, whether it is timing, and the headline figures with tolerances.

The grouping is by name, not by a fixed list of rows: a figure or a mode this module has never heard of still shows
up (its group falls back to "other"), so a new metric key never disappears from a pull request's report.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from storyboard.errors import StoryboardError
from storyboard.settings import MODES

EVAL_METRICS = "metrics/eval.json"  # the evaluate stage's metrics file (dvc.yaml)
TRAIN_METRICS = "metrics/train.json"
CAPTION_METRICS = "metrics/caption.json"
TRAIN_LOG = "dvclive/train"  # not a DVC metrics file: the training time is summed from its step-time plot
FIRST_ATTEMPT = "_first_attempt"  # evaluate's suffix: the same figure on each frame's first attempt

# (group, what the group's details block is titled), in the report's order.
GROUPS: tuple[tuple[str, str], ...] = (
    ("identity", "Identity: did the character stay the same"),
    ("text", "Text: did the frames follow the story"),
    ("detection", "Detection: was the character (and a face) found"),
    ("cost", "Cost: attempts, time"),
    ("checks", "Checks: the frame checks' thresholds"),
    ("training", "Training: the chosen LoRA step"),
    ("captions", "Captions"),
    ("run", "Run: profile and models"),
    ("other", "Other: figures this report does not group yet"),
)

# evaluate's figures (storyboard/evaluate/scores.py `summarise`), in the order each group lists them.
EVAL_GROUPS: dict[str, str] = {
    **dict.fromkeys(
        (
            "vistorybench_self_cids",
            "vistorybench_cross_cids",
            "vistorybench_self_cids_face",
            "vistorybench_cross_cids_face",
            "character_to_first",
            "character_pairwise",
            "character_to_references",
            "clip_image_to_first",
            "face_similarity_to_first",
            "face_pairwise",
            "face_pairs_scored",
            "face_pairs_possible",
        ),
        "identity",
    ),
    "clip_text_score": "text",
    **dict.fromkeys(
        (
            "character_detection_rate",
            "character_whole_frame_fallbacks",
            "face_detection_rate",
            "face_in_box_rate",
            "face_whole_frame_fallbacks",
            "vistorybench_occm",
        ),
        "detection",
    ),
    **dict.fromkeys(("frames", "attempts_per_frame", "seconds_per_frame"), "cost"),
    # generate's thresholds (calibrated or fixed): they decide which frames are rendered again.
    **dict.fromkeys(
        ("clip_threshold", "clip_threshold_source", "likeness_threshold", "likeness_threshold_source"), "checks"
    ),
}
# Keys nobody has listed yet, placed by a word in their name: generate's retry bookkeeping is cost.
NAME_GROUPS: tuple[tuple[str, str], ...] = (("attempts", "cost"), ("redone", "cost"), ("seconds", "cost"))
FILE_GROUPS = {TRAIN_METRICS: "training", CAPTION_METRICS: "captions", TRAIN_LOG: "cost"}
RUN_KEYS = ("profile", "notice", "vistorybench")  # eval.json's provenance, not figures
RUN_SECTIONS = ("models",)  # eval.json sections of provenance, also not figures and not modes
TIMING_WORDS = ("seconds", "time")  # a figure with one of these in its name is wall clock: noise, not a result


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    kind: str  # a TOLERANCES key
    face: bool = False  # shown only where a face was found on either side


# The figures that answer "did the character stay the same, and did the frames follow the story?"
HEADLINE: tuple[Figure, ...] = (
    Figure("vistorybench_self_cids", "Self-CIDS", "score"),
    Figure("vistorybench_cross_cids", "Cross-CIDS", "score"),
    Figure("vistorybench_self_cids_face", "Self-CIDS face", "score", face=True),
    Figure("vistorybench_cross_cids_face", "Cross-CIDS face", "score", face=True),
    Figure("face_pairwise", "face pairwise", "score", face=True),
    Figure("clip_text_score", "CLIP text", "score"),
    Figure("character_detection_rate", "character detected", "rate"),
    Figure("face_detection_rate", "face detected", "rate"),
)
HEADLINE_KEYS = {f.key: f for f in HEADLINE}
FACE_FOUND = "face_detection_rate"  # a face figure of a mode counts once this is above 0 on either side

# How far a headline figure may move before the verdict names it. Cosine similarities and the CLIP text score live
# on one scale (a cosine), detection rates are shares of frames; an absolute step on each.
SCORE_TOLERANCE = 0.01
RATE_TOLERANCE = 0.05
TOLERANCES: dict[str, float] = {"score": SCORE_TOLERANCE, "rate": RATE_TOLERANCE}


def tolerances_from(overrides: list[str] | None) -> dict[str, float]:
    """`score=0.02`, `rate=0.1` or `<headline figure>=0.005` (the CLI's `--tolerance`) over the defaults.

    Returns a map of kinds and figure keys to tolerances; a figure key wins over its kind.
    """
    result = dict(TOLERANCES)
    for item in overrides or []:
        name, _, value = item.partition("=")
        if name not in TOLERANCES and name not in HEADLINE_KEYS:
            names = ", ".join([*TOLERANCES, *HEADLINE_KEYS])
            raise StoryboardError(f"--tolerance {item}: {name!r} is none of {names} (e.g. --tolerance score=0.02)")
        try:
            result[name] = abs(float(value))
        except ValueError:
            raise StoryboardError(
                f"--tolerance {item}: {value!r} is not a number (e.g. --tolerance rate=0.1)"
            ) from None
    return result


def faces_found(figures: dict) -> bool:
    """Whether a mode's face detection rate (a Change) is above 0 on either side: its face figures mean something."""
    change = figures.get(FACE_FOUND)
    return change is not None and any(isinstance(v, int | float) and v > 0 for v in (change.old, change.new))


def tolerance_of(figure: Figure, tolerances: dict[str, float]) -> float:
    return tolerances.get(figure.key, tolerances[figure.kind])


def group_of(path: str, key: str) -> str:
    """The group of `key` of metrics file `path` (for eval.json: the figure name, without mode or story)."""
    if path != EVAL_METRICS:
        return FILE_GROUPS.get(path, "other")
    if key in RUN_KEYS or key.split(".")[0] in RUN_SECTIONS:
        return "run"
    base = key.removesuffix(FIRST_ATTEMPT)
    if base in EVAL_GROUPS:
        return EVAL_GROUPS[base]
    return next((group for word, group in NAME_GROUPS if word in key), "other")


def order_key(path: str, key: str) -> tuple:
    """Groups in GROUPS order; inside eval.json's groups the listed order, a `_first_attempt` right after its figure,
    then what nobody listed, by name."""
    group = group_of(path, key)
    base = key.removesuffix(FIRST_ATTEMPT)
    listed = list(EVAL_GROUPS).index(base) if path == EVAL_METRICS and base in EVAL_GROUPS else len(EVAL_GROUPS)
    return [g for g, _ in GROUPS].index(group), listed, key != base, path, key


def is_timing(key: str) -> bool:
    return any(word in key for word in TIMING_WORDS)


def order_modes(modes: set[str]) -> list[str]:
    """The pipeline's modes in their order, then any other (a mode added since) by name."""
    return [m for m in MODES if m in modes] + sorted(modes - set(MODES))


def split_eval(changes: dict) -> tuple[dict, dict, dict]:
    """eval.json's flattened keys as (mode -> figure -> value, story -> mode -> figure -> value, provenance).

    A mode is any section with figures directly under it (`<mode>.<figure>`), so a new generate mode needs no
    change here; `<mode>.stories.<story>.<figure>` are its per-story figures.
    """
    modes: dict[str, dict] = defaultdict(dict)
    stories: dict[str, dict[str, dict]] = defaultdict(lambda: defaultdict(dict))
    run: dict = {}
    for key, value in changes.items():
        parts = key.split(".")
        if key in RUN_KEYS or parts[0] in RUN_SECTIONS:
            run[key] = value
        elif len(parts) == 2:
            modes[parts[0]][parts[1]] = value
        elif len(parts) == 4 and parts[1] == "stories":
            stories[parts[2]][parts[0]][parts[3]] = value
        else:
            run[key] = value  # a shape evaluate does not write today: shown, never dropped
    return modes, stories, run
