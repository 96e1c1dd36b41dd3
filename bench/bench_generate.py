"""Seconds per frame and peak GPU memory for one storyboard (8 frames, 1024 px, 30 steps, guidance 6), full-size
SDXL with random weights.

Modes, as in storyboard/generate/renderer.py:
- baseline:   SDXL alone (no LoRA).
- lora:       SDXL + a rank-64 LoRA (random, saved and loaded like the trained one).
- ref_guided: LoRA + IP-Adapter (ViT-bigG encoder, fed frame 1) + OpenPose ControlNet.

Implementations:
- baseline: plain diffusers usage, one frame per pipeline call, LoRA loaded with load_lora_weights (not fused),
  the IP-Adapter via load_ip_adapter, a random condition image and a random reference image.
- batched: the same plain diffusers pipeline, but the story's frames in one call (a batch of prompts, one
  generator per frame; ref_guided: one condition image per frame and one reference image for the batch), the LoRA
  fused as diffusers' docs show (load_lora_weights, fuse_lora): what a competent diffusers user writes, and the
  baseline every speed-up of "ours" must also be stated against.
- batched_compiled: batched with the UNet (and ControlNet) under torch.compile (mode default, fullgraph): the
  baseline of every compiled path of "ours".
- ours: the project's own StoryRenderer.render (CLIP check included, thresholds at -1 so nothing is redone):
  all frames of the story in one call, a batch of prompts with one seeded CPU generator per frame;
  ref_guided renders frame 1 alone (a plain SDXL pipeline over the same components: no ControlNet pass, the
  IP-Adapter at 0) and then frames 2-8 in one call, guided by frame 1 and OpenPose images of the planned poses.
  On top: the LoRA fused into the UNet (fuse_lora + unload_lora_weights, as load_renderers does; --no-fuse
  keeps it as separate peft layers for comparison), optional torch.compile of UNet and ControlNet
  (generate.compile, applied by StoryRenderer; it compiles the VAE decoder too), optional quantization of their
  Linear layers (generate.quantize: int8 or fp8 with torchao), the kernel knobs (generate.attention, channels_last,
  fuse_qkv). The VAE decodes in bf16 (the fp16-fix VAE config; diffusers never upcasts a bf16 VAE).

Both impls get the same negative prompt, steps, guidance and scales (params.yaml's generate section).

    python bench/bench_generate.py --out bench/results/generate.json    # on the GPU
    python bench/bench_generate.py --small                               # CPU check, seconds

Several GPUs: `torchrun --nproc_per_node N bench/bench_generate.py --impl ours --workdir DIR ...` renders each
story's frame batches (--frames-per-batch, generate.frames_per_batch) across the processes, as the generate stage
does under storyboard.launch; the timed region runs from all processes starting a story to the last finishing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sdxl_from_config as sdxl  # noqa: E402
from _common import (  # noqa: E402
    barrier,
    emit,
    environment,
    free_memory,
    gpu_kernel_seconds,
    gpu_turn,
    is_oom,
    memory,
    parse_list,
    pick_device,
    reset_peak,
    save_partial,
    synchronize,
    timed,
    world,
)

from storyboard.log import logger, setup_logging  # noqa: E402
from storyboard.story.poses import POSE_NAMES  # noqa: E402

MODES = ("baseline", "lora", "ref_guided")
IMPLS = ("baseline", "batched", "batched_compiled", "ours")

# params.yaml, generate: and character: (copied, not read: the settings module needs pydantic, which the GPU
# image may lack, and these values only need to be realistic).
NEGATIVE_PROMPT = "blurry, deformed face, extra limbs, text, watermark, different person"
LORA_SCALE = 1.0
IP_ADAPTER_SCALE = 0.6
CONTROLNET_SCALE = 0.8
SEED = 1234
CHARACTER = (
    "aldar_kose_man, Aldar Kose, a cheerful Kazakh folk trickster with a thin black moustache, a patched striped "
    "chapan robe and a fur-trimmed conical hat"
)
STYLE = "cinematic storyboard frame, consistent character design, detailed illustration"
SCENES = (
    "tricks a greedy merchant in a busy bazaar",
    "walks past spice stalls",
    "haggles with a spice seller",
    "laughs at the merchant",
    "steals the merchant's horse",
    "rides away across the steppe",
    "shares the money with poor villagers at night",
    "waves goodbye at dawn",
)
LORA_RANK = 64
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


SETTING = "the steppe"


def shot(i: int) -> str:
    return "close-up" if i == 0 else "medium"  # frame 1 is the identity reference: a plan requires a close-up


def story(frames: int) -> tuple[list[str], list[str], list[str]]:
    """Scenes, the prompts frames.py's frame_prompt builds of them (what the plain impls are given) and pose
    labels, for a story of `frames` frames."""
    scenes = [SCENES[i % len(SCENES)] for i in range(frames)]
    prompts = [f"{CHARACTER}, {scene}, {shot(i)} shot, {SETTING}, {STYLE}" for i, scene in enumerate(scenes)]
    return scenes, prompts, [POSE_NAMES[i % len(POSE_NAMES)] for i in range(frames)]


def random_image(size: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


class Run:
    """One (impl, mode): the pipeline set up the way that impl would, and its frame-rendering calls."""

    def __init__(self, impl: str, mode: str, args: argparse.Namespace, device: torch.device, files: dict[str, Path]):
        self.impl, self.mode, self.args, self.device = impl, mode, args, device
        kind = "controlnet" if mode == "ref_guided" else "sdxl"
        pipe = sdxl.build_pipeline(kind, args.torch_dtype, device, small=args.small, seed=args.seed)
        if args.sampler != "standard":
            # Both impls as a diffusers user sets up a few-step LoRA (load, fuse, the card's scheduler); ours
            # through the project's own calls.
            from storyboard.generate.samplers import sampler_of, use_scheduler

            pipe.load_lora_weights(
                str(files["sampler"]), weight_name="pytorch_lora_weights.safetensors", adapter_name="sampler"
            )
            pipe.fuse_lora(adapter_names=["sampler"])
            pipe.unload_lora_weights()
            use_scheduler(pipe, sampler_of(args.sampler))
        if mode != "baseline":
            pipe.load_lora_weights(
                str(files["lora"]), weight_name="pytorch_lora_weights.safetensors", adapter_name="character"
            )
            pipe.set_adapters(["character"], adapter_weights=[LORA_SCALE])
            if impl in ("batched", "batched_compiled") or (impl == "ours" and not args.no_fuse):
                # Fused: the LoRA delta is added into the UNet's weights once, so each step runs the plain
                # UNet instead of base + two low-rank matmuls per projection. Unloading then drops the peft
                # wrappers; the fused weights stay.
                pipe.fuse_lora(components=["unet"], lora_scale=LORA_SCALE, adapter_names=["character"])
                pipe.unload_lora_weights()
        if mode == "ref_guided":
            pipe.load_ip_adapter(
                str(files["ip_adapter"]),
                subfolder="",
                weight_name="ip-adapter.safetensors",
                image_encoder_folder="image_encoder",
            )
            pipe.set_ip_adapter_scale(IP_ADAPTER_SCALE)
        pipe.set_progress_bar_config(disable=True)
        if impl == "batched_compiled":
            # What a competent diffusers user compiles: the UNet (and ControlNet), whole, mode default.
            pipe.unet = torch.compile(pipe.unet, fullgraph=True)
            if mode == "ref_guided":
                pipe.controlnet = torch.compile(pipe.controlnet, fullgraph=True)
        self.pipe = pipe
        self.size = args.resolution
        self.scenes, self.prompts, self.poses = story(args.frames)

    def _common(self, prompts: list[str], seeds: list[int]) -> dict[str, Any]:
        a = self.args
        return dict(
            prompt=prompts,
            negative_prompt=[NEGATIVE_PROMPT] * len(prompts),
            num_inference_steps=a.steps,
            guidance_scale=a.guidance,
            height=self.size,
            width=self.size,
            generator=[torch.Generator(device="cpu").manual_seed(s) for s in seeds],
        )

    # -- baseline impl: one frame per call -------------------------------------------------------------------

    def baseline_frame(self, i: int) -> Image.Image:
        kwargs = self._common([self.prompts[i]], [SEED + i + 1])
        if self.mode == "ref_guided":
            kwargs.update(
                image=random_image(self.size, i),
                controlnet_conditioning_scale=CONTROLNET_SCALE,
                ip_adapter_image=random_image(self.size, 1000 + i),
            )
        return self.pipe(**kwargs).images[0]

    # -- batched impl: plain diffusers, the story in one call ---------------------------------------------------

    def batched_story(self) -> list[Image.Image]:
        n = len(self.prompts)
        kwargs = self._common(self.prompts, [SEED + i + 1 for i in range(n)])
        if self.mode == "ref_guided":
            kwargs.update(
                image=[random_image(self.size, i) for i in range(n)],
                controlnet_conditioning_scale=CONTROLNET_SCALE,
                ip_adapter_image=random_image(self.size, 1000),
            )
        return self.pipe(**kwargs).images

    # -- ours: the project's own StoryRenderer.render (batched story, fused LoRA, CLIP check) ----------------

    def _ours_renderer(self):
        """`storyboard.generate.renderer.StoryRenderer` around this pipeline; CLIP thresholds at -1 so no frame is
        redone (random weights score at random: retries would make the timing a lottery). The CLIP check itself
        (text and image features of every frame) still runs and is timed."""
        from storyboard.generate.renderer import StoryRenderer
        from storyboard.models.clip import ClipScorer
        from storyboard.models.loading import Device
        from storyboard.settings import Character, Generate

        a = self.args
        settings = Generate(
            steps=a.steps,
            guidance_scale=a.guidance,
            resolution=self.size,
            seed=SEED,
            style=STYLE,
            negative_prompt=NEGATIVE_PROMPT,
            lora_scale=LORA_SCALE,
            ip_adapter_scale=IP_ADAPTER_SCALE,
            controlnet_scale=CONTROLNET_SCALE,
            clip_threshold=-1.0,
            likeness_threshold=-1.0,
            max_retries=0,
            reference="frame",
            frames_per_batch=a.frames_per_batch,
            compile=a.compile,  # applied by StoryRenderer, as in the stage
            compile_mode=a.compile_mode,
            quantize=a.quantize,  # applied by StoryRenderer too
            attention=a.attention,  # and the kernel knobs
            channels_last=a.channels_last,
            fuse_qkv=a.fuse_qkv,
        )
        device = Device(self.device, a.torch_dtype)
        model, processor = sdxl.build_clip_scorer_model(self.device, small=a.small, seed=a.seed)
        scorer = ClipScorer.from_model(model, processor, device)
        character = Character(name="Aldar Kose", trigger="aldar_kose_man", description=CHARACTER.split(", ", 2)[2])
        renderer = StoryRenderer(self.mode, self.pipe, settings, character, scorer, device)
        # Where a story's wall time goes besides the pipeline calls: the bench's own stopwatches around the
        # renderer's prompt encoding and CLIP text check (each drains the GPU first, so pipeline work queued
        # before it is not counted in it).
        self.host = {"encode_s": 0.0, "text_check_s": 0.0}
        renderer.encode = _stopwatch(renderer.encode, self.host, "encode_s", self.device)
        scorer.text_scores = _stopwatch(scorer.text_scores, self.host, "text_check_s", self.device)
        return renderer

    def _plan(self):
        from storyboard.generate.frames import frame_prompt
        from storyboard.story.plan import Frame, StoryPlan

        frames = [
            Frame(scene=scene, shot=shot(i), pose=pose, setting=SETTING)
            for i, (scene, pose) in enumerate(zip(self.scenes, self.poses, strict=True))
        ]
        # The renderer builds its prompts from the plan: they must be the very prompts the plain impls are given.
        r = self.renderer
        assert [frame_prompt(f, r.character, r.settings.style) for f in frames] == self.prompts
        return StoryPlan(story_id="bench", story="bench", planner="offline", frames=frames)

    def ours_story(self) -> list[Image.Image]:
        from storyboard.models.prompts import _parsed

        if not hasattr(self, "renderer"):
            self.renderer = self._ours_renderer()
        # Every story parses its prompts anew: the stage parses them while its models load, which this leaves out.
        _parsed.cache_clear()
        plan = self._plan()
        first = None
        if self.args.first_from_lora and self.mode == "ref_guided":
            # What `storyboard generate --mode all` does: frame 1 comes from the lora mode of the same run (its
            # cost is in the lora figure). A random image stands in for it: the cost of the rest is the same.
            from storyboard.generate.frames import Attempt, RenderedFrame, frame_prompt

            prompt = frame_prompt(plan.frames[0], self.renderer.character, self.renderer.settings.style)
            image = random_image(self.size, 7)
            first = RenderedFrame(1, plan.frames[0], prompt, [Attempt(SEED + 1, 0.0, None, 0.0)], image)
        from storyboard.generate.sharing import Group

        return [f.image for f in self.renderer.render(plan, first=first, group=Group.current())]

    # -- the measurement -----------------------------------------------------------------------------------

    def warmup(self) -> None:
        """The untimed unit: one frame (baseline impl) or one story (batched, ours); ours at --warmup-steps
        denoising steps: the shapes that the timed stories run, so their kernels are chosen and loaded."""
        if self.impl == "baseline":
            self.baseline_frame(0)
            return
        if self.impl.startswith("batched"):
            self.batched_story()
            return
        if not hasattr(self, "renderer"):
            self.renderer = self._ours_renderer()
        timed_settings = self.renderer.settings
        self.renderer.settings = timed_settings.model_copy(
            update={"steps": self.args.warmup_steps or timed_settings.steps}
        )
        try:
            self.ours_story()
        finally:
            self.renderer.settings = timed_settings

    def timed_story(self) -> tuple[list[Image.Image], int]:
        """All frames of the story; returns the images and the number of pipeline calls."""
        if self.impl == "baseline":
            return [self.baseline_frame(i) for i in range(len(self.prompts))], len(self.prompts)
        if self.impl.startswith("batched"):
            return self.batched_story(), 1
        from storyboard.generate.sharing import batch_size

        images = self.ours_story()
        frames, processes = len(images), self.args.processes
        if self.mode != "ref_guided":
            return images, -(-frames // batch_size(frames, self.args.frames_per_batch, processes))
        later = frames - 1
        calls = -(-later // batch_size(later, self.args.frames_per_batch, processes))
        return images, (0 if self.args.first_from_lora else 1) + calls


def _stopwatch(fn, totals: dict[str, float], key: str, device: torch.device):
    def timed_call(*args, **kwargs):
        synchronize(device)
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        synchronize(device)
        totals[key] += time.perf_counter() - t0
        return out

    return timed_call


def build_files(args: argparse.Namespace, device: torch.device, workdir: Path, write: bool = True) -> dict[str, Path]:
    """The LoRA and IP-Adapter files the pipelines load (diffusers loads both only from files); `write=False`: the
    paths of those another process wrote."""
    modes = parse_list(args.modes)
    if not write:
        named = {
            "lora": any(m != "baseline" for m in modes),
            "ip_adapter": "ref_guided" in modes,
            "sampler": args.sampler != "standard",
        }
        return {name: workdir / name for name, wanted in named.items() if wanted}
    files = {}
    if args.sampler != "standard":
        # A random LoRA of a rank-64 distillation LoRA's size: fused into the UNet, its values cost nothing.
        files["sampler"] = sdxl.build_lora_files(
            workdir / "sampler", rank=LORA_RANK, target_modules=LORA_TARGETS, small=args.small, seed=args.seed + 1
        )
    if any(m != "baseline" for m in modes):
        files["lora"] = sdxl.build_lora_files(
            workdir / "lora", rank=LORA_RANK, target_modules=LORA_TARGETS, small=args.small, seed=args.seed
        )
    if "ref_guided" in modes:
        with torch.device("meta"):
            # Only the processor names and channel counts are needed: a meta UNet costs nothing.
            unet = sdxl.build_unet(torch.float32, "meta", small=args.small)
        files["ip_adapter"] = sdxl.build_ip_adapter_files(
            workdir / "ip_adapter", unet, small=args.small, seed=args.seed, dtype=args.torch_dtype, device=device
        )
        free_memory(device)
    return files


def run_one(
    impl: str, mode: str, args: argparse.Namespace, device: torch.device, files: dict[str, Path]
) -> dict[str, Any]:
    result: dict[str, Any] = {"impl": impl, "mode": mode, "frames": args.frames}
    if impl == "ours":
        result.update(
            fused_lora=mode != "baseline" and not args.no_fuse,
            compile=args.compile,
            quantize=args.quantize,
            attention=args.attention,
            channels_last=args.channels_last,
            fuse_qkv=args.fuse_qkv,
            frames_per_batch=args.frames_per_batch,
            processes=args.processes,
        )
        result.update(first_from_lora=args.first_from_lora and mode == "ref_guided")
    run = None
    try:
        free_memory(device)
        reset_peak(device)
        t0 = time.perf_counter()
        run = Run(impl, mode, args, device, files)
        synchronize(device)  # random init runs asynchronously on the GPU; count it in setup, not warmup
        result["setup_s"] = round(time.perf_counter() - t0, 2)
        result["setup_memory"] = memory(device)
        with gpu_turn(args.gpu_lock, measuring=False):
            warmup_s, _ = timed(run.warmup, device)
        result["warmup_s"] = round(warmup_s, 2)
        host = getattr(run, "host", None)
        if host is not None:
            host.update(dict.fromkeys(host, 0.0))  # the warmup's are not the timed stories'
        with gpu_turn(args.gpu_lock, measuring=True):
            reset_peak(device)
            total, calls, images = 0.0, 0, []
            for _ in range(args.stories):
                seconds, (images, n) = timed(run.timed_story, device)
                total += seconds
                calls += n
        # With frame 1 handed over from lora, ref_guided renders the other frames: its figures are per frame rendered.
        handed_over = args.first_from_lora and mode == "ref_guided" and impl == "ours"
        frames = (args.frames - handed_over) * args.stories
        mem = memory(device)
        if args.profile:
            # Under the profiler, outside the timed region: one frame for the baseline impl (its frames are
            # alike; the profiler's bookkeeping of ~100k kernels per story takes minutes), one story for ours.
            kernel_s = gpu_kernel_seconds(run.warmup, device)
            if kernel_s is not None:
                per_frame = kernel_s / (1 if impl == "baseline" else args.frames)
                result.update(gpu_kernel_s_per_frame=round(per_frame, 4), gpu_busy=round(per_frame * frames / total, 3))
        arr = np.asarray(images[-1], dtype=np.float32)
        result.update(
            stories=args.stories,
            pipeline_calls=calls,
            s_total=round(total, 3),
            s_per_frame=round(total / frames, 4),
            frames_per_s=round(frames / total, 4),
            peak_allocated_gib=mem["peak_allocated_gib"],
            peak_reserved_gib=mem["peak_reserved_gib"],
            **({f"{k}_per_story": round(v / args.stories, 3) for k, v in host.items()} if host else {}),
            # Random weights draw noise; a NaN anywhere would still show as a constant black image.
            last_image_std=round(float(arr.std()), 2),
        )
        logger.info(
            "%s / %s: %.3f s/frame (%d frames in %d calls), peak %s GiB, GPU busy %s",
            impl,
            mode,
            total / frames,
            frames,
            calls,
            mem["peak_allocated_gib"],
            result.get("gpu_busy"),
        )
    except Exception as e:  # noqa: BLE001 - one OOM must not lose the other configurations
        if not is_oom(e):
            raise
        logger.warning("%s / %s: out of memory (%s)", impl, mode, str(e).splitlines()[0][:200])
        result.update(oom=True, peak_allocated_gib=memory(device)["peak_allocated_gib"])
    finally:
        run = None  # the last reference: frees the pipeline before the next config is built
        free_memory(device)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", default="baseline,batched,ours", help="comma list of baseline, batched, ours")
    parser.add_argument("--modes", default=",".join(MODES), help="comma list of baseline, lora, ref_guided")
    parser.add_argument("--frames", type=int, default=None, help="frames per story (8; 2 with --small)")
    parser.add_argument("--stories", type=int, default=1, help="timed stories per config")
    parser.add_argument(
        "--frames-per-batch",
        type=lambda v: v if v == "auto" else int(v),
        default="auto",
        help="ours: generate.frames_per_batch (the shipped default, auto)",
    )
    parser.add_argument(
        "--warmup-steps", type=int, default=None, help="ours: denoising steps of the untimed story (default --steps)"
    )
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (30; 2 with --small)")
    parser.add_argument("--guidance", type=float, default=6.0)
    parser.add_argument(
        "--sampler",
        default="standard",
        choices=["standard", "lightning", "hyper-sd"],
        help="generate.sampler for every impl: a random distillation LoRA fused in, its scheduler, steps and guidance",
    )
    parser.add_argument("--resolution", type=int, default=None, help="pixels (1024; 64 with --small)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--no-fuse", action="store_true", help="ours: keep the LoRA unfused (for comparison)")
    parser.add_argument(
        "--compile",
        default="none",
        choices=["none", "blocks", "model"],
        help="ours: generate.compile (torch.compile of UNet and ControlNet, applied by StoryRenderer)",
    )
    parser.add_argument(
        "--compile-mode",
        default="default",
        help="torch.compile mode: default, or max-autotune-no-cudagraphs (faster kernels, much longer compile)",
    )
    parser.add_argument(
        "--quantize",
        default="none",
        choices=["none", "int8", "fp8"],
        help="ours: generate.quantize (torchao, the denoisers' Linear layers; changes the numbers a little)",
    )
    parser.add_argument(
        "--attention", default="auto", choices=["auto", "cudnn", "flash", "efficient"], help="ours: generate.attention"
    )
    parser.add_argument("--channels-last", action="store_true", help="ours: generate.channels_last")
    parser.add_argument("--fuse-qkv", action="store_true", help="ours: generate.fuse_qkv")
    parser.add_argument(
        "--first-from-lora",
        action="store_true",
        help="ours, ref_guided: frame 1 handed over from the lora mode, as in a run of all modes (timed: frames 2-8)",
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where LoRA/IP-Adapter files go (kept; default a temp dir)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="one extra frame/story per config under the profiler: GPU kernel time, gpu_busy. Can slow the configs "
        "timed after it in the same process: use with one impl and mode per command",
    )
    parser.add_argument("--small", action="store_true", help="tiny models, 64 px, 2 steps, 2 frames: the CPU check")
    parser.add_argument("--device", default=None, help="default cuda if available, else cpu")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON line here")
    parser.add_argument(
        "--build-only", action="store_true", help="write the LoRA / IP-Adapter files into --workdir and stop"
    )
    parser.add_argument(
        "--gpu-lock", type=Path, default=None, help="lock file shared by bench processes run side by side"
    )
    args = parser.parse_args()
    setup_logging()

    device = pick_device(args.device)  # first: the process group then knows this process's GPU
    rank, args.processes = world()
    if device.type != "cuda" and not args.small:
        parser.error("full-size SDXL generation needs a GPU; use --small for the CPU check")
    if args.processes > 1 and (parse_list(args.impl) != ["ours"] or args.workdir is None):
        parser.error("several processes: --impl ours and a --workdir (the processes share its files)")
    if args.build_only and args.workdir is None:
        parser.error("--build-only needs --workdir (where the files stay)")
    out = args.out if rank == 0 else None
    for value, allowed, what in ((args.impl, IMPLS, "impl"), (args.modes, MODES, "mode")):
        for item in parse_list(value):
            if item not in allowed:
                parser.error(f"unknown {what} {item!r}; use {', '.join(allowed)}")
    if args.sampler != "standard":
        from storyboard.generate.samplers import sampler_of

        chosen = sampler_of(args.sampler)
        args.steps, args.guidance = args.steps or chosen.steps, chosen.guidance_scale
    args.frames = args.frames or (2 if args.small else 8)
    args.steps = args.steps or (2 if args.small else 30)
    args.resolution = args.resolution or (sdxl.SMALL_RESOLUTION if args.small else 1024)
    args.torch_dtype = getattr(torch, args.dtype)
    torch.backends.cudnn.benchmark = True

    results: list[dict[str, Any]] = []
    payload = {
        "bench": "generate",
        **environment(device),
        "small": args.small,
        "settings": {
            "frames": args.frames,
            "stories": args.stories,
            "steps": args.steps,
            "guidance": args.guidance,
            "sampler": args.sampler,
            "resolution": args.resolution,
            "dtype": args.dtype,
            "lora_rank": LORA_RANK,
            "compile_mode": args.compile_mode if args.compile != "none" else None,
            "frames_per_batch": args.frames_per_batch,
            "warmup_steps": args.warmup_steps,
            "processes": args.processes,
        },
        "results": results,
    }
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sdxl-bench-"))
    try:
        # One process writes the LoRA / IP-Adapter files (the same seeds give the same files), the others read them.
        files = build_files(args, device, workdir) if rank == 0 else None
        if args.build_only:
            return
        barrier()
        files = files or build_files(args, device, workdir, write=False)
        for mode in parse_list(args.modes):
            for impl in parse_list(args.impl):
                results.append(run_one(impl, mode, args, device, files))
                save_partial(payload, out)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if rank == 0:
        emit(payload, out)


if __name__ == "__main__":
    main()
