"""Table cells and tables of the report: values, changes as `old → new (delta)`, figure names."""

from __future__ import annotations

from storyboard.compare.diff import Change
from storyboard.compare.figures import is_timing

LONG_TEXT = 100  # provenance strings (eval.json's `vistorybench` note) are cut to this in the tables


def fmt(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= LONG_TEXT else text[: LONG_TEXT - 1] + "…"


def delta(change: Change) -> str:
    return "" if change.delta is None else f" ({change.delta:+.4g})"


def cell(change: Change) -> str:
    """A table cell: the value, or `old → **new** (delta)` when it changed."""
    if not change.changed:
        return fmt(change.new)
    return f"{fmt(change.old)} → **{fmt(change.new)}**{delta(change)}"


def short(change: Change) -> str:
    return f"{fmt(change.old)} → {fmt(change.new)}" if change.changed else fmt(change.new)


def count(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def name(key: str) -> str:
    return f"`{key}` (timing)" if is_timing(key) else f"`{key}`"


def moved(items) -> str:
    """How many (key, change) pairs changed, timing told apart: it moves on every run."""
    items = [(k, c) for k, c in items if c.changed]
    timing = sum(is_timing(k) for k, _ in items)
    return f"{len(items) - timing} changed" + (f", {timing} timing" if timing else "")
