"""The LoRA as kohya's sd-scripts writes it for SDXL: the file ComfyUI, Automatic1111/Forge and kohya's tools load.

Keys name the original (SGM) UNet's modules (sgm.py) and the text encoders' own, `lora_unet_` / `lora_te1_` /
`lora_te2_` + the module path with `_` for `.`, each with `.lora_down.weight`, `.lora_up.weight` and `.alpha`. As
in kohya's files, alpha is the trained alpha and the up weights are not scaled: loaders apply alpha / rank (the
diffusers file, which has no alpha, carries that scale folded in). The metadata is kohya's `ss_*` keys (all
values strings, JSON for the nested ones) and Stability AI's ModelSpec `modelspec.*` keys, which the UIs' LoRA
browsers and model-sharing sites show. No wall-clock time or random session id goes in (kohya writes both), so
the same run writes the same file.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from storyboard import TINY_NOTICE, __version__
from storyboard.settings import ModelSet, Settings, Train
from storyboard.train.export import KOHYA_WEIGHTS
from storyboard.train.sgm import sgm_module_name

NETWORK_MODULE = "networks.lora"  # kohya's LoRA module: what its tools and the UIs expect of these keys
BASE_MODEL_VERSION = "sdxl_base_v1-0"  # Automatic1111/Forge file the LoRA under SDXL by its `sdxl_` prefix
ARCHITECTURE = "stable-diffusion-xl-v1-base/lora"
IMPLEMENTATION = "https://github.com/Stability-AI/generative-models"  # ModelSpec's id for SGM-named SDXL files
MODELSPEC_VERSION = "1.0.1"
PREFIXES = {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}
LORA_SUFFIXES = {
    ".lora.down.weight": "down",
    ".lora.up.weight": "up",
    ".lora_A.weight": "down",
    ".lora_B.weight": "up",
    ".lora_linear_layer.down.weight": "down",
    ".lora_linear_layer.up.weight": "up",
}
OPTIMIZERS = {"adamw": "torch.optim.adamw.AdamW", "adamw8bit": "bitsandbytes.optim.adamw.AdamW8bit"}


@dataclass(frozen=True)
class LoraCard:
    """What the file says the LoRA is for: the character, its trigger, and the tiny profile's notice."""

    name: str | None = None
    trigger: str | None = None
    description: str | None = None
    notice: str | None = None


def lora_card(settings: Settings) -> LoraCard:
    character = settings.character
    notice = TINY_NOTICE if settings.is_tiny else None
    return LoraCard(character.name, character.trigger, character.description, notice)


def kohya_state(diffusers_state: dict[str, torch.Tensor], unet_config, alpha: float) -> dict[str, torch.Tensor]:
    """The tensors of a LoRA file in diffusers' layout (alpha / rank folded into the up weights), in kohya's.

    Args:
        diffusers_state: what `save_lora_weights` wrote: `unet.*`, `text_encoder.*`, `text_encoder_2.*` keys.
        unet_config: the trained UNet's config: it places the blocks in the original layout.
        alpha: the trained LoRA alpha.
    """
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in diffusers_state.items():
        model, _, rest = key.partition(".")
        module, part = _lora_part(rest)
        if model not in PREFIXES or part is None:
            raise ValueError(f"{key}: not a LoRA weight of the UNet or a text encoder; cannot write it for kohya")
        if model == "unet":
            name = sgm_module_name(module, unet_config)
        else:  # kohya names CLIP's modules under `text_model.`, which transformers 5's CLIPTextModel drops
            name = module if module.startswith("text_model.") else f"text_model.{module}"
        pair = pairs.setdefault(f"{PREFIXES[model]}_{name.replace('.', '_')}", {})
        if part in pair:
            raise ValueError(f"{key}: a second module named {name} in kohya's layout")
        pair[part] = tensor
    state = {}
    for lora_name, pair in sorted(pairs.items()):
        down, up = pair["down"], pair["up"]
        rank = down.shape[0]
        state[f"{lora_name}.lora_down.weight"] = down.contiguous()
        state[f"{lora_name}.lora_up.weight"] = (up * (rank / alpha)).contiguous()
        state[f"{lora_name}.alpha"] = torch.tensor(float(alpha))
    return state


def _lora_part(rest: str) -> tuple[str, str | None]:
    """(module, "down" | "up") of a key in any of the spellings diffusers' files use (old, peft, text encoders')."""
    for suffix, part in LORA_SUFFIXES.items():
        if rest.endswith(suffix):
            return rest.removesuffix(suffix), part
    return rest, None


def export_kohya(diffusers_file: Path, kohya_file: Path, *, unet_config, alpha: float, metadata: dict[str, str]):
    """Write `kohya_file` from `diffusers_file`: kohya's keys and tensors, `metadata` and the additional-networks
    hashes that kohya adds (Automatic1111 shows them until it has hashed the file itself)."""
    from safetensors.torch import load_file, save_file

    state = kohya_state(load_file(diffusers_file), unet_config, alpha)
    if bad := [k for k, v in metadata.items() if not isinstance(v, str)]:
        raise TypeError(f"safetensors metadata values must be strings: {bad}")
    save_file(state, kohya_file, metadata={**metadata, **addnet_hashes(state, metadata)})
    sort_metadata(kohya_file)


def sort_metadata(path: Path) -> None:
    """Rewrite a safetensors file's header with its metadata in key order, in place.

    safetensors writes the metadata in the order of a Rust hash map, which is seeded anew in every process: the same
    tensors and metadata written by two runs gave two files, so DVC saw a new LoRA and re-rendered what reads it.
    The header keeps its length (the same JSON, reordered; padded with spaces as safetensors pads it).
    """
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        if "__metadata__" in header:
            header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:
            return  # another writer's spelling of the same JSON: leave the file as safetensors wrote it
        f.seek(8)
        f.write(text.ljust(size))


def addnet_hashes(state: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, str]:
    """kohya's `sshs_model_hash` (SHA-256 of the tensor bytes) and `sshs_legacy_hash` (of 64 KiB at 1 MiB into the
    file), both of the file with only its `ss_*` metadata, as kohya computes them."""
    from safetensors.torch import save

    data = save(state, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    header = 8 + int.from_bytes(data[:8], "little")
    return {
        "sshs_model_hash": hashlib.sha256(data[header:]).hexdigest(),
        "sshs_legacy_hash": hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8],
    }


def kohya_metadata(
    *, settings: Train, models: ModelSet, card: LoraCard, summary: dict, captions: list[str], dataset_name: str
) -> dict[str, str]:
    """The `ss_*` and `modelspec.*` keys of this run (all values strings).

    Args:
        settings: the train section.
        models: where the base model (and VAE) came from.
        card: the character and trigger.
        summary: the run's training.json (steps, chosen_step, images, resolution, buckets, batch, precision...).
        captions: the training captions, for the tag frequencies.
        dataset_name: the dataset folder's name, the key of the per-folder tables.
    """
    metadata = {
        **_training_keys(settings, summary),
        **_dataset_keys(settings, summary, captions, dataset_name),
        "ss_network_module": NETWORK_MODULE,
        "ss_network_dim": str(settings.rank),
        "ss_network_alpha": str(float(settings.alpha)),
        "ss_network_dropout": str(settings.dropout),
        "ss_base_model_version": BASE_MODEL_VERSION,
        "ss_v2": "False",
        "ss_sd_model_name": _model_name(models.base),
        # Automatic1111/Forge's alias for the LoRA in the prompt (`<lora:aldar_kose_man:1>`)
        "ss_output_name": card.trigger or Path(KOHYA_WEIGHTS).stem,
        "ss_training_comment": _comment(card),
        **({"ss_vae_name": _model_name(models.vae)} if models.vae else {}),
    }
    return {**metadata, **_model_spec(card, summary)}


def _training_keys(settings: Train, summary: dict) -> dict[str, str]:
    images, effective = summary["images"], summary["effective_batch"]
    text_lr = settings.text_encoder_learning_rate if settings.text_encoder_lora else 0.0
    return {
        "ss_steps": str(summary["chosen_step"]),
        "ss_max_train_steps": str(summary["steps"]),
        # passes over the images that the steps amount to (batches are drawn at random, not by epoch)
        "ss_epoch": str(math.ceil(summary["chosen_step"] * effective / images)),
        "ss_num_epochs": str(math.ceil(summary["steps"] * effective / images)),
        "ss_num_batches_per_epoch": str(math.ceil(images / (settings.batch_size * summary["processes"]))),
        "ss_batch_size_per_device": str(settings.batch_size),
        "ss_total_batch_size": str(effective),
        "ss_gradient_accumulation_steps": str(settings.gradient_accumulation_steps),
        "ss_learning_rate": str(settings.learning_rate),
        "ss_unet_lr": str(settings.learning_rate),
        "ss_text_encoder_lr": str(text_lr),
        "ss_network_train_unet_only": str(not settings.text_encoder_lora),
        "ss_lr_scheduler": settings.lr_scheduler,
        "ss_lr_warmup_steps": str(settings.lr_warmup_steps),
        "ss_optimizer": f"{OPTIMIZERS[settings.optimizer]}(weight_decay={settings.adam_weight_decay})",
        "ss_max_grad_norm": str(settings.max_grad_norm),
        "ss_mixed_precision": summary["mixed_precision"],
        "ss_full_fp16": "False",
        "ss_gradient_checkpointing": str(settings.gradient_checkpointing),
        "ss_cache_latents": "True",
        "ss_seed": str(settings.seed),
        "ss_noise_offset": str(settings.noise_offset),
        **({"ss_min_snr_gamma": str(settings.snr_gamma)} if settings.snr_gamma is not None else {}),
        "ss_caption_dropout_rate": str(settings.caption_dropout),
    }


def _dataset_keys(settings: Train, summary: dict, captions: list[str], dataset_name: str) -> dict[str, str]:
    resolution = summary["resolution"]
    buckets = {
        str(i): {"resolution": [int(side) for side in shape.split("x")], "count": count}
        for i, (shape, count) in enumerate(sorted(summary["buckets"].items()))
    }
    return {
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_num_train_images": str(summary["images"]),
        "ss_num_reg_images": "0",
        "ss_enable_bucket": str(settings.bucketing),
        "ss_bucket_info": json.dumps({"buckets": buckets}),
        "ss_flip_aug": str(settings.random_flip),
        "ss_random_crop": str(not settings.center_crop),
        "ss_color_aug": "False",
        "ss_shuffle_caption": "False",
        "ss_keep_tokens": "0",
        "ss_dataset_dirs": json.dumps({dataset_name: {"n_repeats": 1, "img_count": summary["images"]}}),
        "ss_reg_dataset_dirs": "{}",
        "ss_tag_frequency": json.dumps({dataset_name: tag_frequency(captions)}, ensure_ascii=False),
    }


def tag_frequency(captions: list[str]) -> dict[str, int]:
    """How many captions hold each tag, as kohya counts them: comma-separated, stripped, lower case."""
    counts = Counter(tag.strip().lower() for caption in captions for tag in caption.split(",") if tag.strip())
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _model_spec(card: LoraCard, summary: dict) -> dict[str, str]:
    resolution = summary["resolution"]
    spec = {
        "modelspec.sai_model_spec": MODELSPEC_VERSION,
        "modelspec.architecture": ARCHITECTURE,
        "modelspec.implementation": IMPLEMENTATION,
        "modelspec.implementation_version": f"storyboard/{__version__}",
        "modelspec.title": f"{card.name} (character LoRA)" if card.name else "character LoRA",
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.prediction_type": "v" if summary["prediction_type"] == "v_prediction" else "epsilon",
    }
    if card.description:
        spec["modelspec.description"] = card.description + (f" ({card.notice})" if card.notice else "")
    if card.trigger:
        spec["modelspec.trigger_phrase"] = card.trigger
        spec["modelspec.usage_hint"] = f"put {card.trigger} in the prompt"
    return spec


def _model_name(source: str) -> str:
    """A hub id as it is; a local folder by its name, as kohya names a local checkpoint (no machine's paths)."""
    path = Path(source)
    return path.name if path.exists() else source


def _comment(card: LoraCard) -> str:
    parts = [f"trained by storyboard {__version__}"]
    if card.trigger:
        parts.append(f"trigger: {card.trigger}")
    if card.notice:
        parts.append(card.notice)
    return "; ".join(parts)
