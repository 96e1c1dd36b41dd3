"""SDXL LoRA training with peft and accelerate: the recipe of diffusers' train_text_to_image_lora_sdxl.py, made
fast, resumable and portable.

- Speed: VAE latents and text embeddings are computed once (they don't change while only LoRA weights train), so a
  step is one UNet forward and backward; frozen weights in bf16 with fp32 LoRA weights, fused AdamW, SDPA
  attention, no host sync in the step loop (losses are read back every `log_every`), and by default the UNet's
  transformer blocks compiled and replayed as CUDA graphs: the eager step is bound by kernel launches on the host.
- Aspect-ratio buckets: each picture trains at the shape nearest its own.
- Checkpoints hold LoRA weights, optimizer, LR schedule, RNG and step, under a folder named by a fingerprint of all
  that shapes the run, so a resumed run never mixes with one of other params; a half-written one never counts.
- Several GPUs: one process per GPU (storyboard.launch, dvc.yaml's command), DDP through accelerate, the compiled
  CUDA-graph step in each; gradients are views of DDP's buckets, its graph static (`ddp_handlers`). Each
  process draws its own batch of train.batch_size (seeded seed + rank), so the effective batch is batch_size x
  gradient_accumulation_steps x processes; with train.epochs the step count shrinks to match, with max_steps it
  does not. train.learning_rate is used as set, not scaled with the
  processes (as in diffusers' and kohya's scripts: Adam's update size barely depends on the batch, and LoRA
  rates are tuned at small batches); raise it yourself if you want the linear rule. The number of processes is
  part of the checkpoint fingerprint: a run resumes only with as many GPUs as it started with.
- Several machines (storyboard.launch, NNODES): the processes of all of them count, each seeded by its global
  rank; only machine 0's main process saves, and it sends the checkpoint it resumes from to the others.

The parts: parts.py (the frozen SDXL models), latents.py (the inputs, computed once), trainer.py (LoRA layers,
optimizer, one step), checkpoints.py, progress.py (the per-step log and validation samples), validation.py,
sweep.py (train.select: best, which saved step becomes the LoRA), export.py and kohya.py (the weight files, in
diffusers' and kohya's layouts; sgm.py names the UNet's modules for kohya). This module runs them in order.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from storyboard.fsutil import atomic_path, write_json
from storyboard.log import logger
from storyboard.models.compiling import warn_if_cudagraphs_skipped
from storyboard.models.loading import Device
from storyboard.remote import RemoteMirror
from storyboard.settings import ModelSet, Train
from storyboard.train.checkpoints import fetch_latest, fingerprint, latest_checkpoint, resume, save_checkpoint
from storyboard.train.errors import TrainError
from storyboard.train.export import KOHYA_WEIGHTS, LORA_WEIGHTS
from storyboard.train.kohya import LoraCard, export_kohya, kohya_metadata
from storyboard.train.latents import LatentCache, load_examples
from storyboard.train.parts import SdxlParts
from storyboard.train.progress import TrainLog
from storyboard.train.sweep import StepScorer, Sweep, choose, sweep_metrics
from storyboard.train.trainer import LoraTrainer
from storyboard.train.validation import validation_images

# other process counts whose checkpoints a fresh run mentions: any of one pod, and up to 8 pods of 8 GPUs
PROCESS_COUNTS_LOOKED_AT = sorted({*range(1, 17), *range(24, 65, 8)})


def total_steps(settings: Train, n_images: int, processes: int) -> int:
    if settings.epochs is None:
        return settings.max_steps
    per_step = settings.batch_size * settings.gradient_accumulation_steps * processes
    return max(1, math.ceil(settings.epochs * n_images / per_step))


def train_lora(
    dataset_dir: Path,
    out_dir: Path,
    live_dir: Path,
    checkpoint_root: Path,
    settings: Train,
    models: ModelSet,
    device: Device,
    scorer: StepScorer | None = None,
    metrics_path: Path | None = None,
    card: LoraCard | None = None,
) -> dict:
    """Train, checkpoint every `checkpoint_every` steps, save the chosen LoRA (diffusers + kohya layouts).

    train.select best needs `scorer` (the stage passes sweep.ClipStepScorer); `metrics_path`: where the choice
    and the per-step scores go (metrics/train.json); `card`: the character and trigger the kohya file names."""
    if settings.select == "best" and scorer is None:
        raise ValueError("train.select best needs a step scorer")
    from diffusers import StableDiffusionXLPipeline

    examples = load_examples(dataset_dir)
    accelerator, weight_dtype = _accelerator(settings, device)
    _seed_everything(settings.seed)
    parts = SdxlParts(models, accelerator.device, weight_dtype)
    resolution = settings.resolution or parts.native_resolution
    steps = total_steps(settings, len(examples), accelerator.num_processes)
    logger.info("caching latents and text embeddings of %d images at about %d px", len(examples), resolution)
    cache = LatentCache.build(parts, examples, settings, resolution)
    if not settings.text_encoder_lora and not settings.validation.every:
        for encoder in parts.text_encoders:  # not needed any more: give the memory to the UNet
            encoder.to("cpu")
    trainer = LoraTrainer(parts, cache, settings, accelerator, steps)

    processes = accelerator.num_processes
    run = fingerprint(settings, models, dataset_dir, resolution, processes)
    _same_run_everywhere(accelerator, run)
    run_dir = Path(checkpoint_root) / run
    run_dir.mkdir(parents=True, exist_ok=True)
    main = accelerator.is_main_process
    # The DVC remote keeps the checkpoints of a pod that is lost mid-run (storyboard/remote.py).
    mirror = RemoteMirror.from_project() if main else None
    if mirror is not None:
        fetch_latest(run_dir, mirror)
    accelerator.wait_for_everyone()
    start_step, history = resume(run_dir, trainer, steps)
    if start_step == 0 and main:
        _say_other_process_counts(Path(checkpoint_root), settings, models, dataset_dir, resolution, processes)
    log = TrainLog(live_dir, run_dir / "validation", history, start_step, main)
    validating = bool(main and settings.validation.every and settings.validation.prompts)
    sweep = Sweep(run_dir, settings.validation) if main and settings.select == "best" else None
    bar = tqdm(range(start_step, steps), initial=start_step, total=steps, desc="train", unit="step", disable=not main)
    try:
        for step in bar:
            log.add(trainer.step())
            done = step + 1
            if len(log.pending) == settings.log_every or done == steps:
                log.flush(trainer.learning_rate, bar)
                if done == start_step + settings.log_every and main:  # the compiled step has run by now
                    warn_if_cudagraphs_skipped(settings.compile, settings.compile_mode, "train")
            samples = None  # the validation samples of this step, when rendered: the sweep's are the same
            if validating and done % settings.validation.every == 0 and done not in log.validated:
                samples = validation_images(trainer, settings)
                log.add_samples(done, samples)
            if done % settings.checkpoint_every == 0 and done < steps:
                log.flush(trainer.learning_rate, bar)  # the checkpoint carries the history up to its own step
                if sweep is not None and not sweep.has_step(done):  # before the checkpoint: a resume has it
                    sweep.save_step(done, trainer.lora_layers(), samples or validation_images(trainer, settings))
                state = trainer.state(done)  # on every process: it gathers each one's random state
                if main:
                    save_checkpoint(run_dir, {**state, "history": log.history}, settings.checkpoints_keep, mirror)
        # The final weights always get samples, also when a resume had nothing left to train.
        samples = None
        if validating and steps not in log.validated:
            samples = validation_images(trainer, settings)
            log.add_samples(steps, samples)
        if sweep is not None and not sweep.has_step(steps):
            sweep.save_step(steps, trainer.lora_layers(), samples or validation_images(trainer, settings))
    except torch.cuda.OutOfMemoryError:
        raise TrainError(
            f"out of GPU memory at batch {settings.batch_size}, {resolution} px: lower train.batch_size (raise "
            "train.gradient_accumulation_steps to keep the effective batch), set train.gradient_checkpointing: "
            "true, or use train.optimizer: adamw8bit"
        ) from None
    finally:
        log.end()

    summary = {
        "steps": steps,
        "resumed_from": start_step,
        "images": len(examples),
        "buckets": {f"{b.bucket.width}x{b.bucket.height}": len(b.latents) for b in cache.buckets},
        "resolution": resolution,
        "processes": processes,
        # images per optimizer step; train.learning_rate applies to it as set (not scaled with the processes)
        "effective_batch": settings.batch_size * settings.gradient_accumulation_steps * processes,
        "final_loss": log.history[-1]["loss"] if log.history else None,
        "base_model": models.base,
        "rank": settings.rank,
        "alpha": settings.alpha,
        "mixed_precision": accelerator.mixed_precision,
        "prediction_type": parts.scheduler.config.prediction_type,
    }
    final_state = trainer.state(steps)
    if main:
        # Saved first: scoring the sweep may be killed too, and must not cost the training again.
        save_checkpoint(run_dir, {**final_state, "history": log.history}, settings.checkpoints_keep, mirror)
        metrics = {"select": settings.select, "chosen_step": steps, "steps": []}
        if sweep is not None:
            scores = sweep.scores(scorer)
            chosen = choose(scores, settings.select_tolerance)
            logger.info("train.select best: step %d of %s", chosen.step, [s.step for s in scores])
            metrics = sweep_metrics(settings, scores, chosen, sweep.publish_samples(scores, chosen, Path(live_dir)))
        summary["chosen_step"] = metrics["chosen_step"]
        with atomic_path(Path(out_dir)) as staged:
            if sweep is not None:
                sweep.copy_lora(metrics["chosen_step"], staged)
            else:
                StableDiffusionXLPipeline.save_lora_weights(staged, weight_name=LORA_WEIGHTS, **trainer.lora_layers())
            metadata = kohya_metadata(
                settings=settings,
                models=models,
                card=card or LoraCard(),
                summary=summary,
                captions=[e.caption for e in examples],
                dataset_name=Path(dataset_dir).name,
            )
            export_kohya(
                staged / LORA_WEIGHTS,
                staged / KOHYA_WEIGHTS,
                unet_config=parts.unet.config,
                alpha=settings.alpha,
                metadata=metadata,
            )
            write_json(staged / "training.json", summary)
        if metrics_path is not None:
            write_json(Path(metrics_path), {**metrics, "final_loss": summary["final_loss"]})
    if mirror is not None:
        mirror.wait()
    accelerator.wait_for_everyone()
    return summary


def _same_run_everywhere(accelerator, run: str) -> None:
    """Every process trains the same run: on several machines each reads its own checkout, params and data."""
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import gather_object

    runs = gather_object([run])
    if others := [rank for rank, other in enumerate(runs) if other != runs[0]]:
        raise TrainError(
            f"process(es) {others} would train another run than process 0 (checkpoint fingerprints "
            f"{sorted(set(runs))}): give every machine the same commit, params.yaml, models and dataset "
            "(git checkout, dvc pull)"
        )


def _say_other_process_counts(
    root: Path, settings: Train, models: ModelSet, dataset_dir: Path, resolution: int, processes: int
) -> None:
    """A run started from scratch although checkpoints of the same params exist at another number of GPUs: say so,
    and how to resume them."""
    for other in PROCESS_COUNTS_LOOKED_AT:
        folder = root / fingerprint(settings, models, dataset_dir, resolution, other)
        if other != processes and (found := latest_checkpoint(folder)) is not None:
            logger.warning(
                "checkpoints of this run on %d process(es) exist (%s); this run has %d, which changes the effective "
                "batch, so it starts from step 0. To resume those instead, run %d process(es) in all (GPUs per machine "
                "x machines: CUDA_VISIBLE_DEVICES, NNODES)",
                other,
                found,
                processes,
                other,
            )


def _accelerator(settings: Train, device: Device):
    """The Accelerator for this device, and the dtype of the frozen weights: mixed precision only on a GPU."""
    from accelerate import Accelerator

    on_gpu = device.device.type == "cuda"
    if settings.mixed_precision != "no" and not on_gpu:
        logger.info("train.mixed_precision=%s needs a GPU; training in float32 on the CPU", settings.mixed_precision)
    mixed = settings.mixed_precision if on_gpu else "no"
    accelerator = Accelerator(
        mixed_precision=mixed,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        cpu=not on_gpu,
        kwargs_handlers=ddp_handlers(settings),
    )
    weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed, torch.float32)
    return accelerator, weight_dtype


def ddp_handlers(settings: Train) -> list:
    """How DDP wraps the trained models when several processes train. The gradients are views of DDP's buckets (no
    copy in or out), and, without gradient accumulation, the graph is declared static: every step uses the same
    LoRA parameters in the same order, so DDP skips its per-step search for unused ones and keeps its bucket order.
    (A static graph fails an internal assert in torch 2.11-2.13 once accumulation skips the all-reduce with no_sync.)
    On 2 H200s, batch 4 per GPU, both took the 2-GPU step from 0.246 to 0.216 s: 1.55x to 1.77x one GPU (batch 8:
    1.94x); the all-reduce itself takes about 1 ms (BENCHMARKS.md, "Several GPUs")."""
    from accelerate.utils import DistributedDataParallelKwargs

    static = settings.gradient_accumulation_steps == 1
    return [DistributedDataParallelKwargs(static_graph=static, gradient_as_bucket_view=True)]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
