"""Story plans: the offline planner, the OpenAI planner through the real client, and reading edited plans."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from openai_server import (
    Completion,
    OpenAIServer,
    RecordedRequest,
    server_error,
)

from storyboard.models.bpe import count_tokens
from storyboard.settings import Plan, Settings, Story
from storyboard.story.plan import PlanError, plan_to_json, read_plan
from storyboard.story.planners import OfflinePlanner, OpenAIPlanner, _beats, make_planner, plan_story
from storyboard.story.poses import POSE_NAMES

ONE_CLAUSE = Story(id="nap", text="Aldar Kose sleeps.")
LONG = Story(
    id="long",
    text=(
        "Aldar Kose wakes in a yurt, saddles his horse, rides to the village, meets a greedy bai, tricks him with "
        "a magic pot, sells him the pot, gallops across the steppe, crosses a river, climbs a mountain "
        "and then laughs at the sunset while the bai chases an empty shadow."
    ),
)


@pytest.fixture
def plan_settings(params: Settings) -> Plan:
    """plan section of params.yaml with the frame bounds and client settings the tests rely on."""
    client = params.plan.openai.model_copy(update={"timeout_s": 2, "max_retries": 1})
    return params.plan.model_copy(update={"min_frames": 6, "max_frames": 10, "openai": client})


def frames_json(count: int, *, first_shot: str = "close-up", pose: str = "walking") -> str:
    frames = [
        {
            "scene": f"Aldar Kose does step {i + 1} of his trick",
            "shot": first_shot if i == 0 else "medium",
            "pose": "standing" if i == 0 else pose,
            "setting": "a busy bazaar",
        }
        for i in range(count)
    ]
    return json.dumps({"frames": frames})


def planner_for(server: OpenAIServer, settings: Plan, **client: object) -> OpenAIPlanner:
    cfg = settings.openai.model_copy(update={"base_url": server.base_url, **client})
    return OpenAIPlanner(settings.model_copy(update={"openai": cfg}))


def last_user_text(request: RecordedRequest) -> str:
    return [m["content"] for m in request.messages if m["role"] == "user"][-1]


# --- offline planner ---


def test_offline_plans_every_story_in_params(params: Settings, plan_settings: Plan) -> None:
    planner = OfflinePlanner(plan_settings)
    for story in [*params.stories, ONE_CLAUSE, LONG]:
        frames = planner.frames(story, params.character)
        assert 6 <= len(frames) <= 10, story.id
        assert frames[0].shot == "close-up", story.id
        assert "face clearly visible" in frames[0].scene
        assert all(f.pose in POSE_NAMES for f in frames), story.id
        assert all(f.scene.startswith(params.character.name) for f in frames)
        assert frames == planner.frames(story, params.character), "deterministic"
        plan = plan_story(planner, story, params.character)  # a valid StoryPlan
        assert plan.planner == "offline" and plan.story_id == story.id


def test_offline_frame_count_grows_with_the_story(params: Settings, plan_settings: Plan) -> None:
    planner = OfflinePlanner(plan_settings)
    counts = []
    for n in range(1, 13):
        clauses = [f"visits place number {i}" for i in range(n)]
        story = Story(id=f"s{n}", text="Aldar Kose " + ", ".join(clauses) + ".")
        assert len(_beats(story.text)) == n
        counts.append(len(planner.frames(story, params.character)))

    assert counts == sorted(counts), counts  # never fewer frames for more events
    assert counts[0] == 6 and counts[-1] == 10  # clamped to plan.min_frames..max_frames
    assert counts == [min(10, max(6, n + 2)) for n in range(1, 13)]
    short = len(planner.frames(ONE_CLAUSE, params.character))
    long = len(planner.frames(LONG, params.character))
    assert short == 6 and long == 10 and long > short


def test_offline_story_events_appear_in_order(params: Settings, plan_settings: Plan) -> None:
    story = Story(
        id="bazaar",
        text="Aldar Kose walks into a busy bazaar, haggles with a spice seller and laughs as he leaves with a bargain.",
    )
    frames = OfflinePlanner(plan_settings).frames(story, params.character)

    scenes = " | ".join(f.scene for f in frames)
    assert scenes.index("walks into a busy bazaar") < scenes.index("haggles with a spice seller")
    assert {f.setting for f in frames} == {"a busy bazaar"}
    assert frames[-1].pose == "laughing"


@pytest.mark.parametrize(
    ("text", "setting"),
    [
        ("Aldar Kose greets the sunrise on the steppe.", "the steppe at sunrise"),  # the first one named
        ("Aldar Kose bows to a knight and waves to a driver.", "the open steppe"),  # no night, no river: the default
        ("Aldar Kose shares the money with poor villagers at night.", "a moonlit night"),
        ("Aldar Kose wanders between the markets.", "a busy bazaar"),
    ],
)
def test_offline_setting_is_the_first_one_the_story_names(
    params: Settings, plan_settings: Plan, text: str, setting: str
) -> None:
    frames = OfflinePlanner(plan_settings).frames(Story(id="s", text=text), params.character)

    assert frames[0].setting == setting


def test_offline_names_the_character_where_the_story_calls_it_by_its_description(
    params: Settings, plan_settings: Plan
) -> None:
    """params.yaml's character is "a cheerful Kazakh folk trickster ...": "The trickster" is Aldar Kose."""
    story = Story(id="s", text="The trickster meets a camel at the well, and the camel laughs.")
    scenes = [f.scene for f in OfflinePlanner(plan_settings).frames(story, params.character)]

    assert "Aldar Kose meets a camel at the well" in scenes
    assert not any("Aldar Kose The trickster" in s for s in scenes)
    assert "Aldar Kose watches as the camel laughs" in scenes  # a clause with its own subject


def test_offline_they_after_a_meeting_is_the_character_and_whom_it_met(params: Settings, plan_settings: Plan) -> None:
    story = Story(id="s", text="Aldar Kose meets his brother at the bazaar and they hug. A thief steals a melon.")
    scenes = [f.scene for f in OfflinePlanner(plan_settings).frames(story, params.character)]

    assert "Aldar Kose and his brother hug" in scenes
    assert "Aldar Kose watches as a thief steals a melon" in scenes


def test_offline_respects_custom_frame_bounds(params: Settings, plan_settings: Plan) -> None:
    for lo, hi in [(2, 2), (2, 3), (3, 4), (8, 8), (12, 16)]:
        planner = OfflinePlanner(plan_settings.model_copy(update={"min_frames": lo, "max_frames": hi}))
        for story in (ONE_CLAUSE, LONG):
            frames = planner.frames(story, params.character)
            assert lo <= len(frames) <= hi, (lo, hi, story.id, len(frames))
            assert frames[0].shot == "close-up"


def test_offline_scenes_stay_within_the_token_budget(params: Settings, plan_settings: Plan) -> None:
    planner = OfflinePlanner(plan_settings.model_copy(update={"scene_tokens": 12}))
    frames = planner.frames(LONG, params.character)
    assert all(count_tokens(f.scene) <= 12 for f in frames)
    # cut at a word: each scene is the start of the one an unlimited budget gives
    full = OfflinePlanner(plan_settings.model_copy(update={"scene_tokens": 75})).frames(LONG, params.character)
    assert any(count_tokens(f.scene) > 12 for f in full)
    assert all(g.scene.startswith(f.scene) for f, g in zip(frames, full, strict=True))


def test_make_planner_offline_needs_no_key(monkeypatch: pytest.MonkeyPatch, plan_settings: Plan) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert isinstance(make_planner(plan_settings.model_copy(update={"backend": "offline"})), OfflinePlanner)
    with pytest.raises(PlanError, match=r"OPENAI_API_KEY is not set.*plan\.backend=offline"):
        make_planner(plan_settings.model_copy(update={"backend": "openai"}))


# --- OpenAI planner against the local server ---


def test_openai_planner_request_and_valid_reply(
    openai_key: str, openai_server: OpenAIServer, params: Settings, plan_settings: Plan
) -> None:
    openai_server.push(Completion(frames_json(7)))
    story = params.stories[0]

    frames = planner_for(openai_server, plan_settings).frames(story, params.character)

    assert len(frames) == 7 and frames[1].pose == "walking"
    [request] = openai_server.requests
    assert request.model == plan_settings.openai.model
    # structured output: the endpoint gets the plan's JSON schema
    response_format = request.body["response_format"]
    assert response_format["type"] == "json_schema"
    assert set(response_format["json_schema"]["schema"]["$defs"]["Frame"]["properties"]) == {
        "scene",
        "shot",
        "pose",
        "setting",
    }
    assert request.body["temperature"] == plan_settings.openai.temperature
    assert request.body["max_tokens"] == plan_settings.openai.max_tokens
    system, user = request.messages
    assert system["role"] == "system" and user["role"] == "user"
    assert ", ".join(POSE_NAMES) in system["content"]
    assert "6-10 frames" in system["content"] and "close-up" in system["content"]
    assert f"at most {plan_settings.scene_tokens} CLIP tokens" in system["content"]
    assert story.text in user["content"] and params.character.description in user["content"]


def test_openai_planner_retries_invalid_json_with_the_error(
    openai_key: str, openai_server: OpenAIServer, params: Settings, plan_settings: Plan
) -> None:
    openai_server.push(Completion("Sure! Here is your plan: frames 1-6 ..."), Completion(frames_json(6)))

    frames = planner_for(openai_server, plan_settings).frames(params.stories[0], params.character)

    assert len(frames) == 6
    first, second = openai_server.requests
    assert len(second.messages) == len(first.messages) + 2
    assert second.messages[-2] == {"role": "assistant", "content": "Sure! Here is your plan: frames 1-6 ..."}
    feedback = last_user_text(second)
    assert feedback == "That reply was invalid: no JSON in the reply. Reply again with valid JSON only."


def test_openai_planner_tells_the_model_which_field_was_wrong(
    openai_key: str, openai_server: OpenAIServer, params: Settings, plan_settings: Plan
) -> None:
    bad = json.loads(frames_json(6))
    bad["frames"][2]["shot"] = "dutch angle"  # no shot of the plan's: "extreme close-up" would be mapped
    openai_server.push(Completion(json.dumps(bad)), Completion(frames_json(6)))

    frames = planner_for(openai_server, plan_settings).frames(params.stories[0], params.character)

    assert [f.pose for f in frames][1:] == ["walking"] * 5
    feedback = last_user_text(openai_server.requests[1])
    assert "frame 3: shot 'dutch angle' is not close-up, medium or wide" in feedback


def test_openai_planner_maps_free_text_poses_instead_of_retrying(
    openai_key: str, openai_server: OpenAIServer, params: Settings, plan_settings: Plan
) -> None:
    openai_server.push(Completion(frames_json(6, pose="riding a horse across the steppe")))

    frames = planner_for(openai_server, plan_settings).frames(params.stories[0], params.character)

    assert [f.pose for f in frames][1:] == ["riding"] * 5 and len(openai_server.requests) == 1


def test_openai_planner_asks_again_for_long_scenes_then_cuts_them(
    openai_key: str, openai_server: OpenAIServer, params: Settings, plan_settings: Plan
) -> None:
    long = json.loads(frames_json(6))
    long["frames"][3]["scene"] = "Aldar Kose " + "haggles loudly with the old spice seller, " * 6
    tokens = count_tokens(long["frames"][3]["scene"])
    assert tokens > 50
    openai_server.push(Completion(json.dumps(long)), Completion(json.dumps(long)))
    settings = plan_settings.model_copy(update={"scene_tokens": 50})

    frames = planner_for(openai_server, settings).frames(params.stories[0], params.character)

    feedback = last_user_text(openai_server.requests[1])
    assert f"frame 4: scene is {tokens} tokens, over the budget of 50" in feedback
    assert len(openai_server.requests) == 2
    assert count_tokens(frames[3].scene) <= 50 and frames[3].scene.startswith("Aldar Kose haggles loudly")
    assert [f.scene for i, f in enumerate(frames) if i != 3] == [
        f["scene"] for i, f in enumerate(long["frames"]) if i != 3
    ]


def test_openai_planner_falls_back_to_json_mode_without_schema_support(
    openai_key: str, openai_server: OpenAIServer, params: Settings, plan_settings: Plan
) -> None:
    from openai_server import HTTPError

    openai_server.push(HTTPError(400, "response_format json_schema is not supported", "invalid_request_error"))
    openai_server.push(Completion(frames_json(6)), Completion(frames_json(6)))
    planner = planner_for(openai_server, plan_settings)

    assert len(planner.frames(params.stories[0], params.character)) == 6
    assert len(planner.frames(params.stories[1], params.character)) == 6
    formats = [r.body["response_format"]["type"] for r in openai_server.requests]
    assert formats == ["json_schema", "json_object", "json_object"]  # asked once, remembered


def test_openai_planner_wrong_frame_count_twice_is_a_plan_error(
    openai_key: str, openai_server: OpenAIServer, params: Settings, plan_settings: Plan
) -> None:
    openai_server.push(Completion(frames_json(3)), Completion(frames_json(14)))

    story = params.stories[0]
    with pytest.raises(PlanError, match=rf"{story.id!r} after 2 tries \(14 frames; need 6-10\); try "):
        planner_for(openai_server, plan_settings).frames(story, params.character)

    assert len(openai_server.requests) == 2
    assert "3 frames; need 6-10" in last_user_text(openai_server.requests[1])


def test_openai_planner_persistent_server_error_is_a_plan_error(
    openai_key: str, openai_server: OpenAIServer, params: Settings, plan_settings: Plan
) -> None:
    openai_server.script(default=lambda request: server_error())

    with pytest.raises(PlanError, match=r"answered 500 after 1 retries.*plan\.backend=offline"):
        planner_for(openai_server, plan_settings).frames(params.stories[0], params.character)

    assert len(openai_server.requests) == 2


def test_plan_story_forces_a_close_up_first(
    openai_key: str, openai_server: OpenAIServer, params: Settings, plan_settings: Plan, tmp_path: Path
) -> None:
    openai_server.push(Completion(frames_json(6, first_shot="wide")))
    story = params.stories[-1]

    plan = plan_story(planner_for(openai_server, plan_settings), story, params.character, notice="test")

    assert plan.frames[0].shot == "close-up"
    assert [f.shot for f in plan.frames[1:]] == ["medium"] * 5
    assert (plan.story_id, plan.story, plan.planner, plan.notice) == (story.id, story.text, "openai", "test")
    path = tmp_path / f"{story.id}.json"
    path.write_text(plan_to_json(plan), encoding="utf-8")
    assert read_plan(path) == plan


# --- reading a plan a user edited ---


@pytest.fixture
def saved_plan(params: Settings, plan_settings: Plan, tmp_path: Path) -> Path:
    plan = plan_story(OfflinePlanner(plan_settings), LONG, params.character)
    path = tmp_path / "plans" / "long.json"
    path.parent.mkdir()
    path.write_text(plan_to_json(plan), encoding="utf-8")
    return path


def edit(path: Path, change) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def test_read_plan_rejects_an_unknown_pose_naming_field_and_file(saved_plan: Path) -> None:
    edit(saved_plan, lambda d: d["frames"][2].update(pose="flying"))

    with pytest.raises(PlanError) as err:
        read_plan(saved_plan)

    message = str(err.value)
    assert str(saved_plan) in message
    assert "frames.2.pose" in message and "unknown pose 'flying'" in message
    assert "Fix the file or delete it" in message


def test_read_plan_rejects_a_first_frame_that_hides_the_face(saved_plan: Path) -> None:
    edit(saved_plan, lambda d: d["frames"][0].update(shot="wide"))

    with pytest.raises(PlanError, match="frame 1 must be a close-up"):
        read_plan(saved_plan)


def test_read_plan_rejects_unknown_keys_and_bad_shots(saved_plan: Path) -> None:
    edit(saved_plan, lambda d: d["frames"][1].update(shot="extreme-wide", mood="tense"))

    with pytest.raises(PlanError) as err:
        read_plan(saved_plan)

    assert "frames.1.shot" in str(err.value) and "frames.1.mood" in str(err.value)


def test_read_plan_keeps_a_valid_edit(saved_plan: Path) -> None:
    edit(saved_plan, lambda d: d["frames"][3].update(pose="sneaking", scene="Aldar Kose tiptoes past the guard"))

    plan = read_plan(saved_plan)

    assert plan.frames[3].pose == "sneaking" and plan.frames[3].scene == "Aldar Kose tiptoes past the guard"


def test_read_plan_missing_or_broken_file(saved_plan: Path) -> None:
    with pytest.raises(PlanError, match=r"missing: run the plan stage first"):
        read_plan(saved_plan.with_name("nope.json"))

    saved_plan.write_text('{"frames": [', encoding="utf-8")
    with pytest.raises(PlanError, match=r"long\.json is not a valid plan: json: Invalid JSON"):
        read_plan(saved_plan)
