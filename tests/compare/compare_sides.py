"""Two sides of a comparison shaped as `dvc metrics diff --all --json` gives them, from metrics dicts."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from storyboard.compare import Comparison, changes
from storyboard.compare.figures import EVAL_METRICS

REPO = Path(__file__).resolve().parents[2]
TINY_EVAL = REPO / "metrics/eval.json"  # the committed tiny run's metrics: one side of every comparison here


def tiny_eval() -> dict:
    return json.loads(TINY_EVAL.read_text())


def flat(tree: dict, prefix: str = "") -> dict:
    """Nested metrics as DVC flattens them (`a.b.c`); lists are left out, as DVC leaves them out."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat(value, f"{name}."))
        elif not isinstance(value, list):
            out[name] = value
    return out


def dvc_diff(old: dict[str, dict], new: dict[str, dict]) -> dict:
    """{file: metrics} of both sides as DVC's `--all --json` diff."""
    diff = {}
    for path in {*old, *new}:
        a, b = flat(old.get(path, {})), flat(new.get(path, {}))
        diff[path] = {k: {"old": a.get(k), "new": b.get(k)} for k in {*a, *b}}
    return diff


def comparison(old: dict[str, dict], new: dict[str, dict], **fields) -> Comparison:
    return Comparison(base="main", head="workspace", metrics=changes(dvc_diff(old, new)), **fields)


def with_changes(metrics: dict, moved: dict[str, float]) -> dict:
    """A copy of `metrics` with `moved` ("mode.figure" or "mode.stories.story.figure" -> new value) set."""
    out = copy.deepcopy(metrics)
    for key, value in moved.items():
        *path, last = key.split(".")
        node = out
        for part in path:
            node = node[part]
        node[last] = value
    return out


def eval_side(metrics: dict) -> dict[str, dict]:
    return {EVAL_METRICS: metrics}
