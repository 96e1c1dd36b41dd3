"""The frozen SDXL components training needs: loading, tokenising, encoding captions and images."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from storyboard.models.loading import MODEL_LAYOUT, SDXL, SDXL_LAYOUT, load, load_model, load_text_encoders
from storyboard.settings import ModelSet


class SdxlParts:
    """The SDXL components training needs, loaded through the one loading path, frozen."""

    def __init__(self, models: ModelSet, device: torch.device, weight_dtype: torch.dtype):
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

        base = models.base
        named = dict(setting=f"{SDXL}.base", layout=SDXL_LAYOUT)
        text = load_text_encoders(models)  # the same loader, and checks, as generate's pipeline
        self.tokenizers = [text["tokenizer"], text["tokenizer_2"]]
        self.text_encoders = [text["text_encoder"], text["text_encoder_2"]]
        vae_source, vae_sub, vae_named = (
            (models.vae, None, dict(setting=f"{SDXL}.vae", layout=MODEL_LAYOUT)) if models.vae else (base, "vae", named)
        )
        self.vae = load_model("VAE", vae_source, AutoencoderKL, subfolder=vae_sub, **vae_named)
        self.unet = load_model("UNet", base, UNet2DConditionModel, subfolder="unet", **named)
        self.scheduler = load("noise scheduler", base, DDPMScheduler.from_pretrained, subfolder="scheduler", **named)
        self.device, self.weight_dtype = device, weight_dtype
        for module in (*self.text_encoders, self.unet):
            module.requires_grad_(False)
            module.to(device, dtype=weight_dtype)
        # The VAE encodes once, in fp32 unless it is the fp16-safe kind (force_upcast False): SDXL's own VAE
        # overflows in half precision.
        self.vae.requires_grad_(False)
        self.vae.to(device, dtype=torch.float32 if self.vae.config.force_upcast else weight_dtype)

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_resolution(self) -> int:
        return int(self.unet.config.sample_size * self.vae_scale)

    @property
    def bucket_step(self) -> int:
        """Smallest pixel multiple the UNet takes: the VAE scale times the UNet's own downsampling, doubled."""
        return self.vae_scale * 2 ** (len(self.unet.config.block_out_channels) - 1) * 2

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        """(N, 2, 77) token ids for the two tokenizers."""
        ids = [
            tok(
                captions, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
            ).input_ids
            for tok in self.tokenizers
        ]
        return torch.stack(ids, dim=1).to(self.device)

    def encode_tokens(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SDXL conditioning: penultimate hidden states of both encoders, concatenated; pooled from the second."""
        hidden, pooled = [], None
        for i, encoder in enumerate(self.text_encoders):
            out = encoder(ids[:, i], output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = out[0]
        return torch.cat(hidden, dim=-1), pooled

    @torch.no_grad()
    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = torch.stack(
            [torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1) for im in images]
        ).to(self.device, dtype=self.vae.dtype)
        latents = self.vae.encode(pixels).latent_dist.sample()
        return (latents * self.vae.config.scaling_factor).to(self.weight_dtype)
