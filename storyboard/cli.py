"""`storyboard` for humans: the same code the DVC stages run, for one-off stories outside the pipeline."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from storyboard.errors import StoryboardError
from storyboard.log import setup_logging
from storyboard.settings import PARAMS_FILE, Story, load_settings, slug

logger = logging.getLogger(__name__)

DEFAULT_DATASET = "data/dataset"  # the caption stage's output in dvc.yaml


def _generate(args) -> None:
    from storyboard.generate.run import render_plans
    from storyboard.settings import MODES
    from storyboard.story.plan import plan_to_json
    from storyboard.story.planners import make_planner, plan_story

    settings = load_settings(args.params)
    story = Story(id=slug(args.story)[:48], text=args.story)
    plan = plan_story(make_planner(settings.plan), story, settings.character)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{story.id}.plan.json").write_text(plan_to_json(plan), encoding="utf-8")
    modes = MODES if args.mode == "all" else (args.mode,)
    lora = None if set(modes) <= {"baseline", "multiref"} else Path(args.lora)
    dataset = Path(args.dataset)
    if not (dataset / "manifest.jsonl").exists():
        if args.dataset != DEFAULT_DATASET:
            raise StoryboardError(
                f"--dataset {dataset}: no manifest.jsonl there; give the caption stage's output (`dvc repro caption` "
                f"writes {DEFAULT_DATASET})"
            )
        logger.info("no training set at %s: the likeness check compares frames with frame 1 only", dataset)
        dataset = None
    # One run for all modes: the models load once and ref_guided reuses lora's frame 1.
    written = render_plans(
        settings,
        modes,
        [plan],
        {mode: out / mode for mode in modes},
        lora,
        dataset_dir=dataset,
        references_dir=Path(args.references),
    )
    for folders in written.values():
        for folder in folders:
            logger.info("contact sheet: %s", folder / "contact_sheet.png")


def _plan(args) -> None:
    from storyboard.story.plan import plan_to_json
    from storyboard.story.planners import make_planner, plan_story

    settings = load_settings(args.params)
    plan = plan_story(make_planner(settings.plan), Story(id=slug(args.story)[:48], text=args.story), settings.character)
    sys.stdout.write(plan_to_json(plan))


def _tiny_models(args) -> None:
    from storyboard.models.tiny import tiny_model_set

    settings = load_settings(args.params)
    logger.info("tiny models: %s", tiny_model_set(settings.models.tiny).base)


def _compare(args) -> None:
    from storyboard.compare import compare, render_markdown, tolerances_from, write_chart

    tolerances = tolerances_from(args.tolerance)
    result = compare(args.base, args.head, None if args.no_plots else Path(args.plots))
    out = Path(args.out)
    chart = None if args.no_chart else write_chart(result, out.with_suffix(".png"))
    # The chart lies beside the report, so the report names it by file name alone.
    report = render_markdown(
        result, tolerances=tolerances, chart=chart and chart.name, artifacts_url=args.artifacts_url or None
    )
    out.write_text(report, encoding="utf-8")
    logger.info("comparison written to %s%s", out, f" (chart {chart})" if chart else "")
    sys.stdout.write(report)


def main(argv: list[str] | None = None) -> None:
    """The `storyboard` command.

    Args:
        argv: the command line after the program name (default: sys.argv[1:]).
    """
    args = _parser().parse_args(argv)
    setup_logging()
    try:
        args.func(args)
    except StoryboardError as e:
        logger.error("%s", e)
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    from storyboard.evaluate.study.cli import add_commands as add_study_commands

    parser = argparse.ArgumentParser(prog="storyboard", description=__doc__)
    parser.add_argument("--params", default=str(PARAMS_FILE), help="params file (default: %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    plan = sub.add_parser("plan", help="print the frame plan of a story as JSON")
    plan.add_argument("--story", required=True)
    plan.set_defaults(func=_plan)
    tiny = sub.add_parser("build-tiny-models", help="build the tiny profile's random-weight models")
    tiny.set_defaults(func=_tiny_models)
    _add_compare(sub)
    add_study_commands(sub)
    return parser


def _add_generate(sub) -> None:
    gen = sub.add_parser("generate", help="plan a story and render it (all modes by default)")
    gen.add_argument("--story", required=True, help='one line, e.g. "Aldar Kose tricks a merchant"')
    gen.add_argument("--mode", default="all", choices=("all", "baseline", "lora", "ref_guided", "multiref"))
    gen.add_argument("--lora", default="models/lora", help="trained LoRA folder (default: %(default)s)")
    gen.add_argument("--out", default="outputs/adhoc", help="output folder (default: %(default)s)")
    gen.add_argument(
        "--dataset",
        default=DEFAULT_DATASET,
        help="captioned training set: the likeness check's references and faceid's fallback identity "
        "(default: %(default)s, skipped when absent)",
    )
    gen.add_argument(
        "--references",
        default="data/references",
        help="multiref: your reference sheet (its images; when it holds none, references come from --dataset)",
    )
    gen.set_defaults(func=_generate)


def _add_compare(sub) -> None:
    from storyboard.compare.figures import RATE_TOLERANCE, SCORE_TOLERANCE

    comp = sub.add_parser("compare", help="Markdown report for a pull request: params, metrics and plots vs a base")
    comp.add_argument("base", help="commit, branch or tag to compare against, e.g. main")
    comp.add_argument("--head", help="revision to compare (default: the workspace)")
    comp.add_argument("--out", default="compare.md", help="Markdown file (default: %(default)s; also printed)")
    comp.add_argument("--plots", default="compare-plots", help="folder for `dvc plots diff` HTML (%(default)s)")
    comp.add_argument("--no-plots", action="store_true", help="skip the plots")
    comp.add_argument("--no-chart", action="store_true", help="skip the chart PNG written beside the report")
    comp.add_argument(
        "--tolerance",
        action="append",
        metavar="NAME=VALUE",
        help=f"how far a headline figure may move and read as unchanged: score={SCORE_TOLERANCE:g} (similarities, "
        f"CLIP text), rate={RATE_TOLERANCE:g} (detection rates) or a figure, e.g. vistorybench_self_cids=0.005 "
        "(repeatable)",
    )
    comp.add_argument(
        "--artifacts-url", help="where CI keeps the chart and the plots (the report links there instead of paths)"
    )
    comp.set_defaults(func=_compare)


if __name__ == "__main__":
    main()
