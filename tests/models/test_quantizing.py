"""Quantization of the denoisers: which layers, in place and once, close to the unquantized output, clear errors."""

from __future__ import annotations

import pytest
import torch

from storyboard.models.loading import load_pipeline
from storyboard.models.quantizing import SKIPPED_LAYERS, QuantizeError, check_quantize_supported, quantize_in_place


def _plain(module: torch.nn.Module) -> bool:
    return type(module.weight) is torch.nn.Parameter and type(module.weight.data) is torch.Tensor


def test_int8_quantizes_the_wide_linear_layers_once_and_stays_close(tiny_models, cpu, unet_inputs):
    unet = load_pipeline(tiny_models, cpu).unet
    linears = {n: m for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear)}
    with torch.no_grad():
        before = unet(**unet_inputs(unet, batch=2)).sample

    assert quantize_in_place(unet, "int8") > 0
    quantized = {n for n, m in linears.items() if not _plain(m)}
    skipped = {n for n in linears if any(part in n for part in SKIPPED_LAYERS)}
    assert quantized and skipped  # the tiny UNet has both kinds
    assert quantized == set(linears) - skipped  # its other Linear layers are all multiples of 16 wide
    assert any("attn1.to_q" in n for n in quantized) and any("ff.net" in n for n in quantized)

    with torch.no_grad():
        after = unet(**unet_inputs(unet, batch=2)).sample
    assert not torch.equal(after, before)  # really quantized
    assert (after - before).norm() / before.norm() < 0.05  # and still the same network
    assert quantize_in_place(unet, "int8") == 0  # modes that share the UNet quantize it once


def test_none_leaves_the_model_alone(tiny_models, cpu):
    unet = load_pipeline(tiny_models, cpu).unet
    assert quantize_in_place(unet, "none") == 0
    assert all(_plain(m) for m in unet.modules() if isinstance(m, torch.nn.Linear))


def test_fp8_needs_a_recent_gpu(cpu):
    check_quantize_supported("none", cpu.device)
    check_quantize_supported("int8", cpu.device)
    with pytest.raises(QuantizeError, match=r"generate.quantize: fp8 needs a GPU .* set generate.quantize: int8 or none"):
        check_quantize_supported("fp8", cpu.device)
