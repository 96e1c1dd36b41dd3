"""torch.compile of the denoisers: in place, so names and weights stay; compiled output equals eager output."""

from __future__ import annotations

import torch

from storyboard.models.compiling import compile_in_place
from storyboard.models.loading import load_pipeline


def _inputs(unet, batch=1):
    g = torch.Generator().manual_seed(0)
    size = unet.config.sample_size
    return dict(
        sample=torch.randn(batch, unet.config.in_channels, size, size, generator=g),
        timestep=torch.tensor([10] * batch),
        encoder_hidden_states=torch.randn(batch, 4, unet.config.cross_attention_dim, generator=g),
        added_cond_kwargs={
            "text_embeds": torch.randn(batch, unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim, generator=g),
            "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * batch),
        },
    )


def test_blocks_compile_in_place_and_match_eager(tiny_models, cpu):
    unet = load_pipeline(tiny_models, cpu).unet
    keys = list(unet.state_dict())
    with torch.no_grad():
        eager = unet(**_inputs(unet)).sample
    compiled = compile_in_place(unet, "blocks", "default")
    blocks = [m for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
    assert compiled == len(blocks) > 0
    assert all(b._compiled_call_impl is not None for b in blocks)
    assert unet._compiled_call_impl is None  # only the blocks
    assert list(unet.state_dict()) == keys  # LoRA loading and checkpoints see the plain names
    with torch.no_grad():
        assert torch.allclose(unet(**_inputs(unet)).sample, eager, atol=1e-4)


def test_none_and_model_scopes(tiny_models, cpu):
    pipe = load_pipeline(tiny_models, cpu)
    assert compile_in_place(pipe.unet, "none", "default") == 0
    assert pipe.unet._compiled_call_impl is None
    assert compile_in_place(pipe.vae, "model", "default") == 1
    assert pipe.vae._compiled_call_impl is not None
