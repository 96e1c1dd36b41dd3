"""The study's figures: per-mode rating means and "same character" shares with 95% intervals, and how far the
raters agree (Krippendorff's alpha), all from kept libraries.

The t-interval comes from statsmodels (`DescrStatsW.tconfint_mean`), the Wilson score interval from statsmodels
(`proportion_confint(method="wilson")`: it stays inside 0..1 and works at 0/n and n/n), and the agreement from
the `krippendorff` package: ordinal alpha for the 1-5 ratings (a 4 against a 5 is a smaller disagreement than a
1 against a 5) and nominal alpha for the yes/no "same character" answers.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import krippendorff
import numpy as np
from statsmodels.stats.proportion import proportion_confint
from statsmodels.stats.weightstats import DescrStatsW

from storyboard.evaluate.study.sheets import DEFAULT_MODES
from storyboard.evaluate.study.store import RatingRow, RatingStore, StudyError
from storyboard.fsutil import write_json

logger = logging.getLogger(__name__)


RATING_SCALE = (1, 2, 3, 4, 5)

Interval = tuple[float | None, float | None, float | None]


def mean_ci95(values: Sequence[float]) -> Interval:
    """(mean, low, high) with a t-interval; bounds are None below two values (no spread to estimate)."""
    if not values:
        return None, None, None
    stats = DescrStatsW(np.asarray(values, dtype=float))
    if len(values) < 2:
        return float(stats.mean), None, None
    low, high = stats.tconfint_mean(alpha=0.05)
    # Not clipped to the 1..5 scale: a bound past the scale says "too few ratings" more honestly.
    return float(stats.mean), float(low), float(high)


def wilson_ci95(successes: int, n: int) -> Interval:
    """(share, low, high) with the Wilson score interval."""
    if n == 0:
        return None, None, None
    low, high = proportion_confint(successes, n, alpha=0.05, method="wilson")
    return successes / n, float(low), float(high)


def krippendorff_alpha(
    ratings: dict[tuple[str, str], float], level: Literal["nominal", "ordinal"], domain: Sequence[float]
) -> float | None:
    """Alpha over {(rater, unit): value}; None where it is undefined (no unit rated twice, or no variation)."""
    raters = {rater: i for i, rater in enumerate(sorted({rater for rater, _ in ratings}))}
    units = {unit: j for j, unit in enumerate(sorted({unit for _, unit in ratings}))}
    data = np.full((len(raters), len(units)), np.nan)  # raters x units, NaN where a rater gave no value
    for (rater, unit), value in ratings.items():
        data[raters[rater], units[unit]] = value
    if not (np.sum(~np.isnan(data), axis=0) >= 2).any():
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 when every pairable value is the same
        alpha = krippendorff.alpha(reliability_data=data, level_of_measurement=level, value_domain=list(domain))
    return None if math.isnan(alpha) else float(alpha)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _mode_figures(mine: list[RatingRow]) -> dict[str, Any]:
    yes = sum(1 for row in mine if row.same_character)
    mean, low, high = mean_ci95([row.rating for row in mine])
    share, s_low, s_high = wilson_ci95(yes, len(mine))
    return {
        "n": len(mine),
        "raters": len({row.rater for row in mine}),
        "rating_mean": _round(mean),
        "rating_ci95_low": _round(low),
        "rating_ci95_high": _round(high),
        "same_character_yes": yes,
        "same_character_share": _round(share),
        "same_character_ci95_low": _round(s_low),
        "same_character_ci95_high": _round(s_high),
    }


def agreement(rows: Sequence[RatingRow]) -> dict[str, Any]:
    """Krippendorff's alpha over every storyboard (story x mode) that two or more raters rated."""
    units: dict[str, set[str]] = {}
    for row in rows:
        units.setdefault(f"{row.story_id}\0{row.mode}", set()).add(row.rater)
    ratings = {(row.rater, f"{row.story_id}\0{row.mode}"): row.rating for row in rows}
    same = {(row.rater, f"{row.story_id}\0{row.mode}"): row.same_character for row in rows}
    return {
        "items": sum(1 for raters in units.values() if len(raters) >= 2),
        "rating_alpha_ordinal": _round(krippendorff_alpha(ratings, "ordinal", RATING_SCALE)),
        "same_character_alpha_nominal": _round(krippendorff_alpha(same, "nominal", (0, 1))),
    }


def summarise_study(db_path: Path, modes: Sequence[str] = DEFAULT_MODES) -> dict[str, Any]:
    """Per-mode figures plus agreement. Every mode in `modes` gets an entry (n = 0, nulls when unrated) so
    `dvc metrics diff` keys stay stable; modes found only in the database are added after them."""
    db_path = Path(db_path)
    if not db_path.is_file():
        raise StudyError(f"{db_path} not found: no ratings yet (run the study server first)")
    rows = RatingStore(db_path).rows()
    all_modes = list(modes) + sorted({row.mode for row in rows} - set(modes))
    return {
        "raters": len({row.rater for row in rows}),
        "ratings": len(rows),
        "modes": {mode: _mode_figures([row for row in rows if row.mode == mode]) for mode in all_modes},
        "agreement": agreement(rows),
    }


def write_study_metrics(db_path: Path, out_json: Path, modes: Sequence[str] = DEFAULT_MODES) -> dict[str, Any]:
    summary = summarise_study(db_path, modes)
    write_json(Path(out_json), summary)
    logger.info("study: %d ratings from %d raters -> %s", summary["ratings"], summary["raters"], out_json)
    return summary
