"""Every saved step's LoRA and validation samples, published as models/steps; the train fingerprint's code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from storyboard.train.lora import train_lora
from storyboard.train.steps import read_steps

REPO = Path(__file__).resolve().parents[2]


def _train(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu, **overrides):
    validation = tiny_settings.train.validation.model_copy(
        update={"every": 0, "prompts": ["aldar_kose_man", "aldar_kose_man riding"], "steps": 2}
    )
    settings = tiny_settings.train.model_copy(
        update={"max_steps": 3, "checkpoint_every": 1, "checkpoints_keep": 1, "rank": 4, "validation": validation}
    ).model_copy(update=overrides)
    out = tmp_path / "repo/models/steps"
    summary = train_lora(
        tiny_dataset,
        out,
        live_dir=tmp_path / "live",
        checkpoint_root=tmp_path / "ckpt",
        settings=settings,
        models=tiny_models,
        device=cpu,
    )
    return read_steps(out), summary


def test_every_saved_step_is_published_with_its_samples(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu):
    saved, summary = _train(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu)
    assert [s.step for s in saved.steps] == [1, 2, 3]
    assert saved.prompts == ["aldar_kose_man", "aldar_kose_man riding"] and saved.training == summary
    for step in saved.steps:
        assert step.lora.parent.name == f"step-{step.step:07d}" and load_file(step.lora)
        assert [p.name for p in step.samples] == ["sample_0.png", "sample_1.png"]
        assert all(p.is_file() and p.is_relative_to(tmp_path / "repo/models/steps") for p in step.samples)
    # every step's LoRA is kept although checkpoints_keep rotates the training states down to one
    (run_dir,) = (tmp_path / "ckpt").iterdir()
    assert len(list(run_dir.glob("step-*"))) == 1
    first, last = load_file(saved.steps[0].lora), load_file(saved.steps[-1].lora)
    assert not all(torch.equal(first[k], last[k]) for k in first)

    # a rerun (a resume with nothing left to train, as after `dvc checkout`) draws nothing again: the same files
    before = {p.name: p.read_bytes() for s in saved.steps for p in [s.lora, *s.samples]}
    again, summary = _train(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu)
    assert summary["resumed_from"] == 3
    assert {p.name: p.read_bytes() for s in again.steps for p in [s.lora, *s.samples]} == before

    # other validation prompts: the kept LoRAs stay (the prompts shape no weights), only the final step is drawn
    other = tiny_settings.train.validation.model_copy(update={"every": 0, "prompts": ["aldar_kose_man"], "steps": 2})
    changed, _ = _train(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu, validation=other)
    assert [s.step for s in changed.steps] == [3] and changed.prompts == ["aldar_kose_man"]


def _fingerprint(root: Path) -> str:
    script = (
        "from storyboard.closure import code_fingerprint; "
        "from storyboard.train.checkpoints import CODE, NOT_SHAPING_CODE; "
        "print(code_fingerprint(CODE, leave_out=NOT_SHAPING_CODE))"
    )
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_the_fingerprint_covers_the_code_that_shapes_the_weights_only(tmp_path):
    root = tmp_path / "repo"
    for name in ("stages", "storyboard"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    first = _fingerprint(root)

    def edited(rel: str) -> str:
        path = root / rel
        original = path.read_text()
        path.write_text(original + "\n# an edit\n")
        try:
            return _fingerprint(root)
        finally:
            path.write_text(original)

    # evaluate's scorer (the select stage's), the log, the remote mirror, the models/steps index: no retraining
    unshaping = (
        "storyboard/evaluate/scores.py",
        "storyboard/log.py",
        "storyboard/remote.py",
        "storyboard/train/steps.py",
    )
    for rel in unshaping:
        assert edited(rel) == first, rel
    for rel in ("storyboard/train/trainer.py", "storyboard/train/latents.py", "stages/train.py"):
        assert edited(rel) != first, rel
