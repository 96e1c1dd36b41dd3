"""What the report folds under `<details>`: every figure by group, then the per-story tables."""

from __future__ import annotations

from storyboard.compare.cells import cell, count, moved, name, short, table
from storyboard.compare.diff import Change, Comparison
from storyboard.compare.figures import EVAL_METRICS, GROUPS, HEADLINE_KEYS, group_of, order_key, order_modes

# What the per-story tables keep, from most to least: the first rendering that fits the comment limit is posted.
STORY_DETAIL = ("all", "changed", "headline", "none")


def outside_details(markdown: str) -> list[str]:
    """The lines a reader sees without unfolding anything (what the 30-line budget counts)."""
    depth, lines = 0, []
    for line in markdown.splitlines():
        opened, closed = line.count("<details"), line.count("</details>")
        if depth == 0 and not opened:
            lines.append(line)
        depth = max(0, depth + opened - closed)
    return lines


def details(summary: str, body: list[str]) -> list[str]:
    return [f"<details><summary>{summary}</summary>", "", *body, "", "</details>"]


def group_blocks(result: Comparison, modes: dict, run: dict) -> list[str]:
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
            rows = [[name(k), *(cell(modes[m][k]) if k in modes[m] else "–" for m in mode_names)] for k in keys]
            body += table(["figure", *mode_names], rows)
        if rest:
            body += [""] if body else []
            if len({p for p, _, _ in rest}) == 1:
                body += table([f"figure of `{rest[0][0]}`", "value"], [[name(k), cell(c)] for _, k, c in rest])
            else:
                body += table(["file", "figure", "value"], [[f"`{p}`", name(k), cell(c)] for p, k, c in rest])
        items = [(k, modes[m][k]) for m in mode_names for k in keys if k in modes[m]] + [(k, c) for _, k, c in rest]
        lines += details(f"<b>{title}</b> ({moved(items)})", body)
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
        rows.append([label, name(key), *("–" if c is None else short(c) for c in changes)])
    return rows


def story_blocks(stories: dict, detail: str) -> list[str]:
    if not stories:
        return []
    mode_names = order_modes({m for per in stories.values() for m in per})
    summary = f"<b>Per story</b> ({count(len(stories), 'story', 'stories')}, "
    summary += f"{moved(c for per in stories.values() for figs in per.values() for c in figs.items())})"
    if detail == "none":
        return details(summary, ["Left out to fit GitHub's comment limit: `dvc metrics diff --all` lists them."])
    note = {
        "changed": "Unchanged rows left out to fit GitHub's comment limit.",
        "headline": "Only the headline figures that changed, to fit GitHub's comment limit.",
    }.get(detail)
    body = [note, ""] if note else []
    for story in sorted(stories):
        per = stories[story]
        rows = _story_rows(per, mode_names, detail)
        shown = table(["group", "figure", *mode_names], rows) if rows else ["Nothing changed."]
        body += details(
            f"story <code>{story}</code> ({moved(i for figs in per.values() for i in figs.items())})", shown
        )
    return details(summary, body)
