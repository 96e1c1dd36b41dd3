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
kept.py (every saved step's LoRA and samples), steps.py (models/steps, which the select stage chooses from),
export.py and kohya.py (the weight files, in diffusers' and kohya's layouts; sgm.py names the UNet's modules for
kohya; the select stage writes the chosen step's kohya file from what steps.json records). This module runs them in
order.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from storyboard.fsutil import atomic_path
from storyboard.models.compiling import warn_if_cudagraphs_skipped
from storyboard.models.loading import Device
from storyboard.remote import RemoteMirror
from storyboard.settings import ModelSet, Train
from storyboard.train.checkpoints import (
    fetch_latest,
    fingerprint,
    fingerprints,
    latest_checkpoint,
    resume,
    save_checkpoint,
)
from storyboard.train.errors import TrainError
from storyboard.train.kept import KeptSteps
from storyboard.train.kohya import LoraCard, kohya_metadata
from storyboard.train.latents import LatentCache, load_examples
from storyboard.train.parts import SdxlParts
from storyboard.train.progress import TrainLog
from storyboard.train.steps import KohyaExport, SavedStep, write_steps
from storyboard.train.trainer import LoraTrainer
from storyboard.train.validation import validation_images

logger = logging.getLogger(__name__)

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
    *,
    live_dir: Path,
    checkpoint_root: Path,
    settings: Train,
    models: ModelSet,
    device: Device,
    card: LoraCard | None = None,
) -> dict:
    """Train, checkpoint every `checkpoint_every` steps, and write every saved step's LoRA and validation samples
    to `out_dir` (models/steps, storyboard/train/steps.py); the select stage chooses among them.

    Args:
        dataset_dir: the caption stage's folder (manifest.jsonl and images).
        out_dir: where the saved steps go (replaced as a whole when training ends).
        live_dir: the dvclive folder (loss, step time, validation samples).
        checkpoint_root: checkpoints, one folder per run fingerprint, kept across runs for resuming.
        settings: params.yaml's train section.
        models: the active profile's models (base and VAE are trained on).
        device: where to train.
        card: the character and trigger that each step's kohya metadata names.
    """
    examples = load_examples(dataset_dir)
    accelerator, weight_dtype = _accelerator(settings, device)
    _seed_everything(settings.seed)
    parts = SdxlParts(models, accelerator.device, weight_dtype)
    resolution = settings.resolution or parts.native_resolution
    steps = total_steps(settings, len(examples), accelerator.num_processes)
    cache = _cache_inputs(parts, examples, settings, resolution)
    trainer = LoraTrainer(parts, cache, settings, accelerator, steps)
    run = _open_run(trainer, Path(checkpoint_root), models, dataset_dir, resolution, steps)
    log = TrainLog(live_dir, run.folder / "validation", run.history, run.start_step, run.main)
    try:
        _train_steps(run, log)
        # The final weights always get samples, also when a resume had nothing left to train.
        _keep_step(run, steps, _log_samples(run, log, steps))
    except torch.cuda.OutOfMemoryError:
        raise _out_of_memory(settings, resolution) from None
    finally:
        log.end()
    summary = _summary(run, log, models, len(examples), resolution)
    _save(run, log, steps)
    if run.main:
        _write_steps(run, summary, models, card or LoraCard(), examples, Path(dataset_dir), Path(out_dir))
    if run.mirror is not None:
        run.mirror.wait()
    accelerator.wait_for_everyone()
    return summary


@dataclass
class _Run:
    """A training run under way, as its steps see it: the trainer, this run's checkpoint folder and remote mirror,
    whether this process is the one that saves, and the step it resumed from."""

    trainer: LoraTrainer
    settings: Train
    steps: int
    folder: Path
    mirror: RemoteMirror | None
    main: bool
    start_step: int
    history: list[dict[str, float]]
    validating: bool
    kept: KeptSteps | None


def _cache_inputs(parts: SdxlParts, examples: list, settings: Train, resolution: int) -> LatentCache:
    """The latents and text embeddings, computed once: only LoRA weights train, so they never change."""
    logger.info("caching latents and text embeddings of %d images at about %d px", len(examples), resolution)
    cache = LatentCache.build(parts, examples, settings, resolution)
    if not settings.text_encoder_lora and not settings.validation.every:
        for encoder in parts.text_encoders:  # not needed any more: give the memory to the UNet
            encoder.to("cpu")
    return cache


def _open_run(
    trainer: LoraTrainer, root: Path, models: ModelSet, dataset_dir: Path, resolution: int, steps: int
) -> _Run:
    """The run's checkpoint folder, named by its fingerprint (the same on every process), with the remote's latest
    checkpoint fetched into it, and the trainer resumed from the latest one there."""
    accelerator, settings = trainer.accelerator, trainer.settings
    processes = accelerator.num_processes
    run = fingerprint(settings, models, dataset_dir, resolution, processes)
    _same_run_everywhere(accelerator, run)
    folder = root / run
    folder.mkdir(parents=True, exist_ok=True)
    main = accelerator.is_main_process
    # The DVC remote keeps the checkpoints of a pod that is lost mid-run (storyboard/remote.py).
    mirror = RemoteMirror.from_project() if main else None
    if mirror is not None:
        fetch_latest(folder, mirror)
    accelerator.wait_for_everyone()
    start_step, history = resume(folder, trainer, steps)
    if start_step == 0 and main:
        _say_other_process_counts(root, settings, models, dataset_dir, resolution, processes)
    validating = bool(main and settings.validation.every and settings.validation.prompts)
    kept = KeptSteps(folder, settings.validation) if main else None
    return _Run(trainer, settings, steps, folder, mirror, main, start_step, history, validating, kept)


def _train_steps(run: _Run, log: TrainLog) -> None:
    """From the resumed step to the last: log every `log_every` steps, draw samples every `validation.every`, and
    keep the step's LoRA and save a checkpoint every `checkpoint_every` (the last step's are saved after)."""
    trainer, settings, start, steps = run.trainer, run.settings, run.start_step, run.steps
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="train", unit="step", disable=not run.main)
    for step in bar:
        log.add(trainer.step())
        done = step + 1
        if len(log.pending) == settings.log_every or done == steps:
            log.flush(trainer.learning_rate, bar)
            if done == start + settings.log_every and run.main:  # the compiled step has run by now
                warn_if_cudagraphs_skipped(settings.compile, settings.compile_mode, "train")
        # the validation samples of this step, when rendered: the kept step's are the same
        samples = _log_samples(run, log, done) if run.validating and done % settings.validation.every == 0 else None
        if done % settings.checkpoint_every == 0 and done < steps:
            log.flush(trainer.learning_rate, bar)  # the checkpoint carries the history up to its own step
            _keep_step(run, done, samples)  # before the checkpoint: a resume has it
            _save(run, log, done)


def _log_samples(run: _Run, log: TrainLog, step: int) -> list | None:
    """`step`'s validation samples, drawn and logged where this process validates and has not logged them yet."""
    if not run.validating or step in log.validated:
        return None
    samples = validation_images(run.trainer, run.settings)
    log.add_samples(step, samples)
    return samples


def _keep_step(run: _Run, step: int, samples: list | None) -> None:
    """Keep `step`'s LoRA and samples on the main process, drawing them unless validation just did."""
    if run.kept is not None and not run.kept.has_step(step):
        run.kept.save_step(step, run.trainer.lora_layers(), samples or _draw_samples(run.trainer, run.settings))


def _save(run: _Run, log: TrainLog, step: int) -> None:
    """Checkpoint `step`; called on every process, since the trainer's state gathers each one's random state."""
    state = run.trainer.state(step)
    if run.main:
        save_checkpoint(run.folder, {**state, "history": log.history}, run.settings.checkpoints_keep, run.mirror)


def _out_of_memory(settings: Train, resolution: int) -> TrainError:
    return TrainError(
        f"out of GPU memory at batch {settings.batch_size}, {resolution} px: lower train.batch_size (raise "
        "train.gradient_accumulation_steps to keep the effective batch), set train.gradient_checkpointing: "
        "true, or use train.optimizer: adamw8bit"
    )


def _summary(run: _Run, log: TrainLog, models: ModelSet, n_images: int, resolution: int) -> dict:
    """What models/steps and metrics/train.json record of the run."""
    settings, parts, accelerator = run.settings, run.trainer.parts, run.trainer.accelerator
    processes = accelerator.num_processes
    return {
        "steps": run.steps,
        "resumed_from": run.start_step,
        "images": n_images,
        "buckets": {f"{b.bucket.width}x{b.bucket.height}": len(b.latents) for b in run.trainer.cache.buckets},
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


def _write_steps(
    run: _Run, summary: dict, models: ModelSet, card: LoraCard, examples: list, dataset_dir: Path, out_dir: Path
) -> None:
    """Publish the kept steps as models/steps, with what the select stage needs to write a step's kohya file."""
    published = run.kept.published(run.steps)
    kohya = _kohya_export(
        settings=run.settings,
        models=models,
        card=card,
        summary=summary,
        captions=[e.caption for e in examples],
        dataset_dir=dataset_dir,
        unet_config=run.trainer.parts.unet.config,
        published=published,
    )
    with atomic_path(out_dir) as staged:
        write_steps(staged, published, run.settings.validation.prompts, summary, kohya)


def _kohya_export(
    *,
    settings: Train,
    models: ModelSet,
    card: LoraCard,
    summary: dict,
    captions: list[str],
    dataset_dir: Path,
    unet_config,
    published: list[SavedStep],
) -> KohyaExport:
    """What the select stage needs to write a saved step's kohya file without the training code or params: the
    alpha, the UNet's config (it names the modules) and each step's metadata (the step is in it)."""
    metadata = {
        saved.step: kohya_metadata(
            settings=settings,
            models=models,
            card=card,
            summary={**summary, "chosen_step": saved.step},
            captions=captions,
            dataset_name=dataset_dir.name,
        )
        for saved in published
    }
    # the config's private keys (`_name_or_path`: this machine's path) would make the index differ between pods
    config = {k: v for k, v in unet_config.items() if not k.startswith("_")}
    return KohyaExport(alpha=settings.alpha, unet_config=config, metadata=metadata)


def _draw_samples(trainer: LoraTrainer, settings: Train) -> list:
    """The validation samples of the LoRA as it is now; none without validation prompts."""
    return validation_images(trainer, settings) if settings.validation.prompts else []


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
    runs = fingerprints(settings, models, dataset_dir, resolution, PROCESS_COUNTS_LOOKED_AT)
    for other, run in runs.items():
        if other != processes and (found := latest_checkpoint(root / run)) is not None:
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
