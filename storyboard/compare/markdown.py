"""The comparison as Markdown a reviewer reads in thirty seconds: what moved leads, everything else is folded.

Outside `<details>`: a warning when the sides ran on different profiles or models, the params that changed, per mode
the headline figures that moved (old -> new) with a one-line verdict against stated tolerances, the cost that
changed (timing marked as timing), and the pictures. Inside: every figure, grouped by what it measures, then the
per-story tables.
"""

from __future__ import annotations

from storyboard.compare.diff import Change, Comparison
from storyboard.compare.figures import (
    EVAL_METRICS,
    GROUPS,
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

COMMENT_LIMIT = 65_536  # GitHub's limit on a comment body, in characters
# What the per-story tables keep, from most to least: the first rendering that fits the comment limit is posted.
STORY_DETAIL = ("all", "changed", "headline", "none")
ALSO_CHANGED_NAMES = 8  # the "also changed" line names this many figures, then counts the rest
LONG_TEXT = 100  # provenance strings (eval.json's `vistorybench` note) are cut to this in the tables


def fmt(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= LONG_TEXT else text[: LONG_TEXT - 1] + "…"


def _delta(change: Change) -> str:
    return "" if change.delta is None else f" ({change.delta:+.4g})"


def cell(change: Change) -> str:
    """A table cell: the value, or `old → **new** (delta)` when it changed."""
    if not change.changed:
        return fmt(change.new)
    return f"{fmt(change.old)} → **{fmt(change.new)}**{_delta(change)}"


def _short(change: Change) -> str:
    return f"{fmt(change.old)} → {fmt(change.new)}" if change.changed else fmt(change.new)


def _count(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _name(key: str) -> str:
    return f"`{key}` (timing)" if is_timing(key) else f"`{key}`"


def outside_details(markdown: str) -> list[str]:
    """The lines a reader sees without unfolding anything (what the 30-line budget counts)."""
    depth, lines = 0, []
    for line in markdown.splitlines():
        opened, closed = line.count("<details"), line.count("</details>")
        if depth == 0 and not opened:
            lines.append(line)
        depth = max(0, depth + opened - closed)
    return lines


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
    return [*lines, *_table(["param", result.base, result.head], rows), ""]


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
                delta = "" if change.delta is None else f"{change.delta:+.4g}, "
                shown = cell(change) if beyond else f"{_short(change)} ({delta}within)"
                cells.append(shown)
            rows.append([f"**{mode}**", *cells])
        legend = ["`=`: unchanged.", ""] if any("=" in row for row in rows) else []
        lines += [*_table(["mode", *(f.label for f in columns)], rows), "", *legend]
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
            beyond.append(f"{figure.label}{arrow}{_delta(change) or ' ' + _short(change)}")
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
                *(f"{_short(figs[k])}{_delta(figs[k])}" if k in figs and figs[k].changed else "=" for k in keys),
            ]
            for mode, figs in ((m, modes[m]) for m in order_modes(set(modes)))
            if any(k in figs and figs[k].changed for k in keys)
        ]
        lines += [*_table(["mode", *(_name(k) for k in keys)], rows), ""]
    if training is not None and training.changed:
        delta = "" if training.delta is None else f" ({training.delta:+.4g} s)"
        lines += [f"Training time (timing): {fmt(training.old)} s → {fmt(training.new)} s{delta}.", ""]
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
        parts.append(f"per story: {_count(sum(story_changes.values()), 'figure')} in {where}")
    return [f"**Also changed** (tables below): {'; '.join(parts)}.", ""]


def _pictures(result: Comparison, chart: str | None, artifacts_url: str | None) -> list[str]:
    lines = []
    if artifacts_url:
        what = " and ".join(
            w for w, have in (("the chart", chart), ("`dvc plots diff`'s page", result.plots_html)) if have
        )
        lines.append(f"Pictures: {what or 'none'}, in [this run's artifacts]({artifacts_url}).")
    else:
        if chart:
            lines += [f"![identity and text per mode, {result.base} and {result.head}]({chart})", ""]
        if result.plots_html is not None:
            lines.append(f"`dvc plots diff` of both revisions: `{result.plots_html}` (open in a browser).")
    return [*lines, ""] if lines and lines[-1] else lines


def _details(summary: str, body: list[str]) -> list[str]:
    return [f"<details><summary>{summary}</summary>", "", *body, "", "</details>"]


def _group_blocks(result: Comparison, modes: dict, run: dict) -> list[str]:
    mode_names = order_modes(set(modes))
    files = [(p, k, c) for p, keys in result.metrics.items() if p != EVAL_METRICS for k, c in keys.items()]
    files += [(EVAL_METRICS, k, c) for k, c in run.items()]
    figures = {k for figs in modes.values() for k in figs}
    lines = []
    for group, title in GROUPS:
        keys = sorted(
            (k for k in figures if group_of(EVAL_METRICS, k) == group), key=lambda k: order_key(EVAL_METRICS, k)
        )
        rest = sorted((f for f in files if group_of(f[0], f[1]) == group), key=lambda f: order_key(f[0], f[1]))
        if not keys and not rest:
            continue
        body: list[str] = []
        if keys:
            rows = [[_name(k), *(cell(modes[m][k]) if k in modes[m] else "–" for m in mode_names)] for k in keys]
            body += _table(["figure", *mode_names], rows)
        if rest:
            body += [""] if body else []
            if len({p for p, _, _ in rest}) == 1:
                body += _table([f"figure of `{rest[0][0]}`", "value"], [[_name(k), cell(c)] for _, k, c in rest])
            else:
                body += _table(["file", "figure", "value"], [[f"`{p}`", _name(k), cell(c)] for p, k, c in rest])
        items = [(k, modes[m][k]) for m in mode_names for k in keys if k in modes[m]] + [(k, c) for _, k, c in rest]
        lines += _details(f"<b>{title}</b> ({_moved(items)})", body)
    return lines


def _story_rows(per_mode: dict[str, dict[str, Change]], mode_names: list[str], detail: str) -> list[list[str]]:
    keys = sorted({k for figs in per_mode.values() for k in figs}, key=lambda k: order_key(EVAL_METRICS, k))
    rows, last_group = [], None
    for key in keys:
        changes = [per_mode.get(m, {}).get(key) for m in mode_names]
        changed = any(c is not None and c.changed for c in changes)
        if detail != "all" and not changed or detail == "headline" and key not in HEADLINE_KEYS:
            continue
        group = group_of(EVAL_METRICS, key)
        label, last_group = (group if group != last_group else ""), group
        rows.append([label, _name(key), *("–" if c is None else _short(c) for c in changes)])
    return rows


def _moved(items) -> str:
    """How many (key, change) pairs changed, timing told apart: it moves on every run."""
    items = [(k, c) for k, c in items if c.changed]
    timing = sum(is_timing(k) for k, _ in items)
    return f"{len(items) - timing} changed" + (f", {timing} timing" if timing else "")


def _story_blocks(stories: dict, detail: str) -> list[str]:
    if not stories:
        return []
    mode_names = order_modes({m for per in stories.values() for m in per})
    summary = f"<b>Per story</b> ({_count(len(stories), 'story', 'stories')}, "
    summary += f"{_moved(c for per in stories.values() for figs in per.values() for c in figs.items())})"
    if detail == "none":
        return _details(summary, ["Left out to fit GitHub's comment limit: `dvc metrics diff --all` lists them."])
    note = {
        "changed": "Unchanged rows left out to fit GitHub's comment limit.",
        "headline": "Only the headline figures that changed, to fit GitHub's comment limit.",
    }.get(detail)
    body = [note, ""] if note else []
    for story in sorted(stories):
        per = stories[story]
        rows = _story_rows(per, mode_names, detail)
        table = _table(["group", "figure", *mode_names], rows) if rows else ["Nothing changed."]
        body += _details(
            f"story <code>{story}</code> ({_moved(i for figs in per.values() for i in figs.items())})", table
        )
    return _details(summary, body)


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
    lines += _group_blocks(result, modes, run)
    lines += _story_blocks(stories, detail)
    return "\n".join(lines) + "\n"
