"""train stage: dataset -> SDXL LoRA (diffusers format), checkpoints every N steps, loss logged with dvclive; with
train.select: best, the saved step whose samples score best becomes the LoRA."""

from __future__ import annotations

from pathlib import Path

from storyboard.models.loading import Device, model_set
from storyboard.stage import run_stage
from storyboard.train.kohya import lora_card
from storyboard.train.lora import train_lora
from storyboard.train.sweep import ClipStepScorer


def arguments(parser) -> None:
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--out", required=True, help="folder for the final LoRA weights")
    parser.add_argument("--live", required=True, help="dvclive folder (loss, step time)")
    parser.add_argument("--checkpoints", required=True, help="checkpoint root, kept across runs for resuming")
    parser.add_argument("--metrics", required=True, help="JSON of the chosen step and every saved step's scores")


def main(args, settings) -> None:
    models, device = model_set(settings), Device.from_runtime(settings.runtime)
    scorer = ClipStepScorer(settings, models, device, Path(args.dataset))
    train_lora(
        Path(args.dataset),
        Path(args.out),
        Path(args.live),
        Path(args.checkpoints),
        settings.train,
        models,
        device,
        scorer=scorer if settings.train.select == "best" else None,
        metrics_path=Path(args.metrics),
        card=lora_card(settings),
    )


if __name__ == "__main__":
    run_stage(main, __doc__, arguments)
