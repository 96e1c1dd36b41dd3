"""sample stage: draw the small cartoon training set the tiny profile runs on (no user data needed)."""

from __future__ import annotations

from pathlib import Path

from storyboard.sample_data import draw_sample_set
from storyboard.stage import run_stage


def main(args, settings) -> None:
    s = settings.sample
    draw_sample_set(Path(args.out), settings.character, count=s.count, size=s.size, seed=s.seed)


if __name__ == "__main__":
    run_stage(main, __doc__, lambda p: p.add_argument("--out", required=True))
