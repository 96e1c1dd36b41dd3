"""Run a stage on every visible GPU: `python -m storyboard.launch stages.train ARGS...` (dvc.yaml's train and
generate commands).

One process per GPU that CUDA_VISIBLE_DEVICES shows (all of them when it is unset), so a DVC experiment that was
handed a subset of the GPUs uses exactly that subset. With one GPU or none the stage runs right here, as
`python -m stages.train ARGS...` would; with N it goes through `accelerate launch --multi_gpu --num_processes N`,
and torch.distributed does the rest (DDP for training, shared frame batches for rendering). STORYBOARD_PROCESSES
sets the count instead (1: one process whatever the GPUs; N > 1 without GPUs: N CPU processes through torchrun,
what `accelerate launch --multi_gpu` runs underneath, for tests).
"""

from __future__ import annotations

import logging
import os
import runpy
import socket
import sys

from storyboard.errors import StoryboardError

logger = logging.getLogger(__name__)


PROCESSES_ENV = "STORYBOARD_PROCESSES"


def visible_gpus() -> int:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES when set ("" or -1: none), else what CUDA counts."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [d.strip() for d in visible.split(",") if d.strip()]
        # CUDA stops at the first invalid id, -1 included
        return next((i for i, d in enumerate(ids) if d.startswith("-")), len(ids))
    import torch

    return torch.cuda.device_count()


def processes(gpus: int, requested: str | None) -> int:
    if requested is None or requested == "":
        return max(1, gpus)
    try:
        n = int(requested)
    except ValueError:
        n = 0
    if n < 1:
        raise StoryboardError(f"{PROCESSES_ENV}={requested!r}: set a whole number of processes >= 1, or unset it")
    if gpus and n > gpus:
        raise StoryboardError(f"{PROCESSES_ENV}={n} but only {gpus} GPU(s) are visible: set it to {gpus} or fewer")
    return n


def command(module: str, args: list[str], n: int, gpus: int) -> list[str] | None:
    """The launcher command for `n` processes; None: run in this process."""
    if n == 1:
        return None
    if gpus:
        launcher = ["accelerate.commands.launch", "--multi_gpu", "--num_machines", "1", "--dynamo_backend", "no"]
        launcher += ["--mixed_precision", "no", "--num_processes", str(n)]  # precision: the stage's own params
        # a free port, not accelerate's fixed 29500: two experiments on one machine each get their own
        launcher += ["--main_process_port", str(_free_port())]
        return [sys.executable, "-m", *launcher, "-m", module, *args]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(n),
        "-m",
        module,
        *args,
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str]) -> None:
    if not argv or argv[0].startswith("-"):
        raise SystemExit("usage: python -m storyboard.launch MODULE [ARGS...]  (e.g. stages.train --dataset ...)")
    module, args = argv[0], argv[1:]
    gpus = visible_gpus()
    try:
        n = processes(gpus, os.environ.get(PROCESSES_ENV))
    except StoryboardError as e:
        raise SystemExit(f"error: {e}") from None
    cmd = command(module, args, n, gpus)
    if cmd is None:
        sys.argv = [module, *args]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logger.setLevel(logging.INFO)
    logger.info("%d processes: %s", n, " ".join(cmd))
    os.execv(cmd[0], cmd)  # DVC's signals reach the launcher directly; its exit status is the stage's


if __name__ == "__main__":
    main(sys.argv[1:])
