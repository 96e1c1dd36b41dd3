"""Plans kept across runs: edits survive, a changed story is planned again alone, the planner is asked only then."""

from __future__ import annotations

import json

import pytest
from openai_server import Completion, OpenAIServer

from storyboard.settings import Plan, Settings, Story
from storyboard.story.plan import PlanError, read_plan
from storyboard.story.update import update_plans

STORIES = [
    Story(id="greeting", text="Aldar Kose greets the sunrise on the steppe."),
    Story(id="bazaar", text="Aldar Kose haggles with a spice seller and laughs."),
]


def frames_reply(tag: str) -> Completion:
    frames = [
        {"scene": f"Aldar Kose, {tag} frame {i + 1}", "shot": "close-up" if i == 0 else "medium"}
        | {"pose": "standing", "setting": "the steppe"}
        for i in range(6)
    ]
    return Completion(json.dumps({"frames": frames}))


@pytest.fixture
def llm(openai_key: str, openai_server: OpenAIServer, params: Settings) -> Plan:
    """The openai planner pointed at the local server, which answers every request with a fresh plan."""
    openai_server.script(default=lambda request: frames_reply(f"reply {len(openai_server.chat_requests)}"))
    client = params.plan.openai.model_copy(update={"base_url": openai_server.base_url, "max_retries": 0})
    return params.plan.model_copy(update={"backend": "openai", "min_frames": 6, "max_frames": 6, "openai": client})


def test_an_edited_frame_survives_and_the_planner_is_not_asked(tmp_path, llm, openai_server, params):
    assert update_plans(tmp_path, STORIES, params.character, llm) == {"planned": 2, "kept": 0}
    assert len(openai_server.chat_requests) == 2
    path = tmp_path / "bazaar.json"
    data = json.loads(path.read_text())
    data["frames"][2].update(scene="Aldar Kose hides behind a carpet stall", shot="wide", pose="sneaking")
    path.write_text(json.dumps(data))

    assert update_plans(tmp_path, STORIES, params.character, llm) == {"planned": 0, "kept": 2}
    assert len(openai_server.chat_requests) == 2
    edited = read_plan(path).frames[2]
    assert (edited.scene, edited.shot, edited.pose) == ("Aldar Kose hides behind a carpet stall", "wide", "sneaking")


def test_a_changed_story_is_planned_again_alone(tmp_path, llm, openai_server, params):
    update_plans(tmp_path, STORIES, params.character, llm)
    before = (tmp_path / "greeting.json").read_bytes()
    changed = [STORIES[0], STORIES[1].model_copy(update={"text": "Aldar Kose sells a magic pot at the bazaar."})]

    assert update_plans(tmp_path, changed, params.character, llm) == {"planned": 1, "kept": 1}
    assert len(openai_server.chat_requests) == 3
    assert (tmp_path / "greeting.json").read_bytes() == before
    assert read_plan(tmp_path / "bazaar.json").story == "Aldar Kose sells a magic pot at the bazaar."


def test_how_the_endpoint_is_reached_keeps_the_plans_what_it_is_asked_does_not(tmp_path, llm, openai_server, params):
    update_plans(tmp_path, STORIES, params.character, llm)
    slower = llm.model_copy(update={"openai": llm.openai.model_copy(update={"timeout_s": 99, "max_retries": 3})})
    assert update_plans(tmp_path, STORIES, params.character, slower)["planned"] == 0
    hotter = llm.model_copy(update={"openai": llm.openai.model_copy(update={"temperature": 1.1})})
    assert update_plans(tmp_path, STORIES, params.character, hotter)["planned"] == 2


def test_dropped_stories_and_temp_leftovers_go(tmp_path, params):
    offline = params.plan.model_copy(update={"backend": "offline"})
    update_plans(tmp_path, STORIES, params.character, offline)
    (tmp_path / ".bazaar.json.x1y2.tmp").mkdir()  # what a killed atomic write leaves
    update_plans(tmp_path, STORIES[:1], params.character, offline)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["greeting.json"]


def test_a_hand_written_plan_is_kept_while_its_story_is(tmp_path, params):
    offline = params.plan.model_copy(update={"backend": "offline"})
    update_plans(tmp_path, STORIES, params.character, offline)
    path = tmp_path / "greeting.json"
    data = json.loads(path.read_text())
    data["made_from"] = None  # written by hand, or before plans carried their hash
    data["frames"][1]["scene"] = "Aldar Kose yawns at the sun"
    path.write_text(json.dumps(data))
    assert update_plans(tmp_path, STORIES, params.character, offline)["kept"] == 2
    assert read_plan(path).frames[1].scene == "Aldar Kose yawns at the sun"


def test_a_broken_edit_stops_with_the_file_named_and_is_not_replaced(tmp_path, params):
    offline = params.plan.model_copy(update={"backend": "offline"})
    update_plans(tmp_path, STORIES, params.character, offline)
    path = tmp_path / "bazaar.json"
    data = json.loads(path.read_text())
    data["frames"][1]["pose"] = "flying"
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError, match=r"bazaar\.json.*frames\.1\.pose"):
        update_plans(tmp_path, STORIES, params.character, offline)
    assert json.loads(path.read_text())["frames"][1]["pose"] == "flying"
