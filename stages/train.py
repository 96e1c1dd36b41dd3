"""train stage: dataset -> SDXL LoRA, checkpoints every N steps, loss logged with dvclive; every saved step's LoRA
and validation samples go to models/steps, where the select stage chooses the one that becomes models/lora."""

from __future__ import annotations

from pathlib import Path

from storyboard.models.loading import Device, model_set
from storyboard.stage import run_stage
from storyboard.train.kohya import lora_card
from storyboard.train.lora import train_lora


def arguments(parser) -> None:
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--out", required=True, help="folder for every saved step's LoRA and samples")
    parser.add_argument("--live", required=True, help="dvclive folder (loss, step time)")
    parser.add_argument("--checkpoints", required=True, help="checkpoint root, kept across runs for resuming")


def main(args, settings) -> None:
    train_lora(
        Path(args.dataset),
        Path(args.out),
        live_dir=Path(args.live),
        checkpoint_root=Path(args.checkpoints),
        settings=settings.train,
        models=model_set(settings),
        device=Device.from_runtime(settings.runtime),
        card=lora_card(settings),
    )


if __name__ == "__main__":
    run_stage(main, __doc__, arguments)
