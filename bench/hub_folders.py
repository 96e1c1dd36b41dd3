"""Full-size random-weight model folders in the exact layout of each hub repo that params.yaml names.

The rehearsal (bench/rehearse.py) points `models.sdxl.*` at these folders and runs the user's pipeline
unchanged: `load_pipeline`, `with_controlnet`, `attach_ip_adapter` and `ClipScorer` read them through the same
`from_pretrained` calls as the hub repos. Weights are random (seeded), so images are noise and scores mean
nothing; sizes, classes, dtypes and file layout are the released ones (counts asserted in sdxl_from_config.py).

Written under `root/<hub id>/`:
    stabilityai/stable-diffusion-xl-base-1.0/   model_index.json, unet/ vae/ text_encoder/ text_encoder_2/
                                                tokenizer/ tokenizer_2/ scheduler/
    madebyollin/sdxl-vae-fp16-fix/              config.json + diffusion_pytorch_model.safetensors
    h94/IP-Adapter/sdxl_models/                 ip-adapter_sdxl.safetensors, image_encoder/
    xinsir/controlnet-openpose-sdxl-1.0/        config.json + diffusion_pytorch_model.safetensors
    openai/clip-vit-large-patch14/              CLIPModel + CLIPProcessor (tokenizer, image processor)
    facebook/dinov2-base/                       Dinov2Model + BitImageProcessor (generate's likeness check)
    IDEA-Research/grounding-dino-tiny/          GroundingDinoForObjectDetection + processor (evaluate's locator)
    black-forest-labs/FLUX.2-klein-4B/          Flux2KleinPipeline (generate@multiref; bench_reference.py's build)

Grounding DINO's tokenizer is BERT's WordPiece; bert-base-uncased's vocab.txt cannot be had offline, so the folder
gets the tiny profile's letter vocabulary (storyboard.models.tiny.detector_vocab) in a full-size 30,522-row
embedding: the detector's sizes are the released ones, its text query is a few tokens longer.

Weights are saved in bf16 (the hub repos hold fp32 and fp16 files): the pipeline loads them in its runtime
dtype either way, and half the bytes halve the writing time. Each folder is skipped when already written.

    python bench/hub_folders.py --root .cache/hub-rehearsal            # full size, on the GPU (~31 GB on disk,
                                                                       # 17 GB of it klein's: --klein-root)
    python bench/hub_folders.py --root /tmp/hub --small --device cpu    # the CPU check
Prints one JSON line: the folders and the `-S` overrides that point params.yaml at them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_reference import HUB_ID as KLEIN  # noqa: E402
from bench_reference import build_full_size as build_klein  # noqa: E402
from sdxl_from_config import (  # noqa: E402
    build_clip_scorer_model,
    build_controlnet,
    build_ip_adapter_files,
    build_pipeline,
    build_vae,
)

from storyboard.log import logger, setup_logging  # noqa: E402

BASE = "stabilityai/stable-diffusion-xl-base-1.0"
VAE = "madebyollin/sdxl-vae-fp16-fix"
IP_ADAPTER = "h94/IP-Adapter"
IP_SUBFOLDER = "sdxl_models"
IP_WEIGHT = "ip-adapter_sdxl.safetensors"
CONTROLNET = "xinsir/controlnet-openpose-sdxl-1.0"
CLIP = "openai/clip-vit-large-patch14"
LIKENESS = "facebook/dinov2-base"
DETECTOR = "IDEA-Research/grounding-dino-tiny"


def _done(folder: Path) -> bool:
    return (folder / "BUILT").exists()


def _mark(folder: Path) -> None:
    (folder / "BUILT").write_text("random weights: bench/hub_folders.py\n")


def build_likeness(folder: Path, *, small: bool, seed: int) -> None:
    """DINOv2 base (Dinov2Config's defaults are facebook/dinov2-base's), with that repo's preprocessor settings."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2) if small else None
    Dinov2Model(config or Dinov2Config()).save_pretrained(folder)  # fp32, as the hub repo
    BitImageProcessor(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        resample=3,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(folder)


def build_detector(folder: Path, *, small: bool, seed: int) -> None:
    """Grounding DINO tiny (GroundingDinoConfig's defaults: Swin-T backbone, BERT-base text encoder, 900 queries);
    `small`: the tiny profile's detector."""
    from transformers import (
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
    )

    from storyboard.models import tiny

    torch.manual_seed(seed)
    if small:
        tiny.build_detector(folder)
        return
    tokenizer = BertTokenizerFast(vocab=tiny.detector_vocab(), do_lower_case=True, model_max_length=256)
    GroundingDinoForObjectDetection(GroundingDinoConfig()).save_pretrained(folder)
    GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(), tokenizer=tokenizer).save_pretrained(folder)


# What FLUX.2 klein 4B's folder takes in bf16 (transformer 7.8 GB, Qwen3 4B text encoder 8.0 GB, VAE), with room
# to spare: two device calls that wrote it to a temp folder lost the machine (bench_reference.py), a full disk the
# suspect.
KLEIN_BYTES = 17 * 10**9


def write_klein(folder: Path, tokenizer_dir: Path, *, device: str, small: bool, seed: int) -> None:
    """FLUX.2 klein in the hub's layout: the tiny twin, or the full-size model built on `device` and saved in
    shards of at most 2 GB, after checking that the disk under `folder` has room for it."""
    torch.manual_seed(seed)
    if small:
        from storyboard.models.tiny import build_flux2_klein

        build_flux2_klein(folder, tokenizer_dir)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
        if free < KLEIN_BYTES:
            raise SystemExit(
                f"{folder}: {free / 1e9:.1f} GB free, FLUX.2 klein 4B needs {KLEIN_BYTES / 1e9:.0f} GB: "
                "pass --klein-root on a larger disk (e.g. /dev/shm)"
            )
        build_klein(tokenizer_dir, torch.device(device)).save_pretrained(folder, max_shard_size="2GB")
    _mark(folder)


def write_folders(
    root: Path, *, device: str, small: bool, seed: int = 0, klein_root: Path | None = None
) -> dict[str, str]:
    """Write every folder under `root` (FLUX.2 klein under `klein_root` if given), skipping those already written;
    return the params overrides."""
    klein = (klein_root or root) / KLEIN
    dtype = torch.bfloat16 if device != "cpu" else torch.float32
    base, vae_dir = root / BASE, root / VAE
    ip_dir, cn_dir, clip_dir = root / IP_ADAPTER / IP_SUBFOLDER, root / CONTROLNET, root / CLIP
    timings: dict[str, float] = {}
    if not all(_done(d) for d in (base, ip_dir, cn_dir)):
        t = time.perf_counter()
        pipe = build_pipeline("sdxl", dtype, device, small=small, seed=seed)
        pipe.save_pretrained(base)
        _mark(base)
        timings["base"] = time.perf_counter() - t
        t = time.perf_counter()
        build_controlnet(pipe.unet, small=small).save_pretrained(cn_dir)
        _mark(cn_dir)
        timings["controlnet"] = time.perf_counter() - t
        t = time.perf_counter()
        # The image encoder goes to sdxl_models/image_encoder, as in the hub repo.
        build_ip_adapter_files(
            ip_dir, pipe.unet, small=small, seed=seed, dtype=dtype, device=device, weight_name=IP_WEIGHT
        )
        timings["ip_adapter"] = time.perf_counter() - t
        del pipe
    if not _done(vae_dir):
        build_vae(dtype, device, small=small, seed=seed + 100).save_pretrained(vae_dir)
        _mark(vae_dir)
    if not _done(clip_dir):
        t = time.perf_counter()
        model, processor = build_clip_scorer_model(torch.device(device), small=small, seed=seed)
        # fp32, as the hub repo: ClipScorer loads it without a dtype, so the file's dtype is the scoring dtype.
        model.float().save_pretrained(clip_dir)
        processor.save_pretrained(clip_dir)
        _mark(clip_dir)
        timings["clip"] = time.perf_counter() - t
    for hub_id, build in ((LIKENESS, build_likeness), (DETECTOR, build_detector)):
        if not _done(root / hub_id):
            t = time.perf_counter()
            build(root / hub_id, small=small, seed=seed)
            _mark(root / hub_id)
            timings[hub_id.split("/")[1]] = time.perf_counter() - t
    if not _done(klein):
        t = time.perf_counter()
        write_klein(klein, root / "_qwen_tokenizer", device=device, small=small, seed=seed)
        timings["flux2_klein"] = time.perf_counter() - t
    if device == "cuda":
        torch.cuda.empty_cache()
    logger.info("model folders in %s (%s)", root, ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    return {
        "models.sdxl.base": str(base),
        "models.sdxl.vae": str(vae_dir),
        "models.sdxl.ip_adapter": str(root / IP_ADAPTER),
        "models.sdxl.ip_adapter_subfolder": IP_SUBFOLDER,
        "models.sdxl.ip_adapter_weight": IP_WEIGHT,
        "models.sdxl.ip_adapter_image_encoder": "image_encoder",
        "models.sdxl.controlnet": str(cn_dir),
        "models.sdxl.clip": str(clip_dir),
        "models.sdxl.likeness": str(root / LIKENESS),
        "models.sdxl.detector": str(root / DETECTOR),
        "models.sdxl.multiref": str(klein),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="folder to write the hub-layout folders under")
    parser.add_argument("--device", default="cuda", help="where to build (cuda: bf16; cpu: fp32)")
    parser.add_argument("--small", action="store_true", help="tiny sizes (the CPU check)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--klein-root", type=Path, help="where FLUX.2 klein's folder goes (default: --root)")
    args = parser.parse_args()
    setup_logging()
    t = time.perf_counter()
    overrides = write_folders(
        Path(args.root), device=args.device, small=args.small, seed=args.seed, klein_root=args.klein_root
    )
    print(json.dumps({"root": args.root, "small": args.small, "s": round(time.perf_counter() - t, 1), **overrides}))


if __name__ == "__main__":
    main()
