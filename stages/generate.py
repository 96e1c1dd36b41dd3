"""generate stage: render every planned story in one mode (baseline | lora | ref_guided)."""

from __future__ import annotations

from pathlib import Path

from storyboard.fsutil import atomic_path
from storyboard.generate.render import MODES
from storyboard.generate.run import render_plans
from storyboard.stage import run_stage
from storyboard.story.plan import read_plan


def arguments(parser) -> None:
    parser.add_argument("--mode", required=True, choices=MODES)
    parser.add_argument("--plans", required=True, help="folder of <story_id>.json plans")
    parser.add_argument("--lora", help="LoRA folder (lora and ref_guided modes)")
    parser.add_argument("--out", required=True, help="folder to write, one subfolder per story")
    parser.add_argument("--dataset", help="training dataset: the references of the likeness check")


def main(args, settings) -> None:
    plans = [read_plan(Path(args.plans) / f"{story.id}.json") for story in settings.stories]
    with atomic_path(Path(args.out)) as staged:
        render_plans(
            settings,
            args.mode,
            plans,
            staged,
            Path(args.lora) if args.lora else None,
            Path(args.dataset) if args.dataset else None,
        )


if __name__ == "__main__":
    run_stage(main, __doc__, arguments)
