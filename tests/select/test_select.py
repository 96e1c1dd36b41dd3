"""The select stage on the tiny profile: the known best step chosen from scripted scores, scores kept across reruns,
the last or a given step, and the sweep as dvc plots draws it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from storyboard.errors import StoryboardError
from storyboard.select.sweep import SelectError, StepScore, choose, select_lora
from storyboard.settings import Select
from storyboard.train.lora import train_lora

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = "pytorch_lora_weights.safetensors"
# Step 2 has the highest identity, but its text alignment collapsed (an over-fit LoRA ignores the prompt); of the
# rest, step 1 is the most like the character. The last step is 3.
SCRIPT = {1: (0.70, 0.29), 2: (0.90, 0.10), 3: (0.60, 0.31)}


class ScriptedScorer:
    """Scores each step as the script says, and records which steps it was asked about and with what."""

    def __init__(self, script: dict[int, tuple[float, float]], key: str = "scripted"):
        self.script, self.key, self.calls = script, key, []

    def __call__(self, step, images, prompts):
        self.calls.append((step, len(images), list(prompts)))
        return self.script[step]


def test_choose_keeps_identity_within_the_text_tolerance():
    scores = [StepScore(s, *v) for s, v in SCRIPT.items()]
    assert choose(scores, 0.02).step == 1
    assert choose(scores, 0.5).step == 2  # nothing counts as collapsed: the highest identity
    assert choose(scores, 0.0).step == 3  # only the best text alignment is allowed
    assert choose([StepScore(5, 0.6, 0.3), StepScore(9, 0.6, 0.3)], 0.02).step == 5  # ties: the earlier
    with pytest.raises(SelectError, match="select.step: last"):
        choose([], 0.02)


@pytest.fixture(scope="module")
def steps_dir(tmp_path_factory, tiny_dataset, tiny_settings, tiny_models, cpu) -> Path:
    """models/steps of a 3-step run that saved every step, with one validation prompt."""
    root = tmp_path_factory.mktemp("select") / "repo"
    validation = tiny_settings.train.validation.model_copy(
        update={"every": 0, "prompts": ["aldar_kose_man"], "steps": 2}
    )
    settings = tiny_settings.train.model_copy(
        update={"max_steps": 3, "checkpoint_every": 1, "rank": 4, "learning_rate": 0.05, "validation": validation}
    )
    train_lora(
        tiny_dataset,
        root / "models/steps",
        live_dir=root / "live",
        checkpoint_root=root / "ckpt",
        settings=settings,
        models=tiny_models,
        device=cpu,
    )
    return root / "models/steps"


def _select(steps_dir: Path, out: Path, scorer, cache: Path, **select) -> dict:
    return select_lora(Select(**select), steps_dir, out / "lora", out / "train.json", scorer=scorer, cache_dir=cache)


def test_select_best_picks_the_known_best_step(steps_dir, tmp_path):
    scorer = ScriptedScorer(SCRIPT)
    metrics = _select(steps_dir, tmp_path, scorer, tmp_path / "cache")

    assert sorted(step for step, _, _ in scorer.calls) == [1, 2, 3]
    assert all(n == 1 and prompts == ["aldar_kose_man"] for _, n, prompts in scorer.calls)
    assert metrics == json.loads((tmp_path / "train.json").read_text())
    assert metrics["chosen_step"] == 1 and metrics["select"] == "best"
    assert [(s["step"], s["identity"], s["text_alignment"], s["chosen"]) for s in metrics["steps"]] == [
        (1, 0.7, 0.29, 1), (2, 0.9, 0.1, 0), (3, 0.6, 0.31, 0)
    ]  # fmt: skip
    # models/lora holds step 1's LoRA, in both layouts, and says which step it is
    chosen = load_file(tmp_path / "lora" / WEIGHTS)
    assert all(torch.equal(chosen[k], v) for k, v in load_file(steps_dir / "step-0000001" / WEIGHTS).items())
    assert load_file(tmp_path / "lora/lora_kohya.safetensors")
    training = json.loads((tmp_path / "lora/training.json").read_text())
    assert training["chosen_step"] == 1 and training["steps"] == 3 and metrics["final_loss"] == training["final_loss"]
    # the report's samples: the chosen step beside two others, in models/steps
    assert sorted(metrics["samples"]) == ["1", "2", "3"]
    assert metrics["samples"]["2"] == [str(steps_dir / "step-0000002/sample_0.png")]

    # a rerun scores nothing again and another tolerance chooses anew; another scorer scores again
    again = ScriptedScorer({})
    assert _select(steps_dir, tmp_path, again, tmp_path / "cache", tolerance=0.5)["chosen_step"] == 2
    assert again.calls == []
    other = ScriptedScorer(SCRIPT, key="other-model")
    _select(steps_dir, tmp_path, other, tmp_path / "cache")
    assert len(other.calls) == 3

    # dvc draws the sweep from metrics/train.json with the plot dvc.yaml defines
    repo = tmp_path / "plots"
    (repo / "metrics").mkdir(parents=True)
    (repo / "metrics/train.json").write_text(json.dumps(metrics))
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    sweep = next(p for p in plots if isinstance(p, dict) and "checkpoint sweep" in p)
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": [sweep]}))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True, env=env)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True, env=env)
    shown = subprocess.run(
        [sys.executable, "-m", "dvc", "plots", "show", "--json"], cwd=repo, env=env, capture_output=True, text=True
    )
    data = json.loads(shown.stdout)
    assert not data.get("errors"), data["errors"]
    values = data["data"]["checkpoint sweep"][0]["content"]["data"]["values"]
    drawn = {(v["field"], v["step"]): v["dvc_inferred_y_value"] for v in values}
    assert drawn[("identity", 2)] == 0.9 and drawn[("text_alignment", 2)] == 0.1 and drawn[("chosen", 1)] == 1


def test_select_last_or_a_given_step_scores_nothing(steps_dir, tmp_path):
    metrics = _select(steps_dir, tmp_path, None, tmp_path / "cache", step="last")
    assert metrics["chosen_step"] == 3 and metrics["steps"] == [] and metrics["select"] == "last"
    assert json.loads((tmp_path / "lora/training.json").read_text())["chosen_step"] == 3
    assert _select(steps_dir, tmp_path, None, tmp_path / "cache", step=2)["chosen_step"] == 2
    chosen = load_file(tmp_path / "lora" / WEIGHTS)
    assert all(torch.equal(chosen[k], v) for k, v in load_file(steps_dir / "step-0000002" / WEIGHTS).items())
    # the kohya file is that step's: its metadata names step 2 of the run's 3
    with safe_open(str(tmp_path / "lora/lora_kohya.safetensors"), "pt") as f:
        meta = f.metadata()
    assert (meta["ss_steps"], meta["ss_max_train_steps"]) == ("2", "3")
    with pytest.raises(SelectError, match=r"select.step 7 is no saved step; saved: \[1, 2, 3\]"):
        _select(steps_dir, tmp_path, None, tmp_path / "cache", step=7)
    assert json.loads((tmp_path / "lora/training.json").read_text())["chosen_step"] == 2  # kept as it was


def test_select_reads_only_the_train_stages_output(tmp_path):
    with pytest.raises(StoryboardError, match=r"steps.json missing: .* is not the train stage's output"):
        _select(tmp_path / "nowhere", tmp_path, None, tmp_path / "cache", step="last")


def test_select_best_needs_validation_prompts(tiny_settings):
    from pydantic import ValidationError

    data = tiny_settings.model_dump()
    data["train"]["validation"]["prompts"] = []
    with pytest.raises(ValidationError, match="select.step best scores samples of train.validation.prompts"):
        type(tiny_settings).model_validate({**data, "select": {"step": "best"}})
    assert type(tiny_settings).model_validate({**data, "select": {"step": "last"}}).select.step == "last"
