"""The LoRA training loop's core: LoRA layers added by peft, the optimizer and LR schedule, one step, and the
trainer's state that a checkpoint holds."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch
import torch.nn.functional as F

from storyboard.models.compiling import compile_in_place, mark_step_begin
from storyboard.settings import Train
from storyboard.train.errors import TrainError
from storyboard.train.export import lora_state, lora_tensors
from storyboard.train.latents import LatentCache
from storyboard.train.parts import SdxlParts


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


def _blocks_take_trained_inputs(unet) -> None:
    """Under `train.compile: blocks`, make every transformer block see an input that requires grad, as all but the
    first do.

    The first block's input comes from frozen layers only (LoRA starts in its attention), so it alone would need a
    graph of its own, forward and backward: one more compile (about 13 s of an H200's cold compile, BENCHMARKS.md)
    and more CUDA graphs to record. The price is the gradient of that one input, which nothing reads."""

    def trained(module, args, output):
        if torch.is_grad_enabled() and not output.requires_grad:
            output.requires_grad_()  # a leaf: nothing before it requires grad
        return output

    for module in unet.modules():
        if hasattr(module, "transformer_blocks") and isinstance(getattr(module, "proj_in", None), torch.nn.Module):
            module.proj_in.register_forward_hook(trained)


def _trainable(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _optimizer(groups: list[dict], settings: Train, device: torch.device) -> torch.optim.Optimizer:
    if settings.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise TrainError("train.optimizer adamw8bit needs bitsandbytes: pip install 'storyboard[bnb]'") from None
        return bnb.optim.AdamW8bit(groups, weight_decay=settings.adam_weight_decay)
    # fused: one kernel for all LoRA tensors instead of a launch per tensor
    return torch.optim.AdamW(groups, weight_decay=settings.adam_weight_decay, fused=device.type == "cuda")


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
        if s.compile == "blocks":
            _blocks_take_trained_inputs(self.unet)
        groups = [{"params": _trainable(self.unet), "lr": s.learning_rate}]
        groups += [{"params": _trainable(e), "lr": s.text_encoder_learning_rate} for e in self.text_encoders]
        if not groups[0]["params"]:
            raise TrainError(f"train.target_modules {s.target_modules} matched no UNet layer; use e.g. to_q, to_k")
        self.optimizer = _optimizer(groups, s, parts.device)
        # The schedule counts optimizer steps, whatever the number of processes: accelerate would step a scheduler
        # it prepared once per process per step, which makes a checkpoint's schedule depend on that number.
        self.lr_scheduler = get_scheduler(
            s.lr_scheduler,
            optimizer=self.optimizer,
            num_warmup_steps=s.lr_warmup_steps,
            num_training_steps=total_steps,
        )
        prepared = accelerator.prepare(self.unet, *self.text_encoders, self.optimizer)
        self.unet, *self.text_encoders, self.optimizer = prepared
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
                self.optimizer.zero_grad(set_to_none=True)
            total = loss.detach() if total is None else total + loss.detach()
        self.lr_scheduler.step()
        return total / self.settings.gradient_accumulation_steps

    @property
    def learning_rate(self) -> float:
        return self.lr_scheduler.get_last_lr()[0]

    # --- checkpoints ---

    def plain(self, model):
        """The model without DDP or torch.compile wrappers: its state-dict keys are the module names."""
        return self.accelerator.unwrap_model(model, keep_torch_compile=False)

    def _rng(self) -> dict:
        return {
            "generator": self.generator.get_state(),
            "cpu_generator": self.cpu_generator.get_state(),
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        }

    def state(self, step: int) -> dict:
        """The checkpoint's content; every process must call it (each process's random state is gathered)."""
        from accelerate.utils import gather_object

        unwrap = self.plain
        return {
            "step": step,
            "lora": [lora_tensors(unwrap(m)) for m in (self.unet, *self.text_encoders)],
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            # one per process, in rank order: each process draws its own batches
            "rng": gather_object([self._rng()]) if self.accelerator.num_processes > 1 else [self._rng()],
        }

    def load_state(self, state: dict) -> int:
        for model, lora in zip((self.unet, *self.text_encoders), state["lora"], strict=True):
            result = self.plain(model).load_state_dict(lora, strict=False)
            if result.unexpected_keys:
                raise TrainError(f"checkpoint does not fit the model: {result.unexpected_keys[:3]}...")
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        rngs = state["rng"]
        if len(rngs) != self.accelerator.num_processes:
            # checkpoints.fingerprint covers the number of processes, so only a checkpoint copied by hand gets here
            raise TrainError(
                f"this checkpoint was written by {len(rngs)} process(es), this run has "
                f"{self.accelerator.num_processes}: resume it with as many GPUs (CUDA_VISIBLE_DEVICES x NNODES)"
            )
        rng = rngs[self.accelerator.process_index]
        self.generator.set_state(rng["generator"])
        self.cpu_generator.set_state(rng["cpu_generator"])
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        return int(state["step"])

    def lora_layers(self) -> dict[str, dict[str, torch.Tensor]]:
        unwrap = self.plain
        s = self.settings
        layers = {"unet_lora_layers": lora_state(unwrap(self.unet), s.alpha, s.rank)}
        if self.text_encoders:
            layers["text_encoder_lora_layers"] = lora_state(unwrap(self.text_encoders[0]), s.alpha, s.rank)
            layers["text_encoder_2_lora_layers"] = lora_state(unwrap(self.text_encoders[1]), s.alpha, s.rank)
        return layers
