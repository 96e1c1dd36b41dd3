"""The comparison as Markdown a reviewer reads in thirty seconds: what moved leads, everything else is folded.

Outside `<details>`: a warning when the sides ran on different profiles or models, the params that changed, per mode
the headline figures that moved (old -> new) with a one-line verdict against stated tolerances, the cost that
changed (timing marked as timing), and the pictures. Inside: every figure, grouped by what it measures, then the
per-story tables.
"""

from __future__ import annotations

from storyboard.compare.cells import cell, count, delta, fmt, name, short, table
from storyboard.compare.diff import Change, Comparison
from storyboard.compare.figures import (
    EVAL_METRICS,
    HEADLINE,
    HEADLINE_KEYS,
    TOLERANCES,
    TRAIN_LOG,
    faces_found,
    group_of,
    is_timing,
    order_key,
    order_modes,
    split_eval,
    tolerance_of,
)
from storyboard.compare.folded import STORY_DETAIL, group_blocks, story_blocks

COMMENT_LIMIT = 65_536  # GitHub's limit on a comment body, in characters
ALSO_CHANGED_NAMES = 8  # the "also changed" line names this many figures, then counts the rest


def _beyond(change: Change, tolerance: float) -> bool:
    if change.delta is None:
        return change.changed  # a figure that appeared or vanished (n/a on one side) always counts
    return abs(change.delta) > tolerance + 1e-9


def _warnings(result: Comparison) -> list[str]:
    """The profile and model mismatch (their figures do not compare) and the tiny profile's notice."""
    eval_keys = result.metrics.get(EVAL_METRICS, {})
    sides = dict(result.runs)
    if "profile" in eval_keys:
        sides["profile"] = eval_keys["profile"]
    for key, change in eval_keys.items():
        if key.startswith("models.") and key.endswith("model"):
            sides[f"`{key}`"] = change
    differ = [
        f"{name} `{fmt(c.old)}` → `{fmt(c.new)}`"
        for name, c in sides.items()
        if c.changed and c.old is not None and c.new is not None
    ]
    lines = []
    if differ:
        lines += [
            f"> ⚠️ **The two sides ran on different profiles or models** ({'; '.join(differ)}): their figures do not "
            "compare, so read what moved below as the change of setup, not of a knob.",
            "",
        ]
    profile = sides.get("profile")
    if profile is not None and "tiny" in (profile.old, profile.new):
        lines += ["> tiny profile: random-weight models; these figures check plumbing, not quality.", ""]
    return lines


def _params(result: Comparison) -> list[str]:
    changed = {k: c for k, c in result.params.items() if c.changed}
    lines = [f"### Params ({len(changed)} changed)", ""]
    if not changed:
        return [*lines, "No param changed.", ""]
    rows = [[f"`{k}`", fmt(c.old), fmt(c.new)] for k, c in sorted(changed.items())]
    return [*lines, *table(["param", result.base, result.head], rows), ""]


def _headline(modes: dict[str, dict[str, Change]], tolerances: dict[str, float], head: str) -> list[str]:
    moved = {
        mode: {
            f.key: figures[f.key]
            for f in HEADLINE
            if f.key in figures and figures[f.key].changed and (not f.face or faces_found(figures))
        }
        for mode, figures in modes.items()
    }
    rates = f"±{tolerances['rate']:g} on detection rates"
    named = "".join(f", ±{v:g} on `{k}`" for k, v in tolerances.items() if k in HEADLINE_KEYS)
    lines = [
        "### Headline: did the character stay the same, did the frames follow the story?",
        "",
        f"Tolerances: ±{tolerances['score']:g} on similarities and the CLIP text score, {rates}{named} "
        "(`--tolerance`); a move within them reads as unchanged.",
        "",
    ]
    columns = [f for f in HEADLINE if any(f.key in m for m in moved.values())]
    if columns:
        rows = []
        for mode in order_modes({m for m, figs in moved.items() if figs}):
            cells = []
            for f in columns:
                change = moved[mode].get(f.key)
                if change is None:
                    cells.append("=")
                    continue
                beyond = _beyond(change, tolerance_of(f, tolerances))
                step = "" if change.delta is None else f"{change.delta:+.4g}, "
                shown = cell(change) if beyond else f"{short(change)} ({step}within)"
                cells.append(shown)
            rows.append([f"**{mode}**", *cells])
        legend = ["`=`: unchanged.", ""] if any("=" in row for row in rows) else []
        lines += [*table(["mode", *(f.label for f in columns)], rows), "", *legend]
    for mode in order_modes(set(modes)):
        lines.append(f"- **{mode}**: {_verdict(modes[mode], moved[mode], tolerances, head)}")
    return [*lines, ""]


def _verdict(figures: dict[str, Change], moved: dict[str, Change], tolerances: dict[str, float], head: str) -> str:
    headline = [figures[f.key] for f in HEADLINE if f.key in figures]
    if headline and all(c.old is None for c in headline) and any(c.new is not None for c in headline):
        return f"new in `{head}`: no base figures to compare with."
    if headline and all(c.new is None for c in headline) and any(c.old is not None for c in headline):
        return f"not in `{head}`."
    beyond, within, new, gone = [], [], [], []
    for key, change in moved.items():
        figure = HEADLINE_KEYS[key]
        if change.old is None or change.new is None:  # a figure one side does not have: no move to measure
            (new if change.old is None else gone).append(figure.label)
        elif _beyond(change, tolerance_of(figure, tolerances)):
            arrow = "" if change.delta is None else (" ↑" if change.delta > 0 else " ↓")
            beyond.append(f"{figure.label}{arrow}{delta(change) or ' ' + short(change)}")
        else:
            within.append(figure.label)
    parts = []
    if beyond:
        parts.append(f"**moved beyond tolerance**: {', '.join(beyond)}")
    if within:
        parts.append(
            f"within tolerance: {', '.join(within)}"
            if beyond
            else f"nothing beyond tolerance (moved within it: {', '.join(within)})"
        )
    if new:
        parts.append(f"new in `{head}` (n/a in the base): {', '.join(new)}")
    if gone:
        parts.append(f"n/a in `{head}`: {', '.join(gone)}")
    return "; ".join(parts) + "." if parts else "identity, text and detection unchanged."


def _cost(modes: dict[str, dict[str, Change]], metrics: dict[str, dict[str, Change]]) -> list[str]:
    keys = sorted(
        {k for figs in modes.values() for k, c in figs.items() if group_of(EVAL_METRICS, k) == "cost" and c.changed},
        key=lambda k: order_key(EVAL_METRICS, k),
    )
    training = metrics.get(TRAIN_LOG, {}).get("training_seconds")
    lines = ["### Cost", ""]
    if not keys and (training is None or not training.changed):
        return [*lines, "Unchanged: attempts and seconds per frame, training time.", ""]
    timed = any(is_timing(k) for k in keys) or training is not None and training.changed
    if timed:
        lines += ["Figures marked timing are wall clock on the machine that ran: noise between runs, not a result.", ""]
    if keys:
        rows = [
            [
                f"**{mode}**",
                *(f"{short(figs[k])}{delta(figs[k])}" if k in figs and figs[k].changed else "=" for k in keys),
            ]
            for mode, figs in ((m, modes[m]) for m in order_modes(set(modes)))
            if any(k in figs and figs[k].changed for k in keys)
        ]
        lines += [*table(["mode", *(name(k) for k in keys)], rows), ""]
    if training is not None and training.changed:
        seconds = "" if training.delta is None else f" ({training.delta:+.4g} s)"
        lines += [f"Training time (timing): {fmt(training.old)} s → {fmt(training.new)} s{seconds}.", ""]
    return lines


def _also_changed(result: Comparison, modes: dict, stories: dict, run: dict) -> list[str]:
    """The changed figures the headline and cost leave out, named in one line (their tables are folded below)."""
    names: dict[str, list[str]] = {}
    for mode in order_modes(set(modes)):
        for key, change in modes[mode].items():
            if change.changed and key not in HEADLINE_KEYS and group_of(EVAL_METRICS, key) != "cost":
                names.setdefault(f"`{key}`", []).append(mode)
    rest = [(EVAL_METRICS, k, c) for k, c in run.items()]
    rest += [
        (p, k, c)
        for p, keys in sorted(result.metrics.items())
        if p not in (EVAL_METRICS, TRAIN_LOG)
        for k, c in keys.items()
    ]
    for path, key, change in rest:
        if change.changed:
            names.setdefault(f"`{key}`", []).append(group_of(path, key))
    story_changes = {  # timing moves on every run: counted, it would name every story every time
        s: sum(c.changed for figs in per.values() for k, c in figs.items() if not is_timing(k))
        for s, per in stories.items()
    }
    moved_stories = [s for s, n in sorted(story_changes.items()) if n]
    if not names and not moved_stories:
        return []
    every = set(modes) if len(modes) > 1 else None
    shown = [
        f"{n} ({'all modes' if set(where) == every else ', '.join(where)})" if where else n
        for n, where in list(names.items())[:ALSO_CHANGED_NAMES]
    ]
    more = len(names) - len(shown)
    parts = [", ".join(shown) + (f" and {more} more" if more else "")] if shown else []
    if moved_stories:
        where = ", ".join(f"`{s}`" for s in moved_stories)
        parts.append(f"per story: {count(sum(story_changes.values()), 'figure')} in {where}")
    return [f"**Also changed** (tables below): {'; '.join(parts)}.", ""]


def _pictures(result: Comparison, chart: str | None, artifacts_url: str | None) -> list[str]:
    lines = []
    if artifacts_url:
        what = " and ".join(
            w for w, have in (("the chart", chart), ("`dvc plots diff`'s page", result.plots_html)) if have
        )
        lines += [f"Pictures: {what}, in [this run's artifacts]({artifacts_url})."] if what else []
    else:
        if chart:
            lines += [f"![identity and text per mode, {result.base} and {result.head}]({chart})", ""]
        if result.plots_html is not None:
            lines.append(f"`dvc plots diff` of both revisions: `{result.plots_html}` (open in a browser).")
    return [*lines, ""] if lines and lines[-1] else lines


def render_markdown(
    result: Comparison,
    *,
    tolerances: dict[str, float] | None = None,
    chart: str | None = None,
    artifacts_url: str | None = None,
) -> str:
    """The report; the first of STORY_DETAIL's renderings that fits in a GitHub comment.

    Args:
        result: both sides' params and metrics (`compare`).
        tolerances: how far a headline figure may move and read as unchanged (figures.TOLERANCES and overrides).
        chart: the chart PNG's path relative to the report, shown inline; None for none.
        artifacts_url: where CI keeps the chart and `dvc plots diff`'s page (linked instead of paths).
    """
    rendered = ""
    for detail in STORY_DETAIL:
        rendered = _render(result, tolerances or TOLERANCES, chart, artifacts_url, detail)
        if len(rendered) <= COMMENT_LIMIT:
            break
    return rendered


def _render(result: Comparison, tolerances: dict, chart: str | None, artifacts_url: str | None, detail: str) -> str:
    lines = [f"## Storyboard: `{result.head}` against `{result.base}`", ""]
    lines += _warnings(result)
    lines += _params(result)
    if not result.metrics:
        lines.append("No metrics in either revision: run `dvc repro` (and `dvc pull` the base's outputs).")
        return "\n".join(lines) + "\n"
    modes, stories, run = split_eval(result.metrics.get(EVAL_METRICS, {}))
    if modes:
        lines += _headline(modes, tolerances, result.head)
    lines += _cost(modes, result.metrics)
    lines += _also_changed(result, modes, stories, run)
    lines += _pictures(result, chart, artifacts_url)
    lines += ["### All figures", ""]
    lines += group_blocks(result, modes, run)
    lines += story_blocks(stories, detail)
    return "\n".join(lines) + "\n"
