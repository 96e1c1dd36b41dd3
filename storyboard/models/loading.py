"""One loading path for real and tiny models: everything goes through `from_pretrained` on an id or a folder.

Nothing here knows which profile is active beyond `model_set()`, which turns the profile into a `ModelSet`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import torch

from storyboard.errors import StoryboardError
from storyboard.log import quiet_model_libraries
from storyboard.models.checks import check_tokenizer, check_weights
from storyboard.models.gpus import cuda_index
from storyboard.models.hub_access import go_offline_if_unreachable
from storyboard.models.hub_errors import ModelRef, explain, is_loading_failure
from storyboard.models.versions import version_problems
from storyboard.settings import ModelSet, Runtime, Settings

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from storyboard.models.faces import FaceBackend

T = TypeVar("T")

# The params section that names the real models; the tiny ones are built under models.tiny.root.
SDXL = "models.sdxl"
# The files each kind of model folder holds, for the message that names a missing one.
SDXL_LAYOUT = (
    "model_index.json and the folders unet/, vae/, text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/ and "
    "scheduler/, each with its config and weights (a diffusers SDXL pipeline)"
)
MODEL_LAYOUT = "config.json and diffusion_pytorch_model.safetensors"
QWEN_PADDING = 1024  # rows of a Qwen embedding table that its tokenizer may leave unused
FLUX2_KLEIN_LAYOUT = (
    "model_index.json and the folders transformer/, vae/, text_encoder/, tokenizer/ and scheduler/, each with its "
    "config and weights (a diffusers Flux2KleinPipeline, e.g. black-forest-labs/FLUX.2-klein-4B)"
)


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
            # Under `accelerate launch`, each process takes the GPU of its local rank; else a free one (gpus.py).
            device = torch.device("cuda", cuda_index())
            # cuDNN times its convolution algorithms once per shape and keeps the fastest: a stage runs the same
            # few shapes thousands of times (the benchmarks, plain diffusers' side too, run with it on).
            torch.backends.cudnn.benchmark = True
        if runtime.dtype == "auto":
            # bf16 on GPUs (SDXL's fp16 VAE overflows without the fp16-fix VAE); fp32 on CPUs, where
            # half precision is slower, not faster.
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        else:
            dtype = getattr(torch, runtime.dtype)
        return cls(device, dtype)


def load(
    what: str,
    source: str,
    loader: Callable[..., T],
    /,
    *,
    setting: str | None = None,
    layout: str = "",
    part: str = "",
    check: Callable[[T], None] | None = None,
    **kwargs,
) -> T:
    """Call `loader(source, **kwargs)`, then `check(loaded)` (checks.py: what it must be); a failure of the
    model's files or of the way to them becomes one ModelLoadError naming the model (`setting`: its params key),
    the id or folder, what went wrong and the fix (`layout`: the files it should hold; `part`: the subfolder of a
    big repo that is all it needs)."""
    check_versions()
    quiet_model_libraries()
    go_offline_if_unreachable(source)
    started = time.perf_counter()
    try:
        loaded = loader(source, **kwargs)
        if check is not None:
            check(loaded)
    except Exception as e:
        if not is_loading_failure(e):
            raise
        ref = ModelRef(what, setting, source, layout, part, kwargs.get("subfolder") or "")
        raise ModelLoadError(explain(ref, e)) from e
    seconds = time.perf_counter() - started
    # a slow disk or a hub download shows where a stage's start-up goes
    logger.log(logging.INFO if seconds >= 1 else logging.DEBUG, "%s: loaded in %.1f s (%s)", what, seconds, source)
    return loaded


def load_model(what: str, source: str, model_class, /, **kwargs):
    """`load` of a transformers or diffusers model class that also fails when its files lack some of the
    model's weights (from_pretrained would initialise those at random and say so only in a silenced log line)."""
    subfolder = kwargs.get("subfolder") or ""

    def loader(source: str, **kwargs):
        model, info = model_class.from_pretrained(source, output_loading_info=True, **kwargs)
        check_weights(info, subfolder=subfolder)
        return model

    return load(what, source, loader, **kwargs)


def load_text_encoders(models: ModelSet, dtype: torch.dtype | None = None) -> dict:
    """SDXL's two text encoders and their tokenizers, for generate's pipeline and for train alike; each tokenizer
    checked against its encoder's embedding table. Keyed as the pipeline's components."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    named = dict(setting=f"{SDXL}.base", layout=SDXL_LAYOUT)
    typed = {"dtype": dtype} if dtype is not None else {}
    parts = {}
    for suffix, encoder_class in (("", CLIPTextModel), ("_2", CLIPTextModelWithProjection)):
        encoder_sub, tokenizer_sub = f"text_encoder{suffix}", f"tokenizer{suffix}"
        encoder = load_model(
            f"text encoder{suffix.replace('_', ' ')}",
            models.base,
            encoder_class,
            subfolder=encoder_sub,
            **named,
            **typed,
        )
        vocab = encoder.config.vocab_size

        def fits(tokenizer, vocab=vocab, sub=tokenizer_sub, reader=f"{encoder_sub}/"):
            check_tokenizer(tokenizer, vocab, source=models.base, subfolder=sub, reader=reader)

        parts[encoder_sub] = encoder
        parts[tokenizer_sub] = load(
            f"tokenizer{suffix.replace('_', ' ')}",
            models.base,
            CLIPTokenizer.from_pretrained,
            subfolder=tokenizer_sub,
            check=fits,
            **named,
        )
    return parts


@functools.cache
def check_versions() -> None:
    """Once per process: an outdated diffusers/transformers/peft stops here, with the pip command, rather than
    deep inside a pipeline call."""
    if problems := version_problems():
        raise ModelLoadError("; ".join(problems))


def load_pipeline(models: ModelSet, device: Device):
    """The SDXL text-to-image pipeline on `device`. Its parts with weights and its tokenizers load one by one,
    checked (train loads the same ones); the pipeline loads the rest (scheduler, configs) around them."""
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel

    logger.info("loading SDXL from %s (%s, %s)", models.base, device.device, device.dtype)
    named = dict(setting=f"{SDXL}.base", layout=SDXL_LAYOUT, dtype=device.dtype)
    if models.vae:
        vae = load_model(
            "VAE", models.vae, AutoencoderKL, setting=f"{SDXL}.vae", layout=MODEL_LAYOUT, dtype=device.dtype
        )
    else:
        vae = load_model("VAE", models.base, AutoencoderKL, subfolder="vae", **named)
    parts = load_text_encoders(models, device.dtype)
    parts["unet"] = load_model("UNet", models.base, UNet2DConditionModel, subfolder="unet", **named)
    pipe = load("SDXL base model", models.base, StableDiffusionXLPipeline.from_pretrained, vae=vae, **parts, **named)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device.device)


def load_multiref_pipeline(models: ModelSet, device: Device):
    """generate@multiref's FLUX.2 klein pipeline (transformer, VAE, Qwen3 text encoder) on `device`. As SDXL's: its
    parts with weights and its tokenizer load one by one, checked; the pipeline loads the scheduler around them."""
    from diffusers import AutoencoderKLFlux2, Flux2KleinPipeline, Flux2Transformer2DModel
    from transformers import Qwen2Tokenizer, Qwen3ForCausalLM

    source = models.multiref
    logger.info("loading FLUX.2 klein from %s (%s, %s)", source, device.device, device.dtype)
    named = dict(setting=f"{SDXL}.multiref", layout=FLUX2_KLEIN_LAYOUT)
    typed = dict(named, dtype=device.dtype)
    parts = {
        "transformer": load_model(
            "FLUX.2 klein transformer", source, Flux2Transformer2DModel, subfolder="transformer", **typed
        ),
        "vae": load_model("FLUX.2 klein VAE", source, AutoencoderKLFlux2, subfolder="vae", **typed),
        "text_encoder": load_model(
            "FLUX.2 klein text encoder", source, Qwen3ForCausalLM, subfolder="text_encoder", **typed
        ),
    }
    vocab = parts["text_encoder"].config.vocab_size

    def fits(tokenizer):
        # Qwen's embedding table keeps a few hundred rows beyond its tokenizer's tokens, reserved for new ones.
        check_tokenizer(
            tokenizer, vocab, source=source, subfolder="tokenizer", reader="text_encoder/", padding=QWEN_PADDING
        )

    parts["tokenizer"] = load(
        "FLUX.2 klein tokenizer", source, Qwen2Tokenizer.from_pretrained, subfolder="tokenizer", check=fits, **named
    )
    pipe = load("FLUX.2 klein (generate@multiref)", source, Flux2KleinPipeline.from_pretrained, **parts, **typed)
    pipe.set_progress_bar_config(disable=True)
    return pipe


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

    controlnet = load_model(
        "ControlNet",
        models.controlnet,
        ControlNetModel,
        setting=f"{SDXL}.controlnet",
        layout=MODEL_LAYOUT,
        dtype=device.dtype,
    )
    return over_same_modules(StableDiffusionXLControlNetPipeline, pipe, controlnet=controlnet.to(device.device))


def attach_lora(pipe, lora_dir: Path, *, adapter_name: str = "character") -> None:
    """Load our trained LoRA into the pipeline, with a clear error when it does not fit the base model."""
    weights = Path(lora_dir) / "pytorch_lora_weights.safetensors"
    if not weights.exists():
        raise ModelLoadError(
            f"no LoRA weights at {weights}: run the train and select stages first (`dvc repro select`)"
        )
    try:
        pipe.load_lora_weights(str(lora_dir), weight_name=weights.name, adapter_name=adapter_name)
    except (RuntimeError, ValueError, KeyError) as e:
        raise ModelLoadError(
            f"the LoRA in {lora_dir} does not fit the base model {pipe.name_or_path}: was it trained on another "
            f"profile? retrain with `dvc repro train`. ({e})"
        ) from e


def fuse_sampler_lora(pipe, models: ModelSet, sampler) -> None:
    """A few-step sampler's distillation LoRA (generate.sampler), fused into `pipe`'s UNet: its steps then cost
    what the plain UNet's do, and the character's LoRA fuses on top of it."""
    key = sampler.lora_key
    source, weight = getattr(models, key), getattr(models, f"{key}_weight")
    logger.info("loading the %s LoRA %s/%s", sampler.name, source, weight)
    load(
        f"{sampler.name} LoRA",
        source,
        pipe.load_lora_weights,
        setting=f"{SDXL}.{key}",
        layout=f"{weight} ({SDXL}.{key}_weight)",
        weight_name=weight,
        adapter_name="sampler",
    )
    pipe.fuse_lora(adapter_names=["sampler"], lora_scale=sampler.lora_scale)
    pipe.unload_lora_weights()


def attach_ip_adapter(pipe, models: ModelSet, scale: float, *, faceid: bool = False) -> None:
    """The IP-Adapter onto `pipe`'s UNet; with `faceid`, the IP-Adapter FaceID instead: it reads face-recognition
    embeddings (given as `ip_adapter_image_embeds`), so no CLIP image encoder is loaded."""
    if faceid:
        what, source, subfolder, weight = _faceid_weights(models)
        encoder = None
        key, layout = (
            "faceid_adapter",
            f"{_in(subfolder)}{weight} ({SDXL}.faceid_adapter_subfolder, faceid_adapter_weight)",
        )
    else:
        what, source, subfolder, weight = (
            "IP-Adapter",
            models.ip_adapter,
            models.ip_adapter_subfolder,
            models.ip_adapter_weight,
        )
        encoder = models.ip_adapter_image_encoder
        key, layout = (
            "ip_adapter",
            f"{_in(subfolder)}{weight} ({SDXL}.ip_adapter_subfolder, ip_adapter_weight) and the image encoder "
            f"{_in(subfolder)}{encoder}/ with config.json and model.safetensors ({SDXL}.ip_adapter_image_encoder)",
        )
    logger.info("loading %s %s/%s", what, source, weight)
    load(
        what,
        source,
        pipe.load_ip_adapter,
        setting=f"{SDXL}.{key}",
        layout=layout,
        part=subfolder,
        subfolder=subfolder,
        weight_name=weight,
        image_encoder_folder=encoder,
    )
    pipe.set_ip_adapter_scale(scale)


def _in(subfolder: str) -> str:
    return f"{subfolder.strip('/')}/" if subfolder else ""


def _faceid_weights(models: ModelSet) -> tuple[str, str, str, str]:
    if not models.faceid_adapter or not models.faceid_adapter_weight:
        raise ModelLoadError(
            "generate.reference: faceid needs an IP-Adapter FaceID: set models.<profile>.faceid_adapter and "
            "faceid_adapter_weight in params.yaml (e.g. h94/IP-Adapter-FaceID, ip-adapter-faceid_sdxl.bin), "
            "or set generate.reference: face"
        )
    return "IP-Adapter FaceID", models.faceid_adapter, models.faceid_adapter_subfolder, models.faceid_adapter_weight


def faceid_input_size(pipe) -> int:
    """The size of the face embedding the loaded FaceID adapter reads (its first layer's in-features)."""
    return pipe.unet.encoder_hid_proj.image_projection_layers[0].ff.net[0].proj.in_features


def faceid_weights_input_size(models: ModelSet) -> int | None:
    """The same, from the weights file (its `proj.0` in-features) when it is on this machine (a folder, or the
    Hugging Face cache), read without loading any model; None when it is not at hand."""
    _, source, subfolder, weight = _faceid_weights(models)
    name = f"{subfolder}/{weight}" if subfolder else weight
    path = Path(source) / name
    try:
        if not path.is_file():
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, name)
            if not isinstance(cached, str):
                return None
            path = Path(cached)
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                return f.get_slice("image_proj.proj.0.weight").get_shape()[1]
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # mapped, not read
        return state["image_proj"]["proj.0.weight"].shape[1]
    except (OSError, RuntimeError, KeyError, ValueError, pickle.UnpicklingError):
        return None  # not a repo id or a layout read here: loading tells, or the check runs after it


def check_faceid_fits(size: int | None, faces: FaceBackend, models: ModelSet) -> None:
    """Fail with the fix when the face backend's embeddings are not `size`, what the FaceID adapter reads."""
    if size is not None and size != faces.embedding_size:
        raise ModelLoadError(
            f"the IP-Adapter FaceID {models.faceid_adapter}/{models.faceid_adapter_weight} reads {size}-d face "
            f"embeddings, but the {faces.name} face backend makes {faces.embedding_size}-d ones: set "
            "models.<profile>.face_backend to a backend of that size (h94's FaceID adapters read InsightFace's "
            "512-d ArcFace embeddings: models.sdxl.face_backend: insightface), or generate.reference: face"
        )


def native_resolution(pipe) -> int:
    """The size the base model was trained at: unet sample_size x VAE scale (1024 for SDXL); a pipeline without a
    UNet (FLUX.2 klein): its VAE's sample_size (1024 for FLUX.2's)."""
    if getattr(pipe, "unet", None) is None:
        return int(pipe.vae.config.sample_size)
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)
