"""The pull-request comparison of this run against a base: params, metrics per mode and per story, a chart, plots.

diff.py collects both sides from DVC's own diffs; figures.py says what each figure measures (its group, timing or
not, the headline figures and their tolerances); markdown.py writes what leads the report, folded.py what it folds
under `<details>`, cells.py their cells; chart.py draws the PNG.
"""

from storyboard.compare.chart import write_chart
from storyboard.compare.diff import Change, CompareError, Comparison, changes, compare
from storyboard.compare.figures import TOLERANCES, tolerances_from
from storyboard.compare.folded import outside_details
from storyboard.compare.markdown import COMMENT_LIMIT, render_markdown

__all__ = [
    "COMMENT_LIMIT",
    "TOLERANCES",
    "Change",
    "CompareError",
    "Comparison",
    "changes",
    "compare",
    "outside_details",
    "render_markdown",
    "tolerances_from",
    "write_chart",
]
