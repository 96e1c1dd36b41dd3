"""Plan replies as local OpenAI-compatible servers send them (schema not enforced), through the real client.

Each server answers the way vLLM, llama.cpp, Ollama or LM Studio builds were seen to when they don't enforce the
JSON schema; the tests count the requests the planner sends and check the plan it makes, or its one-line error.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from openai_server import Completion, OpenAIServer, RecordedRequest, rejecting_formats, replying

from storyboard.settings import Plan, Settings
from storyboard.story.plan import PlanError, StoryPlan, read_plan
from storyboard.story.planners import OpenAIPlanner, plan_story
from storyboard.story.poses import POSE_NAMES
from storyboard.story.reply import ReplyError, find_json, normalise_shot, read_frames
from storyboard.story.update import update_plans

SCENES = [
    "Aldar Kose smiles at the viewer in a busy bazaar",
    "Aldar Kose walks between spice stalls",
    "Aldar Kose haggles with a greedy merchant",
    "Aldar Kose sits down on a carpet to rest",
    "Aldar Kose runs off with the merchant's coat",
    "Aldar Kose laughs on his horse on the open steppe",
]


@pytest.fixture
def plan_settings(params: Settings) -> Plan:
    client = params.plan.openai.model_copy(update={"timeout_s": 2, "max_retries": 0})
    return params.plan.model_copy(update={"min_frames": 6, "max_frames": 10, "openai": client})


def planner_for(server: OpenAIServer, settings: Plan) -> OpenAIPlanner:
    cfg = settings.openai.model_copy(update={"base_url": server.base_url})
    return OpenAIPlanner(settings.model_copy(update={"openai": cfg}))


def own_names_reply() -> str:
    """The issue's reply: the model's own field names (index, description, shot), a title, no pose or setting."""
    frames = [{"index": i + 1, "description": scene, "shot": "close-up" if i == 0 else "medium shot"}
              for i, scene in enumerate(SCENES)]  # fmt: skip
    return json.dumps({"title": "Aldar Kose and the merchant", "frames": frames})


def plain_frames(**extra: object) -> list[dict]:
    return [{"scene": s, "shot": "medium", "pose": "walking", "setting": "a busy bazaar", **extra} for s in SCENES]


def plan_with(server: OpenAIServer, settings: Plan, params: Settings) -> StoryPlan:
    return plan_story(planner_for(server, settings), params.stories[0], params.character)


def test_own_field_names_and_a_title_give_a_valid_plan_in_one_request(
    openai_key: str, openai_server: OpenAIServer, params: Settings, plan_settings: Plan
) -> None:
    openai_server.script(default=replying(own_names_reply()))

    plan = plan_with(openai_server, plan_settings, params)

    assert len(openai_server.chat_requests) <= 2
    assert [f.scene for f in plan.frames] == SCENES
    assert [f.shot for f in plan.frames] == ["close-up"] + ["medium"] * 5  # "medium shot" read as medium
    assert all(f.pose in POSE_NAMES for f in plan.frames)
    # a missing pose is read from the scene as the offline planner does; a missing setting from the scene too
    assert [plan.frames[i].pose for i in (3, 4, 5)] == ["sitting", "running", "riding"]
    assert {f.setting for f in plan.frames[:5]} == {"a busy bazaar"}


@pytest.mark.parametrize(
    "content",
    [
        "Here is the storyboard you asked for:\n```json\n{frames}\n```\nLet me know if you want changes!",
        "```\n{frames}\n```",
        "Sure! The plan is {frames} -- I kept every scene short.",
        "<think>The user wants {{6}} frames. Frame 1 is a close-up.</think>\n{frames}",
        "{bare}",  # the frames list itself, no object around it
        '{{"storyboard": {{"title": "The coat", "scenes": {bare}}}}}',  # the list under other names
        "{trailing_comma}",  # near-miss JSON, repaired
        "{one_by_one}",
    ],
    ids=[
        "fence-in-prose",
        "bare-fence",
        "prose",
        "think-block",
        "array",
        "other-names",
        "trailing-comma",
        "one-object-per-frame",
    ],
)
def test_json_in_prose_fences_and_other_shapes_gives_a_valid_plan(
    content: str, openai_key: str, openai_server: OpenAIServer, params: Settings, plan_settings: Plan
) -> None:
    frames = plain_frames()
    bare = json.dumps(frames)
    reply = content.format(
        frames=json.dumps({"frames": frames}),
        bare=bare,
        trailing_comma=bare[:-1] + ",]",
        one_by_one="\n".join(f"Frame {i + 1}: {json.dumps(f)}" for i, f in enumerate(frames)),
    )
    openai_server.script(default=replying(reply))

    plan = plan_with(openai_server, plan_settings, params)

    assert len(openai_server.chat_requests) == 1
    assert [f.scene for f in plan.frames] == SCENES and plan.frames[1].setting == "a busy bazaar"


@pytest.mark.parametrize("missing", ["shot", "pose", "setting"])
def test_a_missing_shot_pose_or_setting_takes_the_planners_default(
    missing: str, openai_key: str, openai_server: OpenAIServer, params: Settings, plan_settings: Plan
) -> None:
    frames = plain_frames()
    for frame in frames:
        del frame[missing]
    openai_server.script(default=replying(json.dumps({"frames": frames})))

    plan = plan_with(openai_server, plan_settings, params)

    assert len(openai_server.chat_requests) == 1
    expected = {
        "shot": ["close-up"] + ["medium"] * 5,  # frame 1 the identity close-up, then the medium shot
        "pose": ["laughing", "walking", "talking", "sitting", "running", "riding"],  # read from each scene
        "setting": ["a busy bazaar"] * 5 + ["the open steppe"],  # named by the scene, carried over
    }[missing]
    assert [getattr(f, missing) for f in plan.frames] == expected


def test_frames_numbered_out_of_order_are_put_in_order(
    openai_key: str, openai_server: OpenAIServer, params: Settings, plan_settings: Plan
) -> None:
    frames = [{"frame": f"Frame {i + 1}", "Scene": s, "Shot": "wide"} for i, s in enumerate(SCENES)]
    openai_server.script(default=replying(json.dumps({"frames": frames[::-1]})))

    plan = plan_with(openai_server, plan_settings, params)

    assert [f.scene for f in plan.frames] == SCENES


def test_garbage_twice_fails_in_one_short_line_naming_the_story_and_the_fix(
    openai_key: str, openai_server: OpenAIServer, params: Settings, plan_settings: Plan
) -> None:
    garbage = "Once upon a time " * 200  # a model that tells the story instead of planning it
    openai_server.script(default=replying(garbage))
    story = params.stories[0]

    with pytest.raises(PlanError) as err:
        planner_for(openai_server, plan_settings).frames(story, params.character)

    message = str(err.value)
    assert len(message) <= 300 and "\n" not in message, message
    assert repr(story.id) in message and "no JSON in the reply" in message
    for fix in ("-S plan.structured_output=false", "plan.openai.model", "-S plan.backend=offline"):
        assert fix in message
    first, second = openai_server.chat_requests
    # the one re-ask quotes a short summary, not the reply or a validation dump
    assert second.messages[-1]["content"] == (
        "That reply was invalid: no JSON in the reply. Reply again with valid JSON only."
    )


def test_bad_frames_twice_fail_with_a_short_summary(
    openai_key: str, openai_server: OpenAIServer, params: Settings, plan_settings: Plan
) -> None:
    frames = [{"shot": "dutch angle", "pose": "walking", "mood": "tense"} for _ in range(12)]  # no scene at all
    openai_server.script(default=replying(json.dumps({"frames": frames})))
    story = params.stories[0]

    with pytest.raises(PlanError) as err:
        planner_for(openai_server, plan_settings).frames(story, params.character)

    message = str(err.value)
    assert len(message) <= 300, message
    assert "frames 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12: no scene" in message
    feedback = openai_server.chat_requests[1].messages[-1]["content"]
    assert len(feedback) < 300 and "no scene" in feedback


def test_without_structured_output_no_format_is_asked_and_the_fix_is_not_offered_again(
    openai_key: str, openai_server: OpenAIServer, params: Settings, plan_settings: Plan
) -> None:
    openai_server.script(default=replying("I cannot plan this story."))

    with pytest.raises(PlanError) as err:
        planner_for(openai_server, plan_settings.model_copy(update={"structured_output": False})).frames(
            params.stories[0], params.character
        )

    assert [r.response_format for r in openai_server.chat_requests] == [None, None]
    assert "structured_output" not in str(err.value) and "-S plan.backend=offline" in str(err.value)


def test_a_server_that_takes_no_response_format_gets_plain_requests(
    openai_key: str, openai_server: OpenAIServer, params: Settings, plan_settings: Plan
) -> None:
    reply = f"Sure, here it is:\n```json\n{own_names_reply()}\n```"
    openai_server.script(default=rejecting_formats("json_schema", "json_object", then=replying(reply)))
    planner = planner_for(openai_server, plan_settings)

    for story in params.stories[:2]:
        assert [f.scene for f in planner.frames(story, params.character)] == SCENES

    # each format is tried once, then remembered for the next story
    assert [r.response_format for r in openai_server.chat_requests] == ["json_schema", "json_object", None, None]


def test_a_reply_cut_at_max_tokens_says_so(
    openai_key: str, openai_server: OpenAIServer, params: Settings, plan_settings: Plan
) -> None:
    cut = json.dumps({"frames": plain_frames()})[:300]
    openai_server.script(default=replying(cut, finish_reason="length"))

    with pytest.raises(PlanError, match=r"cut off at max_tokens before its JSON ended") as err:
        planner_for(openai_server, plan_settings).frames(params.stories[0], params.character)
    assert len(openai_server.chat_requests) == 2
    assert "); try a larger plan.openai.max_tokens, " in str(err.value) and len(str(err.value)) <= 300


# --- the reading steps themselves ---


@pytest.mark.parametrize(
    ("written", "shot"),
    [("Close-Up", "close-up"), ("extreme close up", "close-up"), ("Medium shot", "medium"), ("mid", "medium"),
     ("establishing shot", "wide"), ("long shot", "wide"), ("WIDE", "wide"), ("dutch angle", "dutch angle")],
)  # fmt: skip
def test_normalise_shot(written: str, shot: str) -> None:
    assert normalise_shot(written) == shot


def test_find_json_prefers_the_plan_over_other_json_in_the_prose() -> None:
    text = 'Shots used: ["close-up", "wide"]. Plan: {"frames": [{"scene": "Aldar Kose waves"}]} Options: {"a": 1}'
    assert find_json(text) == {"frames": [{"scene": "Aldar Kose waves"}]}


@pytest.mark.parametrize(
    ("text", "summary"),
    [
        ("", "an empty reply"),
        ("no braces here", "no JSON in the reply"),
        ('{"title": "The coat", "moral": "be clever"}', "the JSON holds no list of frames"),
    ],
)
def test_replies_without_frames_are_summarised_in_a_few_words(text: str, summary: str) -> None:
    with pytest.raises(ReplyError, match=summary):
        read_frames(text, find_setting=lambda scene: None, default_setting="the open steppe")


def test_keyed_frames_are_a_list(params: Settings) -> None:
    data = {"Frame 2": {"description": SCENES[1]}, "Frame 1": {"description": SCENES[0]}}
    frames = read_frames(json.dumps(data), find_setting=lambda scene: None, default_setting="the open steppe")
    assert [f.scene for f in frames] == SCENES[:2] and {f.setting for f in frames} == {"the open steppe"}


def test_the_plan_stage_keeps_the_plans_made_before_a_story_fails(
    openai_key: str, openai_server: OpenAIServer, params: Settings, plan_settings: Plan, tmp_path: Path
) -> None:
    first, second = params.stories[:2]

    def by_story(request: RecordedRequest) -> Completion:
        return Completion(own_names_reply() if first.text in request.messages[1]["content"] else "no plan, sorry")

    openai_server.script(default=by_story)
    settings = plan_settings.model_copy(
        update={"openai": plan_settings.openai.model_copy(update={"base_url": openai_server.base_url})}
    )

    with pytest.raises(PlanError, match=rf"{second.id!r} after 2 tries"):
        update_plans(tmp_path, [first, second], params.character, settings)

    assert [f.scene for f in read_plan(tmp_path / f"{first.id}.json").frames] == SCENES
    assert not (tmp_path / f"{second.id}.json").exists()
    assert len(openai_server.chat_requests) == 3  # one for the first story, two for the second
