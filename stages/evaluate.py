"""evaluate stage: CLIP text and character scores, face identity vs frame 1, per frame and per mode."""

from __future__ import annotations

from pathlib import Path

from storyboard.evaluate.report import evaluate_outputs
from storyboard.stage import run_stage


def arguments(parser) -> None:
    parser.add_argument("--outputs", required=True, help="folder with one subfolder per mode")
    parser.add_argument("--metrics", required=True, help="metrics JSON to write")
    parser.add_argument("--frames", required=True, help="folder for per-frame CSVs (dvc plots)")
    parser.add_argument("--report", required=True, help="Markdown results table to write")
    parser.add_argument("--html", required=True, help="folder for the HTML report (index.html + assets)")
    parser.add_argument("--dataset", required=True, help="training dataset: the references of the cross figure")
    parser.add_argument("--train-metrics", help="the train stage's metrics JSON: the report's checkpoint section")


def main(args, settings) -> None:
    evaluate_outputs(
        settings,
        Path(args.outputs),
        Path(args.metrics),
        Path(args.frames),
        Path(args.report),
        html_dir=Path(args.html),
        dataset_dir=Path(args.dataset),
        train_metrics_path=Path(args.train_metrics) if args.train_metrics else None,
    )


if __name__ == "__main__":
    run_stage(main, __doc__, arguments)
