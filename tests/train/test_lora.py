"""LoRA training on the tiny profile: weights diffusers loads, checkpoints, resume to the same result."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from storyboard.models.loading import attach_lora, load_pipeline
from storyboard.select.sweep import export_lora
from storyboard.train.errors import TrainError
from storyboard.train.lora import train_lora
from storyboard.train.steps import read_steps


def _train(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu, name="run", **overrides):
    """Train, then export the final step as the select stage does with select.step: last."""
    settings = tiny_settings.train.model_copy(update={"max_steps": 6, "checkpoint_every": 2, "rank": 4, **overrides})
    steps, out = tmp_path / name / "steps", tmp_path / name / "lora"
    summary = train_lora(
        tiny_dataset,
        steps,
        live_dir=tmp_path / name / "live",
        checkpoint_root=tmp_path / "ckpt",
        settings=settings,
        models=tiny_models,
        device=cpu,
    )
    saved = read_steps(steps)
    assert saved.training == summary and saved.steps[-1].step == summary["steps"]
    export_lora(saved, saved.steps[-1].step, out)
    return out, summary


def test_trains_saves_and_logs(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu):
    out, summary = _train(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu)
    assert summary["steps"] == 6 and summary["resolution"] == 64 and summary["images"] == 6
    weights = load_file(out / "pytorch_lora_weights.safetensors")
    assert weights and all(k.startswith("unet.") for k in weights)
    ups = [v for k, v in weights.items() if "lora.up" in k or "lora_B" in k]
    assert ups and all(v.abs().sum() > 0 for v in ups), "the up (B) matrices never moved off zero"
    loss = (tmp_path / "run/live/plots/metrics/loss.tsv").read_text().splitlines()
    assert loss[0].split("\t") == ["step", "loss"] and len(loss) == 7
    assert json.loads((out / "training.json").read_text())["final_loss"] > 0


def test_saved_lora_loads_into_the_pipeline_and_changes_it(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu):
    # A high learning rate so the LoRA moves the tiny model visibly within a few steps.
    out, _ = _train(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu, learning_rate=0.05)
    pipe = load_pipeline(tiny_models, cpu)

    def render():
        g = torch.Generator().manual_seed(0)
        return pipe("aldar_kose_man", num_inference_steps=2, generator=g, output_type="np").images[0]

    before = render()
    attach_lora(pipe, out)
    after = render()
    assert abs(after - before).mean() > 1e-3


def test_resume_after_a_kill_reaches_the_same_weights(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu):
    full, _ = _train(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu, name="full", checkpoints_keep=10)
    (run_dir,) = (tmp_path / "ckpt").iterdir()
    assert sorted(p.name for p in run_dir.glob("step-*")) == [f"step-{s:07d}" for s in (2, 4, 6)]
    # A run killed after step 4: only the checkpoints up to 4 exist, and a half-written one is ignored.
    shutil.rmtree(run_dir / "step-0000006")
    (run_dir / "step-0000005").mkdir()  # no COMPLETE marker: not a checkpoint
    resumed, summary = _train(
        tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu, name="resumed", checkpoints_keep=10
    )
    assert summary["resumed_from"] == 4
    # the loss curve covers the whole run: steps 1-4 replayed from the checkpoint, 5-6 trained now
    full_loss = (tmp_path / "full/live/plots/metrics/loss.tsv").read_text().splitlines()
    resumed_loss = (tmp_path / "resumed/live/plots/metrics/loss.tsv").read_text().splitlines()
    assert len(resumed_loss) == len(full_loss) == 7
    assert resumed_loss[1:5] == full_loss[1:5]
    a = load_file(full / "pytorch_lora_weights.safetensors")
    b = load_file(resumed / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_bad_target_modules_named(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu):
    with pytest.raises((TrainError, ValueError), match="nonexistent"):
        _train(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu, target_modules=["nonexistent"])


def test_loss_decreases_on_a_fixed_dataset(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu):
    _, summary = _train(
        tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu,
        max_steps=60, batch_size=4, learning_rate=3e-3, rank=8, checkpoint_every=1000, log_every=50,
    )  # fmt: skip
    rows = (tmp_path / "run/live/plots/metrics/loss.tsv").read_text().splitlines()[1:]
    losses = [float(r.split("\t")[1]) for r in rows]
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < first * 0.97, f"mean loss of the first 20 steps {first:.4f}, of the last 20 {last:.4f}"


def test_alpha_is_folded_into_the_saved_weights(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu):
    """alpha/rank scales the LoRA; the saved file must mean the same to loaders that ignore alpha."""
    a, _ = _train(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu, name="a4", alpha=4, rank=4)
    b, _ = _train(
        tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu, name="a8", alpha=8, rank=4, learning_rate=5e-5
    )
    wa, wb = load_file(a / "pytorch_lora_weights.safetensors"), load_file(b / "pytorch_lora_weights.safetensors")
    up = next(k for k in wa if ".lora_B." in k)
    # same seed, same init; alpha 8 with half the learning rate: gradients scale with alpha, so the up weights of b,
    # unscaled, move like a's; saved (scaled by alpha/rank) they are twice a's, up to Adam's normalisation
    assert wb[up].abs().mean() > wa[up].abs().mean()


def test_aspect_buckets_keep_portraits_portrait(tmp_path, tiny_settings, tiny_models, cpu):
    from PIL import Image

    from storyboard.caption.backends import TemplateBackend
    from storyboard.caption.dataset import caption_images

    raw = tmp_path / "raw"
    raw.mkdir()
    for i, size in enumerate([(64, 128), (64, 128), (128, 64), (96, 96)]):
        Image.new("RGB", size, (40 * i, 90, 200)).save(raw / f"{i}.png")
    settings = tiny_settings.caption.model_copy(update={"min_side": 32})
    caption_images(
        raw,
        tmp_path / "dataset",
        TemplateBackend(settings.template, tiny_settings.character),
        settings,
        tiny_settings.character,
    )
    _, summary = _train(tmp_path, tmp_path / "dataset", tiny_settings, tiny_models, cpu, max_steps=2)
    sizes = {tuple(map(int, k.split("x"))): n for k, n in summary["buckets"].items()}
    assert sum(sizes.values()) == 4
    assert any(w < h for w, h in sizes) and any(w > h for w, h in sizes) and (64, 64) in sizes
    assert all(abs(w * h - 64 * 64) <= 0.15 * 64 * 64 for w, h in sizes)


@pytest.mark.parametrize(
    "options",
    [
        {"snr_gamma": 5.0},
        {"noise_offset": 0.05},
        {"caption_dropout": 0.5},
        {"random_flip": True},
        {"gradient_accumulation_steps": 2},
        {"lr_scheduler": "cosine", "lr_warmup_steps": 2},
        {"dropout": 0.1},
        {"gradient_checkpointing": True},
    ],
    ids=lambda o: ",".join(o),
)
def test_training_options_run_and_change_the_result(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu, options):
    # batch 4: with one sample per step, per-sample loss weights (min-SNR) are a constant factor Adam cancels
    common = {"max_steps": 3, "batch_size": 4}
    plain, _ = _train(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu, name="plain", **common)
    other, _ = _train(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu, name="other", **common, **options)
    a, b = load_file(plain / "pytorch_lora_weights.safetensors"), load_file(other / "pytorch_lora_weights.safetensors")
    if options == {"gradient_checkpointing": True}:  # same maths, less memory
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    else:
        assert any(not torch.allclose(a[k], b[k]) for k in a), f"{options} changed nothing"


def test_text_encoder_lora_saves_all_three(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu):
    out, _ = _train(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu, text_encoder_lora=True, max_steps=2)
    keys = load_file(out / "pytorch_lora_weights.safetensors").keys()
    assert {k.split(".")[0] for k in keys} == {"unet", "text_encoder", "text_encoder_2"}
    pipe = load_pipeline(tiny_models, cpu)
    attach_lora(pipe, out)  # diffusers takes all three


def test_epochs_set_the_step_count(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu):
    _, summary = _train(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu, epochs=2, batch_size=3)
    assert summary["steps"] == 4  # 2 epochs x 6 images / batch 3


def test_validation_samples_are_logged(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu):
    validation = tiny_settings.train.validation.model_copy(
        update={"every": 2, "prompts": ["aldar_kose_man"], "steps": 2}
    )
    _train(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu, max_steps=4, validation=validation)
    images = sorted(p.name for p in (tmp_path / "run/live/plots/images/validation").iterdir())
    assert images == ["step000002_0.png", "step000004_0.png"]


def test_clear_errors(tmp_path, tiny_settings, tiny_models, cpu):
    from storyboard.models.loading import ModelLoadError

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/manifest.jsonl").write_text(
        json.dumps({"source": "a.png", "sha256": "0", "status": "excluded", "reason": "refused"}) + "\n"
    )
    with pytest.raises(TrainError, match="no usable images"):
        _train(tmp_path, tmp_path / "empty", tiny_settings, tiny_models, cpu)
    with pytest.raises(Exception, match="manifest.jsonl missing"):
        _train(tmp_path, tmp_path / "nowhere", tiny_settings, tiny_models, cpu)
    missing = tiny_models.model_copy(update={"base": str(tmp_path / "no-model")})
    (tmp_path / "d").mkdir()
    (tmp_path / "d/manifest.jsonl").write_text(
        json.dumps({"source": "a.png", "sha256": "0", "status": "ok", "image": "a.png", "caption": "x"}) + "\n"
    )
    with pytest.raises(ModelLoadError, match="no-model"):
        _train(tmp_path, tmp_path / "d", tiny_settings, missing, cpu)


def test_two_processes_train_with_ddp(tmp_path, tiny_dataset, tiny_settings):
    """`accelerate launch` runs the stage on torchrun; two CPU processes exercise the same multi-process path."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    settings = tiny_settings.model_dump(mode="json")
    settings["train"].update(max_steps=4, checkpoint_every=2, rank=4)
    settings["train"]["validation"]["every"] = 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(settings))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    args += [
        "-m",
        "stages.train",
        "--dataset",
        str(tiny_dataset),
        "--out",
        "steps",
        "--live",
        "live",
        "--checkpoints",
        "ck",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = read_steps(tmp_path / "steps")  # written once, by rank 0
    assert [s.step for s in saved.steps] == [2, 4] and all(load_file(s.lora) for s in saved.steps)
    assert len((tmp_path / "live/plots/metrics/loss.tsv").read_text().splitlines()) == 5  # logged once, by rank 0
    (run_dir,) = (tmp_path / "ck").iterdir()
    assert sorted(p.name for p in run_dir.glob("step-*")) == ["step-0000002", "step-0000004"]


def test_a_rerun_of_a_finished_run_keeps_its_plots(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu):
    """DVC empties dvclive/ before rerunning train; the finished run's checkpoint still yields every plot."""
    validation = tiny_settings.train.validation.model_copy(
        update={"every": 2, "prompts": ["aldar_kose_man"], "steps": 2}
    )
    first, _ = _train(
        tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu, name="a", max_steps=4, validation=validation
    )
    again, summary = _train(
        tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu, name="b", max_steps=4, validation=validation
    )
    assert summary["resumed_from"] == 4  # nothing left to train
    assert len((tmp_path / "b/live/plots/metrics/loss.tsv").read_text().splitlines()) == 5
    assert (tmp_path / "b/live/plots/images/validation/step000004_0.png").exists()
    # samples of the first run are restored, not redrawn: the same bytes
    a_png = (tmp_path / "a/live/plots/images/validation/step000002_0.png").read_bytes()
    assert (tmp_path / "b/live/plots/images/validation/step000002_0.png").read_bytes() == a_png
    a, b = load_file(first / "pytorch_lora_weights.safetensors"), load_file(again / "pytorch_lora_weights.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state; a test with other precision needs it reset, before and after."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.usefixtures("fresh_accelerate_state")
@pytest.mark.parametrize("text_encoder_lora", [False, True], ids=["unet", "unet+text"])
def test_mixed_precision_step_keeps_lora_inputs_in_half_precision(
    tiny_dataset, tiny_settings, tiny_models, text_encoder_lora
):
    """Under autocast, peft must not copy every LoRA input to fp32: the matmul casts it back anyway."""
    from accelerate import Accelerator
    from peft.tuners.tuners_utils import BaseTunerLayer

    from storyboard.train.latents import LatentCache, load_examples
    from storyboard.train.parts import SdxlParts
    from storyboard.train.trainer import LoraTrainer

    settings = tiny_settings.train.model_copy(update={"rank": 4, "text_encoder_lora": text_encoder_lora})
    accelerator = Accelerator(mixed_precision="bf16", cpu=True)  # CPU autocast: the GPU path's plumbing
    parts = SdxlParts(tiny_models, accelerator.device, torch.bfloat16)
    cache = LatentCache.build(parts, load_examples(tiny_dataset), settings, 64)
    trainer = LoraTrainer(parts, cache, settings, accelerator, total_steps=2)
    layers = [m for model in (trainer.unet, *trainer.text_encoders) for m in model.modules()]
    layers = [m for m in layers if isinstance(m, BaseTunerLayer)]
    assert layers and not any(m.cast_input_dtype_enabled for m in layers)
    inputs = []
    layers[0].lora_A["default"].register_forward_pre_hook(lambda module, args: inputs.append(args[0].dtype))
    losses = [float(trainer.step()) for _ in range(2)]
    assert inputs == [torch.bfloat16, torch.bfloat16] and all(torch.isfinite(torch.tensor(losses)))
    assert trainer.params[0].dtype == torch.float32  # the LoRA weights themselves train in fp32


def test_compiled_blocks_train_like_eager(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu):
    """train.compile=blocks (the GPU default, here without CUDA graphs, which need a GPU) reaches eager's weights."""
    eager, _ = _train(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu, name="eager", max_steps=2)
    compiled, _ = _train(
        tmp_path,
        tiny_dataset,
        tiny_settings,
        tiny_models,
        cpu,
        name="blocks",
        max_steps=2,
        compile="blocks",
        compile_mode="default",
    )
    a, b = (
        load_file(eager / "pytorch_lora_weights.safetensors"),
        load_file(compiled / "pytorch_lora_weights.safetensors"),
    )
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_compiled_blocks_compile_one_graph(tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu):
    """The first transformer block, whose input no trained weight has touched, shares the other blocks' graph: no
    compile of its own (a minute of the GPU's cold compile is one graph's forward and backward)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    _train(
        tmp_path, tiny_dataset, tiny_settings, tiny_models, cpu, max_steps=2, compile="blocks", compile_mode="default"
    )
    assert counters["stats"]["unique_graphs"] == 1
