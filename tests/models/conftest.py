"""Fixtures of the model tests: one call's worth of inputs for a tiny UNet."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def unet_inputs():
    """A function of (unet, batch) that gives seeded inputs for one UNet call at its native size."""

    def make(unet, batch: int = 1) -> dict:
        g = torch.Generator().manual_seed(0)
        cfg = unet.config
        size = cfg.sample_size
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        return dict(
            sample=torch.randn(batch, cfg.in_channels, size, size, generator=g),
            timestep=torch.tensor([10] * batch),
            encoder_hidden_states=torch.randn(batch, 4, cfg.cross_attention_dim, generator=g),
            added_cond_kwargs={
                "text_embeds": torch.randn(batch, pooled, generator=g),
                "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * batch),
            },
        )

    return make
