"""LoRA training on the tiny profile: weights diffusers loads, checkpoints, resume to the same result."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from storyboard.models.loading import attach_lora, load_pipeline
from storyboard.train.lora import TrainError, train_lora


def _train(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu, name="run", **overrides):
    settings = tiny_settings.train.model_copy(update={"max_steps": 6, "checkpoint_every": 2, "rank": 4, **overrides})
    out = tmp_path / name / "lora"
    summary = train_lora(tiny_dataset, out, tmp_path / name / "live", tmp_path / "ckpt", settings, tiny_models, cpu)
    return out, summary


def test_trains_saves_and_logs(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu):
    out, summary = _train(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu)
    assert summary["steps"] == 6 and summary["resolution"] == 64 and summary["images"] == 6
    weights = load_file(out / "pytorch_lora_weights.safetensors")
    assert weights and all(k.startswith("unet.") for k in weights)
    ups = [v for k, v in weights.items() if "lora.up" in k or "lora_B" in k]
    assert ups and all(v.abs().sum() > 0 for v in ups), "the up (B) matrices never moved off zero"
    loss = (tmp_path / "run/live/plots/metrics/loss.tsv").read_text().splitlines()
    assert loss[0].split("\t") == ["step", "loss"] and len(loss) == 7
    assert json.loads((out / "training.json").read_text())["final_loss"] > 0


def test_saved_lora_loads_into_the_pipeline_and_changes_it(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu):
    # A high learning rate so the LoRA moves the tiny model visibly within a few steps.
    out, _ = _train(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu, learning_rate=0.05)
    pipe = load_pipeline(tiny_models, cpu)

    def render():
        g = torch.Generator().manual_seed(0)
        return pipe("aldar_kose_man", num_inference_steps=2, generator=g, output_type="np").images[0]

    before = render()
    attach_lora(pipe, out)
    after = render()
    assert abs(after - before).mean() > 1e-3


def test_resume_after_a_kill_reaches_the_same_weights(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu):
    full, _ = _train(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu, name="full", checkpoints_keep=10)
    (run_dir,) = (tmp_path / "ckpt").iterdir()
    assert sorted(p.name for p in run_dir.iterdir()) == [f"step-{s:07d}" for s in (2, 4, 6)]
    # A run killed after step 4: only the checkpoints up to 4 exist, and a half-written one is ignored.
    shutil.rmtree(run_dir / "step-0000006")
    (run_dir / "step-0000005").mkdir()  # no COMPLETE marker: not a checkpoint
    resumed, summary = _train(
        tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu, name="resumed", checkpoints_keep=10
    )
    assert summary["resumed_from"] == 4
    a = load_file(full / "pytorch_lora_weights.safetensors")
    b = load_file(resumed / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_bad_target_modules_named(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu):
    with pytest.raises((TrainError, ValueError), match="nonexistent"):
        _train(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu, target_modules=["nonexistent"])
