"""Render every planned story in one mode: what the generate stage and `storyboard generate` both call."""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from storyboard import TINY_NOTICE
from storyboard.caption.dataset import load_references
from storyboard.fsutil import atomic_path
from storyboard.generate.frames import Mode, RenderedFrame
from storyboard.generate.outputs import contact_sheet, write_story_outputs
from storyboard.generate.pipelines import load_renderers
from storyboard.log import logger
from storyboard.models.clip import ClipScorer
from storyboard.models.faces import load_face_backend
from storyboard.models.loading import Device, model_set
from storyboard.settings import Settings
from storyboard.story.plan import StoryPlan


def lora_hash(lora_dir: Path | None) -> str | None:
    if lora_dir is None:
        return None
    weights = Path(lora_dir) / "pytorch_lora_weights.safetensors"
    return hashlib.sha256(weights.read_bytes()).hexdigest() if weights.exists() else None


def render_plans(
    settings: Settings,
    modes: Sequence[Mode],
    plans: list[StoryPlan],
    out_roots: Mapping[Mode, Path],
    lora_dir: Path | None,
    dataset_dir: Path | None = None,
) -> dict[Mode, list[Path]]:
    """Render each plan in each mode into out_roots[mode]/<story_id>/; return those folders per mode.

    Models are loaded once for all the modes (see `load_renderers`), and when lora and ref_guided both run,
    ref_guided takes each story's frame 1 from lora instead of rendering the same frame again.
    """
    models = model_set(settings)
    device = Device.from_runtime(settings.runtime)
    scorer = ClipScorer(models.clip, device)
    training_images = load_references(dataset_dir)
    likeness_features = scorer.image_features(training_images) if training_images else None
    faces = None
    if "ref_guided" in modes and settings.generate.reference in ("face", "faceid"):
        faces = load_face_backend(models, settings.evaluate.face_min_score)
    renderers = load_renderers(
        modes,
        settings.generate,
        settings.character,
        models,
        device,
        scorer,
        lora_dir,
        likeness_features,
        faces,
        training_images,
    )
    notice = TINY_NOTICE if settings.is_tiny else None
    written: dict[Mode, list[Path]] = {}
    lora_first: dict[str, RenderedFrame] = {}  # story id -> frame 1 as the lora mode settled it
    for renderer in renderers:
        mode = renderer.mode
        for plan in tqdm(plans, desc=f"generate {mode}", unit="story"):
            t0 = time.perf_counter()
            reused = lora_first.get(plan.story_id) if mode == "ref_guided" else None
            frames = renderer.render(plan, first=reused)
            seconds = time.perf_counter() - t0
            if mode == "lora":
                lora_first[plan.story_id] = frames[0]
            metadata = {
                "story_id": plan.story_id,
                "story": plan.story,
                "plan": plan.model_dump(mode="json"),
                "mode": mode,
                "profile": settings.profile,
                "notice": notice,
                "planner": plan.planner,
                "models": models.model_dump(mode="json"),
                "lora_sha256": lora_hash(lora_dir) if mode != "baseline" else None,
                "generate": settings.generate.model_dump(mode="json"),
                "resolution": renderer.resolution,
                "device": str(device.device),
                "dtype": str(device.dtype).removeprefix("torch."),
                # frame 1 taken from the lora mode of the same run (its seconds are counted there)
                "frame_1_from": "lora" if reused is not None and frames[0] is reused else None,
                # generate.reference: faceid: whose face the identity embedding is (frame_1 | training_images)
                "identity_from": renderer.identity_from,
                # training images the likeness check compared each frame with, besides frame 1
                "likeness_references": len(training_images),
                "seconds_total": round(seconds, 3),
                "seconds_per_frame": round(seconds / len(frames), 3),
            }
            title = f"{plan.story_id} | {mode} | {plan.story}"
            sheet = contact_sheet(frames, title, settings.generate.contact_sheet_columns, notice)
            out_dir = Path(out_roots[mode]) / plan.story_id
            write_story_outputs(out_dir, frames, metadata, sheet, settings.generate.gif_frame_ms)
            logger.info("%s/%s: %d frames in %.1f s -> %s", mode, plan.story_id, len(frames), seconds, out_dir)
            written.setdefault(mode, []).append(out_dir)
    return written


def render_to(
    settings: Settings,
    mode: Mode,
    plans: list[StoryPlan],
    out: Path,
    lora_dir: Path | None,
    dataset_dir: Path | None = None,
) -> None:
    """Render all plans into `out`, atomically; under `accelerate launch`, the stories shard across processes.

    Every process renders its share into one shared staging folder; when all are done, the main process renames
    it into place, so `out` appears complete or not at all, whatever the number of processes.
    """
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes == 1:
        with atomic_path(out) as staged:
            render_plans(settings, [mode], plans, {mode: staged}, lora_dir, dataset_dir)
        return
    staging = out.parent / f".{out.name}.shards"
    if state.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    state.wait_for_everyone()
    with state.split_between_processes(plans) as mine:
        logger.info("process %d of %d: %d stories", state.process_index, state.num_processes, len(mine))
        render_plans(settings, [mode], list(mine), {mode: staging}, lora_dir, dataset_dir)
    state.wait_for_everyone()
    if state.is_main_process:
        with atomic_path(out) as staged:
            staging.rename(staged)
