"""The generate stage on several processes (storyboard.launch, as dvc.yaml runs it): each renders a share of a
story's frame batches, and the story folder holds the same bytes as one process writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from storyboard.generate.sharing import Group, frame_batches
from storyboard.story.plan import plan_to_json
from storyboard.story.planners import OfflinePlanner, plan_story

REPO = Path(__file__).resolve().parents[2]


def _stage(args: list[str], cwd: Path, processes: int) -> str:
    """The stage through the launcher, on the CPU (no GPU visible), with `processes` processes."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "STORYBOARD_PROCESSES": str(processes),
    }
    cmd = [sys.executable, "-m", "storyboard.launch", "stages.generate", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _records(story_dir: Path) -> list[dict]:
    """metadata.json's frame records without the timings."""
    frames = json.loads((story_dir / "metadata.json").read_text())["frames"]
    for record in frames:
        record.pop("seconds")
        for attempt in record["attempts"]:
            attempt.pop("seconds")
    return frames


def test_batches_are_cut_alike_for_any_number_of_processes():
    batches = frame_batches(list(range(2, 9)), 3)
    assert batches == [[2, 3, 4], [5, 6, 7], [8]]
    for size in (1, 2, 3, 5):
        shares = [Group(rank, size).share(batches) for rank in range(size)]
        assert [b for share in shares for b in share] == batches  # each batch once, in order
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_auto_batches_one_call_per_process_up_to_the_cap():
    from storyboard.generate.sharing import AUTO_MAX, batch_size

    assert batch_size(8, "auto") == 8 and batch_size(7, "auto") == 7
    assert batch_size(10, "auto") == 5  # two even calls, not 8 + 2
    assert batch_size(AUTO_MAX * 2 + 1, "auto") == -(-(AUTO_MAX * 2 + 1) // 3)
    assert batch_size(8, "auto", processes=2) == 4 and batch_size(7, "auto", processes=2) == 4
    assert batch_size(3, "auto", processes=8) == 1
    assert batch_size(8, 3, processes=2) == 3  # a number is kept, whatever the processes


@pytest.mark.parametrize("mode", ["baseline", "ref_guided"])
def test_two_processes_write_the_bytes_of_one(tmp_path, tiny_settings, tiny_models, tiny_dataset, lora_dir, mode):
    generate = tiny_settings.generate.model_copy(
        update={"steps": 2, "max_retries": 1, "frames_per_batch": 2, "reference": "frame"}
    )
    settings = tiny_settings.model_copy(update={"stories": tiny_settings.stories[:1], "generate": generate})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    plans = tmp_path / "plans"
    plans.mkdir()
    (story,) = settings.stories
    plan = plan_story(OfflinePlanner(settings.plan), story, settings.character)
    (plans / f"{story.id}.json").write_text(plan_to_json(plan))
    assert len(plan.frames) >= 5  # batches of 2: both processes get a share, whatever the mode
    args = ["--mode", mode, "--plans", str(plans), "--dataset", str(tiny_dataset)]
    args += ["--lora", str(lora_dir)] if mode != "baseline" else []

    _stage([*args, "--out", str(tmp_path / "one")], tmp_path, processes=1)
    log = _stage([*args, "--out", str(tmp_path / "two")], tmp_path, processes=2)
    assert "2 processes" in log and "process 1 of 2" in log, log[-2000:]

    one, two = tmp_path / "one" / story.id, tmp_path / "two" / story.id
    names = sorted(p.name for p in one.iterdir())
    assert names == sorted(p.name for p in two.iterdir())
    for name in names:
        if name.endswith((".png", ".gif")):  # frames, and the contact sheet captioned with every score
            assert (one / name).read_bytes() == (two / name).read_bytes(), f"{mode}/{name} differs"
    assert _records(one) == _records(two)
    assert json.loads((two / "metadata.json").read_text())["processes"] == 2
