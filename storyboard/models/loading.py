"""One loading path for real and tiny models: everything goes through `from_pretrained` on an id or a folder.

Nothing here knows which profile is active beyond `model_set()`, which turns the profile into a `ModelSet`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from storyboard.errors import StoryboardError
from storyboard.log import logger
from storyboard.settings import ModelSet, Runtime, Settings

T = TypeVar("T")


class ModelLoadError(StoryboardError):
    """A model could not be loaded; the message says which one and what to do."""


def model_set(settings: Settings) -> ModelSet:
    """The models of the active profile; the tiny ones are built on first use."""
    if settings.is_tiny:
        from storyboard.models.tiny import tiny_model_set

        return tiny_model_set(settings.models.tiny)
    return settings.models.sdxl


@dataclass(frozen=True)
class Device:
    device: torch.device
    dtype: torch.dtype

    @classmethod
    def from_runtime(cls, runtime: Runtime) -> Device:
        if runtime.device == "auto":
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            device = torch.device(runtime.device)
            if device.type == "cuda" and not torch.cuda.is_available():
                raise ModelLoadError("runtime.device is cuda but no CUDA GPU is visible; set runtime.device: auto")
        if device.type == "cuda":
            # Under `accelerate launch`, each process takes the GPU of its local rank.
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if runtime.dtype == "auto":
            # bf16 on GPUs (SDXL's fp16 VAE overflows without the fp16-fix VAE); fp32 on CPUs, where
            # half precision is slower, not faster.
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        else:
            dtype = getattr(torch, runtime.dtype)
        return cls(device, dtype)


def load(what: str, source: str, loader: Callable[..., T], /, **kwargs) -> T:
    """Call `loader(source, **kwargs)`, turning "not found / no network" into one actionable message."""
    try:
        return loader(source, **kwargs)
    except (OSError, ValueError) as e:
        local = Path(source).exists()
        hint = (
            f"the folder {source} exists but does not hold a loadable {what}; delete it to rebuild"
            if local
            else f"'{source}' is not in the local Hugging Face cache and the hub could not be reached. "
            f"On a machine with internet: `huggingface-cli download {source}`, then copy ~/.cache/huggingface; "
            "or run offline with `-S profile=tiny`"
        )
        raise ModelLoadError(f"could not load the {what} from {source}: {hint}. ({type(e).__name__}: {e})") from e


def load_pipeline(models: ModelSet, device: Device):
    """The SDXL text-to-image pipeline on `device`."""
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline

    extra = {}
    if models.vae:
        extra["vae"] = load("VAE", models.vae, AutoencoderKL.from_pretrained, dtype=device.dtype)
    logger.info("loading SDXL from %s (%s, %s)", models.base, device.device, device.dtype)
    pipe = load("SDXL base model", models.base, StableDiffusionXLPipeline.from_pretrained, dtype=device.dtype, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device.device)


def over_same_modules(pipeline_class, pipe, **extra):
    """A pipeline of another class over `pipe`'s own modules (not copies), plus `extra` ones.

    Built directly: `from_pipe` would also cast every shared module to its dtype argument (float32 by default).
    """
    wanted = inspect.signature(pipeline_class.__init__).parameters
    shared = {k: v for k, v in pipe.components.items() if k in wanted and k not in extra}
    other = pipeline_class(**shared, **extra)
    other.set_progress_bar_config(disable=True)
    return other


def with_controlnet(pipe, models: ModelSet, device: Device):
    """The ControlNet variant of `pipe`: its own modules plus the ControlNet, loaded onto `device`."""
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

    controlnet = load("ControlNet", models.controlnet, ControlNetModel.from_pretrained, dtype=device.dtype)
    return over_same_modules(StableDiffusionXLControlNetPipeline, pipe, controlnet=controlnet.to(device.device))


def attach_lora(pipe, lora_dir: Path, *, adapter_name: str = "character") -> None:
    """Load our trained LoRA into the pipeline, with a clear error when it does not fit the base model."""
    weights = Path(lora_dir) / "pytorch_lora_weights.safetensors"
    if not weights.exists():
        raise ModelLoadError(f"no LoRA weights at {weights}: run the train stage first (`dvc repro train`)")
    try:
        pipe.load_lora_weights(str(lora_dir), weight_name=weights.name, adapter_name=adapter_name)
    except (RuntimeError, ValueError, KeyError) as e:
        raise ModelLoadError(
            f"the LoRA in {lora_dir} does not fit the base model {pipe.name_or_path}: was it trained on another "
            f"profile? retrain with `dvc repro train`. ({e})"
        ) from e


def attach_ip_adapter(pipe, models: ModelSet, scale: float) -> None:
    logger.info("loading IP-Adapter %s/%s", models.ip_adapter, models.ip_adapter_weight)
    load(
        "IP-Adapter",
        models.ip_adapter,
        pipe.load_ip_adapter,
        subfolder=models.ip_adapter_subfolder,
        weight_name=models.ip_adapter_weight,
        image_encoder_folder=models.ip_adapter_image_encoder,
    )
    pipe.set_ip_adapter_scale(scale)


def native_resolution(pipe) -> int:
    """The size the base model was trained at: unet sample_size x VAE scale (1024 for SDXL)."""
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)
