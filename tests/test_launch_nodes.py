"""storyboard.launch across machines, on one: two "machines" of one CPU process each, talking over 127.0.0.1 (gloo),
each in its own folder as a machine has its own disk, train the tiny profile to the very weights of one machine
running two processes with the same settings; and resume together from a checkpoint only machine 0 has.

Compared byte for byte, not with a tolerance: both worlds hold the same two ranks with the same seeds doing the same
float32 CPU arithmetic, and the one thing the processes share, gloo's all-reduce of two gradients, adds two numbers,
which gives the same bits in either order. A difference would be a real one (another rank, seed or batch)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]


def _stage(dataset: Path, out: str) -> list[str]:
    args = ["--dataset", str(dataset), "--out", out, "--live", f"{out}-live", "--checkpoints", "ck"]
    return [sys.executable, "-m", "storyboard.launch", "stages.train", *args]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **extra}


def _one_machine(folder: Path, dataset: Path, out: str) -> None:
    proc = subprocess.run(
        _stage(dataset, out),
        cwd=folder,
        env=_env(STORYBOARD_PROCESSES="2"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _two_machines(folders: list[Path], dataset: Path, out: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    machines = [
        subprocess.Popen(
            _stage(dataset, out),
            cwd=folder,
            env=_env(
                STORYBOARD_PROCESSES="1", NNODES="2", NODE_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=port
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: a hung machine's workers go with it
        )
        for rank, folder in enumerate(folders)
    ]
    try:
        logs = [m.communicate(timeout=600)[1] for m in machines]
    finally:
        for m in machines:
            with contextlib.suppress(ProcessLookupError):  # gone already: it finished
                os.killpg(m.pid, signal.SIGKILL)
    for rank, (machine, log) in enumerate(zip(machines, logs, strict=True)):
        assert machine.returncode == 0, f"machine {rank}:\n{log[-3000:]}"


def _index(out: Path) -> dict:
    """The train stage's output index (storyboard/train/steps.py): its saved steps and the training summary."""
    return json.loads((out / "steps.json").read_text())


def _same_bytes(a: Path, b: Path) -> None:
    """The last saved step's LoRA of two train outputs, tensor by tensor."""
    first, second = (load_file(out / _index(out)["steps"][-1]["lora"]) for out in (a, b))
    assert first and first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_two_machines_train_the_weights_of_two_processes_on_one(tmp_path, tiny_dataset, tiny_settings):
    settings = tiny_settings.model_dump(mode="json")
    settings["train"].update(rank=4, batch_size=1, max_steps=4, checkpoint_every=2, checkpoints_keep=10)
    settings["train"]["validation"]["every"] = 0
    one, *machines = folders = [tmp_path / name for name in ("one", "machine0", "machine1")]
    for folder in folders:
        folder.mkdir()
        (folder / "params.yaml").write_text(yaml.safe_dump(settings))

    _one_machine(one, tiny_dataset, "lora")
    _two_machines(machines, tiny_dataset, "lora")
    summary = _index(machines[0] / "lora")["training"]
    assert summary["processes"] == 2 and summary["effective_batch"] == 2  # the processes of both machines
    _same_bytes(one / "lora", machines[0] / "lora")
    assert not (machines[1] / "lora").exists() and not list((machines[1] / "ck").glob("*/step-*"))  # machine 0 saves

    # Machine 0 lost its last checkpoint, machine 1 never had one: both resume from machine 0's step 2.
    (run,) = (machines[0] / "ck").iterdir()
    assert (run / "step-0000004").is_dir() and run.name == next((one / "ck").iterdir()).name  # the same fingerprint
    shutil.rmtree(run / "step-0000004")
    _two_machines(machines, tiny_dataset, "resumed")
    assert _index(machines[0] / "resumed")["training"]["resumed_from"] == 2
    _same_bytes(one / "lora", machines[0] / "resumed")
