"""plan stage: each story in params.yaml -> a JSON plan of 6-10 frames (LLM or offline planner).

Plans are kept between runs (a `persist` output): a story is planned again only when its text, the character or
the plan settings change, so hand edits to data/plans/<story>.json survive `dvc repro`.
"""

from __future__ import annotations

from pathlib import Path

from storyboard.log import logger
from storyboard.stage import run_stage
from storyboard.story.update import update_plans


def main(args, settings) -> None:
    counts = update_plans(Path(args.out), settings.stories, settings.character, settings.plan)
    logger.info("plans: %d made, %d kept", counts["planned"], counts["kept"])


if __name__ == "__main__":
    run_stage(main, __doc__, lambda p: p.add_argument("--out", required=True))
