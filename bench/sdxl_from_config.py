"""Full-size SDXL components with random weights, built from the published configs (no download possible).

The benchmarks measure speed and memory, which depend on shapes, dtypes and kernels, never on weight values;
so the models here are the exact classes and sizes of the released checkpoints, with seeded random weights.
The configs are written out below rather than fetched, each with the hub repo it mirrors.

`small=True` on every builder shrinks all sizes (as storyboard/models/tiny.py does) so the same code runs on a
CPU in seconds; the full sizes need a GPU (the UNet alone is 2.57 B parameters).

Large models are materialised directly on the target device in the target dtype (torch.device context +
default dtype), because building 3+ B parameters in fp32 on the CPU and then moving them takes minutes.

Run as a script to count (and optionally build) everything:
    python bench/sdxl_from_config.py --device meta            # full-size counts, no memory used
    python bench/sdxl_from_config.py --device cuda            # build everything on the GPU in bf16
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch

from storyboard.log import logger, setup_logging
from storyboard.models.tiny import attention_hidden_size

# ---------------------------------------------------------------------------------------------------------------
# Published configs, written out. Keys are those of the config.json files; only keys the classes read are kept.
# ---------------------------------------------------------------------------------------------------------------

# stabilityai/stable-diffusion-xl-base-1.0, unet/config.json
UNET_CONFIG: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "only_cross_attention": False,
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 2048,
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "use_linear_projection": True,
    "upcast_attention": None,
    "resnet_time_scale_shift": "default",
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,  # 6 time ids x 256 + pooled text 1280
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
}
# The released models' sizes (sum of numel over their safetensors): the check that the configs below, typed
# from the published files, build the same networks. A wrong head or layer count fails here, not as a silently
# different benchmark.
EXPECTED_PARAMS: dict[str, int] = {
    "unet": 2_567_463_684,
    "vae": 83_653_863,
    "text_encoder": 123_060_480,
    "text_encoder_2": 694_659_840,
    # ControlNetModel.from_unet of the UNet above; the size of xinsir/controlnet-openpose-sdxl-1.0
    "controlnet": 1_251_014_160,
    "image_encoder": 1_844_907_264,  # OpenCLIP ViT-bigG/14 vision + projection
}

# madebyollin/sdxl-vae-fp16-fix, config.json (same architecture as the base model's vae/, but with
# force_upcast False: its activations stay finite in half precision, so the decode can run in bf16/fp16).
# sample_size 1024 as in stabilityai/stable-diffusion-xl-base-1.0/vae (it only names the native size).
VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": False,
}

VOCAB_SIZE = 49408
MAX_POSITIONS = 77

# stabilityai/stable-diffusion-xl-base-1.0, text_encoder/config.json (= openai/clip-vit-large-patch14 text tower)
TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": MAX_POSITIONS,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 768,
    # As published. eos_token_id 2 is the legacy value that makes CLIP pool at argmax(input_ids), i.e. at the
    # highest id, which is <|endoftext|> (49407) in the real vocab.
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}

# stabilityai/stable-diffusion-xl-base-1.0, text_encoder_2/config.json (= laion OpenCLIP ViT-bigG/14 text tower)
TEXT_ENCODER_2_CONFIG: dict[str, Any] = {
    **TEXT_ENCODER_CONFIG,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}

# h94/IP-Adapter, sdxl_models/image_encoder/config.json (OpenCLIP ViT-bigG/14 vision tower)
IMAGE_ENCODER_CONFIG: dict[str, Any] = {
    "hidden_size": 1664,
    "intermediate_size": 8192,
    "num_hidden_layers": 48,
    "num_attention_heads": 16,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 14,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 1280,
}
# h94/IP-Adapter sdxl_models/ip-adapter_sdxl.safetensors: 4 image tokens projected into the UNet's cross dim.
IP_ADAPTER_TOKENS = 4

# stabilityai/stable-diffusion-xl-base-1.0, scheduler/scheduler_config.json (EulerDiscreteScheduler); training
# reads the same file into a DDPMScheduler, as diffusers' train_text_to_image_lora_sdxl.py does.
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "interpolation_type": "linear",
    "timestep_spacing": "leading",
    "steps_offset": 1,
    "use_karras_sigmas": False,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "sample_max_value": 1.0,
}

# ---------------------------------------------------------------------------------------------------------------
# Small sizes: the smallest that keep every SDXL mechanism (as storyboard/models/tiny.py), for the CPU check.
# A 2-level VAE downsamples by 2, so a 64 px image gives the 32x32 latent the small UNet is sized for.
# ---------------------------------------------------------------------------------------------------------------

SMALL_TEXT_DIM = 32
SMALL_RESOLUTION = 64

SMALL_UNET_CONFIG: dict[str, Any] = {
    **UNET_CONFIG,
    "sample_size": SMALL_RESOLUTION // 2,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "cross_attention_dim": 2 * SMALL_TEXT_DIM,
    "transformer_layers_per_block": (1, 1),
    "attention_head_dim": (2, 4),
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 6 * 8 + SMALL_TEXT_DIM,
}
SMALL_VAE_CONFIG: dict[str, Any] = {
    **VAE_CONFIG,
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
    "block_out_channels": (16, 32),
    "norm_num_groups": 8,
    "sample_size": SMALL_RESOLUTION,
}
_SMALL_TEXT = {"hidden_size": SMALL_TEXT_DIM, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
SMALL_TEXT_ENCODER_CONFIG = {**TEXT_ENCODER_CONFIG, **_SMALL_TEXT, "projection_dim": SMALL_TEXT_DIM}
SMALL_TEXT_ENCODER_2_CONFIG = {**TEXT_ENCODER_2_CONFIG, **_SMALL_TEXT, "projection_dim": SMALL_TEXT_DIM}
SMALL_IMAGE_ENCODER_CONFIG = {
    **IMAGE_ENCODER_CONFIG,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
    "projection_dim": 32,
}
# ControlNet's condition embedding must downsample as much as the VAE: 8x full size (its default), 2x small.
SMALL_CONTROLNET_CONDITIONING_CHANNELS = (16, 32)

PipelineKind = Literal["sdxl", "controlnet"]


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------


@contextmanager
def materialise_on(device: torch.device | str, dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly on `device` in `dtype` (no CPU fp32 copy first, no move afterwards)."""
    previous = torch.get_default_dtype()
    # set_default_dtype only takes floating dtypes; meta counting passes float32.
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _log_built(what: str, module: torch.nn.Module, *, expect: str | None = None) -> int:
    """Log the size of a built module; with `expect`, fail unless it is within 1% of the released model's."""
    n = count_params(module)
    p = next(module.parameters())
    logger.info("built %s: %.1f M parameters (%s, %s)", what, n / 1e6, p.device, p.dtype)
    if expect is not None:
        want = EXPECTED_PARAMS[expect]
        assert abs(n - want) / want < 0.01, f"{what} has {n:,} parameters; the released model has {want:,}"
    return n


def resolution(small: bool) -> int:
    """The native image size: UNet sample_size x VAE scale (1024 full size, 64 small)."""
    return SMALL_RESOLUTION if small else UNET_CONFIG["sample_size"] * 8


# ---------------------------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------------------------


def build_unet(
    dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cuda", *, small: bool = False, seed: int = 0
):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    with materialise_on(device, dtype):
        unet = UNet2DConditionModel(**(SMALL_UNET_CONFIG if small else UNET_CONFIG))
    _log_built("UNet" + (" (small)" if small else ""), unet, expect=None if small else "unet")
    return unet


def build_vae(
    dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cuda", *, small: bool = False, seed: int = 0
):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed + 1)
    with materialise_on(device, dtype):
        vae = AutoencoderKL(**(SMALL_VAE_CONFIG if small else VAE_CONFIG))
    _log_built("VAE" + (" (small)" if small else ""), vae, expect=None if small else "vae")
    return vae


def build_tokenizer(pad_token: str = "<|endoftext|>"):
    """The real CLIP BPE tokenizer (storyboard/models/bpe.py), so prompts take as many tokens as on a real pod."""
    from storyboard.models.bpe import clip_tokenizer

    return clip_tokenizer(pad_token)


def build_text_encoders(
    dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cuda", *, small: bool = False, seed: int = 0
):
    """(text_encoder, text_encoder_2, tokenizer, tokenizer_2): CLIP ViT-L/14 text and OpenCLIP bigG text + proj."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    configs = (
        (SMALL_TEXT_ENCODER_CONFIG, SMALL_TEXT_ENCODER_2_CONFIG)
        if small
        else (TEXT_ENCODER_CONFIG, TEXT_ENCODER_2_CONFIG)
    )
    encoders = []
    for i, (cls, config) in enumerate(zip((CLIPTextModel, CLIPTextModelWithProjection), configs, strict=True)):
        torch.manual_seed(seed + 2 + i)
        cfg = CLIPTextConfig(**config)
        cfg._attn_implementation = "sdpa"  # what from_pretrained picks on a GPU; the constructor may default to eager
        with materialise_on(device, dtype):
            encoder = cls(cfg)
        encoder.requires_grad_(False).eval()
        name = f"text encoder {i + 1} ({cls.__name__}{', small' if small else ''})"
        _log_built(name, encoder, expect=None if small else ("text_encoder", "text_encoder_2")[i])
        encoders.append(encoder)
    # SDXL ships two tokenizers that differ only in the pad token.
    return encoders[0], encoders[1], build_tokenizer(), build_tokenizer(pad_token="!")


def build_controlnet(unet, *, small: bool = False):
    """`ControlNetModel.from_unet`: the UNet's encoder + mid block copied, in the UNet's device and dtype."""
    from diffusers import ControlNetModel

    p = next(unet.parameters())
    kwargs = {"conditioning_embedding_out_channels": SMALL_CONTROLNET_CONDITIONING_CHANNELS} if small else {}
    with materialise_on(p.device, p.dtype):
        controlnet = ControlNetModel.from_unet(unet, **kwargs)
    _log_built("ControlNet" + (" (small)" if small else ""), controlnet, expect=None if small else "controlnet")
    return controlnet


def build_image_encoder(
    dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cuda", *, small: bool = False, seed: int = 0
):
    """The IP-Adapter's image encoder: OpenCLIP ViT-bigG/14 vision tower with projection."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed + 10)
    config = CLIPVisionConfig(**(SMALL_IMAGE_ENCODER_CONFIG if small else IMAGE_ENCODER_CONFIG))
    config._attn_implementation = "sdpa"
    with materialise_on(device, dtype):
        encoder = CLIPVisionModelWithProjection(config)
    _log_built(
        "IP-Adapter image encoder" + (" (small)" if small else ""), encoder, expect=None if small else "image_encoder"
    )
    return encoder


def build_ip_adapter_files(
    folder: Path,
    unet,
    *,
    small: bool = False,
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cuda",
    weight_name: str = "ip-adapter.safetensors",
) -> Path:
    """Write an IP-Adapter like h94/IP-Adapter sdxl_models/ (ip-adapter_sdxl + ViT-bigG image encoder) to `folder`.

    Layout read by `pipe.load_ip_adapter(folder, subfolder="", weight_name=weight_name,
    image_encoder_folder="image_encoder")`. Skipped when already written (the image encoder is 1.8 B parameters).
    """
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor

    folder = Path(folder)
    done = folder / "BUILT"
    if done.exists():
        logger.info("IP-Adapter files already in %s", folder)
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    config = SMALL_IMAGE_ENCODER_CONFIG if small else IMAGE_ENCODER_CONFIG
    encoder = build_image_encoder(dtype, device, small=small, seed=seed)
    encoder.save_pretrained(folder / "image_encoder")
    del encoder
    size = config["image_size"]
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(
        folder / "image_encoder"
    )

    cross = unet.config.cross_attention_dim
    embed = config["projection_dim"]
    g = torch.Generator().manual_seed(seed + 11)

    def rand(*shape: int) -> torch.Tensor:
        # At the scale of a default-initialised linear layer, so the adapter visibly changes the output.
        return (torch.randn(*shape, generator=g) / shape[-1] ** 0.5).to(dtype)

    tensors = {
        "image_proj.proj.weight": rand(cross * IP_ADAPTER_TOKENS, embed),
        "image_proj.proj.bias": torch.zeros(cross * IP_ADAPTER_TOKENS, dtype=dtype),
        "image_proj.norm.weight": torch.ones(cross, dtype=dtype),
        "image_proj.norm.bias": torch.zeros(cross, dtype=dtype),
    }
    # One to_k_ip/to_v_ip pair per cross-attention processor, numbered like the released checkpoints: processors
    # are counted in unet.attn_processors order and the cross-attention ones (attn2) are the odd ones.
    for index, name in enumerate(unet.attn_processors):
        if name.endswith("attn1.processor"):
            continue
        hidden = attention_hidden_size(unet.config, name)
        tensors[f"ip_adapter.{index}.to_k_ip.weight"] = rand(hidden, cross)
        tensors[f"ip_adapter.{index}.to_v_ip.weight"] = rand(hidden, cross)
    save_file(tensors, folder / weight_name)
    n = sum(t.numel() for t in tensors.values())
    logger.info("wrote IP-Adapter weights: %.1f M parameters, %d k/v pairs", n / 1e6, (len(tensors) - 4) // 2)
    done.write_text("ok\n")
    return folder


def build_lora_files(folder: Path, *, rank: int, target_modules: list[str], small: bool = False, seed: int = 0) -> Path:
    """A random rank-`rank` LoRA for the UNet, saved as `save_lora_weights` writes it (what training produces).

    Key names and shapes come from peft itself (`add_adapter` on a UNet on the meta device, which costs no
    memory); the values are random, lora_B included: peft's init makes it zero, a no-op LoRA that would not
    show whether loading/fusing works. With lora_B at 0.3/sqrt(rank) the delta is about 0.3x the scale of the
    base weights, which changes the output visibly without blowing it up.
    """
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    folder = Path(folder)
    weights = folder / "pytorch_lora_weights.safetensors"
    if weights.exists():
        return folder
    with torch.device("meta"):
        unet = UNet2DConditionModel(**(SMALL_UNET_CONFIG if small else UNET_CONFIG))
        unet.add_adapter(
            LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=target_modules)
        )
    g = torch.Generator().manual_seed(seed + 20)
    state = {}
    for key, meta in get_peft_model_state_dict(unet).items():
        scale = meta.shape[-1] ** -0.5 if "lora_A" in key else 0.3 * rank**-0.5
        state[key] = (torch.randn(*meta.shape, generator=g) * scale).to(torch.bfloat16)
    folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionXLPipeline.save_lora_weights(
        folder, unet_lora_layers=convert_state_dict_to_diffusers(state), safe_serialization=True
    )
    n = sum(t.numel() for t in state.values())
    logger.info(
        "wrote random LoRA rank %d on %s: %.1f M parameters in %d tensors", rank, target_modules, n / 1e6, len(state)
    )
    return folder


def build_scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(SCHEDULER_CONFIG)


def build_pipeline(
    kind: PipelineKind,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cuda",
    folder: Path | None = None,
    *,
    small: bool = False,
    seed: int = 0,
    save: bool = False,
):
    """StableDiffusionXLPipeline ("sdxl") or StableDiffusionXLControlNetPipeline ("controlnet"), in memory.

    Saved to `folder` with save_pretrained only when `save` is set: writing and re-reading 7-10 GB buys nothing
    for a benchmark, while the LoRA and IP-Adapter, which the pipeline can only load from files, are written by
    `build_lora_files` / `build_ip_adapter_files`.
    """
    from diffusers import StableDiffusionXLControlNetPipeline, StableDiffusionXLPipeline

    unet = build_unet(dtype, device, small=small, seed=seed)
    vae = build_vae(dtype, device, small=small, seed=seed)
    text_encoder, text_encoder_2, tokenizer, tokenizer_2 = build_text_encoders(dtype, device, small=small, seed=seed)
    parts = dict(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=build_scheduler(),
        add_watermarker=False,  # the watermark is CPU post-processing the project does not use
    )
    if kind == "controlnet":
        pipe = StableDiffusionXLControlNetPipeline(controlnet=build_controlnet(unet, small=small), **parts)
    elif kind == "sdxl":
        pipe = StableDiffusionXLPipeline(**parts)
    else:
        raise ValueError(f"unknown pipeline kind {kind!r}; use sdxl or controlnet")
    pipe.set_progress_bar_config(disable=True)
    if save:
        if folder is None:
            raise ValueError("save=True needs a folder")
        pipe.save_pretrained(folder)
        logger.info("saved %s to %s", type(pipe).__name__, folder)
    return pipe


def count_all(*, small: bool = False, device: str = "meta", dtype: torch.dtype = torch.float32) -> dict[str, int]:
    """Parameter counts of every component; on the meta device this allocates nothing."""
    unet = build_unet(dtype, device, small=small)
    counts = {"unet": count_params(unet)}
    counts["controlnet"] = count_params(build_controlnet(unet, small=small))
    counts["vae"] = count_params(build_vae(dtype, device, small=small))
    te1, te2, _, _ = build_text_encoders(dtype, device, small=small)
    counts["text_encoder"] = count_params(te1)
    counts["text_encoder_2"] = count_params(te2)
    counts["image_encoder"] = count_params(build_image_encoder(dtype, device, small=small))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="meta", help="meta (count only), cpu or cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--small", action="store_true", help="tiny sizes")
    args = parser.parse_args()
    setup_logging()
    # The meta device has no storage, so its dtype is irrelevant; keep float32 there.
    dtype = torch.float32 if args.device == "meta" else getattr(torch, args.dtype)
    counts = count_all(small=args.small, device=args.device, dtype=dtype)
    print(json.dumps({"device": args.device, "dtype": str(dtype), "small": args.small, "params": counts}))


if __name__ == "__main__":
    main()


def build_clip_scorer_model(device: torch.device, *, small: bool = False, seed: int = 0):
    """CLIP ViT-L/14 (openai/clip-vit-large-patch14: text 768 x 12, vision 1024 x 24, patch 14, 224 px,
    projection 768) with random weights, and a processor: the scoring model of generate's CLIP check."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    if small:
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=8)
        image_size, projection = 32, 32
    else:
        text = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
        vision = dict(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14
        )
        image_size, projection = 224, 768
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=77, hidden_act="quick_gelu", **text),
        vision_config=dict(image_size=image_size, hidden_act="quick_gelu", **vision),
        projection_dim=projection,
    )
    with torch.device(device):
        model = CLIPModel(config)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        ),
        tokenizer=tokenizer,
    )
    return model, processor
