"""Kernel choices for the denoisers that keep the model as it is: the attention backend, memory layouts, fused
projections. Each changes the frames only in the last bits (another kernel's rounding); BENCHMARKS.md has what
each one saves on the GPUs it was measured on.

- attention: which scaled-dot-product attention kernel torch tries first (cuDNN's, FlashAttention-2's or the
  memory-efficient one); the others stay as fallbacks for shapes the preferred one can't take. auto: torch's order.
- channels_last: UNet, ControlNet and VAE convolutions in NHWC, the layout cuDNN's fastest kernels read.
- fuse_qkv: diffusers' fused attention projections of the denoiser (one matmul for q, k and v); not with an
  IP-Adapter (ref_guided), whose attention processors it would replace.

Every mode's renderer applies them (the attention choice around each pipeline call, in the shared `_attempt`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from storyboard.log import logger
from storyboard.settings import Attention

BACKENDS: dict[str, SDPBackend] = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}
FALLBACKS = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH)


@contextlib.contextmanager
def attention(choice: Attention) -> Iterator[None]:
    """Inside: `choice` is the attention kernel tried first; auto leaves torch's own order."""
    if choice == "auto":
        yield
        return
    first = BACKENDS[choice]
    with sdpa_kernel([first, *(b for b in FALLBACKS if b != first)], set_priority=True):
        yield


def apply_layouts(pipe, *, channels_last: bool, fuse_qkv: bool) -> None:
    """Put the pipeline's denoisers and VAE in the chosen layouts, in place (modules shared with another pipeline,
    as ref_guided's frame 1 pipeline, get them too)."""
    if channels_last:
        for name in ("unet", "controlnet", "vae"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.to(memory_format=torch.channels_last)
    if fuse_qkv:
        denoiser = getattr(pipe, "unet", None) or pipe.transformer  # SDXL's UNet, FLUX.2's transformer
        if getattr(denoiser, "encoder_hid_proj", None) is not None:
            logger.warning("generate.fuse_qkv: skipped, the IP-Adapter's attention processors can't be fused")
            return
        denoiser.fuse_qkv_projections()
