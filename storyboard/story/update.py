"""Keep data/plans up to date without overwriting what people edit.

A plan file is an input people may edit (scene text, shot, pose), not an output the next `dvc repro` overwrites.
Each plan records a hash of what its planner was asked: the story text, the character and the plan settings that
shape the answer. A story is planned again only when that changes (or its file is missing); otherwise its file,
edited or not, is kept as it is, and the planner (a paid LLM) is not called at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from storyboard.fsutil import write_text
from storyboard.settings import Character, Plan, Story
from storyboard.story.plan import plan_to_json, read_plan
from storyboard.story.planners import Planner, make_planner, plan_story

logger = logging.getLogger(__name__)

# How the endpoint is reached, not what it is asked: changing these keeps the plans.
NOT_ASKED = {"openai": {"base_url", "api_key_env", "timeout_s", "max_retries"}}


def asked(story: Story, character: Character, settings: Plan) -> str:
    """A hash of everything the planner's answer for this story depends on."""
    blob = json.dumps(
        [story.text, character.name, character.description, settings.model_dump(mode="json", exclude=NOT_ASKED)],
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def update_plans(out_dir: Path, stories: list[Story], character: Character, settings: Plan) -> dict[str, int]:
    """Plan the stories whose plan is missing or was asked differently; keep the others; drop plans of stories no
    longer in params.yaml. Returns how many plans were made and kept."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    planner: Planner | None = None  # made on first need: no key is needed when every plan is current
    counts = {"planned": 0, "kept": 0}
    for story in stories:
        path = out_dir / f"{story.id}.json"
        made_from = asked(story, character, settings)
        if path.exists():
            current = read_plan(path)  # a broken edit stops here, naming the file, rather than being replaced
            # A plan with no hash was written by hand (or before plans carried one): kept while its story is.
            if current.made_from == made_from or (current.made_from is None and current.story == story.text):
                counts["kept"] += 1
                logger.info("plan %s: kept", path)
                continue
            logger.warning("plan %s: its story, character or plan settings changed; planning it again", path)
        planner = planner or make_planner(settings)
        plan = plan_story(planner, story, character).model_copy(update={"made_from": made_from})
        write_text(path, plan_to_json(plan))
        counts["planned"] += 1
    known = {f"{story.id}.json" for story in stories}
    for path in out_dir.iterdir():
        if path.name not in known:  # a dropped story, or a killed run's temp folder
            logger.info("removing %s (not a story in params.yaml)", path)
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return counts
