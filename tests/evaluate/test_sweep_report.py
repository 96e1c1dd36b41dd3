"""The report's checkpoint section, from metrics/train.json as the train stage writes it."""

from __future__ import annotations

from PIL import Image

from storyboard.evaluate.sweep_report import sweep_section


def test_chosen_step_beside_two_others_with_scores(tmp_path):
    samples = {}
    for step in (100, 300, 500):
        path = tmp_path / "live" / f"step{step:07d}_0.png"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (8, 8), (step % 256, 0, 0)).save(path)
        samples[str(step)] = [str(path)]
    metrics = {
        "select": "best",
        "chosen_step": 300,
        "select_tolerance": 0.02,
        "prompts": ["aldar_kose_man, portrait <b>"],
        "steps": [
            {"step": s, "identity": i, "text_alignment": t, "chosen": int(s == 300)}
            for s, i, t in ((100, 0.61, 0.30), (200, 0.65, 0.30), (300, 0.72, 0.29), (400, 0.8, 0.1), (500, 0.7, 0.2))
        ],
        "samples": samples,
    }
    html = sweep_section(metrics, tmp_path / "assets")

    assert html.count("<th ") == 3 and html.count("<img") == 3
    assert "step 300 (chosen)<br>identity 0.720 · text 0.290" in html
    assert "step 100<br>identity 0.610" in html and "step 500<br>identity 0.700 · text 0.200" in html
    assert "&lt;b&gt;" in html and "<b>" not in html  # run text is escaped
    assert sorted(p.name for p in (tmp_path / "assets/checkpoints").iterdir()) == [
        "step0000100_0.png", "step0000300_0.png", "step0000500_0.png"
    ]  # fmt: skip
    assert 'src="assets/checkpoints/step0000300_0.png"' in html


def test_no_section_without_a_sweep(tmp_path):
    assert sweep_section(None, tmp_path) == ""
    assert sweep_section({"select": "last", "chosen_step": 500, "steps": []}, tmp_path) == ""
