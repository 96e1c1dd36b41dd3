"""Story plans: a one-line story split into 6-10 frames, by an LLM or offline.

A plan is a JSON file users may edit; generate reads it as it is, validated by the same schema.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from storyboard.errors import StoryboardError
from storyboard.log import logger
from storyboard.settings import Character, Plan, Story
from storyboard.story.poses import POSE_NAMES, normalise_pose_label

Shot = Literal["close-up", "medium", "wide"]


class PlanError(StoryboardError):
    """A plan can't be made or read; the message names the file or field and the fix."""


class Frame(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scene: str = Field(min_length=3, description="what happens in this frame, one sentence")
    shot: Shot
    pose: str = Field(description=f"the character's body pose, one of: {', '.join(POSE_NAMES)}")
    setting: str = Field(min_length=2, description="where it happens, a few words")

    @field_validator("pose")
    @classmethod
    def _known_pose(cls, value: str) -> str:
        if value not in POSE_NAMES:
            raise ValueError(f"unknown pose {value!r}; use one of {', '.join(POSE_NAMES)}")
        return value


class StoryPlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    story_id: str
    story: str
    planner: str
    frames: list[Frame] = Field(min_length=2, max_length=16)
    notice: str | None = None

    @model_validator(mode="after")
    def _first_frame_shows_face(self) -> StoryPlan:
        if self.frames and self.frames[0].shot != "close-up":
            raise ValueError("frame 1 must be a close-up that shows the face clearly (it is the identity reference)")
        return self


class FrameList(BaseModel):
    """What the LLM is asked to return."""

    model_config = ConfigDict(extra="forbid")
    frames: list[Frame]


class Planner(Protocol):
    name: str

    def frames(self, story: Story, character: Character) -> list[Frame]: ...


def _frame_count(story: str, settings: Plan) -> int:
    """More beats in the story -> more frames, within the configured bounds."""
    return max(settings.min_frames, min(settings.max_frames, settings.min_frames - 2 + len(_beats(story))))


def _beats(story: str) -> list[str]:
    parts = re.split(r",|;|\.|\band then\b|\bthen\b|\band\b|\bbut\b|\bwhile\b", story)
    return [p.strip() for p in parts if len(p.strip()) > 2]


class OfflinePlanner:
    """A deterministic planner that needs no key: opening close-up, one frame per story beat, a closing shot.

    It makes a sensible arc from the story's own words; an LLM writes richer scenes.
    """

    name = "offline"

    def __init__(self, settings: Plan):
        self.settings = settings

    def frames(self, story: Story, character: Character) -> list[Frame]:
        beats = _beats(story.text) or [story.text]
        count = _frame_count(story.text, self.settings)
        setting = _setting(story.text)
        frames = [
            Frame(
                scene=f"{character.name} looks straight at the viewer, face clearly visible, at the start of: {story.text}",
                shot="close-up",
                pose="standing",
                setting=setting,
            )
        ]
        middle = count - 2
        shots: tuple[Shot, ...] = ("wide", "medium", "medium", "wide", "close-up")
        for i in range(middle):
            beat = beats[min(len(beats) - 1, i * len(beats) // max(middle, 1))]
            frames.append(
                Frame(
                    scene=f"{character.name} {_strip_subject(beat, character)}",
                    shot=shots[i % len(shots)],
                    pose=normalise_pose_label(beat),
                    setting=setting,
                )
            )
        frames.append(
            Frame(
                scene=f"{character.name} laughs at the end of the story: {story.text}",
                shot="medium",
                pose="laughing",
                setting=setting,
            )
        )
        return frames


def _strip_subject(beat: str, character: Character) -> str:
    text = re.sub(rf"^\s*{re.escape(character.name)}\s*", "", beat, flags=re.IGNORECASE)
    return re.sub(r"^(he|she|they)\s+", "", text, flags=re.IGNORECASE) or beat


_SETTINGS = {
    "bazaar": "a busy bazaar", "market": "a busy bazaar", "merchant": "a busy bazaar", "steppe": "the open steppe",
    "horse": "the open steppe", "yurt": "beside a yurt", "mountain": "the mountains", "river": "a river bank",
    "night": "a moonlit night", "desert": "desert dunes", "village": "a village street", "palace": "a khan's palace",
}


def _setting(text: str) -> str:
    lowered = text.lower()
    for word, setting in _SETTINGS.items():
        if word in lowered:
            return setting
    return "the open steppe"


PLAN_INSTRUCTIONS = """You plan storyboards for an animated film. Split the story into {min_frames}-{max_frames} frames \
(more frames for stories with more events). Frame 1 is a close-up, front-facing view of {name}'s face, clearly visible. \
For each frame give: scene (one sentence of what is visible, naming {name}), shot (close-up, medium or wide), pose \
(exactly one of: {poses}), setting (a few words). Reply with JSON: {{"frames": [{{"scene": ..., "shot": ..., "pose": ..., \
"setting": ...}}]}}."""


class OpenAIPlanner:
    """Any OpenAI-compatible chat endpoint; the reply is validated against the schema and retried once."""

    name = "openai"

    def __init__(self, settings: Plan):
        import openai

        cfg = settings.openai
        key = os.environ.get(cfg.api_key_env)
        if not key:
            raise PlanError(
                f"plan.backend is openai but ${cfg.api_key_env} is not set: export your key, "
                "or plan offline with `-S plan.backend=offline`"
            )
        self.settings = settings
        self.client = openai.OpenAI(
            api_key=key,
            base_url=cfg.base_url or os.environ.get("OPENAI_BASE_URL") or None,
            timeout=cfg.timeout_s,
            max_retries=cfg.max_retries,
        )

    def frames(self, story: Story, character: Character) -> list[Frame]:
        import openai

        cfg, s = self.settings.openai, self.settings
        system = PLAN_INSTRUCTIONS.format(
            min_frames=s.min_frames, max_frames=s.max_frames, name=character.name, poses=", ".join(POSE_NAMES)
        )
        messages = [
            {"role": "system", "content": system},
            {"role": "user", "content": f"Character: {character.name}, {character.description}.\nStory: {story.text}"},
        ]
        problem = ""
        for _attempt in range(2):
            try:
                reply = self.client.chat.completions.create(
                    model=cfg.model,
                    temperature=cfg.temperature,
                    max_tokens=cfg.max_tokens,
                    response_format={"type": "json_object"},
                    messages=messages,
                )
            except openai.APIConnectionError as e:
                raise PlanError(f"the planner endpoint is unreachable ({e}); plan offline with `-S plan.backend=offline`") from None
            except (openai.AuthenticationError, openai.NotFoundError) as e:
                raise PlanError(f"the planner endpoint refused the request: {e}") from None
            text = reply.choices[0].message.content or ""
            try:
                frames = FrameList.model_validate_json(text).frames
                if not s.min_frames <= len(frames) <= s.max_frames:
                    raise ValueError(f"{len(frames)} frames; need {s.min_frames}-{s.max_frames}")
                return frames
            except (ValidationError, ValueError) as e:
                problem = str(e).splitlines()[0] if isinstance(e, ValueError) else str(e)
                logger.warning("planner reply for %s was invalid (%s); asking again", story.id, problem)
                messages += [
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": f"That reply was invalid: {problem}. Reply again with valid JSON only."},
                ]
        raise PlanError(f"the planner returned no valid plan for story {story.id!r} after 2 tries: {problem}")


def make_planner(settings: Plan) -> Planner:
    return OpenAIPlanner(settings) if settings.backend == "openai" else OfflinePlanner(settings)


def plan_story(planner: Planner, story: Story, character: Character, *, notice: str | None = None) -> StoryPlan:
    frames = planner.frames(story, character)
    # The identity reference must show the face, whatever the planner said.
    frames[0] = frames[0].model_copy(update={"shot": "close-up"})
    return StoryPlan(story_id=story.id, story=story.text, planner=planner.name, frames=frames, notice=notice)


def read_plan(path: Path) -> StoryPlan:
    try:
        return StoryPlan.model_validate_json(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(f"{path} missing: run the plan stage first (`dvc repro plan`)") from None
    except ValidationError as e:
        fields = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise PlanError(f"{path} is not a valid plan: {fields}. Fix the file or delete it and rerun plan") from None


def plan_to_json(plan: StoryPlan) -> str:
    return json.dumps(plan.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"
