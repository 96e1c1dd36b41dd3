"""train.select: best on the tiny profile: the known best step chosen from scripted scores, kept across reruns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from storyboard.train.lora import train_lora
from storyboard.train.sweep import StepScore, choose

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = "pytorch_lora_weights.safetensors"
# Step 2 has the highest identity, but its text alignment collapsed (an over-fit LoRA ignores the prompt); of the
# rest, step 1 is the most like the character. The last step is 3.
SCRIPT = {1: (0.70, 0.29), 2: (0.90, 0.10), 3: (0.60, 0.31)}


class ScriptedScorer:
    """Scores each step as the script says, and records which steps it was asked about and with what."""

    key = "scripted"

    def __init__(self, script: dict[int, tuple[float, float]]):
        self.script, self.calls = script, []

    def __call__(self, step, images, prompts):
        self.calls.append((step, len(images), list(prompts)))
        return self.script[step]


def test_choose_keeps_identity_within_the_text_tolerance():
    scores = [StepScore(s, *v) for s, v in SCRIPT.items()]
    assert choose(scores, 0.02).step == 1
    assert choose(scores, 0.5).step == 2  # nothing counts as collapsed: the highest identity
    assert choose(scores, 0.0).step == 3  # only the best text alignment is allowed
    assert choose([StepScore(5, 0.6, 0.3), StepScore(9, 0.6, 0.3)], 0.02).step == 5  # ties: the earlier


def _run(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu, scorer, **overrides):
    validation = tiny_settings.train.validation.model_copy(
        update={"every": 0, "prompts": ["aldar_kose_man"], "steps": 2}
    )
    settings = tiny_settings.train.model_copy(
        update={
            "max_steps": 3,
            "checkpoint_every": 1,
            "checkpoints_keep": 1,
            "rank": 4,
            "learning_rate": 0.05,
            "select": "best",
            "validation": validation,
            **overrides,
        }
    )
    metrics = tmp_path / "repo/metrics/train.json"
    out, live = tmp_path / "repo/models/lora", tmp_path / "repo/dvclive/train"
    train_lora(tiny_dataset, out, live, tmp_path / "ckpt", settings, tiny_models, cpu, scorer, metrics)
    return out, json.loads(metrics.read_text())


def test_select_best_picks_the_known_best_step(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu):
    scorer = ScriptedScorer(SCRIPT)
    out, metrics = _run(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu, scorer)

    assert sorted(step for step, _, _ in scorer.calls) == [1, 2, 3]
    assert all(n == 1 and prompts == ["aldar_kose_man"] for _, n, prompts in scorer.calls)
    assert metrics["chosen_step"] == 1 and metrics["select"] == "best"
    assert [(s["step"], s["identity"], s["text_alignment"], s["chosen"]) for s in metrics["steps"]] == [
        (1, 0.7, 0.29, 1), (2, 0.9, 0.1, 0), (3, 0.6, 0.31, 0)
    ]  # fmt: skip
    # models/lora holds step 1's LoRA, which every scored step kept although checkpoints_keep is 1
    (run_dir,) = (tmp_path / "ckpt").iterdir()
    kept = {int(p.name[5:]): load_file(p / WEIGHTS) for p in sorted((run_dir / "loras").iterdir())}
    assert sorted(kept) == [1, 2, 3] and len(list(run_dir.glob("step-*"))) == 1
    chosen = load_file(out / WEIGHTS)
    assert all(torch.equal(chosen[k], kept[1][k]) for k in chosen)
    assert not all(torch.equal(chosen[k], kept[3][k]) for k in chosen)
    assert json.loads((out / "training.json").read_text())["chosen_step"] == 1
    # the report's samples: the chosen step beside two others, copied into the dvclive output
    assert sorted(metrics["samples"]) == ["1", "2", "3"]
    assert all(Path(p).is_file() for paths in metrics["samples"].values() for p in paths)

    # a rerun (a resume with nothing left to train) scores nothing again; another tolerance chooses anew
    again = ScriptedScorer({})
    _, metrics = _run(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu, again, select_tolerance=0.5)
    assert again.calls == [] and metrics["chosen_step"] == 2

    # dvc draws the sweep from metrics/train.json with the plot dvc.yaml defines
    repo = tmp_path / "repo"
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
    assert drawn[("identity", 2)] == 0.9 and drawn[("text_alignment", 2)] == 0.1 and drawn[("chosen", 2)] == 1


def test_select_best_needs_validation_prompts(tiny_settings):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="select best scores samples of train.validation.prompts"):
        tiny_settings.train.model_validate(
            {**tiny_settings.train.model_dump(), "select": "best", "validation": {"prompts": []}}
        )
