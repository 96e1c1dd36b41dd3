"""The plan file: a story split into 6-10 frames (scene, shot, pose, setting), as planners write it.

A plan is a JSON file users may edit; generate reads it as it is, validated by the same schema. The planners
that write it live in planners.py, so reading a plan never involves the LLM client.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from storyboard.errors import StoryboardError
from storyboard.story.poses import POSE_NAMES, Shot


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
    # hash of what the planner was asked (story, character, plan settings): the plan stage replans only when it
    # changes, so edits to the frames survive; None for plans written by hand
    made_from: str | None = None

    @model_validator(mode="after")
    def _first_frame_shows_face(self) -> StoryPlan:
        if self.frames and self.frames[0].shot != "close-up":
            raise ValueError("frame 1 must be a close-up that shows the face clearly (it is the identity reference)")
        return self


def field_errors(e: ValidationError) -> str:
    """Every bad field on one line: `frames.2.pose: Value error, unknown pose 'flying'; ...`."""
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'json'}: {err['msg']}" for err in e.errors())


def read_plan(path: Path) -> StoryPlan:
    try:
        return StoryPlan.model_validate_json(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(f"{path} missing: run the plan stage first (`dvc repro plan`)") from None
    except ValidationError as e:
        raise PlanError(
            f"{path} is not a valid plan: {field_errors(e)}. Fix the file or delete it and rerun plan"
        ) from None


def plan_to_json(plan: StoryPlan) -> str:
    return json.dumps(plan.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"
