"""SDXL LoRA training with peft and accelerate: the recipe of diffusers' train_text_to_image_lora_sdxl.py, made
fast, resumable and portable.

- Speed: VAE latents and text embeddings are computed once (they don't change while only LoRA weights train), so a
  step is one UNet forward and backward; frozen weights in bf16 with fp32 LoRA weights, fused AdamW, SDPA
  attention, no host sync in the step loop (losses are read back every `log_every`), and by default the UNet's
  transformer blocks compiled and replayed as CUDA graphs: the eager step is bound by kernel launches on the host.
- Aspect-ratio buckets: each picture trains at the shape nearest its own.
- Checkpoints hold LoRA weights, optimizer, LR schedule, RNG and step, under a folder named by a fingerprint of all
  that shapes the run, so a resumed run never mixes with one of other params; a half-written one never counts.
- Runs under `accelerate launch` on any number of GPUs; one process is the default.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from tqdm import tqdm

from storyboard.caption.dataset import read_manifest
from storyboard.errors import StoryboardError
from storyboard.fsutil import atomic_path, write_json
from storyboard.log import logger
from storyboard.models.compiling import compile_in_place, mark_step_begin
from storyboard.models.loading import MODEL_LAYOUT, SDXL, SDXL_LAYOUT, Device, load
from storyboard.settings import ModelSet, Train
from storyboard.train.buckets import Bucket, fit_to_bucket, make_buckets, nearest_bucket

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
KOHYA_WEIGHTS = "lora_kohya.safetensors"


class TrainError(StoryboardError):
    """Training can't start or go on; the message says which knob or file to fix."""


@dataclass
class TrainExample:
    image: Path
    caption: str


def load_examples(dataset_dir: Path) -> list[TrainExample]:
    records = [r for r in read_manifest(dataset_dir) if r.status == "ok"]
    if not records:
        raise TrainError(f"{dataset_dir}/manifest.jsonl lists no usable images: check the caption stage's REPORT.md")
    examples = [TrainExample(Path(dataset_dir) / "images" / r.image, r.caption or "") for r in records]
    if missing := [e.image.name for e in examples if not e.caption.strip()]:
        raise TrainError(f"{dataset_dir}: images without a caption: {', '.join(missing[:5])}; rerun the caption stage")
    return examples


def fingerprint(settings: Train, models: ModelSet, dataset_dir: Path, resolution: int) -> str:
    """Everything that shapes the weights: params, base model, data, and this package's code (a fixed bug must not
    resume from checkpoints the bug made)."""
    manifest = (Path(dataset_dir) / "manifest.jsonl").read_bytes()
    # What only changes how often we look (logging, validation) does not change the weights.
    shaping = settings.model_dump(mode="json", exclude={"log_every", "validation", "checkpoints_keep"})
    code = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(Path(__file__).parent.glob("*.py")))).hexdigest()
    blob = json.dumps([shaping, models.base, hashlib.sha256(manifest).hexdigest(), resolution, code], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class SdxlParts:
    """The SDXL components training needs, loaded through the one loading path, frozen."""

    def __init__(self, models: ModelSet, device: torch.device, weight_dtype: torch.dtype):
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        base = models.base
        named = dict(setting=f"{SDXL}.base", layout=SDXL_LAYOUT)
        self.tokenizers = [
            load("tokenizer", base, CLIPTokenizer.from_pretrained, subfolder=sub, **named)
            for sub in ("tokenizer", "tokenizer_2")
        ]
        self.text_encoders = [
            load("text encoder", base, CLIPTextModel.from_pretrained, subfolder="text_encoder", **named),
            load(
                "text encoder 2", base, CLIPTextModelWithProjection.from_pretrained, subfolder="text_encoder_2", **named
            ),
        ]
        vae_source, vae_sub, vae_named = (
            (models.vae, None, dict(setting=f"{SDXL}.vae", layout=MODEL_LAYOUT)) if models.vae else (base, "vae", named)
        )
        self.vae = load("VAE", vae_source, AutoencoderKL.from_pretrained, subfolder=vae_sub, **vae_named)
        self.unet = load("UNet", base, UNet2DConditionModel.from_pretrained, subfolder="unet", **named)
        self.scheduler = load("noise scheduler", base, DDPMScheduler.from_pretrained, subfolder="scheduler", **named)
        self.device, self.weight_dtype = device, weight_dtype
        for module in (*self.text_encoders, self.unet):
            module.requires_grad_(False)
            module.to(device, dtype=weight_dtype)
        # The VAE encodes once, in fp32 unless it is the fp16-safe kind (force_upcast False): SDXL's own VAE
        # overflows in half precision.
        self.vae.requires_grad_(False)
        self.vae.to(device, dtype=torch.float32 if self.vae.config.force_upcast else weight_dtype)

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_resolution(self) -> int:
        return int(self.unet.config.sample_size * self.vae_scale)

    @property
    def bucket_step(self) -> int:
        """Smallest pixel multiple the UNet takes: the VAE scale times the UNet's own downsampling, doubled."""
        return self.vae_scale * 2 ** (len(self.unet.config.block_out_channels) - 1) * 2

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        """(N, 2, 77) token ids for the two tokenizers."""
        ids = [
            tok(
                captions, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
            ).input_ids
            for tok in self.tokenizers
        ]
        return torch.stack(ids, dim=1).to(self.device)

    def encode_tokens(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SDXL conditioning: penultimate hidden states of both encoders, concatenated; pooled from the second."""
        hidden, pooled = [], None
        for i, encoder in enumerate(self.text_encoders):
            out = encoder(ids[:, i], output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = out[0]
        return torch.cat(hidden, dim=-1), pooled

    @torch.no_grad()
    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = torch.stack(
            [torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1) for im in images]
        ).to(self.device, dtype=self.vae.dtype)
        latents = self.vae.encode(pixels).latent_dist.sample()
        return (latents * self.vae.config.scaling_factor).to(self.weight_dtype)


@dataclass
class BucketTensors:
    bucket: Bucket
    latents: torch.Tensor  # (N, 4, h, w)
    flipped: torch.Tensor | None  # mirrored latents when random_flip
    tokens: torch.Tensor  # (N, 2, 77)
    prompt_embeds: torch.Tensor | None  # (N, 77, D); None when text encoders train
    pooled: torch.Tensor | None
    time_ids: torch.Tensor  # (N, 6): original size, crop top-left, target size


class LatentCache:
    """Every training input computed once, on the training device, grouped by bucket."""

    def __init__(self, buckets: list[BucketTensors], empty_tokens: torch.Tensor, empty_embeds, empty_pooled):
        self.buckets = buckets
        self.empty_tokens, self.empty_embeds, self.empty_pooled = empty_tokens, empty_embeds, empty_pooled
        sizes = torch.tensor([len(b.latents) for b in buckets], dtype=torch.float32)
        self.bucket_weights = sizes / sizes.sum()

    def __len__(self) -> int:
        return sum(len(b.latents) for b in self.buckets)

    @classmethod
    @torch.no_grad()
    def build(cls, parts: SdxlParts, examples: list[TrainExample], settings: Train, resolution: int) -> LatentCache:
        buckets = (
            make_buckets(resolution, parts.bucket_step) if settings.bucketing else [Bucket(resolution, resolution)]
        )
        rng = random.Random(settings.seed)
        grouped: dict[Bucket, list[tuple[Image.Image, str, list[int]]]] = {}
        for example in examples:
            image = ImageOps.exif_transpose(Image.open(example.image)).convert("RGB")
            bucket = nearest_bucket(image.size, buckets)
            fitted, (top, left) = fit_to_bucket(image, bucket, settings.center_crop, rng)
            time_ids = [image.height, image.width, top, left, bucket.height, bucket.width]
            grouped.setdefault(bucket, []).append((fitted, example.caption, time_ids))
        cached = []
        for bucket, items in sorted(grouped.items()):
            images = [im for im, _, _ in items]
            latents = torch.cat([parts.encode_images(images[i : i + 4]) for i in range(0, len(images), 4)])
            flipped = None
            if settings.random_flip:
                mirrored = [ImageOps.mirror(im) for im in images]
                flipped = torch.cat([parts.encode_images(mirrored[i : i + 4]) for i in range(0, len(mirrored), 4)])
            tokens = parts.tokenize([c for _, c, _ in items])
            embeds = pooled = None
            if not settings.text_encoder_lora:
                embeds, pooled = parts.encode_tokens(tokens)
            time_ids = torch.tensor([t for _, _, t in items], dtype=parts.weight_dtype, device=parts.device)
            cached.append(BucketTensors(bucket, latents, flipped, tokens, embeds, pooled, time_ids))
            logger.info("bucket %dx%d: %d images", bucket.width, bucket.height, len(items))
        empty_tokens = parts.tokenize([""])
        empty_embeds, empty_pooled = parts.encode_tokens(empty_tokens)
        return cls(cached, empty_tokens, empty_embeds, empty_pooled)


def _add_lora(model, rank: int, alpha: int, dropout: float, targets: list[str]) -> None:
    """LoRA layers injected by peft itself: the same path for the UNet and the CLIP text encoders."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights="gaussian", target_modules=targets
    )
    try:
        inject_adapter_in_model(config, model)
    except ValueError as e:
        raise TrainError(f"LoRA target modules {targets} don't fit {type(model).__name__}: {e}") from None


def _trainable(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _lora_tensors(model) -> dict[str, torch.Tensor]:
    """The LoRA weights of a model, under their module names (what a checkpoint needs to restore them)."""
    return {k: v for k, v in model.state_dict().items() if ".lora_A." in k or ".lora_B." in k}


def _lora_state(model, alpha: int, rank: int) -> dict[str, torch.Tensor]:
    """The LoRA weights in diffusers' layout, alpha/rank folded into the up weights.

    Files in diffusers' (and kohya's) layout carry no alpha that every loader honours; folding makes the saved
    weights mean exactly what was trained, whatever loader reads them.
    """
    from diffusers.utils import convert_state_dict_to_diffusers

    scale = alpha / rank
    peft_layout = {k.replace(".default.", "."): v for k, v in _lora_tensors(model).items()}
    state = convert_state_dict_to_diffusers(peft_layout)
    return {
        k: (v * scale if scale != 1 and ("lora.up" in k or "lora_B" in k or "up.weight" in k) else v)
        .detach()
        .to("cpu", torch.float32)
        for k, v in state.items()
    }


class LoraTrainer:
    """Owns the trainable models, optimizer and schedule; `step()` is one optimizer step, without host sync."""

    def __init__(self, parts: SdxlParts, cache: LatentCache, settings: Train, accelerator, total_steps: int):
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import cast_training_params

        self.parts, self.cache, self.settings, self.accelerator = parts, cache, settings, accelerator
        s = settings
        self.unet = parts.unet
        _add_lora(self.unet, s.rank, s.alpha, s.dropout, s.target_modules)
        self.text_encoders = parts.text_encoders if s.text_encoder_lora else []
        for encoder in self.text_encoders:
            _add_lora(encoder, s.rank, s.alpha, s.dropout, s.text_encoder_target_modules)
        if s.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            for encoder in self.text_encoders:
                encoder.gradient_checkpointing_enable()
        trained = [self.unet, *self.text_encoders]
        # LoRA weights train in fp32 on top of frozen low-precision weights: updates smaller than bf16's step
        # would otherwise vanish.
        cast_training_params(trained, dtype=torch.float32)
        # peft casts each LoRA layer's input to the LoRA weights' dtype: under autocast that is a full fp32 copy
        # of every projection's input, cast straight back to bf16 by the matmul. Autocast alone does it right.
        self._contexts = contextlib.ExitStack()
        if accelerator.mixed_precision != "no":
            from peft.helpers import disable_input_dtype_casting

            for model in trained:
                self._contexts.enter_context(disable_input_dtype_casting(model))
        compile_in_place(self.unet, s.compile, s.compile_mode)
        groups = [{"params": _trainable(self.unet), "lr": s.learning_rate}]
        groups += [{"params": _trainable(e), "lr": s.text_encoder_learning_rate} for e in self.text_encoders]
        if not groups[0]["params"]:
            raise TrainError(f"train.target_modules {s.target_modules} matched no UNet layer; use e.g. to_q, to_k")
        self.optimizer = _optimizer(groups, s, parts.device)
        processes = accelerator.num_processes
        self.lr_scheduler = get_scheduler(
            s.lr_scheduler,
            optimizer=self.optimizer,
            num_warmup_steps=s.lr_warmup_steps * processes,
            num_training_steps=total_steps * processes,
        )
        prepared = accelerator.prepare(self.unet, *self.text_encoders, self.optimizer, self.lr_scheduler)
        self.unet, *self.text_encoders, self.optimizer, self.lr_scheduler = prepared
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.generator = torch.Generator(device=parts.device).manual_seed(s.seed + accelerator.process_index)
        # Bucket choice runs on the CPU (a multinomial draw on the GPU would sync); seeded alike.
        self.cpu_generator = torch.Generator().manual_seed(s.seed + accelerator.process_index)
        self.bucket_order: list[int] = []
        self.noise_scheduler = parts.scheduler
        self.timesteps = parts.scheduler.config.num_train_timesteps

    def _loss(self) -> torch.Tensor:
        s, cache, gen, dev = self.settings, self.cache, self.generator, self.parts.device
        bucket = cache.buckets[self.bucket_order.pop()]
        n = len(bucket.latents)
        idx = torch.randint(0, n, (s.batch_size,), generator=gen, device=dev)
        latents = bucket.latents[idx]
        if bucket.flipped is not None:
            flip = torch.rand(s.batch_size, generator=gen, device=dev) < 0.5
            latents = torch.where(flip[:, None, None, None], bucket.flipped[idx], latents)
        noise = torch.randn(latents.shape, generator=gen, device=dev, dtype=latents.dtype)
        if s.noise_offset:
            noise = noise + s.noise_offset * torch.randn(
                (latents.shape[0], latents.shape[1], 1, 1), generator=gen, device=dev, dtype=latents.dtype
            )
        t = torch.randint(0, self.timesteps, (s.batch_size,), generator=gen, device=dev)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        drop = torch.rand(s.batch_size, generator=gen, device=dev) < s.caption_dropout if s.caption_dropout else None
        with self.accelerator.autocast():
            if self.text_encoders:
                tokens = bucket.tokens[idx]
                if drop is not None:
                    tokens = torch.where(drop[:, None, None], cache.empty_tokens, tokens)
                embeds, pooled = self.parts.encode_tokens(tokens)
            else:
                embeds, pooled = bucket.prompt_embeds[idx], bucket.pooled[idx]
                if drop is not None:
                    embeds = torch.where(drop[:, None, None], cache.empty_embeds, embeds)
                    pooled = torch.where(drop[:, None], cache.empty_pooled, pooled)
            pred = self.unet(
                noisy,
                t,
                encoder_hidden_states=embeds,
                added_cond_kwargs={"text_embeds": pooled, "time_ids": bucket.time_ids[idx]},
            ).sample
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, t)
        else:
            target = noise
        if s.snr_gamma is None:
            return F.mse_loss(pred.float(), target.float())
        from diffusers.training_utils import compute_snr

        snr = compute_snr(self.noise_scheduler, t)
        weights = torch.clamp(snr, max=s.snr_gamma) / (snr + 1 if target is not noise else snr)
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        return (per_sample * weights).mean()

    def step(self) -> torch.Tensor:
        """One optimizer step (gradient_accumulation_steps micro-batches); returns the mean loss, on device."""
        total = None
        mark_step_begin(self.settings.compile, self.settings.compile_mode)
        # Buckets for this step's micro-batches, drawn in proportion to their size.
        self.bucket_order = torch.multinomial(
            self.cache.bucket_weights,
            self.settings.gradient_accumulation_steps,
            replacement=True,
            generator=self.cpu_generator,
        ).tolist()
        for _ in range(self.settings.gradient_accumulation_steps):
            with self.accelerator.accumulate(self.unet):
                loss = self._loss()
                self.accelerator.backward(loss)
                if self.accelerator.sync_gradients and self.settings.max_grad_norm:
                    self.accelerator.clip_grad_norm_(self.params, self.settings.max_grad_norm)
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            total = loss.detach() if total is None else total + loss.detach()
        return total / self.settings.gradient_accumulation_steps

    # --- checkpoints ---

    def plain(self, model):
        """The model without DDP or torch.compile wrappers: its state-dict keys are the module names."""
        return self.accelerator.unwrap_model(model, keep_torch_compile=False)

    def state(self, step: int) -> dict:
        unwrap = self.plain
        return {
            "step": step,
            "lora": [_lora_tensors(unwrap(m)) for m in (self.unet, *self.text_encoders)],
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "rng": {
                "generator": self.generator.get_state(),
                "cpu_generator": self.cpu_generator.get_state(),
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
        }

    def load_state(self, state: dict) -> int:
        for model, lora in zip((self.unet, *self.text_encoders), state["lora"], strict=True):
            result = self.plain(model).load_state_dict(lora, strict=False)
            if result.unexpected_keys:
                raise TrainError(f"checkpoint does not fit the model: {result.unexpected_keys[:3]}...")
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.generator.set_state(state["rng"]["generator"])
        self.cpu_generator.set_state(state["rng"]["cpu_generator"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        return int(state["step"])

    def lora_layers(self) -> dict[str, dict[str, torch.Tensor]]:
        unwrap = self.plain
        s = self.settings
        layers = {"unet_lora_layers": _lora_state(unwrap(self.unet), s.alpha, s.rank)}
        if self.text_encoders:
            layers["text_encoder_lora_layers"] = _lora_state(unwrap(self.text_encoders[0]), s.alpha, s.rank)
            layers["text_encoder_2_lora_layers"] = _lora_state(unwrap(self.text_encoders[1]), s.alpha, s.rank)
        return layers


def _optimizer(groups: list[dict], settings: Train, device: torch.device) -> torch.optim.Optimizer:
    if settings.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise TrainError("train.optimizer adamw8bit needs bitsandbytes: pip install 'storyboard[bnb]'") from None
        return bnb.optim.AdamW8bit(groups, weight_decay=settings.adam_weight_decay)
    # fused: one kernel for all LoRA tensors instead of a launch per tensor
    return torch.optim.AdamW(groups, weight_decay=settings.adam_weight_decay, fused=device.type == "cuda")


def _save_checkpoint(folder: Path, state: dict, keep: int) -> None:
    target = folder / f"step-{state['step']:07d}"
    with atomic_path(target) as staged:
        staged.mkdir()
        torch.save(state, staged / "state.pt")
        (staged / "COMPLETE").write_text(str(state["step"]))
    for old in sorted(folder.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _latest_checkpoint(folder: Path) -> Path | None:
    # Only folders with the COMPLETE marker count: atomic renames make a half-written one impossible, the
    # marker guards against copies made by other tools.
    complete = [p for p in sorted(folder.glob("step-*")) if (p / "COMPLETE").exists()]
    return complete[-1] if complete else None


def _validation_images(trainer: LoraTrainer, settings: Train) -> list[Image.Image]:
    """Fixed-seed samples from the LoRA as it is now, with the frozen parts already in memory."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    parts, unwrap = trainer.parts, trainer.plain
    v = settings.validation
    pipe = StableDiffusionXLPipeline(
        vae=parts.vae,
        text_encoder=unwrap(trainer.text_encoders[0]) if trainer.text_encoders else parts.text_encoders[0],
        text_encoder_2=unwrap(trainer.text_encoders[1]) if trainer.text_encoders else parts.text_encoders[1],
        tokenizer=parts.tokenizers[0],
        tokenizer_2=parts.tokenizers[1],
        unet=unwrap(trainer.unet),
        scheduler=EulerDiscreteScheduler.from_config(parts.scheduler.config),
    )
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator(device=parts.device).manual_seed(v.seed)
    # Eager, even with train.compile: a few samples now and then don't repay compiling inference graphs.
    with torch.no_grad(), trainer.accelerator.autocast(), torch.compiler.set_stance("force_eager"):
        return pipe(v.prompts, num_inference_steps=v.steps, generator=generator).images


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
) -> dict:
    """Train, checkpoint every `checkpoint_every` steps, save the final LoRA (diffusers + kohya layouts)."""
    from accelerate import Accelerator
    from diffusers import StableDiffusionXLPipeline
    from dvclive import Live

    examples = load_examples(dataset_dir)
    on_gpu = device.device.type == "cuda"
    if settings.mixed_precision != "no" and not on_gpu:
        logger.info("train.mixed_precision=%s needs a GPU; training in float32 on the CPU", settings.mixed_precision)
    mixed = settings.mixed_precision if on_gpu else "no"
    accelerator = Accelerator(
        mixed_precision=mixed, gradient_accumulation_steps=settings.gradient_accumulation_steps, cpu=not on_gpu
    )
    weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed, torch.float32)
    random.seed(settings.seed)
    np.random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    parts = SdxlParts(models, accelerator.device, weight_dtype)
    resolution = settings.resolution or parts.native_resolution
    steps = total_steps(settings, len(examples), accelerator.num_processes)
    logger.info("caching latents and text embeddings of %d images at about %d px", len(examples), resolution)
    cache = LatentCache.build(parts, examples, settings, resolution)
    if not settings.text_encoder_lora and not settings.validation.every:
        for encoder in parts.text_encoders:  # not needed any more: give the memory to the UNet
            encoder.to("cpu")
    trainer = LoraTrainer(parts, cache, settings, accelerator, steps)

    run_dir = Path(checkpoint_root) / fingerprint(settings, models, dataset_dir, resolution)
    run_dir.mkdir(parents=True, exist_ok=True)
    start_step = 0
    # Per-step log (loss, step time, LR), kept in every checkpoint: DVC empties dvclive/ before a rerun, so a
    # resumed run replays it and the plots cover the whole run, not just the part after the kill.
    history: list[dict[str, float]] = []
    if (latest := _latest_checkpoint(run_dir)) is not None:
        state = torch.load(latest / "state.pt", weights_only=False, map_location="cpu")
        start_step = trainer.load_state(state)
        history = list(state.get("history", []))
        logger.info("resuming from %s (step %d of %d)", latest, start_step, steps)

    main = accelerator.is_main_process
    live = Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None) if main else None
    for entry in history:
        _log_step(live, entry)
    # Validation samples are kept beside the checkpoints for the same reason, and logged again on resume.
    samples_dir = run_dir / "validation"
    validated: set[int] = set()  # steps whose samples are logged
    if live is not None:
        for sample in sorted(samples_dir.glob("step*.png")):
            if (step := int(sample.name[4:10])) <= start_step:
                live.log_image(f"validation/{sample.name}", Image.open(sample).convert("RGB"))
                validated.add(step)
    pending: list[torch.Tensor] = []
    window_start = time.perf_counter()

    def flush() -> None:
        """The one host sync of the loop: read back the window of losses at once."""
        nonlocal pending, window_start
        if not pending:
            return
        values = torch.stack(pending).float().cpu().tolist()
        step_time = (time.perf_counter() - window_start) / len(values)
        lr = trainer.lr_scheduler.get_last_lr()[0]
        for value in values:
            history.append({"loss": value, "step_time_s": step_time, "learning_rate": lr})
            _log_step(live, history[-1])
        pending, window_start = [], time.perf_counter()
        bar.set_postfix(loss=f"{values[-1]:.4f}", s_per_step=f"{step_time:.3f}")

    def validate(step: int) -> None:
        if main and settings.validation.every and settings.validation.prompts and step not in validated:
            samples_dir.mkdir(exist_ok=True)
            for i, image in enumerate(_validation_images(trainer, settings)):
                name = f"step{step:06d}_{i}.png"
                live.log_image(f"validation/{name}", image)
                image.save(samples_dir / name)
            validated.add(step)

    bar = tqdm(range(start_step, steps), initial=start_step, total=steps, desc="train", unit="step", disable=not main)
    try:
        for step in bar:
            pending.append(trainer.step())
            done = step + 1
            if len(pending) == settings.log_every or done == steps:
                flush()
            if settings.validation.every and done % settings.validation.every == 0:
                validate(done)
            if done % settings.checkpoint_every == 0 and done < steps and main:
                flush()  # the checkpoint carries the history up to its own step
                _save_checkpoint(run_dir, {**trainer.state(done), "history": history}, settings.checkpoints_keep)
        validate(steps)  # the final weights always get samples, also when a resume had nothing left to train
    except torch.cuda.OutOfMemoryError:
        raise TrainError(
            f"out of GPU memory at batch {settings.batch_size}, {resolution} px: lower train.batch_size (raise "
            "train.gradient_accumulation_steps to keep the effective batch), set train.gradient_checkpointing: "
            "true, or use train.optimizer: adamw8bit"
        ) from None
    finally:
        if live is not None:
            live.end()

    summary = {
        "steps": steps,
        "resumed_from": start_step,
        "images": len(examples),
        "buckets": {f"{b.bucket.width}x{b.bucket.height}": len(b.latents) for b in cache.buckets},
        "resolution": resolution,
        "final_loss": history[-1]["loss"] if history else None,
        "base_model": models.base,
        "rank": settings.rank,
        "alpha": settings.alpha,
    }
    if main:
        layers = trainer.lora_layers()
        with atomic_path(Path(out_dir)) as staged:
            StableDiffusionXLPipeline.save_lora_weights(staged, weight_name=LORA_WEIGHTS, **layers)
            export_kohya(staged / LORA_WEIGHTS, staged / KOHYA_WEIGHTS)
            write_json(staged / "training.json", summary)
        _save_checkpoint(run_dir, {**trainer.state(steps), "history": history}, settings.checkpoints_keep)
    accelerator.wait_for_everyone()
    return summary


def _log_step(live, entry: dict[str, float]) -> None:
    if live is None:
        return
    for name, value in entry.items():
        live.log_metric(name, value)
    live.next_step()


def export_kohya(diffusers_file: Path, kohya_file: Path) -> None:
    """The same LoRA in the kohya/A1111 key layout that ComfyUI and Automatic1111 load."""
    from diffusers.utils.state_dict_utils import convert_all_state_dict_to_peft, convert_state_dict_to_kohya
    from safetensors.torch import load_file, save_file

    kohya = convert_state_dict_to_kohya(convert_all_state_dict_to_peft(load_file(diffusers_file)))
    save_file({k: v.contiguous() for k, v in kohya.items()}, kohya_file)
