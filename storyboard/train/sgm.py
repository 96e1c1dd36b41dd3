"""Module names of an SDXL UNet in the original (SGM, Stability AI's generative-models) layout, from diffusers' names.

kohya's sd-scripts trains SDXL on its own copy of the original UNet, so its LoRA files name that model's modules
(`input_blocks.4.1.transformer_blocks.0.attn1.to_k`), and ComfyUI, Automatic1111/Forge and kohya's tools expect
them. The rule follows the original model's construction, so it holds for any diffusers UNet of that shape (SDXL's,
or the tiny profile's with fewer blocks): `input_blocks` is conv_in, then per down block its `layers_per_block`
layers [resnet, attention] and a downsampler; `middle_block` is [resnet, attention, resnet]; `output_blocks` holds
per up block `layers_per_block + 1` layers [resnet, attention, upsampler on the last]. Inside an attention block
the names are the same in both layouts; a resnet's are not (`RESNET_PARTS`).
"""

from __future__ import annotations

import re

# diffusers' ResnetBlock2D part -> the original ResBlock's
RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
# modules outside the down/mid/up blocks
TOP_LEVEL = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)$")
_MID = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")


class SgmNameError(ValueError):
    """A module the original SDXL layout has no name for."""


def sgm_module_name(module: str, unet_config) -> str:
    """The original-layout name of the diffusers UNet module `module` (e.g. `down_blocks.1.attentions.0.proj_in`).

    Args:
        module: a module path in diffusers' UNet2DConditionModel.
        unet_config: that UNet's config (`unet.config`, a mapping): `layers_per_block` and `up_block_types`
            place the blocks.
    """
    if module in TOP_LEVEL:
        return TOP_LEVEL[module]
    per_block = unet_config["layers_per_block"]
    if not isinstance(per_block, int):
        raise SgmNameError(f"layers_per_block {per_block!r}: the original layout has one count for every block")
    if match := _MID.match(module):
        kind, index, rest = match.group(1), int(match.group(2)), match.group(3)
        slot = 1 if kind == "attentions" else 2 * index  # [resnet 0, attention, resnet 1]
        return f"middle_block.{slot}.{_inner(kind, rest, module)}"
    if not (match := _BLOCK.match(module)):
        raise SgmNameError(f"{module}: not a module of the original SDXL UNet layout")
    side, block, kind, index, rest = match.groups()
    block, index = int(block), int(index)
    if side == "down_blocks":
        base = block * (per_block + 1) + 1  # input_blocks.0 is conv_in
        if kind == "downsamplers":
            return f"input_blocks.{base + per_block}.0.{_sampler(rest, 'op', module)}"
        return f"input_blocks.{base + index}.{int(kind == 'attentions')}.{_inner(kind, rest, module)}"
    base = block * (per_block + 1)
    if kind == "upsamplers":
        # after the attention, when the block has one
        slot = 2 if "CrossAttn" in unet_config["up_block_types"][block] else 1
        return f"output_blocks.{base + per_block}.{slot}.{_sampler(rest, 'conv', module)}"
    return f"output_blocks.{base + index}.{int(kind == 'attentions')}.{_inner(kind, rest, module)}"


def _inner(kind: str, rest: str, module: str) -> str:
    if kind == "attentions":
        return rest
    part, _, tail = rest.partition(".")
    if part not in RESNET_PARTS or tail:
        raise SgmNameError(f"{module}: a resnet part the original layout does not have")
    return RESNET_PARTS[part]


def _sampler(rest: str, name: str, module: str) -> str:
    if rest != "conv":
        raise SgmNameError(f"{module}: a sampler part the original layout does not have")
    return name
