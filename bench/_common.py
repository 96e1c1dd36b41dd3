"""What both benchmarks share: device choice, memory bookkeeping, timing and the one-line JSON result."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from storyboard.log import logger

GiB = 1024**3


def pick_device(requested: str | None) -> torch.device:
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        # Under torchrun / accelerate launch: this process's GPU
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def world() -> tuple[int, int]:
    """(rank, processes) of a run started by torchrun / accelerate launch, the process group set up; (0, 1)
    otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), size


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def environment(device: torch.device) -> dict[str, Any]:
    """Who measured: the card and the library versions, so numbers from different runs can be compared."""
    import diffusers
    import peft
    import transformers

    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "weights": "random (built from published configs; speed and memory only)",
    }
    if device.type == "cuda":
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / GiB, 1)
    return env


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    """Drop everything the last configuration left, so the next one's peak is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    # Compiled graphs hold references to the old modules' parameters. (`from torch import` so that `torch`
    # stays the module-level name in this function.)
    from torch import _dynamo

    _dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def memory(device: torch.device) -> dict[str, float | None]:
    """Allocated now and peak allocated/reserved since the last reset, GiB; None on a CPU (no allocator stats)."""
    if device.type != "cuda":
        return {"allocated_gib": None, "peak_allocated_gib": None, "peak_reserved_gib": None}
    return {
        "allocated_gib": round(torch.cuda.memory_allocated(device) / GiB, 3),
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated(device) / GiB, 3),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved(device) / GiB, 3),
    }


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Wall seconds of fn() with the device drained before and after (CUDA work is asynchronous); with several
    processes, from all of them starting to the last one finishing."""
    synchronize(device)
    barrier()
    t0 = time.perf_counter()
    result = fn()
    synchronize(device)
    barrier()
    return time.perf_counter() - t0, result


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def save_partial(result: dict[str, Any], out: Path | None) -> None:
    """Write what is measured so far to `out` ("complete": false), so a run killed at a time limit keeps it."""
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**result, "complete": False}) + "\n")


def emit(result: dict[str, Any], out: Path | None) -> None:
    """The single stdout line (the machine-readable result); the same line to `out` when given."""
    line = json.dumps({**result, "complete": True})
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(line + "\n")
        logger.info("wrote %s", out)
    print(line, flush=True)


def parse_list(text: str, kind: type = str) -> list:
    return [kind(x.strip()) for x in text.split(",") if x.strip()]


KERNEL_FAMILIES = (  # first match wins; names as the profiler shows CUDA kernels
    ("attention", ("flash", "fmha", "attention", "sdpa", "cudnn_generated_fort_native_sdpa")),
    ("conv", ("conv", "fprop", "dgrad", "wgrad", "implicit_gemm", "nhwc", "nchw")),
    ("gemm", ("gemm", "xmma", "cutlass", "sm90_", "matmul", "mm_")),
    ("norm", ("norm", "welford")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
)


def kernel_family(name: str) -> str:
    lowered = name.lower()
    for family, keys in KERNEL_FAMILIES:
        if any(k in lowered for k in keys):
            return family
    return "other (elementwise, copies, triton fusions)"


def gpu_kernel_breakdown(fn: Callable[[], Any], device: torch.device, top: int = 30) -> dict[str, Any] | None:
    """GPU milliseconds during fn(): in all, per kernel family, and the `top` kernels, from the profiler's device
    trace. None on a CPU or where the profiler fails."""
    if device.type != "cuda":
        return None
    try:
        from torch.profiler import ProfilerActivity, profile

        synchronize(device)
        # CUDA activity only: the trace then holds kernels and memcpy/memset, whose self times add up to the
        # GPU's busy time (one stream, so they don't overlap).
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            synchronize(device)
        families: dict[str, float] = {}
        kernels = []
        for e in prof.key_averages():
            if (us := e.self_device_time_total) <= 0:
                continue
            family = kernel_family(e.key)
            families[family] = families.get(family, 0.0) + us / 1e3
            kernels.append((us / 1e3, e.count, e.key[:110]))
    except Exception as e:  # noqa: BLE001 - a diagnostic; never lose the benchmark over it
        logger.warning("GPU kernel time not measured: %s", e)
        return None
    kernels.sort(reverse=True)
    return {
        "gpu_ms": round(sum(families.values()), 2),
        "families_ms": {k: round(v, 2) for k, v in sorted(families.items(), key=lambda kv: -kv[1])},
        "top_kernels": [{"ms": round(ms, 2), "calls": n, "name": name} for ms, n, name in kernels[:top]],
    }


def gpu_kernel_seconds(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Seconds the GPU spent in kernels and copies during fn(), from the profiler's device trace.

    Against the wall time of the same work this says where the time goes: near 1 the GPU is the bottleneck;
    well below 1 the GPU waits for the host (Python, kernel launches, syncs), and batching, fusing (LoRA) or
    compiling gains more than faster kernels. None on a CPU or where the profiler fails.
    """
    breakdown = gpu_kernel_breakdown(fn, device)
    return breakdown["gpu_ms"] / 1e3 if breakdown else None


@contextlib.contextmanager
def gpu_turn(lock: Path | None, *, measuring: bool):
    """Turns on the GPU for bench processes run side by side (`--gpu-lock FILE`; no lock: no waiting).

    Compiling and warming up hold the lock shared, measuring holds it alone: the processes compile in parallel on
    the host's cores, and no measurement runs while another process uses the GPU.
    """
    if lock is None:
        yield
        return
    import fcntl

    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if measuring else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
