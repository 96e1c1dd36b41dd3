"""SDXL LoRA training on the UNet with peft: the loop of diffusers' train_text_to_image_lora_sdxl.py, made
resumable and cached.

VAE latents and text embeddings are computed once (they don't change while only LoRA weights train), so each
step is one UNet forward and backward. Checkpoints hold the LoRA weights, optimizer, RNG and step; they live
under a folder named by a fingerprint of everything that shapes the run, so a resumed run never mixes with
one of other params.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from storyboard.caption.dataset import read_manifest
from storyboard.errors import StoryboardError
from storyboard.fsutil import atomic_path, write_json
from storyboard.log import logger
from storyboard.models.loading import Device, load
from storyboard.settings import ModelSet, Train


class TrainError(StoryboardError):
    """Training can't start or go on; the message says which knob or file to fix."""


@dataclass
class TrainExample:
    image: Path
    caption: str


def load_examples(dataset_dir: Path) -> list[TrainExample]:
    records = [r for r in read_manifest(dataset_dir) if r.status == "ok"]
    if not records:
        raise TrainError(f"{dataset_dir}/manifest.jsonl lists no usable images: check the caption stage's report")
    return [TrainExample(Path(dataset_dir) / "images" / r.image, r.caption) for r in records]


def fingerprint(settings: Train, models: ModelSet, dataset_dir: Path, resolution: int) -> str:
    manifest = (Path(dataset_dir) / "manifest.jsonl").read_bytes()
    blob = json.dumps(
        [settings.model_dump(mode="json"), models.base, hashlib.sha256(manifest).hexdigest(), resolution],
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _center_crop(image: Image.Image, size: int) -> Image.Image:
    scale = size / min(image.size)
    image = image.resize(
        (max(size, round(image.width * scale)), max(size, round(image.height * scale))), Image.Resampling.BICUBIC
    )
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return image.crop((left, top, left + size, top + size))


class SdxlParts:
    """The frozen SDXL components training needs, loaded through the one loading path."""

    def __init__(self, models: ModelSet, device: Device):
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        base = models.base
        self.tokenizers = [
            load("tokenizer", base, CLIPTokenizer.from_pretrained, subfolder=sub)
            for sub in ("tokenizer", "tokenizer_2")
        ]
        self.text_encoders = [
            load("text encoder", base, CLIPTextModel.from_pretrained, subfolder="text_encoder"),
            load("text encoder 2", base, CLIPTextModelWithProjection.from_pretrained, subfolder="text_encoder_2"),
        ]
        vae_source, vae_sub = (models.vae, None) if models.vae else (base, "vae")
        self.vae = load("VAE", vae_source, AutoencoderKL.from_pretrained, subfolder=vae_sub)
        self.unet = load("UNet", base, UNet2DConditionModel.from_pretrained, subfolder="unet")
        self.scheduler = load("noise scheduler", base, DDPMScheduler.from_pretrained, subfolder="scheduler")
        for module in (*self.text_encoders, self.vae, self.unet):
            module.requires_grad_(False)
            module.to(device.device)
        self.device = device

    @property
    def native_resolution(self) -> int:
        return int(self.unet.config.sample_size * 2 ** (len(self.vae.config.block_out_channels) - 1))

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """SDXL conditioning: penultimate hidden states of both encoders, concatenated; pooled from the second."""
        hidden, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.text_encoders, strict=True):
            ids = tokenizer(
                captions,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.device.device)
            out = encoder(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = out[0]
        return torch.cat(hidden, dim=-1), pooled

    @torch.no_grad()
    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = torch.stack(
            [torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1) for im in images]
        )
        latents = self.vae.encode(pixels.to(self.device.device)).latent_dist.sample()
        return latents * self.vae.config.scaling_factor


def _lora_parameters(unet) -> list[torch.nn.Parameter]:
    return [p for p in unet.parameters() if p.requires_grad]


def _save_checkpoint(folder: Path, unet, optimizer, step: int, keep: int) -> None:
    from peft.utils import get_peft_model_state_dict

    target = folder / f"step-{step:07d}"
    with atomic_path(target) as staged:
        staged.mkdir()
        torch.save(
            {
                "step": step,
                "lora": get_peft_model_state_dict(unet),
                "optimizer": optimizer.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            },
            staged / "state.pt",
        )
        (staged / "COMPLETE").write_text(str(step))
    for old in sorted(folder.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _latest_checkpoint(folder: Path) -> Path | None:
    # Only folders with the COMPLETE marker count: atomic renames make a half-written one impossible, the
    # marker guards against copies made by other tools.
    complete = [p for p in sorted(folder.glob("step-*")) if (p / "COMPLETE").exists()]
    return complete[-1] if complete else None


def train_lora(
    dataset_dir: Path,
    out_dir: Path,
    live_dir: Path,
    checkpoint_root: Path,
    settings: Train,
    models: ModelSet,
    device: Device,
) -> dict:
    """Train, checkpoint every `checkpoint_every` steps, save the final LoRA with `save_lora_weights`."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from dvclive import Live
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    examples = load_examples(dataset_dir)
    random.seed(settings.seed)
    np.random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    parts = SdxlParts(models, device)
    resolution = settings.resolution or parts.native_resolution
    if settings.mixed_precision != "no" and device.device.type != "cuda":
        logger.info("train.mixed_precision=%s needs a GPU; training in float32 on the CPU", settings.mixed_precision)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(settings.mixed_precision)
    use_amp = amp_dtype is not None and device.device.type == "cuda"

    logger.info("caching latents and text embeddings of %d images at %d px", len(examples), resolution)
    images = [_center_crop(Image.open(e.image).convert("RGB"), resolution) for e in examples]
    latents = torch.cat([parts.encode_images(images[i : i + 4]) for i in range(0, len(images), 4)])
    prompt_embeds, pooled_embeds = parts.encode_text([e.caption for e in examples])
    # (original size, crop top-left, target size): images are cropped to the target, so original == target.
    time_ids = torch.tensor(
        [resolution, resolution, 0, 0, resolution, resolution], dtype=torch.float32, device=device.device
    )
    parts.vae.to("cpu")
    for encoder in parts.text_encoders:
        encoder.to("cpu")

    unet = parts.unet
    unet.add_adapter(
        LoraConfig(
            r=settings.rank,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            init_lora_weights="gaussian",
            target_modules=settings.target_modules,
        )
    )
    if settings.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    params = _lora_parameters(unet)
    if not params:
        raise TrainError(f"train.target_modules {settings.target_modules} matched no UNet layer; use e.g. to_q, to_k")
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, fused=device.device.type == "cuda")

    run_dir = Path(checkpoint_root) / fingerprint(settings, models, dataset_dir, resolution)
    run_dir.mkdir(parents=True, exist_ok=True)
    start_step = 0
    if (latest := _latest_checkpoint(run_dir)) is not None:
        state = torch.load(latest / "state.pt", weights_only=False)
        set_peft_model_state_dict(unet, state["lora"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        start_step = state["step"]
        logger.info("resuming from %s (step %d of %d)", latest, start_step, settings.max_steps)

    scheduler = parts.scheduler
    n = len(examples)
    unet.train()
    losses: list[float] = []
    with Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, resume=start_step > 0, report=None) as live:
        bar = tqdm(
            range(start_step, settings.max_steps),
            initial=start_step,
            total=settings.max_steps,
            desc="train",
            unit="step",
        )
        for step in bar:
            t0 = time.perf_counter()
            idx = torch.randint(0, n, (settings.batch_size,))
            x0 = latents[idx]
            noise = torch.randn_like(x0)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (settings.batch_size,), device=device.device)
            noisy = scheduler.add_noise(x0, noise, t)
            if scheduler.config.prediction_type == "v_prediction":
                target = scheduler.get_velocity(x0, noise, t)
            else:
                target = noise
            with torch.autocast(device.device.type, dtype=amp_dtype, enabled=use_amp):
                pred = unet(
                    noisy,
                    t,
                    encoder_hidden_states=prompt_embeds[idx],
                    added_cond_kwargs={"text_embeds": pooled_embeds[idx], "time_ids": time_ids.expand(len(idx), -1)},
                ).sample
            loss = F.mse_loss(pred.float(), target.float())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            # One host sync per step for the log line; the step is too short on a GPU to overlap anyway.
            value = loss.item()
            losses.append(value)
            live.log_metric("loss", value)
            live.log_metric("step_time_s", time.perf_counter() - t0)
            live.next_step()
            bar.set_postfix(loss=f"{value:.4f}")
            if done % settings.checkpoint_every == 0 and done < settings.max_steps:
                _save_checkpoint(run_dir, unet, optimizer, done, settings.checkpoints_keep)

    lora_state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    with atomic_path(Path(out_dir)) as staged:
        StableDiffusionXLPipeline.save_lora_weights(staged, unet_lora_layers=lora_state, safe_serialization=True)
        summary = {
            "steps": settings.max_steps,
            "resumed_from": start_step,
            "images": n,
            "resolution": resolution,
            "final_loss": losses[-1] if losses else None,
            "base_model": models.base,
            "rank": settings.rank,
        }
        write_json(staged / "training.json", summary)
    _save_checkpoint(run_dir, unet, optimizer, settings.max_steps, settings.checkpoints_keep)
    return summary
