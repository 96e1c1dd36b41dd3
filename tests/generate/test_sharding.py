"""The generate stage on several processes: stories shard across them, and the output is the same as one's."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from storyboard.story.plan import plan_to_json
from storyboard.story.planners import OfflinePlanner, plan_story

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stage(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_two_processes_render_the_same_frames_as_one(tmp_path, tiny_settings, tiny_models):
    settings = tiny_settings.model_copy(
        update={"generate": tiny_settings.generate.model_copy(update={"steps": 2, "max_retries": 0})}
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    plans = tmp_path / "plans"
    plans.mkdir()
    for story in settings.stories:
        plan = plan_story(OfflinePlanner(settings.plan), story, settings.character)
        (plans / f"{story.id}.json").write_text(plan_to_json(plan))
    stage = ["-m", "stages.generate", "--mode", "baseline", "--plans", str(plans)]

    _stage([sys.executable, *stage, "--out", str(tmp_path / "one")], tmp_path)
    # torchrun is what `accelerate launch --multi_gpu` runs underneath; accelerate's own launcher has no
    # multi-process CPU mode, and CI has no GPU.
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
    ]
    log = _stage([*launch, *stage, "--out", str(tmp_path / "two")], tmp_path)
    assert "process 0 of 2: 2 stories" in log and "process 1 of 2: 1 stories" in log, log[-2000:]

    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(s.id for s in settings.stories)
    assert not list(tmp_path.glob(".two.*"))  # the shared staging folder was renamed into place
    for story in settings.stories:
        for frame in sorted((tmp_path / "one" / story.id).glob("frame_*.png")):
            a = np.asarray(Image.open(frame), dtype=np.int16)
            b = np.asarray(Image.open(tmp_path / "two" / story.id / frame.name), dtype=np.int16)
            assert np.abs(a - b).max() <= 2, f"{story.id}/{frame.name} differs"
