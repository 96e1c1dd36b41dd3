"""storyboard.launch: one process per GPU that CUDA_VISIBLE_DEVICES shows, under accelerate launch when several."""

from __future__ import annotations

import sys

import pytest

from storyboard.errors import StoryboardError
from storyboard.launch import command, processes, visible_gpus


@pytest.mark.parametrize(
    ("visible", "count"), [("", 0), ("-1", 0), ("0", 1), ("2,3", 2), ("0,1,2,3", 4), ("1,-1,2", 1)]
)
def test_counts_what_cuda_visible_devices_shows(monkeypatch, visible, count):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert visible_gpus() == count


def test_one_gpu_or_none_runs_in_this_process():
    assert command("stages.train", ["--out", "x"], processes(0, None), 0) is None
    assert command("stages.train", ["--out", "x"], processes(1, None), 1) is None


def test_several_gpus_go_through_accelerate_launch():
    cmd = command("stages.train", ["--out", "x"], processes(4, None), 4)
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert "--multi_gpu" in cmd and cmd[cmd.index("--num_processes") + 1] == "4"
    assert cmd[-4:] == ["-m", "stages.train", "--out", "x"]


def test_the_count_can_be_set():
    assert processes(4, "2") == 2 and processes(4, "1") == 1
    cpu = command("stages.generate", ["--mode", "lora"], processes(0, "2"), 0)  # the CPU tests' path
    assert cpu[:3] == [sys.executable, "-m", "torch.distributed.run"] and cpu[-3:] == [
        "stages.generate",
        "--mode",
        "lora",
    ]
    with pytest.raises(StoryboardError, match="STORYBOARD_PROCESSES=8 but only 2"):
        processes(2, "8")
    with pytest.raises(StoryboardError, match="whole number"):
        processes(2, "two")
