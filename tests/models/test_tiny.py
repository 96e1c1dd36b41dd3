"""The tiny profile's models: real classes, built offline and deterministically, loaded by the normal code."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from storyboard.models.faces import DlibFaceBackend
from storyboard.models.loading import (
    attach_ip_adapter,
    faceid_input_size,
    faceid_weights_input_size,
    load_multiref_pipeline,
    load_pipeline,
    native_resolution,
    with_controlnet,
)
from storyboard.models.tiny import build_tiny_models


def test_tiny_models_load_through_from_pretrained(tiny_models, cpu):
    from diffusers import StableDiffusionXLControlNetPipeline, StableDiffusionXLPipeline, UNet2DConditionModel

    pipe = load_pipeline(tiny_models, cpu)
    assert isinstance(pipe, StableDiffusionXLPipeline)
    assert isinstance(pipe.unet, UNet2DConditionModel)
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert native_resolution(pipe) == 64
    # the real CLIP BPE (ids as openai/clip-vit-large-patch14's), not a 2-token stub; the second pads with "!"
    assert len(pipe.tokenizer) == len(pipe.tokenizer_2) == 49408
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert (pipe.tokenizer.pad_token_id, pipe.tokenizer_2.pad_token_id) == (49407, 0)
    cn = with_controlnet(pipe, tiny_models, cpu)
    assert isinstance(cn, StableDiffusionXLControlNetPipeline)
    attach_ip_adapter(cn, tiny_models, 0.5)
    assert cn.image_encoder is not None and cn.unet is pipe.unet  # the same modules, not copies
    assert any("IPAdapter" in type(p).__name__ for p in cn.unet.attn_processors.values())


def test_tiny_flux2_klein_has_the_released_classes_and_loads_through_from_pretrained(tiny_models, cpu):
    from diffusers import AutoencoderKLFlux2, Flux2KleinPipeline, Flux2Transformer2DModel
    from transformers import Qwen2TokenizerFast, Qwen3ForCausalLM

    pipe = load_multiref_pipeline(tiny_models, cpu)
    assert isinstance(pipe, Flux2KleinPipeline) and pipe.config.is_distilled
    assert isinstance(pipe.transformer, Flux2Transformer2DModel) and isinstance(pipe.vae, AutoencoderKLFlux2)
    assert isinstance(pipe.text_encoder, Qwen3ForCausalLM) and isinstance(pipe.tokenizer, Qwen2TokenizerFast)
    assert native_resolution(pipe) == 64
    # the pipeline stacks hidden states 9, 18 and 27, through Qwen's chat template with thinking off
    assert pipe.text_encoder.config.num_hidden_layers >= 28
    turn = [{"role": "user", "content": "a busy bazaar"}]
    chat = pipe.tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert chat == "<|im_start|>user\na busy bazaar<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    embeds, _ = pipe.encode_prompt(["a busy bazaar"], device=cpu.device)
    assert embeds.shape == (1, 512, pipe.transformer.config.joint_attention_dim)


def test_tiny_faceid_adapter_loads_as_faceid(tiny_models, cpu):
    from diffusers.models.embeddings import IPAdapterFaceIDImageProjection

    # its input size is read from the weights file before any model loads: the tiny profile's dlib embeddings
    assert faceid_weights_input_size(tiny_models) == DlibFaceBackend.embedding_size == 128
    pipe = with_controlnet(load_pipeline(tiny_models, cpu), tiny_models, cpu)
    attach_ip_adapter(pipe, tiny_models, 0.5, faceid=True)
    (projection,) = pipe.unet.encoder_hid_proj.image_projection_layers
    assert isinstance(projection, IPAdapterFaceIDImageProjection)
    assert faceid_input_size(pipe) == 128
    assert pipe.image_encoder is None  # FaceID reads embeddings: no CLIP image encoder
    assert list(pipe.unet.peft_config) == ["faceid_0"]  # its LoRA, live, as diffusers loads h94's checkpoints


def test_tiny_pipeline_renders_and_is_seeded(tiny_models, cpu):
    pipe = load_pipeline(tiny_models, cpu)

    def render(seed):
        g = torch.Generator().manual_seed(seed)
        return pipe("a man", num_inference_steps=2, generator=g, output_type="np").images[0]

    a, b, c = render(1), render(1), render(2)
    assert a.shape == (64, 64, 3)
    assert (a == b).all()
    assert not (a == c).all()


def test_build_is_deterministic_and_marked_as_tiny(tmp_path):
    build_tiny_models(tmp_path / "a", seed=3)
    build_tiny_models(tmp_path / "b", seed=3)
    build_tiny_models(tmp_path / "c", seed=4)
    weights = "sdxl/unet/diffusion_pytorch_model.safetensors"
    a, b, c = (load_file(tmp_path / x / weights) for x in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    built = json.loads((tmp_path / "a/BUILT.json").read_text())
    assert built["seed"] == 3 and "plumbing" in built["notice"]
    # nothing half-built is left beside the folders
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]
