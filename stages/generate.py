"""generate stage: bring outputs/<mode> up to date with the plans, in one mode (baseline | lora | ref_guided |
multiref).

Stories rendered before from the same inputs are kept (a killed run resumes); the others are rendered. ref_guided
takes each story's frame 1 from the lora mode's outputs (--first-from) when lora rendered it from the same inputs:
the LoRA alone, the same prompt and seeds, so the same frame, not rendered twice. multiref reads the user's
reference sheet (--references) when it holds images, else it chooses references from the training set (--dataset).
Several GPUs: `python -m storyboard.launch stages.generate <same arguments>` (dvc.yaml's command) runs a process per
GPU; each renders a share of every story's frame batches, and the frames are the same bytes as one process makes.
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
    parser.add_argument(
        "--first-from", help="ref_guided: the lora mode's output folder, whose frames 1 it takes when they are current"
    )
    parser.add_argument("--references", help="multiref: the reference sheet folder (its images are the references)")


def main(args, settings) -> None:
    plans = [read_plan(Path(args.plans) / f"{story.id}.json") for story in settings.stories]
    render_to(
        settings,
        args.mode,
        plans,
        Path(args.out),
        Path(args.lora) if args.lora else None,
        Path(args.dataset) if args.dataset else None,
        Path(args.first_from) if args.first_from else None,
        Path(args.references) if args.references else None,
    )


if __name__ == "__main__":
    run_stage(main, __doc__, arguments)
