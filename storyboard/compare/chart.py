"""The comparison's one picture: per mode, the identity and text figures of both sides, as a small PNG."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from storyboard.compare.diff import Comparison, number
from storyboard.compare.figures import EVAL_METRICS, HEADLINE, faces_found, order_modes, split_eval
from storyboard.fsutil import atomic_path

logger = logging.getLogger(__name__)

CHART_FIGURES = tuple(f for f in HEADLINE if f.kind == "score")  # the similarities and the CLIP text score
PANEL_INCHES = (2.6, 2.4)  # one panel per figure: readable in a PR comment at about 1,000 px for five panels
DPI = 100
COLOURS = ("#9aa3b2", "#2f6fdf")  # base muted, head strong
SHIFT = 0.12  # base left of the mode's tick, head right of it


def _value(value: object) -> float:
    return float(value) if number(value) else math.nan


def write_chart(result: Comparison, path: Path) -> Path | None:
    """Bars of both sides per mode, one panel per figure (face figures only where a face was found); None when
    eval.json has no modes on either side.

    Args:
        result: the comparison (`compare`).
        path: the PNG to write (beside compare.md).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes, _, _ = split_eval(result.metrics.get(EVAL_METRICS, {}))
    names = order_modes(set(modes))
    faces = any(faces_found(figures) for figures in modes.values())
    figures = [f for f in CHART_FIGURES if (faces or not f.face) and any(f.key in modes[m] for m in names)]
    if not names or not figures:
        logger.info("no per-mode figures on either side: no chart")
        return None
    fig, axes = plt.subplots(
        1, len(figures), figsize=(PANEL_INCHES[0] * len(figures), PANEL_INCHES[1]), dpi=DPI, squeeze=False
    )
    xs = list(range(len(names)))
    for ax, figure in zip(axes[0], figures, strict=True):
        changes = [modes[m].get(figure.key) for m in names]
        old = [math.nan if c is None else _value(c.old) for c in changes]
        new = [math.nan if c is None else _value(c.new) for c in changes]
        # Points, not bars: the y axis is zoomed (cosines near 1 differ in the second decimal), and a bar cut
        # off above zero would overstate the difference.
        for x, a, b in zip(xs, old, new, strict=True):
            ax.plot([x - SHIFT, x + SHIFT], [a, b], color=COLOURS[0], linewidth=1, zorder=1)
        ax.scatter([x - SHIFT for x in xs], old, s=36, color=COLOURS[0], label=f"base {result.base}", zorder=2)
        ax.scatter([x + SHIFT for x in xs], new, s=36, color=COLOURS[1], label=result.head, zorder=3)
        ax.set_title(f"{figure.label}\n{figure.key}", fontsize=9)
        ax.set_xticks(xs, names, fontsize=8, rotation=20 if len(names) > 3 else 0)
        ax.set_xlim(-0.5, len(names) - 0.5)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="y", color="#e5e7eb", linewidth=0.6)
        ax.spines[["top", "right"]].set_visible(False)
        _zoom(ax, old + new)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def _zoom(ax, values: list[float]) -> None:
    """The y axis around the values, with room to tell two close points apart."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return
    low, high = min(values), max(values)
    pad = max((high - low) * 0.3, 0.01)
    ax.set_ylim(low - pad, high + pad)
