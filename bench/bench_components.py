"""Milliseconds per call of the pieces of one story render, full-size SDXL with random weights, under kernel options.

A story of 8 frames at 1024 px with guidance runs the UNet 30 times on a batch of 16 latents (128x128), the
ControlNet (ref_guided) 30 times on 14, and the VAE decoder once on 8. This times each piece alone, so an option
(attention backend, channels_last, fused QKV projections, torch.compile modes) can be judged before it is wired
into the project, and says where the time goes (kernel families under the profiler).

Variants are `+`-joined options: eager, cudnn (SDPA's cuDNN backend first), cl (channels_last), fqkv
(fuse_qkv_projections), int8 / fp8 (generate.quantize's torchao quantization of the Linear layers; changes the
numbers, unlike the others; the layers fed by a norm, as the project does), fp8all (fp8 of every wide Linear
layer), fp8t (fp8 with one scale per tensor instead of per row), compile / compile-ro /
compile-mat (torch.compile default / reduce-overhead / max-autotune-no-cudagraphs, whole module), flags
(diffusers' inductor flags for max-autotune).

    python bench/bench_components.py --parts unet,vae --variants eager,cudnn,compile+cudnn --out $OUT/parts.json
    python bench/bench_components.py --small --device cpu     # CPU check, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sdxl_from_config as sdxl  # noqa: E402
from _common import (  # noqa: E402
    emit,
    environment,
    free_memory,
    gpu_kernel_breakdown,
    gpu_turn,
    is_oom,
    memory,
    parse_list,
    pick_device,
    reset_peak,
    save_partial,
    synchronize,
)

from storyboard.log import logger, setup_logging  # noqa: E402

PARTS = ("unet", "controlnet", "vae")
OPTIONS = (
    "eager",
    "cudnn",
    "cl",
    "fqkv",
    "int8",
    "fp8",
    "fp8t",
    "fp8n",
    "compile",
    "compile-ro",
    "compile-mat",
    "flags",
)
# diffusers' "accelerate inference" guide sets these for max-autotune.
INDUCTOR_FLAGS = dict(
    conv_1x1_as_mm=True,
    coordinate_descent_tuning=True,
    epilogue_fusion=False,
    coordinate_descent_check_all_directions=True,
)
COMPILE_MODES = {"compile": None, "compile-ro": "reduce-overhead", "compile-mat": "max-autotune-no-cudagraphs"}


class Part:
    """One module and the inputs of its call in a story render."""

    def __init__(self, part: str, options: set[str], args: argparse.Namespace, device: torch.device):
        dtype, small = args.torch_dtype, args.small
        frames, latent = args.frames, args.resolution // 8
        self.part = part
        self.unet = None
        if part in ("unet", "controlnet"):
            unet = sdxl.build_unet(dtype, device, small=small, seed=args.seed)
            batch = 2 * (frames if part == "unet" else frames - 1)  # guidance doubles the batch
            cfg = unet.config
            text_dim = cfg.cross_attention_dim
            pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
            self.inputs = dict(
                sample=torch.randn(batch, cfg.in_channels, latent, latent, device=device, dtype=dtype),
                timestep=torch.tensor(500.0, device=device),
                encoder_hidden_states=torch.randn(batch, 77, text_dim, device=device, dtype=dtype),
                added_cond_kwargs={
                    "text_embeds": torch.randn(batch, pooled, device=device, dtype=dtype),
                    "time_ids": torch.tensor([[1024, 1024, 0, 0, 1024, 1024]] * batch, device=device, dtype=dtype),
                },
                return_dict=False,
            )
            if part == "controlnet":
                self.module = sdxl.build_controlnet(unet, small=small)
                del unet
                # The condition image is as large as the latents times the condition embedding's downsampling.
                side = latent * 2 ** (len(self.module.config.conditioning_embedding_out_channels) - 1)
                self.inputs.update(
                    controlnet_cond=torch.rand(batch, 3, side, side, device=device, dtype=dtype),
                    conditioning_scale=0.8,
                )
            else:
                self.module = unet
        elif part == "vae":
            vae = sdxl.build_vae(dtype, device, small=small, seed=args.seed)
            self.module = vae
            self.inputs = dict(
                z=torch.randn(frames, vae.config.latent_channels, latent, latent, device=device, dtype=dtype),
                return_dict=False,
            )
        else:
            raise ValueError(part)
        self.module.eval().requires_grad_(False)
        if "fqkv" in options:
            self.module.fuse_qkv_projections()
        if "cl" in options:
            self.module.to(memory_format=torch.channels_last)
        for option, kind in (("int8", "int8"), ("fp8", "fp8"), ("fp8all", "fp8"), ("fp8t", "fp8")):
            if option in options:
                from storyboard.models.quantizing import quantize_in_place

                # int8 and fp8 as generate.quantize does it
                quantize_in_place(
                    self.module,
                    kind,
                    fp8_scaling="tensor" if option == "fp8t" else "row",
                    layers="all" if option == "fp8all" else "norm_fed",
                )
        self.call = self.module.decode if part == "vae" else self.module
        compile_option = next((o for o in options if o in COMPILE_MODES), None)
        if compile_option:
            mode = COMPILE_MODES[compile_option]
            target = self.module.decoder if part == "vae" else self.module
            target.compile(**({"mode": mode} if mode else {}))
        self.graphs = compile_option == "compile-ro"
        self.attention = "cudnn" if "cudnn" in options else None

    def sdpa(self):
        if self.attention != "cudnn":
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        # Order = preference: cuDNN where it takes the shape, the usual backends where it doesn't.
        return sdpa_kernel(
            [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
            set_priority=True,
        )

    def __call__(self):
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.no_grad(), self.sdpa():
            out = self.call(**self.inputs)
        return out


def kernel_breakdown(run: Part, device: torch.device) -> dict[str, Any]:
    """GPU ms per call by kernel family, and the top kernels, from one profiled call."""
    return gpu_kernel_breakdown(run, device) or {}


def time_calls(run: Part, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Seconds of the first call (compiling included), then ms per call over `args.iters` calls (median and
    mean, CUDA events per call) and the peak memory. With --gpu-lock, processes started side by side compile in
    parallel but measure one at a time."""
    t0 = time.perf_counter()
    with gpu_turn(args.gpu_lock, measuring=False):
        run()
        synchronize(device)
    first_call_s = time.perf_counter() - t0
    with gpu_turn(args.gpu_lock, measuring=True):
        for _ in range(args.warmup - 1):
            run()
        synchronize(device)
        reset_peak(device)
        per_call = []
        for _ in range(args.iters):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                run()
                end.record()
                synchronize(device)
                per_call.append(start.elapsed_time(end))
            else:
                t1 = time.perf_counter()
                run()
                per_call.append((time.perf_counter() - t1) * 1e3)
        result = dict(
            first_call_s=round(first_call_s, 2),
            ms_per_call=round(statistics.median(per_call), 2),
            ms_mean=round(statistics.fmean(per_call), 2),
            ms_min=round(min(per_call), 2),
            peak_reserved_gib=memory(device)["peak_reserved_gib"],
        )
        if args.breakdown and device.type == "cuda" and not run.graphs:
            result["kernels"] = kernel_breakdown(run, device)
    return result


def measure(part: str, variant: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    options = set(variant.split("+"))
    unknown = options - set(OPTIONS)
    if unknown:
        raise SystemExit(f"unknown options {sorted(unknown)} in variant {variant!r}; use {', '.join(OPTIONS)}")
    result: dict[str, Any] = {"part": part, "variant": variant}
    run = None
    # Compiling happens at the first call, so the flags must hold through the warm-up.
    flags = torch._inductor.config.patch(**INDUCTOR_FLAGS) if "flags" in options else contextlib.nullcontext()
    try:
        free_memory(device)
        with flags:
            run = Part(part, options, args, device)
            result.update(time_calls(run, args, device))
        logger.info(
            "%s / %s: %.2f ms per call (first call %.1f s)",
            part,
            variant,
            result["ms_per_call"],
            result["first_call_s"],
        )
    except Exception as e:  # noqa: BLE001 - one failing variant must not lose the others
        logger.warning("%s / %s failed: %s", part, variant, str(e).splitlines()[0][:300])
        result.update(error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}", oom=is_oom(e))
    finally:
        run = None
        free_memory(device)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="unet,vae", help=f"comma list of {', '.join(PARTS)}")
    parser.add_argument("--variants", default="eager,cudnn", help="comma list of +-joined options")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=None, help="pixels (1024; 64 with --small)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--breakdown", action="store_true", help="profile one call: GPU ms per kernel family")
    parser.add_argument(
        "--gpu-lock", type=Path, default=None, help="lock file shared by bench processes run side by side"
    )
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--small", action="store_true", help="tiny models: the CPU check")
    parser.add_argument("--device", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    setup_logging()
    device = pick_device(args.device)
    args.resolution = args.resolution or (sdxl.SMALL_RESOLUTION if args.small else 1024)
    args.torch_dtype = getattr(torch, args.dtype)
    torch.backends.cudnn.benchmark = True
    results: list[dict[str, Any]] = []
    payload = {
        "bench": "components",
        **environment(device),
        "small": args.small,
        "settings": {"frames": args.frames, "resolution": args.resolution, "dtype": args.dtype},
        "results": results,
    }
    for part in parse_list(args.parts):
        if part not in PARTS:
            parser.error(f"unknown part {part!r}; use {', '.join(PARTS)}")
        for variant in parse_list(args.variants):
            results.append(measure(part, variant, args, device))
            save_partial(payload, args.out)
    emit(payload, args.out)


if __name__ == "__main__":
    main()
