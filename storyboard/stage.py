"""The shared entry of every stage: parse paths, read params once, run, turn known failures into one line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from storyboard.errors import StoryboardError
from storyboard.log import setup_logging
from storyboard.settings import PARAMS_FILE, Settings, load_settings

logger = logging.getLogger(__name__)

OOM_HINT = (
    "out of GPU memory: lower train.batch_size or train.resolution, set train.gradient_checkpointing: true, "
    "or lower generate.resolution"
)


def run_stage(
    body: Callable[[argparse.Namespace, Settings], None],
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    argv: Sequence[str] | None = None,
) -> None:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default=str(PARAMS_FILE), help="params file (default: %(default)s)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging()
    try:
        settings = load_settings(args.params)
        body(args, settings)
    except StoryboardError as e:
        logger.error("%s", e)
        sys.exit(2)
    except KeyboardInterrupt:
        logger.error("interrupted: finished work is kept (outputs are written atomically); rerun to go on")
        sys.exit(130)
    except RuntimeError as e:
        if "out of memory" in str(e).lower():
            logger.error("%s (%s)", OOM_HINT, str(e).splitlines()[0])
            sys.exit(3)
        raise
