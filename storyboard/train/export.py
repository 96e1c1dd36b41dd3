"""The trained LoRA as files: its tensors in diffusers' layout (kohya.py writes the same LoRA in kohya's)."""

from __future__ import annotations

import torch

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
KOHYA_WEIGHTS = "lora_kohya.safetensors"


def lora_tensors(model) -> dict[str, torch.Tensor]:
    """The LoRA weights of a model, under their module names (what a checkpoint needs to restore them)."""
    return {k: v for k, v in model.state_dict().items() if ".lora_A." in k or ".lora_B." in k}


def lora_state(model, alpha: int, rank: int) -> dict[str, torch.Tensor]:
    """The LoRA weights as diffusers saves and loads them (peft's `lora_A` / `lora_B` names), alpha/rank folded into
    the up (B) weights.

    Files in diffusers' layout carry no alpha that every loader honours; folding makes the saved weights mean
    exactly what was trained, whatever loader reads them. peft's names, not diffusers' older `lora.down` ones:
    `convert_state_dict_to_diffusers` renames only attention projections, and diffusers' loader drops those from a
    file that mixes both spellings (train.target_modules beyond attention).
    """
    scale = alpha / rank
    return {
        k.replace(".default.", "."): (v * scale if scale != 1 and ".lora_B." in k else v)
        .detach()
        .to("cpu", torch.float32)
        for k, v in lora_tensors(model).items()
    }
