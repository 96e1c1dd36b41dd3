"""GPU claiming across real processes, with fake GPU counts (the lock logic needs no GPU)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from storyboard.models import gpus

# A worker that claims one of `count` GPUs, reports it, and holds it until its stdin closes.
HOLDER = """
import sys
from pathlib import Path
from storyboard.models.gpus import claim_gpu
print(claim_gpu(int(sys.argv[1]), Path(sys.argv[2])), flush=True)
sys.stdin.read()
"""


def _holder(count: int, folder: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(count), str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    return proc, proc.stdout.readline().strip()


def test_each_process_claims_its_own_gpu_until_it_exits(tmp_path: Path) -> None:
    procs = [_holder(3, tmp_path) for _ in range(4)]
    try:
        assert [claimed for _, claimed in procs] == ["0", "1", "2", "None"]  # the 4th finds all 3 held
        first, _ = procs[0]
        first.kill()  # a killed stage leaves no stale claim: the kernel drops its lock
        first.wait()
        again, claimed = _holder(3, tmp_path)
        procs.append((again, claimed))
        assert claimed == "0"
    finally:
        for proc, _ in procs:
            proc.stdin.close()
            proc.wait()


def test_claims_are_released_for_the_next_run(tmp_path: Path) -> None:
    proc, claimed = _holder(2, tmp_path)
    proc.stdin.close()
    proc.wait()
    second, again = _holder(2, tmp_path)
    second.stdin.close()
    second.wait()
    assert claimed == again == "0"


def test_user_choice_and_accelerate_ranks_win(monkeypatch) -> None:
    monkeypatch.setattr(gpus, "_chosen", None)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert gpus.cuda_index() == 3
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    assert gpus.cuda_index() == 0  # the first (only) GPU the user made visible


def test_one_gpu_or_none_claims_nothing(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(gpus, "_chosen", None)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(gpus.tempfile, "gettempdir", lambda: str(tmp_path))
    assert gpus.cuda_index() == 0  # this CPU machine has no GPU: nothing to claim
    assert not list(tmp_path.glob("storyboard-gpus-*/*.lock"))
