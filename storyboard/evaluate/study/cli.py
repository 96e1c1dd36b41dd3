"""The study's commands, wired into `storyboard` by storyboard/cli.py: study-invite, study-serve, study-summarise."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from storyboard.evaluate.study.sheets import DEFAULT_MODES
from storyboard.evaluate.study.store import RatingStore

logger = logging.getLogger(__name__)


DEFAULT_DB = "study/ratings.sqlite"
DEFAULT_PORT = 8765


def add_commands(sub: argparse._SubParsersAction) -> None:
    invite = sub.add_parser("study-invite", help="create a personal rating link per rater (printed once)")
    invite.add_argument(
        "names", nargs="+", metavar="NAME", help="raters to invite; re-inviting a name replaces its link"
    )
    invite.add_argument("--db", default=DEFAULT_DB, help="ratings database (default: %(default)s)")
    invite.add_argument(
        "--url",
        default=f"http://127.0.0.1:{DEFAULT_PORT}/",
        help="the study server's address as raters will reach it (default: %(default)s)",
    )
    invite.set_defaults(func=invite_cmd)

    serve = sub.add_parser("study-serve", help="blind rating page for the rendered storyboards (invited raters)")
    serve.add_argument("--outputs", default="outputs", help="rendered outputs root (default: %(default)s)")
    serve.add_argument("--db", default=DEFAULT_DB, help="ratings database (default: %(default)s)")
    serve.add_argument(
        "--story", action="append", dest="stories", help="story id to include (repeat; default: params.yaml's)"
    )
    serve.add_argument("--mode", action="append", dest="modes", help="mode to include (repeat; default: all)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    serve.add_argument(
        "--allow-remote", action="store_true", help="allow a --host other than loopback, so other machines can rate"
    )
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help="port, 0 for any free one (default: %(default)s)")
    serve.add_argument("--seed", type=int, default=None, help="mixed into every rater's order (default: none)")
    serve.set_defaults(func=serve_cmd)

    summary = sub.add_parser("study-summarise", help="ratings -> metrics (mean per mode with 95%% CI, agreement)")
    summary.add_argument("--db", default=DEFAULT_DB, help="ratings database (default: %(default)s)")
    summary.add_argument("--out", default=None, help="write the summary JSON here too (default: stdout only)")
    summary.set_defaults(func=summarise_cmd)


def invite_cmd(args: argparse.Namespace) -> None:
    """Print one link per rater: the tokens are stored only as hashes, so this is the one time they are shown."""
    tokens = RatingStore(Path(args.db)).invite(args.names)
    base = args.url if args.url.endswith("/") else args.url + "/"
    for name, token in tokens.items():
        sys.stdout.write(f"{name}\t{base}#{token}\n")
    logger.info("%d invite link(s) above; send each rater only their own (they are not shown again)", len(tokens))


def serve_cmd(args: argparse.Namespace) -> None:
    """Serve the study until Ctrl-C."""
    from storyboard.evaluate.study.server import StudyServer

    stories = args.stories
    if not stories:
        from storyboard.settings import PARAMS_FILE, load_settings

        stories = [s.id for s in load_settings(getattr(args, "params", None) or PARAMS_FILE).stories]
    server = StudyServer(
        Path(args.outputs),
        Path(args.db),
        modes=tuple(args.modes or DEFAULT_MODES),
        story_ids=stories,
        host=args.host,
        port=args.port,
        seed=args.seed,
        allow_remote=args.allow_remote,
    )
    raters = server.store.raters()
    if not raters:
        logger.warning("no raters invited yet: run `storyboard study-invite NAME...` (the server can keep running)")
    with server:
        logger.info(
            "study server: %s (%d raters invited; ratings -> %s); Ctrl-C to stop", server.url, len(raters), args.db
        )
        try:
            server.wait()
        except KeyboardInterrupt:
            logger.info("study server stopped; %s", server.store.counts())


def summarise_cmd(args: argparse.Namespace) -> None:
    """Print the summary of args.db as JSON; also write it to args.out when given."""
    from storyboard.evaluate.study.stats import summarise_study, write_study_metrics

    summary = write_study_metrics(Path(args.db), Path(args.out)) if args.out else summarise_study(Path(args.db))
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
