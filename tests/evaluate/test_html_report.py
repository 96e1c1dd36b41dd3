"""The static HTML report: escaping and n/a without a browser, then the real page in headless Chromium.

The browser test loads the report from file:// after moving it and deleting the run it came from, so it also
proves the report is self-contained. Its full-page screenshot is kept as a test artifact (tmp_path, and the
folder in $STORYBOARD_TEST_ARTIFACTS when set) for a person to look at.
"""

from __future__ import annotations

import base64
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from browser import chromium, keep_artifact
from PIL import Image

from storyboard import TINY_NOTICE
from storyboard.evaluate.html import NA, fmt, write_html_report
from storyboard.evaluate.scores import summarise
from storyboard.generate.frames import Attempt, RenderedFrame
from storyboard.generate.outputs import write_story_outputs
from storyboard.settings import MODES, Settings, Story
from storyboard.story.plan import Frame

FRAMES_PER_STORY = 3
STORIES = [
    Story(id="greeting", text="Aldar Kose greets the sunrise on the steppe."),
    Story(id="bazaar", text="Aldar Kose haggles with a spice seller & laughs."),
]
SIZES = {
    "baseline": (64, 64),
    "lora": (64, 64),
    "ref_guided": (240, 160),
    "multiref": (64, 64),
}  # tiny frames and larger ones
SHOTS = ["close-up", "medium", "wide"]
POSES = ["standing", "walking", "waving"]


def _image(mode: str, story: int, frame: int) -> Image.Image:
    """A distinct gradient per frame, so a broken or swapped image shows in the screenshot."""
    w, h = SIZES[mode]
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    tint = (MODES.index(mode) * 80 + story * 40 + frame * 25) % 256
    rgb = np.stack([x, y, np.full_like(x, tint)], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb)


def _fake_run(root: Path, stories: list[Story], scene_extra: str = "") -> tuple[dict, dict[str, pd.DataFrame]]:
    """outputs/<mode>/<story>/ as generate writes them, plus the metrics and per-frame tables evaluate makes."""
    frames: dict[str, pd.DataFrame] = {}
    metrics: dict = {"profile": "tiny", "notice": TINY_NOTICE}
    for mode in MODES:
        rows = []
        for s, story in enumerate(stories):
            rendered = []
            for i in range(1, FRAMES_PER_STORY + 1):
                plan = Frame(
                    scene=f"scene {i} of {story.id}{scene_extra}",
                    shot=SHOTS[i - 1],
                    pose=POSES[i - 1],
                    setting="steppe",
                )
                attempts = [
                    Attempt(seed=1000 * k + i, clip_text_score=0.2 + 0.01 * k, likeness=0.8, seconds=0.5)
                    for k in range(i)
                ]
                rendered.append(
                    RenderedFrame(i, plan, f"prompt {i}", attempts, _image(mode, s, i), best=len(attempts) - 1)
                )
            meta = {"story_id": story.id, "story": story.text, "mode": mode, "profile": "tiny"}
            write_story_outputs(root / mode / story.id, rendered, meta, Image.new("RGB", (8, 8)))
            for i in range(1, FRAMES_PER_STORY + 1):
                face = mode == "lora"  # faces in one mode only: the others must show n/a, not 0 or blank
                rows.append(
                    {
                        "mode": mode,
                        "story_id": story.id,
                        "frame": i,
                        "clip_text_score": 0.21 + 0.01 * i,
                        "clip_image_to_first": None if i == 1 else 0.9,
                        "character_to_first": None if i == 1 else 0.85,
                        "character_pairwise": 0.8,
                        "character_to_references": 0.7,
                        "character_detected": i > 1,
                        "face_detected": face,
                        "face_in_box": face and i > 1,
                        "face_similarity_to_first": 0.8 if face and i > 1 else None,
                        "face_pairwise": 0.75 if face else None,
                        "attempts": i,
                        "seconds": 0.5 * i,
                    }
                )
        frames[mode] = pd.DataFrame(rows)
        cids = {"vistorybench_self_cids": 0.6, "vistorybench_cross_cids": 0.5, "vistorybench_occm": 90.0}
        per_story = {story.id: cids for story in stories}
        by_story = {
            story.id: summarise(frames[mode][frames[mode]["story_id"] == story.id], per_story) for story in stories
        }
        # A key the report does not know: it must be ignored, not break the tables.
        metrics[mode] = {**summarise(frames[mode], per_story), "stories": by_story, "some_future_key": 42}
    return metrics, frames


def _settings(params: Settings, profile: str, stories: list[Story] = STORIES) -> Settings:
    return params.model_copy(update={"profile": profile, "stories": stories})


class _Tables(HTMLParser):
    """Rows of text cells of each <table id=...>, enough to read the report without a browser."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._table = dict(attrs).get("id")
            if self._table:
                self.tables[self._table] = []
        elif self._table and tag == "tr":
            self.tables[self._table].append([])
        elif self._table and tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        elif self._table and tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append(" ".join(" ".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def test_report_escapes_text_and_shows_missing_figures_as_na(tmp_path, params):
    hostile = Story(id="greeting", text="<script>alert('x')</script> & <b>bold</b>")
    settings = _settings(params, "sdxl", [hostile])
    metrics, frames = _fake_run(tmp_path / "outputs", [hostile], scene_extra=" <img src=x onerror=alert(1)>")
    metrics["baseline"]["clip_text_score"] = None
    metrics["lora"] |= {"clip_threshold": 0.213, "clip_threshold_source": "calibrated", "clip_text_score": 0.25}
    metrics["lora"]["clip_text_score_first_attempt"] = 0.22

    index = write_html_report(tmp_path / "report", tmp_path / "outputs", metrics, frames, settings)

    page = index.read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &lt;b&gt;" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert TINY_NOTICE not in page  # sdxl profile: no tiny notice

    parser = _Tables()
    parser.feed(page)
    header, *rows = parser.tables["ablation"]
    assert [r[0].split()[0] for r in rows] == list(MODES)
    assert "some_future_key" not in page and "stories" not in header
    baseline = dict(zip(header, rows[0], strict=True))
    assert baseline["CLIP text"] == NA  # None in the metrics
    assert baseline["face sim. vs frame 1"] == NA  # no face found in baseline
    assert dict(zip(header, rows[1], strict=True))["face sim. vs frame 1"] == "0.800"
    assert len(parser.tables["per-story"]) == 1 + len(MODES)
    # the retry loop's cost and gain: thresholds and their origin, frames redone, first attempts beside kept ones
    header, *rows = parser.tables["frame-checks"]
    assert header[:3] == ["mode", "text threshold", "text threshold from"] and "frames redone" in header
    lora = rows[MODES.index("lora")]
    assert lora[1:3] == ["0.213", "calibrated"] and rows[0][1:3] == [NA, NA]
    redone = header.index("frames redone")
    assert lora[redone] == "67%"  # frame i of each story took i attempts
    assert lora[header.index("CLIP text, first")] == "0.220" and lora[header.index("CLIP text, kept")] == "0.250"
    assert rows[0][header.index("CLIP text, first")] == NA

    # One folder: the page and copies of every frame, nothing staged left behind.
    assert sorted(p.name for p in index.parent.iterdir()) == ["assets", "index.html"]
    assert len(list((index.parent / "assets").rglob("*.png"))) == len(MODES) * FRAMES_PER_STORY


def test_fmt_handles_pandas_and_numpy_values():
    assert fmt(None, ".3f") == fmt(float("nan"), ".3f") == fmt(np.float64("nan"), ".3f") == fmt(pd.NA, ".3f") == NA
    assert fmt(np.bool_(True)) == "yes" and fmt(False) == "no"
    assert fmt(np.int64(3), "d") == "3" and fmt(3.0, "d") == "3"  # ints pandas turned into floats
    assert fmt(0.25, ".0%") == "25%" and fmt(np.float32(0.5), ".3f") == "0.500"


def test_missing_story_is_shown_not_fatal(tmp_path, params):
    settings = _settings(params, "tiny")
    metrics, frames = _fake_run(tmp_path / "outputs", STORIES)
    shutil.rmtree(tmp_path / "outputs" / "lora" / "bazaar")

    page = write_html_report(tmp_path / "report", tmp_path / "outputs", metrics, frames, settings).read_text()

    assert "not rendered" in page and page.count("<img ") == (len(MODES) * len(STORIES) - 1) * FRAMES_PER_STORY


# --- the real page in headless Chromium -------------------------------------------------------------------------


def _full_page_png(driver) -> bytes:
    """The whole page, not just the viewport: Chrome's DevTools capture beyond the viewport."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    return base64.b64decode(shot["data"])


@pytest.mark.timeout(60)
def test_report_renders_in_chromium(tmp_path, params):
    settings = _settings(params, "tiny")
    metrics, frames = _fake_run(tmp_path / "outputs", STORIES)
    index = write_html_report(tmp_path / "report", tmp_path / "outputs", metrics, frames, settings)
    # Move the report and delete the run: every image must still load, from the report's own assets/.
    moved = shutil.move(index.parent, tmp_path / "moved" / "report")
    shutil.rmtree(tmp_path / "outputs")

    with chromium(tmp_path) as driver:
        driver.get((Path(moved) / "index.html").as_uri())
        page = driver.execute_script(
            """
            const imgs = [...document.images];
            const shown = (el) => !!el && el.offsetHeight > 0 && getComputedStyle(el).visibility !== 'hidden';
            return {
              images: imgs.length,
              broken: imgs.filter((i) => !i.complete || i.naturalWidth === 0).map((i) => i.src),
              rendering: imgs.map((i) => [i.naturalWidth, getComputedStyle(i).imageRendering, i.width]),
              modes: [...document.querySelectorAll('#ablation tbody tr th')].map((th) => th.firstChild.textContent),
              perStory: document.querySelectorAll('#per-story tbody tr').length,
              notice: shown(document.getElementById('tiny-notice'))
                ? document.getElementById('tiny-notice').textContent : null,
              resources: performance.getEntriesByType('resource').map((e) => e.name),
            };
            """
        )
        png = _full_page_png(driver)

    shot = tmp_path / "html_report.png"
    shot.write_bytes(png)
    keep_artifact(shot)

    assert page["images"] == len(MODES) * len(STORIES) * FRAMES_PER_STORY
    assert page["broken"] == []
    assert page["modes"] == list(MODES)
    assert page["perStory"] == len(MODES) * len(STORIES)
    assert page["notice"] == TINY_NOTICE
    # Tiny 64 px frames are upscaled with crisp pixels; frames wider than a thumbnail are scaled down smoothly.
    for natural, rendering, shown_width in page["rendering"]:
        assert shown_width == 160 and rendering == ("pixelated" if natural < 160 else "auto")
    assert all(url.startswith("file://") for url in page["resources"])  # offline: nothing fetched from a server
    assert Image.open(shot).size[1] > 900  # full page, taller than the viewport
