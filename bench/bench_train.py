"""LoRA training throughput (images/s) and peak GPU memory for full-size SDXL with random weights.

Two implementations of one training step, same LoRA (rank 64 on to_q/to_k/to_v/to_out.0), same resolution:

- baseline: the step of diffusers' examples/text_to_image/train_text_to_image_lora_sdxl.py, as that script runs
  with --mixed_precision bf16 and --pretrained_vae_model_name_or_path (the fp16-fix VAE, which the project uses):
  every step VAE-encodes the pixel batch and runs both text encoders on the captions, frozen parts in bf16
  (weight_dtype), the UNet forward under autocast (accelerate's bf16), LoRA params in fp32
  (cast_training_params; the script itself upcasts only under fp16 and trains bf16 LoRA params under bf16,
  fp32 here so both impls do the same optimizer work), torch.optim.AdamW (foreach), clip_grad_norm_(1.0),
  constant LR scheduler, loss.item() once per step for the logged train_loss.
- ours: the project's own `storyboard.train.trainer.LoraTrainer.step()` on a latent cache built as the stage
  builds it (latents and text embeddings computed once; no VAE or text encoder in the step), bf16 frozen weights,
  fp32 LoRA params, fused AdamW, gradient clipping, no host sync in the step; optionally torch.compile.

    python bench/bench_train.py --out bench/results/train.json          # on the GPU
    python bench/bench_train.py --small                                  # CPU check, seconds

Several GPUs: `torchrun --nproc_per_node N bench/bench_train.py --impl ours ...` runs ours under DDP (the
Accelerator of LoraTrainer), each process with its own batch of --batch-sizes; images/s counts all processes.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sdxl_from_config as sdxl  # noqa: E402
from _common import (  # noqa: E402
    emit,
    environment,
    free_memory,
    gpu_kernel_breakdown,
    is_oom,
    memory,
    parse_list,
    pick_device,
    reset_peak,
    save_partial,
    synchronize,
    timed,
    world,
)

from storyboard.log import logger, setup_logging  # noqa: E402

TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]
CAPTION = (
    "aldar_kose_man, Aldar Kose, a cheerful Kazakh folk trickster with a thin black moustache, a patched "
    "striped chapan robe and a fur-trimmed conical hat, riding a horse across the steppe at dawn"
)


@dataclass
class Config:
    impl: str
    batch: int
    resolution: int
    rank: int
    dtype: torch.dtype
    device: torch.device
    small: bool
    seed: int
    compile: str
    compile_mode: str
    channels_last: bool
    gradient_checkpointing: bool
    ours_unet_dtype: torch.dtype
    processes: int = 1  # torchrun's WORLD_SIZE: one GPU each, DDP
    ddp: str = "stage"  # --ddp: how DDP wraps the UNet (ddp_kwargs)


def add_lora(unet, rank: int) -> list[torch.nn.Parameter]:
    """The LoRA both scripts add: peft on the attention projections, gaussian init, alpha = rank; fp32 params."""
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=TARGET_MODULES))
    # peft creates the adapter in the base layer's dtype (bf16 here); train it in fp32, with bf16 compute
    # under autocast, so small updates are not rounded away.
    cast_training_params(unet, dtype=torch.float32)
    params = [p for p in unet.parameters() if p.requires_grad]
    logger.info(
        "LoRA rank %d: %.1f M trainable parameters in %d tensors",
        rank,
        sum(p.numel() for p in params) / 1e6,
        len(params),
    )
    return params


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def encode_prompt(text_encoders, ids_list: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL conditioning as the script's encode_prompt: penultimate hidden states of both, concatenated; pooled
    output of the second."""
    embeds = []
    pooled = None
    for encoder, ids in zip(text_encoders, ids_list, strict=True):
        out = encoder(ids.to(encoder.device), output_hidden_states=True, return_dict=False)
        pooled = out[0]
        embeds.append(out[-1][-2])
    return torch.cat(embeds, dim=-1), pooled


def autocast(cfg: Config, enabled: bool = True):
    return torch.autocast(cfg.device.type, dtype=torch.bfloat16, enabled=enabled and cfg.dtype == torch.bfloat16)


class BaselineTrainer:
    """diffusers' train_text_to_image_lora_sdxl.py step (single process, no accumulation, no EMA/SNR/offset)."""

    def __init__(self, cfg: Config):
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler

        self.cfg = cfg
        weight_dtype = cfg.dtype
        # The script: unet, text encoders, and (with --pretrained_vae_model_name_or_path) the VAE in weight_dtype.
        self.unet = sdxl.build_unet(weight_dtype, cfg.device, small=cfg.small, seed=cfg.seed)
        self.vae = sdxl.build_vae(weight_dtype, cfg.device, small=cfg.small, seed=cfg.seed).requires_grad_(False)
        te1, te2, tok1, tok2 = sdxl.build_text_encoders(weight_dtype, cfg.device, small=cfg.small, seed=cfg.seed)
        self.text_encoders = [te1, te2]
        self.noise_scheduler = DDPMScheduler.from_config(sdxl.SCHEDULER_CONFIG)
        self.params = add_lora(self.unet, cfg.rank)
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.unet.train()
        # The script's defaults: lr 1e-4, betas (0.9, 0.999), weight decay 1e-2, eps 1e-8; not fused.
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
        self.lr_scheduler = get_scheduler("constant", optimizer=self.optimizer)
        # What the dataloader yields: normalised pixels in [-1, 1] and pre-tokenised captions, on the CPU
        # (accelerate moves each batch to the GPU). Random pixels: a batch of noise costs what a photo costs.
        g = torch.Generator().manual_seed(cfg.seed)
        self.pixels = torch.rand(cfg.batch, 3, cfg.resolution, cfg.resolution, generator=g) * 2 - 1
        captions = [CAPTION] * cfg.batch
        self.ids = [tokenize(tok1, captions), tokenize(tok2, captions)]
        self.original_sizes = [(cfg.resolution, cfg.resolution)] * cfg.batch
        self.crop_top_lefts = [(0, 0)] * cfg.batch

    def step(self) -> float:
        cfg, device = self.cfg, self.cfg.device
        pixel_values = self.pixels.to(device).to(dtype=cfg.dtype)
        model_input = self.vae.encode(pixel_values).latent_dist.sample()
        model_input = model_input * self.vae.config.scaling_factor
        noise = torch.randn_like(model_input)
        bsz = model_input.shape[0]
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (bsz,), device=device).long()
        noisy_model_input = self.noise_scheduler.add_noise(model_input, noise, timesteps)

        def compute_time_ids(original_size, crops_coords_top_left):
            target_size = (cfg.resolution, cfg.resolution)
            add_time_ids = torch.tensor([list(original_size + crops_coords_top_left + target_size)])
            return add_time_ids.to(device, dtype=cfg.dtype)

        add_time_ids = torch.cat(
            [compute_time_ids(s, c) for s, c in zip(self.original_sizes, self.crop_top_lefts, strict=True)]
        )
        prompt_embeds, pooled_prompt_embeds = encode_prompt(self.text_encoders, self.ids)
        with autocast(cfg):  # accelerate's mixed_precision="bf16" wraps the prepared UNet's forward
            model_pred = self.unet(
                noisy_model_input,
                timesteps,
                prompt_embeds,
                added_cond_kwargs={"time_ids": add_time_ids, "text_embeds": pooled_prompt_embeds},
                return_dict=False,
            )[0]
        loss = F.mse_loss(model_pred.float(), noise.float(), reduction="mean")
        # The script gathers the loss for logging and .item()s it every step.
        train_loss = loss.detach().repeat(bsz).mean().item()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad()
        return train_loss


class OursTrainer:
    """The project's own `storyboard.train.trainer.LoraTrainer`, on a latent cache built the way the stage builds it.

    The caching pass (VAE on the pixels, both text encoders on the captions) runs once before timing, as in the
    stage; then every timed step is exactly `LoraTrainer.step()`: the shipped code, no re-implementation.
    """

    # How many images the cache holds; steps draw random batches from it, as the project does from its dataset.
    CACHED_IMAGES = 16

    def __init__(self, cfg: Config):
        from types import SimpleNamespace

        from accelerate import Accelerator
        from diffusers import DDPMScheduler

        from storyboard.settings import Train
        from storyboard.train.buckets import Bucket
        from storyboard.train.latents import BucketTensors, LatentCache
        from storyboard.train.trainer import LoraTrainer

        self.cfg = cfg
        device = cfg.device
        vae = sdxl.build_vae(cfg.dtype, device, small=cfg.small, seed=cfg.seed).requires_grad_(False)
        te1, te2, tok1, tok2 = sdxl.build_text_encoders(cfg.dtype, device, small=cfg.small, seed=cfg.seed)
        n = max(self.CACHED_IMAGES, cfg.batch)
        g = torch.Generator().manual_seed(cfg.seed)
        with torch.no_grad():
            chunks = []
            for i in range(0, n, 4):  # the project encodes 4 images at a time
                pixels = torch.rand(min(4, n - i), 3, cfg.resolution, cfg.resolution, generator=g) * 2 - 1
                chunks.append(vae.encode(pixels.to(device, cfg.dtype)).latent_dist.sample() * vae.config.scaling_factor)
            latents = torch.cat(chunks).to(cfg.dtype)
            tokens = torch.stack([tokenize(tok1, [CAPTION] * n), tokenize(tok2, [CAPTION] * n)], dim=1)
            embeds, pooled = encode_prompt([te1, te2], [tokens[:, 0], tokens[:, 1]])
            empty = torch.stack([tokenize(tok1, [""]), tokenize(tok2, [""])], dim=1)
            empty_embeds, empty_pooled = encode_prompt([te1, te2], [empty[:, 0], empty[:, 1]])
        del vae, te1, te2
        free_memory(device)
        r = cfg.resolution
        time_ids = torch.tensor([[r, r, 0, 0, r, r]] * n, dtype=cfg.dtype, device=device)
        bucket = BucketTensors(Bucket(r, r), latents, None, tokens, embeds, pooled, time_ids)
        cache = LatentCache([bucket], empty, empty_embeds, empty_pooled)
        unet = sdxl.build_unet(cfg.ours_unet_dtype, device, small=cfg.small, seed=cfg.seed)
        parts = SimpleNamespace(
            unet=unet,
            text_encoders=[],
            device=device,
            weight_dtype=cfg.dtype,
            scheduler=DDPMScheduler.from_config(sdxl.SCHEDULER_CONFIG),
        )
        settings = Train(
            rank=cfg.rank,
            alpha=cfg.rank,
            target_modules=TARGET_MODULES,
            batch_size=cfg.batch,
            mixed_precision="bf16" if device.type == "cuda" else "no",
            gradient_checkpointing=cfg.gradient_checkpointing,
            compile=cfg.compile,
            compile_mode=cfg.compile_mode,
            seed=cfg.seed,
        )
        accelerator = Accelerator(
            mixed_precision=settings.mixed_precision,
            cpu=device.type != "cuda",
            kwargs_handlers=ddp_kwargs(cfg.ddp, settings),
        )
        self.trainer = LoraTrainer(parts, cache, settings, accelerator, total_steps=10_000)

    def step(self) -> torch.Tensor:
        # The loss stays on the device, as in the stage's loop (read back in windows, not every step).
        return self.trainer.step()


TRAINERS = {"baseline": BaselineTrainer, "ours": OursTrainer}
DDP_OPTIONS = ("static_graph", "bucket_view", "bf16_hook")


def ddp_kwargs(options: str, settings) -> list:
    """accelerate's kwargs handlers for --ddp: "stage" (what the train stage uses), "accelerate" (its defaults), or
    a comma list of DDP_OPTIONS."""
    from accelerate.utils import DDPCommunicationHookType, DistributedDataParallelKwargs

    from storyboard.train.lora import ddp_handlers

    if options == "stage":
        return ddp_handlers(settings)
    if options == "accelerate":
        return []
    chosen = set(parse_list(options))
    return [
        DistributedDataParallelKwargs(
            static_graph="static_graph" in chosen,
            gradient_as_bucket_view="bucket_view" in chosen,
            comm_hook=DDPCommunicationHookType.BF16 if "bf16_hook" in chosen else DDPCommunicationHookType.NO,
        )
    ]


def _cudagraph_skips() -> int:
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


def run_config(cfg: Config, warmup: int, steps: int, profile: bool) -> dict[str, Any]:
    result: dict[str, Any] = {"impl": cfg.impl, "batch": cfg.batch, "resolution": cfg.resolution}
    if cfg.impl == "ours":
        result.update(compile=cfg.compile, unet_dtype=str(cfg.ours_unet_dtype))
    trainer = None
    try:
        free_memory(cfg.device)
        reset_peak(cfg.device)
        t0 = time.perf_counter()
        trainer = TRAINERS[cfg.impl](cfg)
        synchronize(cfg.device)
        result["setup_s"] = round(time.perf_counter() - t0, 2)
        result["setup_memory"] = memory(cfg.device)
        warmup_s, losses = timed(lambda: [trainer.step() for _ in range(warmup)], cfg.device)
        result["warmup_s"] = round(warmup_s, 2)
        # Peak from here on: the steady state (weights, optimizer state, one step's activations).
        reset_peak(cfg.device)
        seconds, losses = timed(lambda: [trainer.step() for _ in range(steps)], cfg.device)
        losses = [float(x) for x in losses]  # after the timed region: ours keeps losses on the device
        mem = memory(cfg.device)
        if profile:
            # One extra step under the profiler (outside the timed region: profiling slows the host side).
            # Per kernel family too (gemm, attention, conv, norm, optimizer, the rest): where a step's time goes.
            if breakdown := gpu_kernel_breakdown(trainer.step, cfg.device):
                kernel_s = breakdown["gpu_ms"] / 1e3
                result.update(
                    gpu_kernel_s_per_step=round(kernel_s, 4),
                    gpu_busy=round(kernel_s * steps / seconds, 3),
                    gpu_kernels_per_step=breakdown,
                )
        result.update(
            steps=steps,
            processes=cfg.processes,
            s_per_step=round(seconds / steps, 4),
            # every process trains its own batch of cfg.batch: the step moves batch x processes images
            images_per_s=round(cfg.batch * cfg.processes * steps / seconds, 3),
            peak_allocated_gib=mem["peak_allocated_gib"],
            peak_reserved_gib=mem["peak_reserved_gib"],
            # compiled graphs that ran without CUDA graphs (reduce-overhead silently falls back, e.g. under DDP)
            cudagraph_skips=_cudagraph_skips(),
            last_loss=round(losses[-1], 5),
            finite=all(x == x and abs(x) != float("inf") for x in losses),
        )
        logger.info(
            "%s batch %d x %d process(es): %.3f s/step, %.2f images/s, peak %s GiB, GPU busy %s",
            cfg.impl,
            cfg.batch,
            cfg.processes,
            seconds / steps,
            cfg.batch * cfg.processes * steps / seconds,
            mem["peak_allocated_gib"],
            result.get("gpu_busy"),
        )
    except Exception as e:  # noqa: BLE001 - an OOM at batch 4 must not lose the batch 1 numbers
        if not is_oom(e):
            raise
        logger.warning("%s batch %d: out of memory (%s)", cfg.impl, cfg.batch, str(e).splitlines()[0][:200])
        result.update(oom=True, peak_allocated_gib=memory(cfg.device)["peak_allocated_gib"])
    finally:
        trainer = None  # the last reference: frees the models before the next config is built
        free_memory(cfg.device)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", default="baseline,ours", help="comma list of baseline, ours")
    parser.add_argument("--batch-sizes", default="1,4", help="comma list")
    parser.add_argument("--resolution", type=int, default=None, help="pixels (default 1024; 64 with --small)")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per config (3; 8 with --compile)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per config (10; 2 with --small)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="frozen weights, autocast")
    parser.add_argument(
        "--ours-unet-dtype",
        default=None,
        choices=["bfloat16", "float32"],
        help="ours: UNet weight dtype (default --dtype; float32: fp32 frozen UNet under bf16 autocast)",
    )
    parser.add_argument(
        "--compile", default="none", choices=["none", "blocks", "model"], help="ours: train.compile (the UNet)"
    )
    parser.add_argument(
        "--compile-mode", default="default", help="torch.compile mode (default, max-autotune-no-cudagraphs, ...)"
    )
    parser.add_argument("--gradient-checkpointing", action="store_true", help="both impls (the script's flag)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="one extra step per config under the profiler: GPU ms per kernel family, gpu_busy (GPU only). Can slow "
        "the configs timed after it in the same process: use with one config per command",
    )
    parser.add_argument(
        "--ddp",
        default="stage",
        help=f"ours, several processes: stage (the train stage's DDP), accelerate (its defaults), or a comma list of "
        f"{', '.join(DDP_OPTIONS)}",
    )
    parser.add_argument("--small", action="store_true", help="tiny models, 64 px, 2 timed steps: the CPU check")
    parser.add_argument("--device", default=None, help="default cuda if available, else cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON line here")
    args = parser.parse_args()
    setup_logging()

    # Under torchrun / accelerate launch (one process per GPU): DDP through the project's own Accelerator, each
    # process with its own batch; rank 0 reports.
    device = pick_device(args.device)  # first: the process group then knows this process's GPU
    rank, processes = world()
    if device.type != "cuda" and not args.small:
        parser.error("full-size SDXL training needs a GPU; use --small for the CPU check")
    if processes > 1 and parse_list(args.impl) != ["ours"]:
        parser.error("several processes: --impl ours only (the plain diffusers step has no DDP here)")
    ddp = args.ddp
    if ddp not in ("stage", "accelerate") and (unknown := set(parse_list(ddp)) - set(DDP_OPTIONS)):
        parser.error(f"unknown --ddp options {sorted(unknown)}; known: stage, accelerate, {', '.join(DDP_OPTIONS)}")
    out = args.out if rank == 0 else None
    resolution = args.resolution or (sdxl.SMALL_RESOLUTION if args.small else 1024)
    warmup = args.warmup if args.warmup is not None else (1 if args.small else 8 if args.compile != "none" else 3)
    steps = args.steps if args.steps is not None else (2 if args.small else 10)
    dtype = getattr(torch, args.dtype)
    # Fixed shapes per config, so the timed steps reuse the cuDNN/inductor choices made in warmup.
    torch.backends.cudnn.benchmark = True

    results: list[dict[str, Any]] = []
    payload = {
        "bench": "train",
        **environment(device),
        "small": args.small,
        "settings": {
            "resolution": resolution,
            "rank": args.rank,
            "target_modules": TARGET_MODULES,
            "dtype": args.dtype,
            "warmup_steps": warmup,
            "timed_steps": steps,
            "gradient_checkpointing": args.gradient_checkpointing,
            "compile": args.compile,
            "compile_mode": args.compile_mode,
            "processes": processes,
            "ddp": ddp,
        },
        "results": results,
    }
    for impl in parse_list(args.impl):
        if impl not in TRAINERS:
            parser.error(f"unknown impl {impl!r}")
        for batch in parse_list(args.batch_sizes, int):
            cfg = Config(
                impl=impl,
                batch=batch,
                resolution=resolution,
                rank=args.rank,
                dtype=dtype,
                device=device,
                small=args.small,
                seed=args.seed,
                compile=args.compile if impl == "ours" else "none",
                compile_mode=args.compile_mode,
                channels_last=False,
                gradient_checkpointing=args.gradient_checkpointing,
                ours_unet_dtype=getattr(torch, args.ours_unet_dtype) if args.ours_unet_dtype else dtype,
                processes=processes,
                ddp=ddp,
            )
            results.append(run_config(cfg, warmup, steps, profile=args.profile))
            save_partial(payload, out)
    if rank == 0:
        emit(payload, out)


if __name__ == "__main__":
    main()
