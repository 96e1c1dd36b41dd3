"""generate stage: bring outputs/<mode> up to date with the plans, in one mode (baseline | lora | ref_guided).

Stories rendered before from the same inputs are kept (a killed run resumes); the others are rendered.
Several GPUs: `accelerate launch -m stages.generate <same arguments>` shards the stories across processes.
"""

from __future__ import annotations

from pathlib import Path

from storyboard.generate.run import render_to
from storyboard.settings import MODES
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
    render_to(
        settings,
        args.mode,
        plans,
        Path(args.out),
        Path(args.lora) if args.lora else None,
        Path(args.dataset) if args.dataset else None,
    )


if __name__ == "__main__":
    run_stage(main, __doc__, arguments)
