"""The train stage on two processes through storyboard.launch (DDP; gloo on the CPU, as CI has no GPU): the
effective batch, a resume under the same number of processes, and what another number does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]


def _train(cwd: Path, dataset: Path, out: str, processes: int) -> str:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "STORYBOARD_PROCESSES": str(processes),
    }
    args = [
        "--dataset",
        str(dataset),
        "--out",
        out,
        "--live",
        f"{out}-live",
        "--checkpoints",
        "ck",
    ]
    cmd = [sys.executable, "-m", "storyboard.launch", "stages.train", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stderr


def _write_params(folder: Path, tiny_settings, **train) -> None:
    """The tiny profile's params with these train keys, rank 4, batch 1 and no validation samples."""
    settings = tiny_settings.model_dump(mode="json")
    settings["train"].update(rank=4, batch_size=1, **train)
    settings["train"]["validation"]["every"] = 0
    (folder / "params.yaml").write_text(yaml.safe_dump(settings))


def test_two_processes_train_resume_and_refuse_to_mix_with_one(tmp_path, tiny_dataset, tiny_settings):
    _write_params(tmp_path, tiny_settings, max_steps=4, checkpoint_every=2, checkpoints_keep=10)

    _train(tmp_path, tiny_dataset, "full", processes=2)
    summary = json.loads((tmp_path / "full/steps.json").read_text())["training"]
    assert summary["processes"] == 2 and summary["effective_batch"] == 2  # batch 1 x accumulation 1 x 2 processes
    (run_dir,) = (tmp_path / "ck").iterdir()
    state = torch.load(run_dir / "step-0000002/state.pt", weights_only=False)
    first, second = state["rng"]  # each process's own random state: they draw different batches
    assert not torch.equal(first["generator"], second["generator"])

    # Killed after step 2: the same two processes resume, each from its own random state, to the same weights.
    shutil.rmtree(run_dir / "step-0000004")
    _train(tmp_path, tiny_dataset, "resumed", processes=2)
    assert json.loads((tmp_path / "resumed/steps.json").read_text())["training"]["resumed_from"] == 2
    full = load_file(tmp_path / "full/step-0000004/pytorch_lora_weights.safetensors")
    resumed = load_file(tmp_path / "resumed/step-0000004/pytorch_lora_weights.safetensors")
    assert full.keys() == resumed.keys()
    for key in full:
        torch.testing.assert_close(full[key], resumed[key])

    # One process: another effective batch, so another run; it starts from step 0 and says where the others are.
    log = _train(tmp_path, tiny_dataset, "single", processes=1)
    single = json.loads((tmp_path / "single/steps.json").read_text())["training"]
    assert single["resumed_from"] == 0 and single["processes"] == 1 and single["effective_batch"] == 1
    assert "checkpoints of this run on 2 process(es) exist" in log
    assert len(list((tmp_path / "ck").iterdir())) == 2


def test_two_processes_accumulate_gradients(tmp_path, tiny_dataset, tiny_settings):
    """DDP as lora.ddp_handlers sets it up, under gradient accumulation: the micro-batches before the last skip the
    all-reduce (no_sync), which DDP's static graph fails on (an internal assert), so it must be off here."""
    _write_params(tmp_path, tiny_settings, max_steps=3, gradient_accumulation_steps=2, checkpoint_every=3)

    _train(tmp_path, tiny_dataset, "steps", processes=2)
    summary = json.loads((tmp_path / "steps/steps.json").read_text())["training"]
    assert summary["processes"] == 2 and summary["effective_batch"] == 4  # batch 1 x accumulation 2 x 2 processes
    weights = load_file(tmp_path / "steps/step-0000003/pytorch_lora_weights.safetensors")
    assert weights and all(torch.isfinite(w).all() for w in weights.values())
