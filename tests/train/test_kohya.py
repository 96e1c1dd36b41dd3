"""The kohya file (train records what it needs per saved step, select writes it): read back by diffusers' own
kohya/SGM loader, its keys checked against every module of the original SDXL UNet, its metadata this run's."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from storyboard.dataset import read_manifest
from storyboard.models.loading import load_pipeline
from storyboard.select.sweep import export_lora
from storyboard.train.export import lora_state
from storyboard.train.kohya import kohya_state, lora_card
from storyboard.train.lora import train_lora
from storyboard.train.sgm import SgmNameError, sgm_module_name
from storyboard.train.steps import read_steps

REPO = Path(__file__).resolve().parents[2]
ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
# every kind of module kohya's SDXL LoRA (with conv layers) trains: attention, feed-forward, projections, resnets,
# down- and upsamplers
WIDE = [*ATTENTION, "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2", "time_emb_proj"]
WIDE += ["conv_shortcut", "conv"]


@pytest.fixture(
    scope="module",
    params=[{}, {"target_modules": WIDE, "text_encoder_lora": True, "text_encoder_learning_rate": 0.02}],
    ids=["attention", "resnets+text"],
)
def trained(request, tmp_path_factory, tiny_dataset, tiny_settings, tiny_models, cpu):
    """A LoRA of rank 4, alpha 8 (so the file's alpha is not the rank), trained far enough to move every weight."""
    tmp = tmp_path_factory.mktemp("kohya")
    settings = tiny_settings.train.model_copy(
        update={"max_steps": 4, "checkpoint_every": 100, "rank": 4, "alpha": 8, "learning_rate": 0.02} | request.param
    )
    out = tmp / "lora"
    summary = _train_and_select(tmp, out, tmp / "ckpt", settings, tiny_dataset, tiny_settings, tiny_models, cpu)
    return out, settings, summary


def _train_and_select(tmp, out, ckpt, settings, tiny_dataset, tiny_settings, tiny_models, cpu) -> dict:
    """Train into models/steps, then write the final step's LoRA as the select stage does with select.step: last."""
    card = lora_card(tiny_settings)
    summary = train_lora(
        tiny_dataset,
        tmp / "steps",
        live_dir=tmp / "live",
        checkpoint_root=ckpt,
        settings=settings,
        models=tiny_models,
        device=cpu,
        card=card,
    )
    saved = read_steps(tmp / "steps")
    export_lora(saved, saved.steps[-1].step, out)
    return summary


def _fused(tiny_models, cpu, folder: Path | None, weight_name: str | None) -> dict[str, dict[str, torch.Tensor]]:
    pipe = load_pipeline(tiny_models, cpu)
    if folder is not None:
        pipe.load_lora_weights(str(folder), weight_name=weight_name)
        pipe.fuse_lora(components=["unet", "text_encoder", "text_encoder_2"])
        pipe.unload_lora_weights()  # the fused weights stay
    return {name: getattr(pipe, name).state_dict() for name in ("unet", "text_encoder", "text_encoder_2")}


def test_diffusers_fuses_the_kohya_file_into_the_same_weights(trained, tiny_models, cpu):
    out, settings, _ = trained
    base = _fused(tiny_models, cpu, None, None)
    ours = _fused(tiny_models, cpu, out, "pytorch_lora_weights.safetensors")
    kohya = _fused(tiny_models, cpu, out, "lora_kohya.safetensors")
    for model in base:
        assert ours[model].keys() == kohya[model].keys() == base[model].keys()
        moved = max((ours[model][k] - base[model][k]).abs().max().item() for k in base[model])
        differ = max((ours[model][k] - kohya[model][k]).abs().max().item() for k in base[model])
        trained_model = model == "unet" or settings.text_encoder_lora
        assert moved > 1e-2 if trained_model else moved == 0, f"{model}: the LoRA moved the weights by {moved}"
        assert differ < 1e-3, f"{model}: fused from the kohya file, {differ} off the diffusers file's"


def test_kohya_keys_carry_kohyas_names_and_alpha(trained):
    out, settings, _ = trained
    kohya = load_file(out / "lora_kohya.safetensors")
    names = {k.split(".")[0] for k in kohya}
    assert kohya.keys() == {f"{n}.{part}" for n in names for part in ("lora_down.weight", "lora_up.weight", "alpha")}
    assert all(kohya[f"{n}.alpha"].item() == 8.0 and kohya[f"{n}.lora_down.weight"].shape[0] == 4 for n in names)
    prefixes = {n.split("_")[1] for n in names}
    assert prefixes == ({"unet", "te1", "te2"} if settings.text_encoder_lora else {"unet"})
    # original SDXL block names, never diffusers'
    assert all(("input_blocks" in n or "middle_block" in n or "output_blocks" in n) for n in names if "_unet_" in n)
    assert not any(b in n for n in names for b in ("down_blocks", "mid_block", "up_blocks"))
    if settings.text_encoder_lora:
        assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj" in names
        assert "lora_te2_text_model_encoder_layers_0_self_attn_q_proj" in names


def test_metadata_is_this_runs(trained, tiny_dataset, tiny_settings, tiny_models):
    out, settings, summary = trained
    path = out / "lora_kohya.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert all(isinstance(v, str) for v in meta.values())
    character = tiny_settings.character
    assert meta["ss_network_module"] == "networks.lora"
    assert (meta["ss_network_dim"], float(meta["ss_network_alpha"])) == ("4", 8.0)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_v2"] == "False"
    assert meta["ss_sd_model_name"] == Path(tiny_models.base).name
    assert meta["ss_resolution"] == "(64, 64)" and meta["modelspec.resolution"] == "64x64"
    assert meta["ss_steps"] == meta["ss_max_train_steps"] == "4"
    assert meta["ss_num_train_images"] == str(summary["images"]) == "6"
    assert float(meta["ss_learning_rate"]) == settings.learning_rate
    assert meta["ss_output_name"] == character.trigger
    assert character.trigger in meta["ss_training_comment"] and "tiny profile" in meta["ss_training_comment"]
    # the captions' tags, counted here from the manifest the way kohya counts them
    captions = [r.caption for r in read_manifest(tiny_dataset) if r.status == "ok"]
    counted = Counter(t.strip().lower() for c in captions for t in c.split(",") if t.strip())
    assert json.loads(meta["ss_tag_frequency"]) == {tiny_dataset.name: dict(counted)}
    assert counted[character.trigger] == len(captions) == 6
    buckets = json.loads(meta["ss_bucket_info"])["buckets"]
    assert sum(b["count"] for b in buckets.values()) == 6
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert meta["modelspec.sai_model_spec"] == "1.0.1" and meta["modelspec.prediction_type"] == "epsilon"
    assert meta["modelspec.trigger_phrase"] == character.trigger
    assert character.name in meta["modelspec.title"] and meta["modelspec.description"].startswith(character.description)
    # additional-networks' hash: SHA-256 of the tensor bytes
    data = path.read_bytes()
    assert meta["sshs_model_hash"] == hashlib.sha256(data[8 + int.from_bytes(data[:8], "little") :]).hexdigest()


def test_a_rerun_writes_the_same_file(trained, tiny_dataset, tiny_settings, tiny_models, cpu, tmp_path):
    """No clock or random id in the file: rerunning the finished run writes the same tensors and metadata (the
    bytes may differ: safetensors writes metadata in no fixed order)."""
    out, settings, _ = trained
    again = tmp_path / "lora"
    summary = _train_and_select(
        tmp_path, again, out.parent / "ckpt", settings, tiny_dataset, tiny_settings, tiny_models, cpu
    )
    assert summary["resumed_from"] == 4  # from the first run's final checkpoint: nothing trained again
    files = [folder / "lora_kohya.safetensors" for folder in (out, again)]
    first, second = (load_file(f) for f in files)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    metadata = []
    for file in files:
        with safe_open(str(file), "pt") as f:
            metadata.append(f.metadata())
    assert metadata[0] == metadata[1]


# --- every key against the original SDXL UNet's module names --------------------------------------------------


def _sdxl_unet_config() -> tuple[dict, int]:
    """SDXL base's published UNet config and parameter count, as the benchmarks type them."""
    spec = importlib.util.spec_from_file_location("sdxl_from_config", REPO / "bench" / "sdxl_from_config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.UNET_CONFIG), module.EXPECTED_PARAMS["unet"]


def _sgm_modules(model_channels=320, channel_mult=(1, 2, 4), num_res_blocks=2, depth=(0, 2, 10), middle=10):
    """Every module with weights of the original SDXL UNet (sgm's openaimodel.UNetModel, sd_xl_base.yaml's
    numbers), in the order its constructor appends them."""
    names = ["time_embed.0", "time_embed.2", "label_emb.0.0", "label_emb.0.2", "input_blocks.0.0", "out.0", "out.2"]

    def resblock(prefix, ch_in, ch_out):
        names.extend(f"{prefix}.{p}" for p in ("in_layers.0", "in_layers.2", "emb_layers.1"))
        names.extend(f"{prefix}.{p}" for p in ("out_layers.0", "out_layers.3"))
        names.extend([f"{prefix}.skip_connection"] if ch_in != ch_out else [])

    def transformer(prefix, blocks):
        names.extend(f"{prefix}.{p}" for p in ("norm", "proj_in", "proj_out"))
        for b in range(blocks):
            block = f"{prefix}.transformer_blocks.{b}"
            names.extend(f"{block}.{p}" for p in ("norm1", "norm2", "norm3", "ff.net.0.proj", "ff.net.2"))
            names.extend(f"{block}.{a}.{p}" for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out.0"))

    ch, chans, index = model_channels, [model_channels], 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            resblock(f"input_blocks.{index}.0", ch, mult * model_channels)
            ch = mult * model_channels
            if depth[level]:
                transformer(f"input_blocks.{index}.1", depth[level])
            chans.append(ch)
            index += 1
        if level != len(channel_mult) - 1:
            names.append(f"input_blocks.{index}.0.op")
            chans.append(ch)
            index += 1
    resblock("middle_block.0", ch, ch)
    transformer("middle_block.1", middle)
    resblock("middle_block.2", ch, ch)
    index = 0
    for level, mult in reversed(list(enumerate(channel_mult))):
        for i in range(num_res_blocks + 1):
            resblock(f"output_blocks.{index}.0", ch + chans.pop(), mult * model_channels)
            ch = mult * model_channels
            if depth[level]:
                transformer(f"output_blocks.{index}.1", depth[level])
            if level and i == num_res_blocks:
                names.append(f"output_blocks.{index}.{2 if depth[level] else 1}.conv")
            index += 1
    return names


@pytest.fixture(scope="module")
def sdxl_unet():
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    config, params = _sdxl_unet_config()
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    assert sum(p.numel() for p in unet.parameters()) == params  # the released SDXL UNet, not a look-alike
    return unet


@pytest.fixture(scope="module")
def sgm_to_diffusers(sdxl_unet) -> dict[str, str]:
    """Original module name -> diffusers module, as diffusers' single-file loader converts SDXL checkpoints."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    modules = _sgm_modules()
    checkpoint = {f"model.diffusion_model.{m}.{p}": m for m in modules for p in ("weight", "bias")}
    converted = convert_ldm_unet_checkpoint(checkpoint, dict(sdxl_unet.config))
    mapping = {source: key.rsplit(".", 1)[0] for key, source in converted.items()}
    assert len(mapping) == len(modules) == len(set(mapping.values()))  # one to one
    with_weights = {name for name, m in sdxl_unet.named_modules() if getattr(m, "weight", None) is not None}
    assert set(mapping.values()) == with_weights  # the list is the whole SDXL UNet
    return mapping


def test_every_key_is_one_sgm_module_and_every_trained_module_has_its_key(sdxl_unet, sgm_to_diffusers):
    from peft import LoraConfig
    from peft.tuners.lora import LoraLayer

    # every Linear and Conv2d of the UNet, the blocks' and the top-level ones (conv_in, embeddings, conv_out)
    layers = {n for n, m in sdxl_unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    targets = [*WIDE, "conv_in", "conv_out", "linear_1", "linear_2"]
    sdxl_unet.add_adapter(LoraConfig(r=1, lora_alpha=2, target_modules=targets))
    trained = set()
    for name, module in sdxl_unet.named_modules():
        if isinstance(module, LoraLayer):
            module.lora_A.to_empty(device="cpu")
            module.lora_B.to_empty(device="cpu")
            trained.add(name)
    state = kohya_state({f"unet.{k}": v for k, v in lora_state(sdxl_unet, 2, 1).items()}, sdxl_unet.config, alpha=2)

    by_kohya_name = defaultdict(list)
    for sgm in sgm_to_diffusers:
        by_kohya_name["lora_unet_" + sgm.replace(".", "_")].append(sgm)
    names = {k.split(".")[0] for k in state}
    unmatched = [n for n in names if len(by_kohya_name[n]) != 1]
    assert not unmatched, f"keys that name no module, or several, of the original SDXL UNet: {unmatched[:5]}"
    assert {sgm_to_diffusers[by_kohya_name[n][0]] for n in names} == trained
    assert trained == layers and len(state) == 3 * len(trained)


def test_the_rule_places_sdxls_blocks_as_the_original_does(sdxl_unet):
    config = sdxl_unet.config
    assert sgm_module_name("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k", config) == (
        "input_blocks.4.1.transformer_blocks.0.attn1.to_k"
    )
    assert sgm_module_name("mid_block.attentions.0.proj_in", config) == "middle_block.1.proj_in"
    assert sgm_module_name("up_blocks.0.attentions.2.proj_out", config) == "output_blocks.2.1.proj_out"
    assert sgm_module_name("up_blocks.1.upsamplers.0.conv", config) == "output_blocks.5.2.conv"
    with pytest.raises(SgmNameError, match="not a module"):
        sgm_module_name("controlnet_down_blocks.0", config)


def test_the_same_tensors_and_metadata_give_the_same_file_bytes(tmp_path):
    """safetensors orders the metadata by a per-process hash seed: sorted, two writes are one file (one DVC hash)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from storyboard.train.kohya import sort_metadata

    state = {"a.weight": torch.ones(2, 3), "b.weight": torch.zeros(4)}
    metadata = {f"ss_key_{i:02d}": f"value {i} é" for i in range(40)}
    written = []
    for name in ("one", "two"):
        path = tmp_path / f"{name}.safetensors"
        save_file(state, path, metadata=metadata)
        sort_metadata(path)
        written.append(path.read_bytes())
        with safe_open(path, "pt") as f:
            assert f.metadata() == metadata
        assert all(torch.equal(v, state[k]) for k, v in load_file(path).items())
    assert written[0] == written[1]
    size = int.from_bytes(written[0][:8], "little")
    keys = list(json.loads(written[0][8 : 8 + size])["__metadata__"])
    assert keys == sorted(keys)
