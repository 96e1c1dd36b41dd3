"""Both sides of a comparison, from DVC's own diffs and the two revisions' dvc.lock and training log.

`dvc params diff` and `dvc metrics diff` read the base's values from git and its outputs from the DVC cache or
remote, so the figures are exactly what `dvc` shows; dvc.lock says which profile and base model each side really
ran on (a run made with `-S profile=tiny` keeps `profile: sdxl` in params.yaml), and dvclive's step-time plot gives
the training time.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from storyboard.compare.figures import TRAIN_LOG
from storyboard.errors import StoryboardError

logger = logging.getLogger(__name__)

LOCK = "dvc.lock"
STEP_TIMES = f"{TRAIN_LOG}/plots/metrics/step_time_s.tsv"  # dvclive: one row per step, its share of the window


class CompareError(StoryboardError):
    """The comparison could not be made; the message says why and what to do."""


def number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class Change:
    old: object
    new: object

    @property
    def changed(self) -> bool:
        return self.old != self.new

    @property
    def delta(self) -> float | None:
        return self.new - self.old if number(self.old) and number(self.new) else None


@dataclass
class Comparison:
    base: str
    head: str
    params: dict[str, Change] = field(default_factory=dict)  # "file:key" -> change
    metrics: dict[str, dict[str, Change]] = field(default_factory=dict)  # file -> key -> change
    runs: dict[str, Change] = field(default_factory=dict)  # "profile", "base model" (from dvc.lock)
    plots_html: Path | None = None


def _dvc(args: list[str], cwd: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise CompareError(f"`dvc {' '.join(args)}` failed: {last[0]}")
    return proc.stdout


def _check_rev(rev: str, cwd: Path) -> None:
    proc = subprocess.run(["git", "rev-parse", "--verify", "-q", f"{rev}^{{commit}}"], cwd=cwd, capture_output=True)
    if proc.returncode != 0:
        raise CompareError(
            f"BASE={rev} is not a commit, branch or tag of this repo: `git fetch origin {rev}` first, or give a "
            "commit id (e.g. BASE=origin/main)"
        )


def _read(rev: str | None, path: str, cwd: Path) -> str | None:
    """A file of a revision (None: the workspace), or None when it has none."""
    if rev is None:
        file = Path(cwd) / path
        return file.read_text(encoding="utf-8") if file.exists() else None
    proc = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=cwd, capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def changes(diff: dict) -> dict[str, dict[str, Change]]:
    """DVC's `--json` diff ({file: {key: {old, new, diff}}}) as Changes."""
    return {
        path: {key: Change(v.get("old"), v.get("new")) for key, v in keys.items()}
        for path, keys in diff.items()
        if isinstance(keys, dict)
    }


def run_of(lock: str | None) -> dict[str, object]:
    """The profile and base model a dvc.lock's stages ran with (their recorded params, not today's params.yaml)."""
    if not lock:
        return {}
    try:
        stages = (yaml.safe_load(lock) or {}).get("stages", {})
    except yaml.YAMLError:
        logger.warning("dvc.lock does not parse: the profile check uses eval.json alone")
        return {}
    found: dict[str, object] = {}
    for stage in stages.values():
        params = (stage.get("params") or {}).get("params.yaml") or {}
        profile = params.get("profile")
        if profile is None:
            continue
        found["profile"] = profile
        if profile == "tiny" and isinstance(params.get("models.tiny"), dict):
            found["base model"] = f"tiny random weights, seed {params['models.tiny'].get('seed')}"
        elif (base := params.get(f"models.{profile}.base")) is not None:
            found["base model"] = base
    return found


def training_seconds(tsv: str | None) -> float | None:
    """The training loop's wall time: dvclive's per-step times summed."""
    if not tsv:
        return None
    rows = list(csv.DictReader(io.StringIO(tsv), delimiter="\t"))
    values = [float(row["step_time_s"]) for row in rows if row.get("step_time_s") not in (None, "")]
    return round(sum(values), 1) if values else None


def _sides(base: str, head: str | None, cwd: Path) -> tuple[dict[str, Change], dict[str, Change]]:
    """dvc.lock's profile and base model, and the training time, of both sides."""
    old, new = run_of(_read(base, LOCK, cwd)), run_of(_read(head, LOCK, cwd))
    runs = {key: Change(old.get(key), new.get(key)) for key in ("profile", "base model") if key in old or key in new}
    seconds = Change(training_seconds(_read(base, STEP_TIMES, cwd)), training_seconds(_read(head, STEP_TIMES, cwd)))
    return runs, ({"training_seconds": seconds} if seconds.old is not None or seconds.new is not None else {})


def compare(base: str, head: str | None = None, plots_dir: Path | None = None, cwd: Path = Path()) -> Comparison:
    """Params and metrics of `head` (the workspace when None) against `base`; plots as HTML into `plots_dir`.

    Args:
        base: the commit, branch or tag to compare against.
        head: the revision to compare; None for the workspace.
        plots_dir: where `dvc plots diff` writes its HTML; None for no plots.
        cwd: the repository.
    """
    _check_rev(base, cwd)
    if head:
        _check_rev(head, cwd)
    revs = [base, *([head] if head else [])]
    result = Comparison(base=base, head=head or "workspace")
    for path, keys in changes(json.loads(_dvc(["params", "diff", *revs, "--all", "--json"], cwd) or "{}")).items():
        for key, change in keys.items():
            result.params[f"{path}:{key}"] = change
    result.metrics = changes(json.loads(_dvc(["metrics", "diff", *revs, "--all", "--json"], cwd) or "{}"))
    result.runs, training = _sides(base, head, cwd)
    if training:
        result.metrics[TRAIN_LOG] = training
    if plots_dir is not None:
        _dvc(["plots", "diff", *revs, "-o", str(plots_dir)], cwd)
        result.plots_html = Path(plots_dir) / "index.html"
    return result
