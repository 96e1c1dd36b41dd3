"""The trained LoRA as files: its tensors in diffusers' layout, and the same LoRA in kohya's layout."""

from __future__ import annotations

from pathlib import Path

import torch

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
KOHYA_WEIGHTS = "lora_kohya.safetensors"


def lora_tensors(model) -> dict[str, torch.Tensor]:
    """The LoRA weights of a model, under their module names (what a checkpoint needs to restore them)."""
    return {k: v for k, v in model.state_dict().items() if ".lora_A." in k or ".lora_B." in k}


def lora_state(model, alpha: int, rank: int) -> dict[str, torch.Tensor]:
    """The LoRA weights in diffusers' layout, alpha/rank folded into the up weights.

    Files in diffusers' (and kohya's) layout carry no alpha that every loader honours; folding makes the saved
    weights mean exactly what was trained, whatever loader reads them.
    """
    from diffusers.utils import convert_state_dict_to_diffusers

    scale = alpha / rank
    peft_layout = {k.replace(".default.", "."): v for k, v in lora_tensors(model).items()}
    state = convert_state_dict_to_diffusers(peft_layout)
    return {
        k: (v * scale if scale != 1 and ("lora.up" in k or "lora_B" in k or "up.weight" in k) else v)
        .detach()
        .to("cpu", torch.float32)
        for k, v in state.items()
    }


def export_kohya(diffusers_file: Path, kohya_file: Path) -> None:
    """The same LoRA in the kohya/A1111 key layout that ComfyUI and Automatic1111 load."""
    from diffusers.utils.state_dict_utils import convert_all_state_dict_to_peft, convert_state_dict_to_kohya
    from safetensors.torch import load_file, save_file

    kohya = convert_state_dict_to_kohya(convert_all_state_dict_to_peft(load_file(diffusers_file)))
    save_file({k: v.contiguous() for k, v in kohya.items()}, kohya_file)
