"""What DDP's gradient all-reduce costs on this machine: the LoRA gradients of one training step, alone.

Run under torchrun, one process per GPU:
    python -m torch.distributed.run --standalone --nproc_per_node 2 bench/bench_allreduce.py --out RESULT.json

Each size is the fp32 gradient volume of the SDXL LoRA at a rank (train.rank 16, the default: 23.2 M values; rank 64,
the training benchmark's: 92.9 M), all-reduced as one tensor (DDP splits it into 25 MB buckets, which is no faster)
and in bf16 (what DDP's bf16 compression hook sends). Bus bandwidth as NCCL's own tests count it: bytes x 2(n-1)/n
per second. The NCCL transport (P2P over NVLink, or SHM through host memory) is in the log with NCCL_DEBUG=INFO.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.distributed as dist
from _common import emit, environment, pick_device, world

from storyboard.log import setup_logging

# LoRA values of SDXL's UNet attention projections (to_q, to_k, to_v, to_out.0): 1.451 M per rank unit
VALUES_PER_RANK = 92_897_280 // 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", default="16,64", help="comma list of LoRA ranks whose gradients to all-reduce")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    setup_logging()
    device = pick_device(None)
    rank, processes = world()
    if processes < 2:
        parser.error("run it under torchrun with --nproc_per_node >= 2")
    results = []
    for lora_rank in (int(r) for r in args.ranks.split(",")):
        for dtype in (torch.float32, torch.bfloat16):
            grads = torch.ones(VALUES_PER_RANK * lora_rank, dtype=dtype, device=device)
            for _ in range(3):
                dist.all_reduce(grads)
            torch.cuda.synchronize(device)
            started = time.perf_counter()
            for _ in range(args.repeats):
                dist.all_reduce(grads)
            torch.cuda.synchronize(device)
            seconds = (time.perf_counter() - started) / args.repeats
            size = grads.numel() * grads.element_size()
            results.append(
                {
                    "lora_rank": lora_rank,
                    "dtype": str(dtype).removeprefix("torch."),
                    "megabytes": round(size / 1e6, 1),
                    "ms": round(seconds * 1e3, 3),
                    "bus_gb_per_s": round(size * 2 * (processes - 1) / processes / seconds / 1e9, 1),
                }
            )
    if rank == 0:
        emit({"bench": "allreduce", **environment(device), "processes": processes, "results": results}, args.out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
