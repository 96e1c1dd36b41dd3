"""An LLM's plan reply read as OpenAI-compatible servers send it, enforced schema or not.

Local servers (vLLM, llama.cpp, Ollama, LM Studio) often ignore the JSON schema: the JSON comes inside prose or a
code fence, the frames list comes bare, fields carry the model's own names (`index`, `description`) next to extras
(`title`), and `shot` or `pose` may be missing. `read_frames` takes a reply through three steps, each a plain
function: find the JSON (`find_json`), bring it into the plan's shape (`frame_items`, then `ReplyFrame`'s
validation aliases and the planner's defaults), and validate each frame with `Frame` itself, the model plan files
are read with. What can't be read raises `ReplyError`, whose text is short enough to quote back to the model.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

import json_repair
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from storyboard.openai_client import strip_thinking
from storyboard.story.plan import Frame
from storyboard.story.poses import normalise_pose_label

logger = logging.getLogger(__name__)

SUMMARY_CHARS = 200  # the re-ask quotes this much of what was wrong, never a whole validation dump


class ReplyError(ValueError):
    """The reply holds no usable plan; the message is a short summary of why."""


class ReplyFrame(BaseModel):
    """One frame as a model may name its fields: the aliases are what local models were seen to use."""

    model_config = ConfigDict(extra="ignore")  # `title`, `mood`, `characters`: not part of a frame

    number: int | None = Field(None, validation_alias=AliasChoices("number", "index", "frame", "frame_number", "id"))
    scene: str = Field(validation_alias=AliasChoices("scene", "description", "prompt", "text", "scene_description"))
    shot: str | None = Field(None, validation_alias=AliasChoices("shot", "shot_type", "camera", "framing"))
    pose: str | None = Field(None, validation_alias=AliasChoices("pose", "body_pose", "character_pose"))
    setting: str | None = Field(None, validation_alias=AliasChoices("setting", "location", "place", "background"))

    @field_validator("number", mode="before")
    @classmethod
    def _number_in_words(cls, value: Any) -> int | None:
        """`3`, `"3"` and `"Frame 3"` are frame 3; anything else is no number (the order of the list decides)."""
        if isinstance(value, bool):
            return None
        if isinstance(value, int | float):
            return int(value)
        found = re.search(r"\d+", value) if isinstance(value, str) else None
        return int(found.group()) if found else None

    @field_validator("shot", "pose", "setting", mode="before")
    @classmethod
    def _blank_is_missing(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value


# Words of a shot as models write them ("Medium shot", "extreme close-up", "establishing") -> the plan's shot.
_SHOT_WORDS = (
    ("close-up", r"close|closeup|portrait|head ?shot"),
    ("wide", r"wide|long|establishing|full|aerial|panoram"),
    ("medium", r"medium|mid|waist|cowboy|over.the.shoulder|two.shot|american"),
)
_OPENING = re.compile(r"[{\[]")
FRAME_LIST_KEYS = ("frames", "scenes", "storyboard", "panels", "shots", "plan")


def find_json(text: str, *, cut_off: bool = False) -> Any:
    """The plan's JSON in a reply: the whole reply, a ```json fence, the first JSON value inside prose that holds
    frames, or one object per frame.

    Strict JSON is looked for first (in fences, then anywhere); only when it holds no frames is a near-miss
    (trailing commas, single quotes, comments) repaired by json_repair. A reply cut off at max_tokens is not repaired: a
    half-written plan would pass for a short one.
    """
    text = strip_thinking(text)
    if not text:
        raise ReplyError("an empty reply" + (" (cut off at max_tokens)" if cut_off else ""))
    fences = re.findall(r"```[\w-]*[ \t]*\n?(.*?)```", text, flags=re.DOTALL)
    candidates = [*fences, text]
    decoded = [value for candidate in candidates for value in _json_values(candidate)]
    if (plan := next((v for v in decoded if frame_items(v) is not None), None)) is not None:
        return plan
    if cut_off:  # what decoded is a fragment (single frames of a cut list): say why, don't guess
        raise ReplyError("the reply was cut off at max_tokens before its JSON ended")
    if len(one_by_one := [v for v in decoded if isinstance(v, dict) and _is_frame(v)]) > 1:
        return one_by_one  # one object per frame ("Frame 1: {...} Frame 2: {...}", or JSON Lines)
    start = _OPENING.search(text)
    if start is None:
        raise ReplyError("no JSON in the reply")
    # Strict JSON held no plan: a near-miss around the first bracket (a trailing comma makes its inner frames
    # decode one by one) is repaired.
    repaired = json_repair.loads((fences[0] if fences else text[start.start() :]).strip())
    if frame_items(repaired) is not None:
        logger.info("planner reply was not strict JSON; read it repaired")
        return repaired
    if decoded:
        return decoded[0]
    raise ReplyError("the reply's JSON could not be parsed")


def _json_values(text: str) -> list[Any]:
    """Every JSON object or array that starts at a `{` or `[` of `text` and decodes, outermost ones only."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while (found := _OPENING.search(text, at)) is not None:
        try:
            value, end = decoder.raw_decode(text, found.start())
        except json.JSONDecodeError:
            at = found.start() + 1
            continue
        values.append(value)
        at = end
    return values


def frame_items(data: Any) -> list[dict[str, Any]] | None:
    """The list of frame objects in a decoded reply: `{"frames": [...]}`, a bare list, the list under another
    name (`scenes`, `storyboard`) or the only list of objects there is, or `{"1": {...}, "2": {...}}`."""
    if isinstance(data, list):
        if data and all(isinstance(item, dict) for item in data):
            nested = frame_items(data[0]) if len(data) == 1 else None
            return nested if nested is not None else data
        return None
    if not isinstance(data, dict):
        return None
    keys = {_key(k): v for k, v in data.items()}
    for name in FRAME_LIST_KEYS:
        if name in keys and (found := frame_items(keys[name])) is not None:
            return found
    lists = [found for v in data.values() if isinstance(v, list | dict) and (found := frame_items(v)) is not None]
    if len(lists) == 1:
        return lists[0]
    if data and all(re.search(r"\d", str(k)) and isinstance(v, dict) for k, v in data.items()):
        return [{"number": k, **v} for k, v in data.items()]
    return None


def _is_frame(data: dict) -> bool:
    """Whether an object names a scene under one of `ReplyFrame`'s names."""
    names = ReplyFrame.model_fields["scene"].validation_alias.choices
    return any(_key(k) in names for k in data)


def _key(name: Any) -> str:
    """`Scene`, `frame number`, `Shot-Type` -> `scene`, `frame_number`, `shot_type`: the aliases' spelling."""
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def normalise_shot(value: str) -> str:
    """A shot as a model wrote it, as the plan's shot name; an unknown one unchanged (validation reports it)."""
    text = value.strip().lower()
    return next((shot for shot, words in _SHOT_WORDS if re.search(words, text)), value)


def read_frames(
    text: str,
    *,
    cut_off: bool = False,
    find_setting: Callable[[str], str | None],
    default_setting: str,
) -> list[Frame]:
    """The frames of a reply, in the plan's shape; `ReplyError` (a short summary) if there are none to use.

    Args:
        text: the reply's content.
        cut_off: the server stopped at max_tokens (finish_reason "length").
        find_setting: the setting a scene names, if any (the offline planner's rule).
        default_setting: the setting of a frame that names none, before any frame did.
    """
    items = frame_items(find_json(text, cut_off=cut_off))
    if items is None:
        raise ReplyError('the JSON holds no list of frames; expected {"frames": [{"scene": ...}, ...]}')
    problems: list[tuple[str, int]] = []
    frames: list[tuple[int | None, Frame]] = []
    setting = default_setting
    for i, item in enumerate(items):
        try:
            raw = ReplyFrame.model_validate({_key(k): v for k, v in item.items()})
            setting = raw.setting or find_setting(raw.scene) or setting
            frame = Frame(
                scene=raw.scene.strip(),
                shot=normalise_shot(raw.shot) if raw.shot else ("close-up" if i == 0 else "medium"),
                pose=_pose(raw.pose, raw.scene),
                setting=setting,
            )
        except ValidationError as e:
            problems += [(_problem(err), i + 1) for err in e.errors()]
            continue
        frames.append((raw.number, frame))
    if problems:
        raise ReplyError(summarise(problems))
    numbers = [n for n, _ in frames]
    if None not in numbers and len(set(numbers)) == len(numbers):
        frames.sort(key=lambda pair: pair[0])  # the model's own numbering, when it gave one to every frame
    return [frame for _, frame in frames]


def _pose(pose: str | None, scene: str) -> str:
    """The pose library's name for what the model wrote, or for the scene when it wrote no pose."""
    if pose is None:
        mapped = normalise_pose_label(scene)
        logger.info("planner frame without a pose: %r read from its scene %r", mapped, scene[:60])
    elif (mapped := normalise_pose_label(pose)) != pose:
        logger.info("planner pose %r mapped to %r", pose, mapped)
    return mapped


def _problem(err: Any) -> str:
    """One validation error in a few words: `no scene`, `shot 'dutch angle' is not close-up, medium or wide`."""
    field = str(err["loc"][0]) if err["loc"] else "frame"
    value = err.get("input")
    if err["type"] == "missing":
        return f"no {field}"
    if err["type"] == "literal_error":
        return f"{field} {value!r} is not close-up, medium or wide"
    if err["type"] == "string_too_short":
        return f"{field} is empty or too short"
    if err["type"] == "model_type":
        return "not an object"
    return f"{field}: {err['msg'][:60]}"


def summarise(problems: list[tuple[str, int]]) -> str:
    """`frames 2, 5: no scene; frame 3: shot 'x' is ...`, cut at SUMMARY_CHARS."""
    frames_of: dict[str, list[int]] = {}
    for problem, number in problems:
        frames_of.setdefault(problem, []).append(number)
    parts = [
        f"frame{'s' if len(ns) > 1 else ''} {', '.join(map(str, sorted(set(ns))))}: {p}" for p, ns in frames_of.items()
    ]
    return shorten("; ".join(parts), SUMMARY_CHARS)


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 3, 0)].rstrip(" ;,") + "..."
