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


def test_generate_renders_a_story(tmp_path, tiny_params):
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


def test_user_errors_exit_2_with_a_message(tmp_path, caplog):
    with pytest.raises(SystemExit) as exit_info:
        main(["--params", str(tmp_path / "missing.yaml"), "plan", "--story", "x"])
    assert exit_info.value.code == 2
    assert "missing.yaml not found" in caplog.text
