"""GPU cost of two things issue 16 added, full-size SDXL with random weights, the real CLIP tokenizer:

- long-prompt encoding per story: the 8 frame prompts of a story (as frames.py's frame_prompt builds them, with
  planner-length scenes: ~110 tokens, 2 chunks) and the negative prompt through both text encoders with compel
  (storyboard/models/prompts.py, once per story), against diffusers' own `encode_prompt` of the same batch (which
  drops every token past 77), measured in the same call;
- scoring one checkpoint (select.step: best): render the validation prompts (params.yaml: 2 prompts, 20 steps,
  one batch, the LoRA live as during training), keep the step's LoRA and samples (KeptSteps.save_step), and score
  them as the select stage does (ClipStepScorer: CLIP ViT-L/14 image and text features against 12 training
  images; publishing models/steps between the two is not timed). The face crop uses
  a detector that finds nothing (the whole frame is the crop): the face backend runs on the CPU (dlib ~0.1-0.4 s
  per image, ENVIRONMENT.md) and is left out.

    python bench/bench_prompts.py --out bench/results/prompts.json    # on the GPU
    python bench/bench_prompts.py --small                              # CPU check, seconds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sdxl_from_config as sdxl  # noqa: E402
from _common import emit, environment, memory, pick_device, reset_peak, timed  # noqa: E402

from storyboard.log import logger, setup_logging  # noqa: E402
from storyboard.models.bpe import count_tokens  # noqa: E402
from storyboard.models.prompts import encode_prompts  # noqa: E402

CHARACTER = (
    "aldar_kose_man, Aldar Kose, a cheerful Kazakh folk trickster with a thin black moustache, a patched striped "
    "chapan robe and a fur-trimmed conical hat"
)
STYLE = "cinematic storyboard frame, consistent character design, detailed illustration"
NEGATIVE = "blurry, deformed face, extra limbs, text, watermark, different person"
SCENE = (
    "Aldar Kose leans over a spice seller's stall piled with saffron and cumin, grinning as he haggles over a "
    "small bag of pepper while the crowd watches"
)
SETTINGS = ("a busy bazaar at noon", "the open steppe at dusk", "a yurt camp by a river", "a khan's palace hall")
VALIDATION_PROMPTS = [
    "aldar_kose_man, portrait of Aldar Kose, front view, smiling",
    "aldar_kose_man, Aldar Kose riding a horse across the steppe",
]
LORA_RANK = 16  # params.yaml train.rank
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


class NoBoxes:
    """A character detector that finds nothing (no full-size Grounding DINO is built here): the crop is the whole
    sample, and the detector's own cost is not in the figure."""

    def best(self, images, prompt):
        return [None] * len(images)


class NoFaces:
    """A face backend that finds nothing: the character crop is the whole sample."""

    name = "none"
    embedding_size = 0

    def detect(self, image):
        return []

    def detect_many(self, images):
        return [[] for _ in images]


def story_prompts(frames: int) -> list[str]:
    shots = ("close-up", "medium", "wide")
    return [f"{CHARACTER}, {SCENE}, {shots[i % 3]} shot, {SETTINGS[i % len(SETTINGS)]}, {STYLE}" for i in range(frames)]


def median_seconds(fn, device, repeats: int) -> float:
    fn()  # warm-up: first-call allocations and kernel selection
    return statistics.median(timed(fn, device)[0] for _ in range(repeats))


def bench_encoding(pipe, device, frames: int, repeats: int) -> dict:
    prompts = story_prompts(frames)
    tokens = [count_tokens(p) for p in prompts]
    ours = median_seconds(lambda: encode_prompts(pipe, prompts, NEGATIVE), device, repeats)
    embeds = encode_prompts(pipe, prompts, NEGATIVE)

    def diffusers_encode():
        return pipe.encode_prompt(
            prompts,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=True,
            negative_prompt=[NEGATIVE] * len(prompts),
        )

    truncating = median_seconds(diffusers_encode, device, repeats)
    return {
        "frames": frames,
        "tokens_per_prompt": tokens,
        "sequence": int(embeds.embeds.shape[1]),
        "ours_compel_s": round(ours, 4),
        "diffusers_truncating_s": round(truncating, 4),
    }


def bench_checkpoint(pipe, device, args, workdir: Path) -> dict:
    from safetensors.torch import load_file

    from storyboard.evaluate.scores import Locator
    from storyboard.models.clip import ClipScorer
    from storyboard.models.loading import Device
    from storyboard.select.scorer import ClipStepScorer
    from storyboard.select.sweep import score_steps
    from storyboard.settings import Validation
    from storyboard.train.kept import KeptSteps
    from storyboard.train.steps import KohyaExport, read_steps, write_steps

    lora = sdxl.build_lora_files(workdir / "lora", rank=LORA_RANK, target_modules=LORA_TARGETS, small=args.small)
    pipe.load_lora_weights(str(lora), weight_name="pytorch_lora_weights.safetensors", adapter_name="step")
    layers = {
        "unet_lora_layers": {
            k.removeprefix("unet."): v for k, v in load_file(lora / "pytorch_lora_weights.safetensors").items()
        }
    }
    model, processor = sdxl.build_clip_scorer_model(device, small=args.small, seed=args.seed)
    clip = ClipScorer.from_model(model, processor, Device(device, torch.float32))
    rng = np.random.default_rng(0)
    size = sdxl.resolution(args.small)
    training = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(12)]
    locator = Locator(NoBoxes(), clip, NoFaces(), "")
    scorer = ClipStepScorer.from_parts(locator, locator.references(training, faces=False))
    validation = Validation(prompts=VALIDATION_PROMPTS, steps=args.steps, every=0)
    kept = KeptSteps(workdir / "run", validation)

    def render():
        g = torch.Generator(device=device).manual_seed(0)
        embeds = encode_prompts(pipe, VALIDATION_PROMPTS)
        return pipe(**embeds.pipeline_kwargs(), num_inference_steps=args.steps, generator=g).images

    render()  # warm-up
    reset_peak(device)
    render_s, images = timed(render, device)
    save_s, _ = timed(lambda: kept.save_step(1, layers, images), device)
    no_kohya = KohyaExport(alpha=LORA_RANK, unet_config={}, metadata={})  # scoring writes no kohya file
    write_steps(workdir / "steps", kept.published(1), VALIDATION_PROMPTS, {}, no_kohya)  # the train stage's output
    score_s, scores = timed(lambda: score_steps(read_steps(workdir / "steps"), scorer, workdir / "scores"), device)
    return {
        "validation_prompts": len(VALIDATION_PROMPTS),
        "steps": args.steps,
        "resolution": size,
        "render_s": round(render_s, 3),
        "save_step_s": round(save_s, 3),
        "score_s": round(score_s, 3),
        "total_s": round(render_s + save_s + score_s, 3),
        "identity": scores[0].identity,
        "text_alignment": scores[0].text_alignment,
        "memory": memory(device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=8, help="frames per story")
    parser.add_argument("--repeats", type=int, default=5, help="timed encodings (median)")
    parser.add_argument("--steps", type=int, default=None, help="validation denoising steps (20; 2 with --small)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--small", action="store_true", help="tiny models, 64 px, 2 steps: the CPU check")
    parser.add_argument("--device", default=None, help="default cuda if available, else cpu")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON line here")
    args = parser.parse_args()
    setup_logging()
    args.steps = args.steps or (2 if args.small else 20)
    device = pick_device(args.device)
    dtype = torch.float32 if device.type == "cpu" else getattr(torch, args.dtype)
    pipe = sdxl.build_pipeline("sdxl", dtype, device, small=args.small, seed=args.seed)
    result = {"bench": "prompts", "small": args.small, "dtype": str(dtype), **environment(device)}
    result["encoding"] = bench_encoding(pipe, device, args.frames, args.repeats)
    logger.info("encoding: %s", result["encoding"])
    with tempfile.TemporaryDirectory() as tmp:
        result["checkpoint"] = bench_checkpoint(pipe, device, args, Path(tmp))
    logger.info("checkpoint: %s", result["checkpoint"])
    emit(result, args.out)


if __name__ == "__main__":
    main()
