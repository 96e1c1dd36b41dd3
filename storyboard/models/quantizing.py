"""Quantization of the denoisers (UNet, ControlNet) with torchao, for speed.

Only the Linear layers that see many rows are quantized: attention projections and feed-forwards, where the
matmuls are (about 45% of the UNet's GPU time at a story's batch on an H100). Layers fed one vector per image (time
and added-condition embeddings, the IP-Adapter's projections) stay as they are: their matmuls are tiny, and
int8's GPU kernel refuses matrices of 16 rows or fewer. Convolutions stay as they are too.

Activations are quantized on the fly per row (dynamic), weights once. torchao's layers are meant to run under
torch.compile, which fuses the quantizing into the neighbouring kernels; eager, it runs as kernels of its own
(the eager speed was not measured).
"""

from __future__ import annotations

import torch

from storyboard.errors import StoryboardError
from storyboard.log import logger
from storyboard.settings import Quantize

# Linear layers left alone, by a part of their qualified name (see the module docstring).
SKIPPED_LAYERS = ("time_emb", "time_embedding", "add_embedding", "encoder_hid_proj", "processor")
FP8_MIN_CAPABILITY = (8, 9)  # Ada and Hopper: the first GPUs with fp8 tensor cores


class QuantizeError(StoryboardError):
    """generate.quantize asks for something this machine can't do; the message says what to set instead."""


def check_quantize_supported(kind: Quantize, device: torch.device) -> None:
    """Fail before any model is loaded when `kind` can't run on `device` (or torchao is missing)."""
    if kind == "none":
        return
    try:
        import torchao  # noqa: F401
    except ImportError as e:
        raise QuantizeError(
            f"generate.quantize: {kind} needs torchao: `pip install torchao`, or set generate.quantize: none"
        ) from e
    if kind == "fp8":
        capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
        if capability is None or capability < FP8_MIN_CAPABILITY:
            where = f"a GPU of compute capability {capability}" if capability else f"device {device}"
            raise QuantizeError(
                f"generate.quantize: fp8 needs a GPU of compute capability 8.9 or newer (H100, L4, RTX 40xx); "
                f"this run is on {where}: set generate.quantize: int8 or none"
            )


def _quantizable(module: torch.nn.Module, name: str) -> bool:
    return (
        isinstance(module, torch.nn.Linear)
        and module.in_features % 16 == 0
        and module.out_features % 16 == 0
        and not any(part in name for part in SKIPPED_LAYERS)
    )


def quantize_in_place(module: torch.nn.Module, kind: Quantize) -> int:
    """Quantize `module`'s eligible Linear layers in place; returns how many. Idempotent: modes that share a
    UNet quantize it once. In place and not undoable: weights changed later (a LoRA fused in) must come first."""
    if kind == "none" or getattr(module, "_storyboard_quantized", None) == kind:
        return 0
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Int8DynamicActivationInt8WeightConfig,
        PerRow,
        quantize_,
    )

    # set_inductor_config=False: torchao would otherwise switch on inductor's coordinate-descent tuning for the
    # whole process, which made compiling the SDXL UNet take over four minutes on an H100.
    config = (
        Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)
        if kind == "fp8"
        else Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
    )
    layers = sum(_quantizable(m, n) for n, m in module.named_modules())
    quantize_(module, config, filter_fn=_quantizable)
    module._storyboard_quantized = kind
    logger.info("quantized %d Linear layers of the %s to %s (torchao)", layers, type(module).__name__, kind)
    return layers
