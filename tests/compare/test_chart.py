"""The chart: both sides' identity and text figures per mode, face panels only where a face was found."""

from __future__ import annotations

from pathlib import Path

from compare_sides import comparison, eval_side, tiny_eval, with_changes
from PIL import Image

from storyboard.compare import Comparison, write_chart
from storyboard.compare.chart import CHART_FIGURES, DPI, PANEL_INCHES


def test_chart_is_a_small_png_with_one_panel_per_figure(tmp_path: Path) -> None:
    base = tiny_eval()
    result = comparison(eval_side(base), eval_side(with_changes(base, {"lora.vistorybench_self_cids": 0.99})))
    path = write_chart(result, tmp_path / "compare.png")
    image = Image.open(path)
    panels = [f for f in CHART_FIGURES if not f.face]  # the tiny run found no face
    assert image.format == "PNG" and image.size == (int(PANEL_INCHES[0] * DPI * len(panels)), PANEL_INCHES[1] * DPI)
    assert path.stat().st_size < 100_000


def test_face_panels_appear_once_a_face_is_found(tmp_path: Path) -> None:
    base = tiny_eval()
    faces = with_changes(base, {"lora.face_detection_rate": 0.5, "lora.face_pairwise": 0.8})
    image = Image.open(write_chart(comparison(eval_side(base), eval_side(faces)), tmp_path / "c.png"))
    assert image.size[0] == int(PANEL_INCHES[0] * DPI * len(CHART_FIGURES))


def test_no_modes_no_chart(tmp_path: Path) -> None:
    assert write_chart(Comparison(base="a", head="b"), tmp_path / "c.png") is None
    assert not (tmp_path / "c.png").exists()
