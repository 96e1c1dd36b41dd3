"""select stage: the train stage's saved steps (models/steps) -> models/lora, the step whose validation samples
score best with evaluate's own scorer (select.step: best), or the last or a given one; metrics/train.json holds
every step's scores and the choice. It never trains: evaluate's code and knobs rerun this stage, not train."""

from __future__ import annotations

from pathlib import Path

from storyboard.models.loading import Device, model_set
from storyboard.select.scorer import ClipStepScorer
from storyboard.select.sweep import select_lora
from storyboard.stage import run_stage


def arguments(parser) -> None:
    parser.add_argument("--steps", required=True, help="the train stage's saved steps")
    parser.add_argument("--dataset", required=True, help="training dataset: the references of the identity score")
    parser.add_argument("--out", required=True, help="folder for the chosen LoRA (diffusers + kohya)")
    parser.add_argument("--metrics", required=True, help="JSON of the chosen step and every saved step's scores")
    parser.add_argument("--cache", required=True, help="where step scores are kept between runs")


def main(args, settings) -> None:
    scorer = None
    if settings.select.step == "best":
        models, device = model_set(settings), Device.from_runtime(settings.runtime)
        scorer = ClipStepScorer(settings, models, device, Path(args.dataset))
    select_lora(
        settings.select,
        Path(args.steps),
        Path(args.out),
        Path(args.metrics),
        scorer=scorer,
        cache_dir=Path(args.cache),
    )


if __name__ == "__main__":
    run_stage(main, __doc__, arguments)
