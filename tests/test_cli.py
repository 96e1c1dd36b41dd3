"""The `storyboard` console entry: same code as the stages, for one-off stories."""

from __future__ import annotations

import json

import pytest
import yaml

from storyboard.cli import main


@pytest.fixture
def tiny_params(tmp_path, tiny_settings):
    """params.yaml for the tiny profile with offline planning and few steps."""
    data = tiny_settings.model_dump(mode="json")
    data["plan"]["backend"] = "offline"
    data["generate"].update(steps=2, max_retries=0)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_plan_prints_a_valid_plan(tiny_params, capsys):
    main(["--params", str(tiny_params), "plan", "--story", "Aldar Kose tricks a merchant and steals his horse"])
    plan = json.loads(capsys.readouterr().out)
    assert plan["planner"] == "offline" and 6 <= len(plan["frames"]) <= 10
    assert plan["frames"][0]["shot"] == "close-up"


def test_generate_renders_a_story(tmp_path, tiny_params, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/dataset here, whatever the repository holds
    out = tmp_path / "adhoc"
    main(
        [
            "--params",
            str(tiny_params),
            "generate",
            "--story",
            "Aldar Kose greets the sun",
            "--mode",
            "baseline",
            "--out",
            str(out),
        ]
    )
    (story,) = (out / "baseline").iterdir()
    meta = json.loads((story / "metadata.json").read_text())
    assert meta["mode"] == "baseline" and meta["profile"] == "tiny"
    assert (story / "contact_sheet.png").exists() and (out / f"{story.name}.plan.json").exists()
    assert meta["likeness_references"] == 0  # no data/dataset in this folder


def test_generate_compares_frames_with_the_training_set(tmp_path, tiny_params, tiny_dataset):
    out = tmp_path / "adhoc"
    args = ["--params", str(tiny_params), "generate", "--story", "Aldar Kose waves", "--mode", "baseline"]
    main([*args, "--out", str(out), "--dataset", str(tiny_dataset)])
    (story,) = (out / "baseline").iterdir()
    meta = json.loads((story / "metadata.json").read_text())
    images = [line for line in (tiny_dataset / "manifest.jsonl").read_text().splitlines() if '"ok"' in line]
    assert meta["likeness_references"] == len(images) > 0


def test_generate_names_a_dataset_folder_that_is_not_one(tmp_path, tiny_params, caplog):
    args = ["--params", str(tiny_params), "generate", "--story", "x", "--dataset", str(tmp_path / "nowhere")]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert "nowhere: no manifest.jsonl there" in caplog.text


def test_user_errors_exit_2_with_a_message(tmp_path, caplog):
    with pytest.raises(SystemExit) as exit_info:
        main(["--params", str(tmp_path / "missing.yaml"), "plan", "--story", "x"])
    assert exit_info.value.code == 2
    assert "missing.yaml not found" in caplog.text
