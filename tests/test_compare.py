"""The pull-request report's layout, from DVC diffs shaped as `dvc ... diff --json` gives them."""

from __future__ import annotations

import subprocess

import pytest

from storyboard.compare import Change, CompareError, Comparison, _changes, compare, render_markdown

METRICS_DIFF = {
    "metrics/eval.json": {
        "lora.clip_text_score": {"old": 0.25, "new": 0.3, "diff": 0.05},
        "baseline.clip_text_score": {"old": 0.2, "new": 0.2, "diff": 0},
        "lora.stories.bazaar.clip_text_score": {"old": 0.21, "new": 0.31, "diff": 0.1},
        "ref_guided.stories.bazaar.face_detection_rate": {"old": 0.5, "new": 0.5, "diff": 0},
    },
    "metrics/caption.json": {"requests": {"old": 12, "new": 0, "diff": -12}},
}


def test_report_has_params_and_metrics_per_mode_and_story() -> None:
    result = Comparison(
        base="main",
        head="workspace",
        params={
            "params.yaml:generate.guidance_scale": Change(6.0, 2.0),
            "params.yaml:profile": Change("tiny", "tiny"),
        },
        metrics=_changes(METRICS_DIFF),
    )
    md = render_markdown(result)
    assert "### Params (1 changed)" in md and "| `params.yaml:generate.guidance_scale` | 6 | 2 |" in md
    assert "### Metrics (3 changed)" in md
    assert "#### Per mode, all stories (1 changed)" in md
    assert "| `clip_text_score` | 0.2 | 0.25 → **0.3** (+0.05) |" in md
    assert "#### Per mode, story `bazaar` (1 changed)" in md
    assert "| metric | lora | ref_guided |" in md and "| `face_detection_rate` | – | 0.5 |" in md
    assert "| `requests` | 12 → **0** (-12) |" in md
    assert "plumbing, not quality" in md  # a tiny run says what its numbers are


def test_nothing_changed_says_so() -> None:
    md = render_markdown(Comparison(base="abc", head="workspace"))
    assert "No param changed." in md and "No metrics in either revision" in md


def test_unknown_base_is_one_line_naming_it(tmp_path) -> None:
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    with pytest.raises(CompareError, match="BASE=nope is not a commit, branch or tag") as e:
        compare("nope", cwd=tmp_path)
    assert "\n" not in str(e.value)
