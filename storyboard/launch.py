"""Run a stage on every visible GPU, of this machine or of several: `python -m storyboard.launch stages.train
ARGS...` (dvc.yaml's train and generate commands).

One process per GPU that CUDA_VISIBLE_DEVICES shows (all of them when it is unset), so a DVC experiment that was
handed a subset of the GPUs uses exactly that subset. With one GPU or none the stage runs right here, as
`python -m stages.train ARGS...` would; with N it goes through `accelerate launch --multi_gpu --num_processes N`,
and torch.distributed does the rest (DDP for training, shared frame batches for rendering). STORYBOARD_PROCESSES
sets the count instead (1: one process whatever the GPUs; N > 1 without GPUs: N CPU processes through torchrun,
what `accelerate launch --multi_gpu` runs underneath, for tests).

Several machines (docs/several-machines.md): torchrun's variables NNODES, NODE_RANK, MASTER_ADDR and MASTER_PORT
(the address and port of machine 0, the same on all), set on each machine before the same command; they become
accelerate's --num_machines, --machine_rank, --main_process_ip and --main_process_port (torchrun's own flags for
CPU processes). Every machine runs as many processes as it shows GPUs, which must be the same number everywhere;
the stage then sees one world of NNODES x that many processes.
"""

from __future__ import annotations

import logging
import os
import runpy
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from storyboard.errors import StoryboardError

logger = logging.getLogger(__name__)


PROCESSES_ENV = "STORYBOARD_PROCESSES"
NODES_ENV, NODE_RANK_ENV, ADDR_ENV, PORT_ENV = "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"
DEFAULT_PORT = 29500  # torchrun's and accelerate's default: every machine must name the same one


@dataclass(frozen=True)
class Nodes:
    """The machines one launch spans: how many, which one this is, where machine 0 listens."""

    count: int = 1
    rank: int = 0
    address: str | None = None
    port: int = DEFAULT_PORT

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Nodes:
        """NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT as torchrun names them; unset NNODES (or 1): this machine."""
        count = _whole(env, NODES_ENV, "the number of machines")
        rank = _whole(env, NODE_RANK_ENV, "this machine's rank, 0 on the machine at MASTER_ADDR")
        if count is None or count == 1:
            if rank:
                raise StoryboardError(
                    f"{NODE_RANK_ENV}={rank} but {NODES_ENV} is {count or 'unset'}: set {NODES_ENV} to the number of "
                    f"machines on every one of them, or unset {NODE_RANK_ENV}"
                )
            return cls()
        if count < 1:
            raise StoryboardError(f"{NODES_ENV}={count}: set the number of machines, 1 or more")
        if rank is None:
            raise StoryboardError(
                f"{NODES_ENV}={count} but {NODE_RANK_ENV} is unset: set it to this machine's rank, 0 on the machine "
                f"at {ADDR_ENV}, 1 to {count - 1} on the others"
            )
        if not 0 <= rank < count:
            raise StoryboardError(
                f"{NODE_RANK_ENV}={rank} but {NODES_ENV}={count}: ranks run from 0 to {count - 1}, one per machine"
            )
        address = env.get(ADDR_ENV, "").strip()
        if not address:
            raise StoryboardError(
                f"{NODES_ENV}={count} but {ADDR_ENV} is unset: set it on every machine to the address of machine 0 "
                f"({NODE_RANK_ENV}=0), one that all of them reach"
            )
        port = _whole(env, PORT_ENV, "a free TCP port on machine 0") or DEFAULT_PORT
        if not 0 < port < 65536:
            raise StoryboardError(f"{PORT_ENV}={port}: set a TCP port from 1 to 65535, the same on every machine")
        return cls(count, rank, address, port)


def _whole(env: Mapping[str, str], name: str, meaning: str) -> int | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise StoryboardError(f"{name}={value!r}: set a whole number ({meaning}), or unset it") from None


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
    """The processes of this machine: one per GPU, or STORYBOARD_PROCESSES."""
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


def command(module: str, args: list[str], n: int, gpus: int, nodes: Nodes = Nodes()) -> list[str] | None:
    """The launcher command for `n` processes on this machine, of `nodes.count` alike; None: run in this process."""
    if n * nodes.count == 1:
        return None
    if gpus:
        launcher = ["accelerate.commands.launch", "--multi_gpu", "--num_machines", str(nodes.count)]
        launcher += ["--dynamo_backend", "no", "--mixed_precision", "no"]  # precision: the stage's own params
        launcher += ["--num_processes", str(n * nodes.count)]  # accelerate counts the processes of all machines
        if nodes.count > 1:
            launcher += ["--machine_rank", str(nodes.rank), "--main_process_ip", str(nodes.address)]
            launcher += ["--main_process_port", str(nodes.port)]
        else:  # a free port, not accelerate's fixed 29500: two experiments on one machine each get their own
            launcher += ["--main_process_port", str(_free_port())]
        return [sys.executable, "-m", *launcher, "-m", module, *args]
    launcher = ["torch.distributed.run", "--nproc_per_node", str(n)]
    if nodes.count > 1:
        launcher += ["--nnodes", str(nodes.count), "--node_rank", str(nodes.rank)]
        launcher += ["--master_addr", str(nodes.address), "--master_port", str(nodes.port)]
    else:
        launcher += ["--standalone"]
    return [sys.executable, "-m", *launcher, "-m", module, *args]


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
        nodes = Nodes.from_env(os.environ)
    except StoryboardError as e:
        raise SystemExit(f"error: {e}") from None
    cmd = command(module, args, n, gpus, nodes)
    if cmd is None:
        sys.argv = [module, *args]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logger.setLevel(logging.INFO)
    where = f" on each of {nodes.count} machines (this one: {NODE_RANK_ENV}={nodes.rank})" if nodes.count > 1 else ""
    logger.info("%d processes%s: %s", n, where, " ".join(cmd))
    os.execv(cmd[0], cmd)  # DVC's signals reach the launcher directly; its exit status is the stage's


if __name__ == "__main__":
    main(sys.argv[1:])
