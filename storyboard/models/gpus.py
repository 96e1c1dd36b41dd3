"""One GPU per process when several pipeline runs share a pod (`STORYBOARD_PROCESSES=1 dvc queue start -j N`:
each run's stages in one process, see storyboard/launch.py).

DVC's queue starts N workers but tells a stage nothing about which worker it runs in, so every stage would
take cuda:0. Instead, a stage claims the first GPU nobody else holds: an exclusive `flock` on one lock file per
GPU index in a per-user temp folder, held until the process exits (the kernel drops it on exit or kill, so
a crashed stage never leaves a GPU claimed). The claim becomes the process's current CUDA device. A
CUDA_VISIBLE_DEVICES the user set wins (and `accelerate launch` ranks); a machine with 0 or 1 GPU claims nothing.
"""

from __future__ import annotations

import logging

import fcntl
import getpass
import os
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)



_held: list[int] = []  # file descriptors of this process's claims; never closed: the claim lasts the process
_chosen: int | None = None


def lock_dir() -> Path:
    folder = Path(tempfile.gettempdir()) / f"storyboard-gpus-{getpass.getuser()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def claim_gpu(count: int, folder: Path | None = None) -> int | None:
    """Lock the lowest free GPU index of `count`; None when all are held (the caller shares one)."""
    folder = folder or lock_dir()
    for index in range(count):
        fd = os.open(folder / f"gpu{index}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _held.append(fd)
        return index
    return None


def cuda_index() -> int:
    """The CUDA device index this process uses: its `accelerate launch` rank, else a GPU it claims (once)."""
    global _chosen
    if "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"])
    if _chosen is None:
        _chosen = _claim_visible()
    return _chosen


def _claim_visible() -> int:
    import torch

    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        return 0  # the user chose: the first GPU they made visible
    count = torch.cuda.device_count()
    if count <= 1:
        return 0
    index = claim_gpu(count)
    if index is None:
        logger.warning("all %d GPUs are claimed by other runs of this pipeline; sharing GPU 0", count)
        return 0
    logger.info("GPU %d of %d claimed for this run (lock %s)", index, count, lock_dir() / f"gpu{index}.lock")
    # Not CUDA_VISIBLE_DEVICES: CUDA may already be started (`is_available()` starts the driver), and then
    # it is ignored. The current device makes code that says just "cuda" (accelerate) use this GPU too.
    torch.cuda.set_device(index)
    return index
