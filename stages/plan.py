"""plan stage: each story in params.yaml -> a JSON plan of 6-10 frames (LLM or offline planner)."""

from __future__ import annotations

from pathlib import Path

from storyboard.fsutil import atomic_path
from storyboard.stage import run_stage
from storyboard.story.plan import make_planner, plan_story, plan_to_json


def main(args, settings) -> None:
    planner = make_planner(settings.plan)
    with atomic_path(Path(args.out)) as staged:
        staged.mkdir(parents=True)
        for story in settings.stories:
            plan = plan_story(planner, story, settings.character)
            (staged / f"{story.id}.json").write_text(plan_to_json(plan), encoding="utf-8")


if __name__ == "__main__":
    run_stage(main, __doc__, lambda p: p.add_argument("--out", required=True))
