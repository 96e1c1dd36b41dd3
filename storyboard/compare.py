"""The pull-request comparison: params, metrics per mode and per story, and plots, of this run against a base.

Everything comes from DVC's own diffs (`dvc params diff`, `dvc metrics diff`, `dvc plots diff`), which read the
base's values from git and its outputs from the DVC cache or remote, so the report shows exactly what `dvc`
would; this module only lays them out as Markdown a pull request can carry.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from storyboard.errors import StoryboardError

EVAL_METRICS = "metrics/eval.json"  # the evaluate stage's metrics file (dvc.yaml)
MODES = ("baseline", "lora", "ref_guided", "multiref")


class CompareError(StoryboardError):
    """The comparison could not be made; the message says why and what to do."""


@dataclass
class Change:
    old: object
    new: object

    @property
    def changed(self) -> bool:
        return self.old != self.new

    def cell(self) -> str:
        if not self.changed:
            return _fmt(self.new)
        delta = ""
        if _number(self.old) and _number(self.new):
            delta = f" ({self.new - self.old:+.4g})"
        return f"{_fmt(self.old)} → **{_fmt(self.new)}**{delta}"


@dataclass
class Comparison:
    base: str
    head: str
    params: dict[str, Change] = field(default_factory=dict)  # "file:key" -> change
    metrics: dict[str, dict[str, Change]] = field(default_factory=dict)  # file -> key -> change
    plots_html: Path | None = None


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


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


def _changes(diff: dict) -> dict[str, dict[str, Change]]:
    """DVC's `--json` diff ({file: {key: {old, new, diff}}}) as Changes."""
    return {
        path: {key: Change(v.get("old"), v.get("new")) for key, v in keys.items()}
        for path, keys in diff.items()
        if isinstance(keys, dict)
    }


def compare(base: str, head: str | None = None, plots_dir: Path | None = None, cwd: Path = Path()) -> Comparison:
    """Params and metrics of `head` (the workspace when None) against `base`; plots as HTML into `plots_dir`."""
    _check_rev(base, cwd)
    if head:
        _check_rev(head, cwd)
    revs = [base, *([head] if head else [])]
    result = Comparison(base=base, head=head or "workspace")
    for path, keys in _changes(json.loads(_dvc(["params", "diff", *revs, "--all", "--json"], cwd) or "{}")).items():
        for key, change in keys.items():
            result.params[f"{path}:{key}"] = change
    result.metrics = _changes(json.loads(_dvc(["metrics", "diff", *revs, "--all", "--json"], cwd) or "{}"))
    if plots_dir is not None:
        _dvc(["plots", "diff", *revs, "-o", str(plots_dir)], cwd)
        result.plots_html = Path(plots_dir) / "index.html"
    return result


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _eval_tables(changes: dict[str, Change]) -> list[str]:
    """metrics/eval.json as one table per mode summary and one per story: metric rows, mode columns."""
    by_scope: dict[str, dict[str, dict[str, Change]]] = defaultdict(lambda: defaultdict(dict))  # scope, metric, mode
    for key, change in changes.items():
        parts = key.split(".")
        if parts[0] not in MODES:
            continue
        if len(parts) == 2:
            by_scope["all stories"][parts[1]][parts[0]] = change
        elif len(parts) == 4 and parts[1] == "stories":
            by_scope[f"story `{parts[2]}`"][parts[3]][parts[0]] = change
    lines: list[str] = []
    for scope in sorted(by_scope, key=lambda s: (s != "all stories", s)):
        metrics = by_scope[scope]
        modes = [m for m in MODES if any(m in per_mode for per_mode in metrics.values())]
        changed = sum(c.changed for per_mode in metrics.values() for c in per_mode.values())
        lines += ["", f"#### Per mode, {scope} ({changed} changed)", ""]
        rows = [
            [f"`{name}`", *(metrics[name][m].cell() if m in metrics[name] else "–" for m in modes)] for name in metrics
        ]
        lines += _table(["metric", *modes], rows)
    return lines


def render_markdown(result: Comparison) -> str:
    title = f"## Storyboard: `{result.head}` against `{result.base}`"
    lines = [title, ""]
    changed_params = {k: c for k, c in result.params.items() if c.changed}
    lines += [f"### Params ({len(changed_params)} changed)", ""]
    if changed_params:
        lines += _table(
            ["param", result.base, result.head],
            [[f"`{k}`", _fmt(c.old), _fmt(c.new)] for k, c in sorted(changed_params.items())],
        )
    else:
        lines.append("No param changed.")
    n_changed = sum(c.changed for keys in result.metrics.values() for c in keys.values())
    lines += ["", f"### Metrics ({n_changed} changed)"]
    if not result.metrics:
        lines += ["", "No metrics in either revision: run `dvc repro` (and `dvc pull` the base's outputs)."]
    for path, keys in sorted(result.metrics.items()):
        lines += ["", f"`{path}`"]
        if path == EVAL_METRICS:
            lines += _eval_tables(keys)
            continue
        lines += [""] + _table(["metric", "value"], [[f"`{k}`", c.cell()] for k, c in sorted(keys.items())])
    if result.plots_html is not None:
        lines += [
            "",
            "### Plots",
            "",
            f"`dvc plots diff` of both revisions: `{result.plots_html}` (open in a browser).",
        ]
    profile = result.params.get("params.yaml:profile")
    if profile is not None and "tiny" in (profile.old, profile.new):
        lines += ["", "> tiny profile: random-weight models; these numbers check plumbing, not quality."]
    return "\n".join(lines) + "\n"
