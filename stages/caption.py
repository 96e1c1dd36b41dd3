"""caption stage: user images -> normalised dataset with one trigger-token caption each, manifest, metrics."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from storyboard.caption.backends import make_backend
from storyboard.caption.dataset import caption_images
from storyboard.fsutil import write_json
from storyboard.stage import run_stage


def arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="dataset folder to write")
    parser.add_argument("--metrics", required=True, help="metrics JSON to write")


def main(args, settings) -> None:
    backend = make_backend(settings.caption, settings.character)
    stats = caption_images(settings.caption.input_dir, Path(args.out), backend, settings.caption, settings.character)
    write_json(Path(args.metrics), asdict(stats))


if __name__ == "__main__":
    run_stage(main, __doc__, arguments)
