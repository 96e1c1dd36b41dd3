"""Quantization of the denoisers (UNet, ControlNet) with torchao, for speed.

Activations are quantized on the fly per row (dynamic), weights once; torchao's layers are meant to run under
torch.compile, which fuses the quantizing of an activation into the kernel that produced it (eager, it runs as
kernels of its own; the eager speed was not measured).

Only the Linear layers fed straight by a norm are quantized: the transformer blocks' proj_in, self-attention
q/k/v, cross-attention q and the feed-forward's first projection. Their input's quantizing fuses into the norm's
kernel. Every other layer's input (attention output, the GEGLU product, the residual stream) would need a pass of
its own over the activations, which on an H100 cost more than the fp8 matmul saved: at a story's batch the UNet
call took 230.6 ms in bf16, 239.7 ms with every wide Linear layer in fp8 and 216.2 ms with the norm-fed ones
only (bench/bench_components.py, BENCHMARKS.md). Layers fed one vector per image (time and added-condition
embeddings, the IP-Adapter's projections) and the cross-attention keys and values of the 77 text tokens stay as
they are; so do convolutions.
"""

from __future__ import annotations

import logging

from typing import Literal

import torch

from storyboard.errors import StoryboardError

from storyboard.settings import Quantize

logger = logging.getLogger(__name__)

# The Linear layers quantized, by a part of their qualified name (see the module docstring); "attn1.to_q" also
# matches the fused "attn1.to_qkv".
NORM_FED_LAYERS = ("proj_in", "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_q", "ff.net.0.proj")
# Never quantized, even with layers="all": one vector per image, or the IP-Adapter's own projections.
SKIPPED_LAYERS = ("time_emb", "time_embedding", "add_embedding", "encoder_hid_proj", "processor")
Layers = Literal["norm_fed", "all"]
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


def quantizable(module: torch.nn.Module, name: str, layers: Layers = "norm_fed") -> bool:
    """Whether `quantize_in_place` quantizes this submodule (`name` is its qualified name)."""
    return (
        isinstance(module, torch.nn.Linear)
        and module.in_features % 16 == 0
        and module.out_features % 16 == 0
        and not any(part in name for part in SKIPPED_LAYERS)
        and (layers == "all" or any(part in name for part in NORM_FED_LAYERS))
    )


def quantize_in_place(
    module: torch.nn.Module,
    kind: Quantize,
    *,
    fp8_scaling: Literal["row", "tensor"] = "row",
    layers: Layers = "norm_fed",
) -> int:
    """Quantize `module`'s eligible Linear layers in place; returns how many. Idempotent: modes that share a
    UNet quantize it once. In place and not undoable: weights changed later (a LoRA fused in) must come first.

    `fp8_scaling` (one scale per row, or per tensor) and `layers` ("all": every wide Linear layer) are for the
    benchmarks, which measured the defaults as the fastest."""
    if kind == "none" or getattr(module, "_storyboard_quantized", None) == kind:
        return 0
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Int8DynamicActivationInt8WeightConfig,
        PerRow,
        PerTensor,
        quantize_,
    )

    # set_inductor_config=False: torchao would otherwise switch on inductor's coordinate-descent tuning for the
    # whole process, which made compiling the SDXL UNet take over four minutes on an H100.
    config = (
        Float8DynamicActivationFloat8WeightConfig(
            granularity=PerRow() if fp8_scaling == "row" else PerTensor(), set_inductor_config=False
        )
        if kind == "fp8"
        else Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
    )

    def wanted(m: torch.nn.Module, name: str) -> bool:
        return quantizable(m, name, layers)

    count = sum(wanted(m, n) for n, m in module.named_modules())
    quantize_(module, config, filter_fn=wanted)
    module._storyboard_quantized = kind
    logger.info("quantized %d Linear layers of the %s to %s (torchao)", count, type(module).__name__, kind)
    return count
