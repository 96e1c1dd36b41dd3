"""The tiny profile: small random-weight models of exactly the classes SDXL and FLUX.2 klein use, built offline.

They are saved with `save_pretrained` into a local folder and then loaded by the same loading code as the real
hub models, so every code path runs on a CPU in CI. Their outputs are noise: they check plumbing, never
quality. The build is deterministic for a seed, so the pipeline's outputs are reproducible across machines
with the same torch build. The InsightFace backend gets a random-weight pack in buffalo_l's layout
(storyboard/models/insightface_pack.py) beside them.
"""

from __future__ import annotations

import logging

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from storyboard import TINY_NOTICE
from storyboard.fsutil import atomic_path

from storyboard.models import bpe
from storyboard.models.insightface_pack import ensure_pack
from storyboard.settings import ModelSet, TinyModels

logger = logging.getLogger(__name__)

# Bump when the architecture below changes, so stale folders are rebuilt instead of half-matching.
BUILD_VERSION = 6

# Sizes: the smallest that keep every SDXL mechanism (two text encoders, pooled + time ids conditioning,
# cross-attention blocks, a 2-level VAE) while a 64 px frame takes milliseconds on a CPU.
TEXT_DIM = 32  # hidden size of both text encoders; the UNet sees their concatenation
CROSS_DIM = 2 * TEXT_DIM
# The file names of the real few-step LoRAs, so the tiny ones go through the same loading call
TINY_SAMPLER_WEIGHTS = {
    "lightning_lora": "sdxl_lightning_4step_lora.safetensors",
    "hyper_sd_lora": "Hyper-SDXL-8steps-CFG-lora.safetensors",
}
TIME_DIM = 8  # addition_time_embed_dim: 6 time ids -> 48 features
IMAGE_SIZE = 32  # CLIP vision input for the IP-Adapter encoder and the scoring model
NATIVE_RESOLUTION = 64  # unet sample_size (32) x VAE scale (2)
IP_TOKENS = 4  # image tokens per IP-Adapter reference, as in the released SDXL adapters
FACEID_EMBED_DIM = 128  # the FaceID adapter's input: an embedding of the tiny profile's face backend (dlib)
FACEID_LORA_RANK = 4
FACEID_LORA_STRENGTH = 4.0
# FLUX.2 klein (generate@multiref): the pipeline stacks the text encoder's hidden states 9, 18 and 27, so the tiny
# Qwen3 keeps 28 layers (of a tiny width); the transformer reads their concatenation.
KLEIN_TEXT_DIM = 16
KLEIN_TEXT_LAYERS = 28
KLEIN_VOCAB = 512
# Qwen3's chat template as the pipeline applies it (one user turn, generation prompt, thinking turned off).
QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
# What the tiny byte-level BPE is trained on: words the frame prompts use, so they tokenize into a few merges.
KLEIN_CORPUS = (
    "a cheerful folk trickster with a thin black moustache, a patched striped robe and a fur-trimmed conical hat "
    "greets the sunrise on the steppe, walks into a busy bazaar, haggles with a spice seller, laughs, rides a horse "
    "close-up medium wide shot, standing walking running sitting waving pointing, cinematic storyboard frame, "
    "consistent character design, detailed illustration, night village market mountains river"
)


def _tokenizers(folder: Path) -> None:
    """SDXL's two tokenizers, the real CLIP BPE (storyboard/models/bpe.py): token counts in CI are the real ones."""
    for sub, pad in (("tokenizer", bpe.EOS), ("tokenizer_2", bpe.SDXL_PAD_2)):
        tok = bpe.clip_tokenizer(pad_token=pad)
        # A constructor that silently ignores its vocab yields 2 tokens; check before anything trains on it.
        ids = tok("a photo of a cat").input_ids
        if len(tok) != bpe.VOCAB_SIZE or ids != [49406, 320, 1125, 539, 320, 2368, 49407]:
            raise RuntimeError(f"tiny CLIP tokenizer is broken: vocab {len(tok)}, ids {ids}")
        tok.save_pretrained(folder / sub)


def _text_config(**extra):
    from transformers import CLIPTextConfig

    vocab_size = bpe.VOCAB_SIZE
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=bpe.MAX_TOKENS,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        hidden_act="gelu",
        **extra,
    )


def _vision_config(projection_dim: int):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        projection_dim=projection_dim,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=8,
    )


def _image_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def _build_sdxl(folder: Path) -> object:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    unet = UNet2DConditionModel(
        sample_size=NATIVE_RESOLUTION // 2,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 1),
        cross_attention_dim=CROSS_DIM,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_DIM,
        projection_class_embeddings_input_dim=6 * TIME_DIM + TEXT_DIM,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=NATIVE_RESOLUTION,
        scaling_factor=0.13025,  # SDXL's value, so latent scaling code paths are the real ones
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
        steps_offset=1,
    )
    _tokenizers(folder / "_tok")
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(_text_config()),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(projection_dim=TEXT_DIM)),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "_tok" / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(folder / "_tok" / "tokenizer_2"),
        unet=unet,
        scheduler=scheduler,
    )
    pipe.save_pretrained(folder / "sdxl")
    return unet


def _build_controlnet(unet, folder: Path) -> None:
    from diffusers import ControlNetModel

    # A 2-level VAE downsamples by 2, so the condition embedding must downsample by 2 as well.
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    controlnet.save_pretrained(folder / "controlnet")


def _build_ip_adapter(unet, folder: Path) -> None:
    """An IP-Adapter (plain image projection) in the layout `load_ip_adapter` reads: weights + image_encoder/."""
    from transformers import CLIPVisionModelWithProjection

    embed_dim = 32
    root = folder / "ip_adapter"
    CLIPVisionModelWithProjection(_vision_config(projection_dim=embed_dim)).save_pretrained(root / "image_encoder")
    _image_processor().save_pretrained(root / "image_encoder")
    tensors = {
        "image_proj.proj.weight": _linear_weight(CROSS_DIM * IP_TOKENS, embed_dim),
        "image_proj.proj.bias": torch.zeros(CROSS_DIM * IP_TOKENS),
        "image_proj.norm.weight": torch.ones(CROSS_DIM),
        "image_proj.norm.bias": torch.zeros(CROSS_DIM),
        **_ip_attention_weights(unet),
    }
    save_file(tensors, root / "ip-adapter.safetensors")


def _build_faceid_adapter(unet, folder: Path) -> None:
    """An IP-Adapter FaceID: an MLP from a face-recognition embedding to IP_TOKENS tokens, no image encoder.

    Laid out like h94's FaceID checkpoints, so diffusers takes it for one: `proj.0`, `proj.2` and `norm` (loaded
    as `IPAdapterFaceIDImageProjection`), the to_k_ip/to_v_ip pairs, and a LoRA on every attention processor
    (`to_{q,k,v,out}_lora`, loaded as a live peft adapter `faceid_0`). The input size is the tiny profile's face
    backend's (dlib, 128-d); the real SDXL one reads InsightFace's 512-d ArcFace embeddings.
    """
    inner = 2 * FACEID_EMBED_DIM  # the released checkpoints' MLP is twice as wide as its input
    tensors = {
        "image_proj.proj.0.weight": _linear_weight(inner, FACEID_EMBED_DIM),
        "image_proj.proj.0.bias": torch.zeros(inner),
        "image_proj.proj.2.weight": _linear_weight(CROSS_DIM * IP_TOKENS, inner),
        "image_proj.proj.2.bias": torch.zeros(CROSS_DIM * IP_TOKENS),
        "image_proj.norm.weight": torch.ones(CROSS_DIM),
        "image_proj.norm.bias": torch.zeros(CROSS_DIM),
        **_ip_attention_weights(unet),
    }
    for index, name in enumerate(unet.attn_processors):
        hidden = attention_hidden_size(unet.config, name)
        context = hidden if name.endswith("attn1.processor") else CROSS_DIM
        for projection, in_features in (("q", hidden), ("k", context), ("v", context), ("out", hidden)):
            tensors[f"ip_adapter.{index}.to_{projection}_lora.down.weight"] = _linear_weight(
                FACEID_LORA_RANK, in_features
            )
            # Stronger than a default layer, so a test can tell this LoRA on from off in the tiny frames.
            up = FACEID_LORA_STRENGTH * _linear_weight(hidden, FACEID_LORA_RANK)
            tensors[f"ip_adapter.{index}.to_{projection}_lora.up.weight"] = up
    root = folder / "ip_adapter_faceid"
    root.mkdir()
    save_file(tensors, root / "ip-adapter-faceid.safetensors")


def _build_sampler_lora(unet, folder: Path, weight: str) -> None:
    """A random few-step LoRA in the layout the real ones ship in (kohya's: `lora_unet_<module>` with lora_down,
    lora_up and alpha) over the UNet's attention projections, which diffusers' loader converts as it does theirs."""
    tensors, rank = {}, 4
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v", "0"):
            if ".attn" not in name:
                continue
            key = "lora_unet_" + name.replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = _linear_weight(rank, module.in_features)
            tensors[f"{key}.lora_up.weight"] = _linear_weight(module.out_features, rank) * 0.1
            tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / weight))


def _linear_weight(out_features: int, in_features: int) -> torch.Tensor:
    # At the scale of a default-initialised linear layer (not near zero), so an adapter's input visibly moves
    # the output and tests can tell an applied adapter from an ignored one.
    return torch.randn(out_features, in_features) / in_features**0.5


def _ip_attention_weights(unet) -> dict[str, torch.Tensor]:
    """The to_k_ip/to_v_ip pair of every cross-attention processor, numbered like the released checkpoints:
    processors are counted in unet.attn_processors order and the cross-attention ones are the odd ones."""
    tensors = {}
    for index, name in enumerate(unet.attn_processors):
        if name.endswith("attn1.processor"):
            continue
        hidden = attention_hidden_size(unet.config, name)
        tensors[f"ip_adapter.{index}.to_k_ip.weight"] = _linear_weight(hidden, CROSS_DIM)
        tensors[f"ip_adapter.{index}.to_v_ip.weight"] = _linear_weight(hidden, CROSS_DIM)
    return tensors


def attention_hidden_size(unet_config, processor_name: str) -> int:
    """The channel count of the block an attention processor sits in: the width of its IP-Adapter projections."""
    channels = unet_config.block_out_channels
    if processor_name.startswith("mid_block"):
        return channels[-1]
    block = int(processor_name.split(".")[1])
    if processor_name.startswith("up_blocks"):
        return list(reversed(channels))[block]
    return channels[block]


def _build_clip(folder: Path) -> None:
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer

    config = CLIPConfig(
        text_config=_text_config().to_dict(),
        vision_config=_vision_config(projection_dim=32).to_dict(),
        projection_dim=32,
    )
    CLIPModel(config).save_pretrained(folder / "clip")
    processor = CLIPProcessor(
        image_processor=_image_processor(), tokenizer=CLIPTokenizer.from_pretrained(folder / "_tok" / "tokenizer")
    )
    processor.save_pretrained(folder / "clip")


def _build_likeness(folder: Path) -> None:
    """A DINOv2 (generate's likeness check), with the image processor class the hub's dinov2-base ships."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=IMAGE_SIZE, patch_size=8
    )
    Dinov2Model(config).save_pretrained(folder / "likeness")
    size = {"shortest_edge": IMAGE_SIZE}
    BitImageProcessor(size=size, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(
        folder / "likeness"
    )


def detector_vocab() -> dict[str, int]:
    """A WordPiece vocab for Grounding DINO's BERT tokenizer: BERT's specials, every letter as a word start and as a
    continuation, so any lower-case prompt tokenizes (letter by letter) without [UNK]."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "-", "'", *letters, *(f"##{c}" for c in letters)]
    return {token: i for i, token in enumerate(tokens)}


def build_detector(target: Path) -> None:
    """A Grounding DINO of the transformers class evaluate loads: Swin backbone, BERT text encoder, 2 decoder
    layers (the fewest whose box heads tie). Random weights: its boxes are arbitrary, often none pass the
    threshold, so the whole-frame fallback runs too."""
    from transformers import (
        BertConfig,
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    vocab = detector_vocab()
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=256)
    if tokenizer.tokenize("ab.") != ["a", "##b", "."]:  # a constructor ignoring its vocab would give [UNK]s
        raise RuntimeError(f"tiny Grounding DINO tokenizer is broken: {tokenizer.tokenize('ab.')}")
    backbone = SwinConfig(
        image_size=NATIVE_RESOLUTION,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=4,
        out_features=["stage2", "stage3", "stage4"],
    )
    text = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    config = GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=20,
        encoder_n_points=2,
        decoder_n_points=2,
    )
    GroundingDinoForObjectDetection(config).save_pretrained(target)
    # 128 px in: the 5th feature level (stride 64) keeps 2x2 positions, which its group norm needs.
    images = GroundingDinoImageProcessor(size={"shortest_edge": 128, "longest_edge": 256})
    GroundingDinoProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(target)


def qwen_tokenizer(folder: Path):
    """A Qwen2 tokenizer (byte-level BPE, Qwen's special tokens and chat template), trained offline on a few lines:
    the real vocabulary is not on this machine, and the pipeline only needs its class and its template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    bpe_model = Tokenizer(models.BPE())
    bpe_model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe_model.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=KLEIN_VOCAB,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe_model.train_from_iterator([KLEIN_CORPUS], trainer)
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=bpe_model, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None, bos_token=None
    )
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    # A tokenizer that lost its merges would spell every word byte by byte.
    if len(tokenizer("a busy bazaar").input_ids) > 6:
        raise RuntimeError(f"tiny Qwen tokenizer is broken: {tokenizer.tokenize('a busy bazaar')}")
    tokenizer.save_pretrained(folder)
    return Qwen2TokenizerFast.from_pretrained(folder)


def build_flux2_klein(folder: Path, tokenizer_dir: Path) -> None:
    """FLUX.2 klein in the hub's layout (model_index.json, transformer/ vae/ text_encoder/ tokenizer/ scheduler/):
    Flux2Transformer2DModel, AutoencoderKLFlux2 (2 levels: 64 px frames), a Qwen3ForCausalLM text encoder, the
    scheduler settings of the released model, step-distilled (is_distilled: no classifier-free guidance)."""
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = qwen_tokenizer(tokenizer_dir)
    text_encoder = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=KLEIN_TEXT_DIM,
            intermediate_size=2 * KLEIN_TEXT_DIM,
            num_hidden_layers=KLEIN_TEXT_LAYERS,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    latent_channels = 4
    transformer = Flux2Transformer2DModel(
        in_channels=4 * latent_channels,  # the pipeline packs 2x2 latent patches
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=3 * KLEIN_TEXT_DIM,  # three hidden states, concatenated
        timestep_guidance_channels=16,
        axes_dims_rope=(2, 2, 2, 2),  # sums to attention_head_dim
        guidance_embeds=False,
    )
    vae = AutoencoderKLFlux2(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=NATIVE_RESOLUTION,
    )
    save_flux2_klein(folder, transformer=transformer, text_encoder=text_encoder, vae=vae, tokenizer=tokenizer)


def flux2_klein_pipeline(*, transformer, text_encoder, vae, tokenizer):
    """FLUX.2 klein's parts as one pipeline, with the released model's scheduler, step-distilled (the tiny twin
    here; bench/bench_reference.py's full-size one, which it renders with in memory)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline

    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
        time_shift_type="exponential",
    )
    return Flux2KleinPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=True,
    )


def save_flux2_klein(folder: Path, **parts) -> None:
    """Save FLUX.2 klein's parts (`flux2_klein_pipeline`'s arguments) as the hub lays them out."""
    flux2_klein_pipeline(**parts).save_pretrained(folder)


def _model_set(root: Path, tiny: TinyModels) -> ModelSet:
    return ModelSet(
        base=str(root / "sdxl"),
        ip_adapter=str(root / "ip_adapter"),
        ip_adapter_subfolder="",
        ip_adapter_weight="ip-adapter.safetensors",
        ip_adapter_image_encoder="image_encoder",
        faceid_adapter=str(root / "ip_adapter_faceid"),
        faceid_adapter_weight="ip-adapter-faceid.safetensors",
        controlnet=str(root / "controlnet"),
        lightning_lora=str(root / "lightning"),
        lightning_lora_weight=TINY_SAMPLER_WEIGHTS["lightning_lora"],
        hyper_sd_lora=str(root / "hyper_sd"),
        hyper_sd_lora_weight=TINY_SAMPLER_WEIGHTS["hyper_sd_lora"],
        multiref=str(root / "flux2_klein"),
        clip=str(root / "clip"),
        likeness=str(root / "likeness"),
        detector=str(root / "detector"),
        face_backend=tiny.face_backend,
        # The random-weight InsightFace pack: models.tiny.face_backend: insightface, and evaluate's backend when that
        # is the other one (evaluate.face_backend: auto with generate.reference: faceid).
        face_model_root=str(root / "insightface"),
    )


def tiny_model_set(tiny: TinyModels) -> ModelSet:
    """Build the tiny models once per (seed, build version) and return where they are."""
    # Relative to the repo root as params give it, so outputs and metrics don't name this machine's paths.
    root = Path(tiny.root) / f"v{BUILD_VERSION}-seed{tiny.seed}"
    if not (root / "BUILT.json").exists():
        build_tiny_models(root, seed=tiny.seed)
    # Beside the torch models but versioned on its own: tiny folders built before it gain it without a full rebuild.
    ensure_pack(root / "insightface", seed=tiny.seed)
    return _model_set(root, tiny)


def build_tiny_models(root: Path, *, seed: int) -> None:
    """Write every tiny model under `root` (atomically: a killed build leaves no folder behind)."""
    logger.info("building tiny random-weight models (seed %d) in %s", seed, root)
    torch.manual_seed(seed)
    with atomic_path(root) as folder:
        folder.mkdir(parents=True)
        unet = _build_sdxl(folder)
        _build_controlnet(unet, folder)
        _build_ip_adapter(unet, folder)
        _build_clip(folder)
        _build_faceid_adapter(unet, folder)
        _build_sampler_lora(unet, folder / "lightning", TINY_SAMPLER_WEIGHTS["lightning_lora"])
        _build_sampler_lora(unet, folder / "hyper_sd", TINY_SAMPLER_WEIGHTS["hyper_sd_lora"])
        _build_likeness(folder)
        build_detector(folder / "detector")
        build_flux2_klein(folder / "flux2_klein", folder / "_tok" / "qwen")
        (folder / "BUILT.json").write_text(
            json.dumps({"seed": seed, "build_version": BUILD_VERSION, "notice": TINY_NOTICE}, indent=2) + "\n"
        )
        (folder / "README.txt").write_text(TINY_NOTICE + "\n")
        shutil.rmtree(folder / "_tok")
