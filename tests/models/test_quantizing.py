"""Quantization of the denoisers: which layers, in place and once, close to the unquantized output, clear errors."""

from __future__ import annotations

import pytest
import torch

from storyboard.models.loading import load_pipeline
from storyboard.models.quantizing import QuantizeError, check_quantize_supported, quantize_in_place

# Written out here rather than taken from the module, so the test pins the rule the benchmarks chose.
NORM_FED = (".proj_in", ".attn1.to_q", ".attn1.to_k", ".attn1.to_v", ".attn2.to_q", ".ff.net.0.proj")


def _plain(module: torch.nn.Module) -> bool:
    return type(module.weight) is torch.nn.Parameter and type(module.weight.data) is torch.Tensor


def test_int8_quantizes_the_norm_fed_linear_layers_once_and_stays_close(tiny_models, cpu, unet_inputs):
    unet = load_pipeline(tiny_models, cpu).unet
    linears = {n: m for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear)}
    with torch.no_grad():
        before = unet(**unet_inputs(unet, batch=2)).sample

    assert quantize_in_place(unet, "int8") > 0
    quantized = {n for n, m in linears.items() if not _plain(m)}
    # The tiny UNet's Linear layers are all multiples of 16 wide, so exactly the norm-fed ones are quantized.
    assert quantized == {n for n in linears if n.endswith(NORM_FED)}
    left = set(linears) - quantized
    for kept in ("attn1.to_out.0", "attn2.to_k", "ff.net.2", "proj_out", "time_embedding.linear_1"):
        assert any(n.endswith(kept) for n in left), kept

    with torch.no_grad():
        after = unet(**unet_inputs(unet, batch=2)).sample
    assert not torch.equal(after, before)  # really quantized
    assert (after - before).norm() / before.norm() < 0.05  # and still the same network
    assert quantize_in_place(unet, "int8") == 0  # modes that share the UNet quantize it once


def test_all_layers_quantizes_every_wide_linear_but_the_per_image_ones(tiny_models, cpu):
    unet = load_pipeline(tiny_models, cpu).unet
    linears = {n: m for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear)}
    quantize_in_place(unet, "int8", layers="all")
    left = {n for n, m in linears.items() if _plain(m)}
    assert left and all(any(k in n for k in ("time_emb", "add_embedding")) for n in left)


def test_none_leaves_the_model_alone(tiny_models, cpu):
    unet = load_pipeline(tiny_models, cpu).unet
    assert quantize_in_place(unet, "none") == 0
    assert all(_plain(m) for m in unet.modules() if isinstance(m, torch.nn.Linear))


def test_fp8_needs_a_recent_gpu(cpu):
    check_quantize_supported("none", cpu.device)
    check_quantize_supported("int8", cpu.device)
    with pytest.raises(
        QuantizeError, match=r"generate.quantize: fp8 needs a GPU .* set generate.quantize: int8 or none"
    ):
        check_quantize_supported("fp8", cpu.device)
