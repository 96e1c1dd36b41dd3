"""The study's statistics against published values: Krippendorff's own alpha example, Newcombe's Wilson
intervals, Student's t quantiles."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest

from storyboard.evaluate.study.sheets import DEFAULT_MODES
from storyboard.evaluate.study.stats import (
    agreement,
    krippendorff_alpha,
    mean_ci95,
    summarise_study,
    wilson_ci95,
    write_study_metrics,
)
from storyboard.evaluate.study.store import RatingRow, RatingStore, StudyError

N = math.nan
# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers x 12 units, values
# 1-5, gaps where an observer gave none. Published: nominal alpha = 0.743, ordinal alpha = 0.815.
KRIPPENDORFF_2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
    [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N],
]


def published_ratings() -> dict[tuple[str, str], float]:
    return {
        (f"observer{o}", f"unit{u:02d}"): value
        for o, row in enumerate(KRIPPENDORFF_2011)
        for u, value in enumerate(row)
        if not math.isnan(value)
    }


def test_krippendorff_alpha_matches_the_published_example():
    ratings = published_ratings()
    assert krippendorff_alpha(ratings, "ordinal", (1, 2, 3, 4, 5)) == pytest.approx(0.815, abs=5e-4)
    assert krippendorff_alpha(ratings, "nominal", (1, 2, 3, 4, 5)) == pytest.approx(0.743, abs=5e-4)
    # The same data as study ratings (units are story x mode): the summary reports the ordinal figure.
    rows = [RatingRow(rater, unit, "lora", int(value), 1) for (rater, unit), value in ratings.items()]
    figures = agreement(rows)
    assert figures["rating_alpha_ordinal"] == pytest.approx(0.815, abs=5e-4)
    assert figures["items"] == 11  # unit 12 has one value only: not pairable
    assert figures["same_character_alpha_nominal"] is None  # every answer "yes": no variation, alpha undefined


def test_alpha_is_none_without_a_unit_rated_twice():
    assert krippendorff_alpha({("a", "u1"): 3, ("b", "u2"): 4}, "ordinal", (1, 2, 3, 4, 5)) is None
    assert krippendorff_alpha({}, "nominal", (0, 1)) is None


def test_intervals_against_known_values():
    # Student's t: 2, 3, 4, 1 -> mean 2.5, sd sqrt(5/3), t(0.975, 3) = 3.182446 (tables)
    mean, low, high = mean_ci95([2, 3, 4, 1])
    half = 3.182446 * math.sqrt(5 / 3) / 2
    assert (mean, low, high) == pytest.approx((2.5, 2.5 - half, 2.5 + half), abs=1e-5)
    assert mean_ci95([]) == (None, None, None)
    assert mean_ci95([3]) == (3.0, None, None)
    assert mean_ci95([4, 4, 4]) == (4.0, 4.0, 4.0)  # no spread: a zero-width interval, not an error
    # Newcombe (1998), Statistics in Medicine 17:857, table I: 81/263 -> 0.2553-0.3662; 0/10 -> 0-0.2775
    assert wilson_ci95(81, 263) == pytest.approx((81 / 263, 0.2553, 0.3662), abs=1e-4)
    assert wilson_ci95(0, 10) == pytest.approx((0.0, 0.0, 0.2775), abs=1e-4)
    assert wilson_ci95(0, 0) == (None, None, None)


ROWS = [  # rater, story, mode, rating, same_character
    ("r1", "s1", "baseline", 2, 0),
    ("r2", "s1", "baseline", 3, 0),
    ("r3", "s1", "baseline", 4, 1),
    ("r1", "s2", "baseline", 1, 0),
    ("r1", "s1", "lora", 5, 1),
    ("r2", "s1", "lora", 5, 1),
    ("r1", "s2", "lora", 4, 1),
    ("r1", "s1", "ref_guided", 3, 1),
]


def make_db(path: Path, rows: list[tuple]) -> Path:
    store = RatingStore(path)
    for row in rows:
        store.save(*row)
    return path


def test_summary_on_a_known_database(tmp_path):
    summary = summarise_study(make_db(tmp_path / "r.sqlite", ROWS))
    assert summary["raters"] == 3 and summary["ratings"] == 8
    base, lora, ref = (summary["modes"][m] for m in DEFAULT_MODES)
    assert (base["n"], base["raters"], base["rating_mean"]) == (4, 3, 2.5)
    assert base["rating_ci95_low"] == pytest.approx(2.5 - 3.182446 * math.sqrt(5 / 3) / 2, abs=1e-4)
    # 1 of 4 "same character": Wilson 95% interval (0.0456, 0.6994)
    assert (base["same_character_yes"], base["same_character_share"]) == (1, 0.25)
    assert (base["same_character_ci95_low"], base["same_character_ci95_high"]) == pytest.approx((0.0456, 0.6994))
    # lora: 5, 5, 4 -> t(0.975, 2) = 4.302653; the bound may pass 5 (not clipped); 3 of 3: Wilson (0.4385, 1)
    assert lora["rating_ci95_low"] == pytest.approx(14 / 3 - 4.302653 * math.sqrt(1 / 3) / math.sqrt(3), abs=1e-4)
    assert lora["rating_ci95_high"] > 5
    assert (lora["same_character_ci95_low"], lora["same_character_ci95_high"]) == pytest.approx((0.4385, 1.0))
    assert ref["n"] == 1 and ref["rating_ci95_low"] is None
    # Two storyboards rated twice or more: (s1, baseline) by 3 raters, (s1, lora) by 2.
    assert summary["agreement"]["items"] == 2
    assert -1 <= summary["agreement"]["rating_alpha_ordinal"] <= 1


def test_summary_keeps_unrated_modes_and_writes_json(tmp_path):
    db = make_db(tmp_path / "r.sqlite", [("r1", "s1", "lora", 4, 1)])
    out = tmp_path / "metrics" / "study.json"
    summary = write_study_metrics(db, out)
    assert json.loads(out.read_text()) == summary
    assert list(summary["modes"]) == list(DEFAULT_MODES)  # stable keys for `dvc metrics diff`
    assert summary["modes"]["baseline"] == {
        "n": 0,
        "raters": 0,
        "rating_mean": None,
        "rating_ci95_low": None,
        "rating_ci95_high": None,
        "same_character_yes": 0,
        "same_character_share": None,
        "same_character_ci95_low": None,
        "same_character_ci95_high": None,
    }
    assert summary["agreement"] == {"items": 0, "rating_alpha_ordinal": None, "same_character_alpha_nominal": None}
    with pytest.raises(StudyError, match="not found"):
        summarise_study(tmp_path / "missing.sqlite")


def test_an_older_database_without_invites_still_summarises(tmp_path):
    """Databases written before invite links (no raters table) keep working."""
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as con:
        con.execute(
            "CREATE TABLE ratings(rater TEXT, story_id TEXT, mode TEXT, rating INTEGER, same_character INTEGER, "
            "created_at TEXT, PRIMARY KEY(rater, story_id, mode))"
        )
        con.executemany("INSERT INTO ratings VALUES (?, ?, ?, ?, ?, '2025-01-01T00:00:00+00:00')", ROWS)
    con.close()
    assert summarise_study(path)["ratings"] == 8
