"""generate@multiref's speed and memory: our renderer against plain FLUX.2 klein calls of the same frames.

Builds FLUX.2 klein 4B at its published size with random weights, on the GPU in bf16 and kept in memory:
Flux2Transformer2DModel(num_layers=5, num_single_layers=20, num_attention_heads=24, attention_head_dim=128,
joint_attention_dim=7680, guidance_embeds=False), a Qwen3 4B text encoder, AutoencoderKLFlux2's default config, the
tiny profile's trained Qwen2 tokenizer (its vocabulary is small: token counts differ, the padded 512-token sequence
the model reads does not), assembled as tiny.flux2_klein_pipeline assembles the tiny twin. Nothing is written: the
two device calls that wrote the 16 GB folder first both lost the machine during that step (cause not known), and
loading from the hub layout is what the tiny twin's tests check. Then, in one process, on the same prompts
(frame_prompt of an offline plan), the same references and the same seeds:

- ours:           MultirefRenderer (as generate@multiref builds it) renders the story: prompts encoded once, frames
                  in one batch, the CLIP text check (the tiny CLIP: its cost is not the point), no retries;
- plain:          Flux2KleinPipeline called the usual way, one frame per call, prompt and references as arguments;
- plain_batched:  the same, the story's frames in one call.

Each is run once untimed first (CUDA start-up, allocator). Writes DIR/bench_reference.json.

    python bench/bench_reference.py --out DIR            # one GPU: full size, 1024 px, 8 frames, 2 references
    python bench/bench_reference.py --out DIR --tiny     # the CPU check: the tiny klein folder, 64 px
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, environment, memory, pick_device, reset_peak, timed  # noqa: E402

from storyboard.generate.frames import frame_prompt  # noqa: E402
from storyboard.generate.multiref import MultirefRenderer  # noqa: E402
from storyboard.generate.references import Reference  # noqa: E402
from storyboard.log import logger, setup_logging  # noqa: E402
from storyboard.models.clip import ClipScorer  # noqa: E402
from storyboard.models.loading import Device, load_multiref_pipeline  # noqa: E402
from storyboard.models.tiny import flux2_klein_pipeline, qwen_tokenizer, tiny_model_set  # noqa: E402
from storyboard.settings import TinyModels, load_settings  # noqa: E402
from storyboard.story.planners import OfflinePlanner, plan_story  # noqa: E402

HUB_ID = "black-forest-labs/FLUX.2-klein-4B"
# Qwen3-4B's published config (the text encoder of FLUX.2 klein 4B)
QWEN3_4B = dict(
    vocab_size=151936,
    hidden_size=2560,
    intermediate_size=9728,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=40960,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
)


def build_full_size(tokenizer_dir: Path, device: torch.device):
    """FLUX.2 klein 4B from config, random weights in bf16, built on `device`: the pipeline, in memory."""
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = qwen_tokenizer(tokenizer_dir)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            transformer = Flux2Transformer2DModel(
                num_layers=5,
                num_single_layers=20,
                num_attention_heads=24,
                attention_head_dim=128,
                joint_attention_dim=7680,
                guidance_embeds=False,
            )
            text_encoder = Qwen3ForCausalLM(
                Qwen3Config(**QWEN3_4B, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            )
            vae = AutoencoderKLFlux2()
    finally:
        torch.set_default_dtype(previous)
    counts = {
        name: sum(p.numel() for p in m.parameters())
        for name, m in (("transformer", transformer), ("text_encoder", text_encoder), ("vae", vae))
    }
    logger.info("built FLUX.2 klein 4B on %s: %s parameters", device, counts)
    return flux2_klein_pipeline(transformer=transformer, text_encoder=text_encoder, vae=vae, tokenizer=tokenizer)


def random_image(size: int, seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy())


def plain_call(pipe, prompts, references, seeds, resolution, m) -> list[Image.Image]:
    return pipe(
        prompt=prompts if len(prompts) > 1 else prompts[0],
        image=references,
        height=resolution,
        width=resolution,
        num_inference_steps=m.steps,
        guidance_scale=m.guidance_scale,
        generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
    ).images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for bench_reference.json")
    parser.add_argument("--tiny", action="store_true", help="the tiny klein at 64 px: the CPU check")
    parser.add_argument("--frames", type=int, default=8, help="frames of the story (8, as bench_generate's)")
    parser.add_argument("--references", type=int, default=2, help="reference images per frame")
    parser.add_argument("--resolution", type=int, default=None, help="pixels (1024; 64 with --tiny)")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    setup_logging()
    device = pick_device(args.device)
    torch.backends.cudnn.benchmark = True  # as the stages set it (Device.from_runtime), and bench_generate
    resolution = args.resolution or (64 if args.tiny else 1024)
    root = Path(tempfile.mkdtemp(prefix="bench-reference-"))  # the tiny models and the tokenizer only
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    tiny = tiny_model_set(TinyModels(root=root / "tiny"))  # its CLIP scores the text check in both sizes
    params = load_settings(Path(__file__).resolve().parents[1] / "params.yaml")
    m = params.generate.multiref
    generate = params.generate.model_copy(
        update={"resolution": resolution, "max_retries": 0, "frames_per_batch": args.frames}
    )
    settings = params.model_copy(update={"generate": generate})
    run_device = Device(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    plan = plan_story(OfflinePlanner(settings.plan), settings.stories[-1], settings.character)
    plan = plan.model_copy(update={"frames": (plan.frames * args.frames)[: args.frames]})
    references = [Reference(f"random-{i}", random_image(resolution, i), "sheet") for i in range(args.references)]

    reset_peak(device)
    started = time.perf_counter()
    # The tiny twin through the project's loader (its folder is in the hub's layout); full size built in memory.
    pipe = load_multiref_pipeline(tiny, run_device) if args.tiny else build_full_size(root / "_qwen", device)
    scorer = ClipScorer(tiny.clip, run_device)
    renderer = MultirefRenderer(pipe, settings.generate, settings.character, scorer, run_device, references=references)
    load_s = time.perf_counter() - started
    result = {
        "benchmark": "bench_reference",
        "environment": environment(device),
        "config": {
            "model": HUB_ID if not args.tiny else "tiny",
            "resolution": resolution,
            "frames": args.frames,
            "references": args.references,
            "reference_size": renderer.reference_size,
            "steps": m.steps,
            "guidance_scale": m.guidance_scale,
            "dtype": str(run_device.dtype),
        },
        "build_or_load_s": round(load_s, 1),
        "memory_after_load": memory(device),
    }
    prompts = [frame_prompt(f, settings.character, settings.generate.style) for f in plan.frames]
    seeds = [settings.generate.seed + i for i in range(1, args.frames + 1)]  # attempt 0 of frame i, as ours
    refs = [r.image for r in renderer.references]
    pipe = renderer.pipe
    runs = {
        "ours": lambda: renderer.render(plan),
        "plain": lambda: [
            plain_call(pipe, [p], refs, [s], resolution, m)[0] for p, s in zip(prompts, seeds, strict=True)
        ],
        "plain_batched": lambda: plain_call(pipe, prompts, refs, seeds, resolution, m),
    }
    for name, fn in runs.items():
        logger.info("%s: warm-up", name)
        fn()  # untimed: start-up
        reset_peak(device)
        seconds, _ = timed(fn, device)
        result[name] = {"s_per_frame": round(seconds / args.frames, 4), "seconds": round(seconds, 3), **memory(device)}
        logger.info("%s: %.3f s/frame", name, seconds / args.frames)
    for plain in ("plain", "plain_batched"):
        result[f"ours_vs_{plain}"] = round(result[plain]["s_per_frame"] / result["ours"]["s_per_frame"], 3)
    args.out.mkdir(parents=True, exist_ok=True)
    emit(result, args.out / "bench_reference.json")


if __name__ == "__main__":
    main()
