"""Render every planned story in one mode: what the generate stage and `storyboard generate` both call.

A story folder is written atomically and carries the hash of its inputs (see inputs.py); a rerun keeps every story
whose inputs are unchanged and renders the rest, so a crash loses at most the story it was rendering.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from storyboard import TINY_NOTICE
from storyboard.dataset import load_training_captions, load_training_images
from storyboard.generate.calibration import Thresholds, calibrate, needs_training_set
from storyboard.generate.frames import RenderedFrame, frame_prompt
from storyboard.generate.inputs import LORA_MODES, StoryInputs, file_sha256, is_rendered
from storyboard.generate.outputs import contact_sheet, read_first_frame, write_story_outputs
from storyboard.generate.pipelines import load_renderers
from storyboard.generate.references import Reference, load_references, sheet_files
from storyboard.generate.sharing import SOLO, Group
from storyboard.log import logger
from storyboard.models.clip import ClipScorer
from storyboard.models.faces import load_face_backend
from storyboard.models.likeness import LikenessScorer
from storyboard.models.loading import Device, model_set
from storyboard.models.prompts import parse_ahead
from storyboard.settings import Mode, ModelSet, Settings
from storyboard.story.plan import StoryPlan


def render_plans(
    settings: Settings,
    modes: Sequence[Mode],
    plans: list[StoryPlan],
    out_roots: Mapping[Mode, Path],
    lora_dir: Path | None,
    dataset_dir: Path | None = None,
    group: Group = SOLO,
    first_from: Path | None = None,
    references_dir: Path | None = None,
) -> dict[Mode, list[Path]]:
    """Render each plan in each mode into out_roots[mode]/<story_id>/; return those folders per mode.

    With a `group` of several processes, each story's frame batches spread over them and the main process writes.

    Stories already there from the same inputs are kept as they are. Models are loaded once for all the modes (see
    `load_renderers`), and only when some story needs rendering; the checks' models (CLIP, DINOv2) also when an
    `auto` threshold is calibrated on the training pictures (calibration.py), which every story's inputs hold.
    ref_guided's frame 1 is the LoRA alone, the frame lora renders first: ref_guided takes it from lora's render in
    this run, or from lora's folder (`first_from`, the DVC pipeline's way; else out_roots["lora"]) when lora
    rendered the story there from this run's inputs. multiref takes its references from `references_dir` (the
    user's sheet) or the training set (references.py), and is judged by the same thresholds.
    """
    models = model_set(settings)
    lora_sha256 = file_sha256(Path(lora_dir) / "pytorch_lora_weights.safetensors") if lora_dir else None
    started = time.perf_counter()
    device = Device.from_runtime(settings.runtime)
    training_images = load_training_images(dataset_dir)
    thresholds, checks = _calibrated(settings, models, device, dataset_dir, training_images, group)
    written: dict[Mode, list[Path]] = {mode: [] for mode in modes}
    todo: dict[Mode, list[tuple[StoryPlan, str]]] = {}
    for mode in modes:
        inputs = StoryInputs(
            settings, mode, models, lora_sha256, dataset_dir, thresholds=thresholds, references=references_dir
        )
        for plan in plans:
            story_dir = Path(out_roots[mode]) / plan.story_id
            written[mode].append(story_dir)
            key = inputs.of(plan)
            if is_rendered(story_dir, key):
                logger.info("%s/%s: kept (rendered before from the same inputs)", mode, plan.story_id)
            else:
                todo.setdefault(mode, []).append((plan, key))
    if not todo:
        return written

    # compel's parse of every prompt to render is host work: done while the models load and the GPU renders.
    # multiref's prompts go to FLUX.2 klein's Qwen3 tokenizer whole, unparsed.
    sdxl_todo = [stories for mode, stories in todo.items() if mode != "multiref"]
    if sdxl_todo:
        parse_ahead(
            [settings.generate.negative_prompt]
            + [
                frame_prompt(frame, settings.character, settings.generate.style)
                for stories in sdxl_todo
                for plan, _ in stories
                for frame in plan.frames
            ]
        )
    checks = checks or _CheckModels.load(models, device, training_images)
    faces = None
    ip_faces = "ref_guided" in todo and settings.generate.reference in ("face", "faceid")
    reference_rule = "multiref" in todo and not sheet_files(references_dir)  # no sheet: the rule reads faces
    if ip_faces or reference_rule:
        faces = load_face_backend(models, settings.generate.face_min_score)
    references: list[Reference] = []
    if "multiref" in todo:
        references = load_references(references_dir, dataset_dir, faces, count=settings.generate.multiref.references)
    renderers = load_renderers(
        list(todo),
        settings.generate,
        settings.character,
        models,
        device,
        checks.scorer,
        lora_dir,
        checks.likeness_features,
        faces,
        training_images,
        checks.likeness,
        thresholds,
        references,
    )
    logger.info("%s: models ready in %.1f s", ", ".join(todo), time.perf_counter() - started)
    notice = TINY_NOTICE if settings.is_tiny else None
    # story id -> frame 1 as the lora mode settled it: read from lora's folder now, or rendered below (lora first)
    lora_root = first_from or out_roots.get("lora")
    lora_first = _lora_first_frames(settings, models, lora_sha256, dataset_dir, todo, lora_root, thresholds)
    # A story's files (PNG encoding, contact sheet, GIF: 3-4 s a story at 1024 px on the H200 machine) are written
    # on a thread while the next story renders. Leaving the block waits for them, also when rendering fails, so
    # every story rendered is kept.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="story-writer") as writer:
        pending: list[Future] = []
        for renderer in renderers:
            mode = renderer.mode
            for plan, key in tqdm(todo[mode], desc=f"generate {mode}", unit="story"):
                t0 = time.perf_counter()
                reused = lora_first.get(plan.story_id) if mode == "ref_guided" else None
                frames = renderer.render(plan, first=reused, group=group)
                seconds = time.perf_counter() - t0
                if mode == "lora":
                    lora_first[plan.story_id] = frames[0]
                if not group.is_main:
                    continue
                metadata = {
                    "story_id": plan.story_id,
                    "story": plan.story,
                    "plan": plan.model_dump(mode="json"),
                    "mode": mode,
                    "profile": settings.profile,
                    "notice": notice,
                    "planner": plan.planner,
                    "models": models.model_dump(mode="json"),
                    "lora_sha256": lora_sha256 if mode in LORA_MODES else None,
                    "generate": settings.generate.model_dump(mode="json"),
                    # what the frames were sampled with: generate.sampler's steps and guidance replace the
                    # generate section's when it is not standard
                    "sampling": renderer.sampling(),
                    "resolution": renderer.resolution,
                    "device": str(device.device),
                    "processes": group.size,
                    "dtype": str(device.dtype).removeprefix("torch."),
                    # frame 1 taken from the lora mode of the same run (its seconds are counted there)
                    "frame_1_from": "lora" if reused is not None and frames[0] is reused else None,
                    # generate.reference: faceid: whose face the identity embedding is (frame_1 | training_images)
                    "identity_from": renderer.identity_from,
                    # multiref: the reference images every frame was rendered from, and why each was chosen
                    # (sheet: the user's; clearest_face / fullest_figure: references.py's rule over the training set)
                    "references": [{"name": r.name, "why": r.why} for r in references] if mode == "multiref" else None,
                    # training images the likeness check compared each frame with, besides frame 1
                    "likeness_references": len(training_images),
                    # the checks' thresholds this story was judged by: values, and how each was reached
                    "thresholds": thresholds.record(),
                    # what picked each frame's kept attempt: every attempt's clip_text_score and likeness are these
                    # models' scores, the selection's own, not evaluate's (which uses none of them for identity)
                    "selection": {
                        "text_model": models.clip,
                        "likeness_model": models.likeness,
                        "conditioning_face_backend": faces.name
                        if faces is not None and mode == "ref_guided" and settings.generate.reference == "faceid"
                        else None,
                        # multiref's rule picked its clearest-face reference by this backend's detections
                        "reference_face_backend": faces.name
                        if mode == "multiref" and any(r.why == "clearest_face" for r in references)
                        else None,
                    },
                    # what this story was rendered from; a rerun with the same hash keeps the folder
                    "inputs_sha256": key,
                    "seconds_total": round(seconds, 3),
                    "seconds_per_frame": round(seconds / len(frames), 3),
                }
                out_dir = Path(out_roots[mode]) / plan.story_id
                pending.append(writer.submit(_write_story, out_dir, frames, metadata, settings))
        for write in pending:
            write.result()  # a failed write raises here
    return written


@dataclass
class _CheckModels:
    """The frame checks' models, and the likeness features of the training images the check compares with."""

    scorer: ClipScorer
    likeness: LikenessScorer
    likeness_features: torch.Tensor | None

    @classmethod
    def load(cls, models: ModelSet, device: Device, training_images: Sequence[Image.Image]) -> _CheckModels:
        likeness = LikenessScorer(models.likeness, device)
        features = likeness.image_features(training_images) if training_images else None
        return cls(ClipScorer(models.clip, device), likeness, features)


def _calibrated(
    settings: Settings,
    models: ModelSet,
    device: Device,
    dataset_dir: Path | None,
    training_images: list[Image.Image],
    group: Group,
) -> tuple[Thresholds, _CheckModels | None]:
    """This run's thresholds, and the checks' models when calibrating them needed those (None: not loaded yet)."""
    checks = None
    if training_images and needs_training_set(settings.generate):
        checks = _CheckModels.load(models, device, training_images)
    thresholds = calibrate(
        settings.generate,
        images=training_images,
        captions=load_training_captions(dataset_dir),
        trigger=settings.character.trigger,
        scorer=checks.scorer if checks else None,
        likeness_features=checks.likeness_features if checks else None,
    )
    # Every process must hash the same values: the main process's.
    return group.broadcast(thresholds), checks


def _lora_first_frames(
    settings: Settings,
    models: ModelSet,
    lora_sha256: str | None,
    dataset_dir: Path | None,
    todo: Mapping[Mode, list[tuple[StoryPlan, str]]],
    lora_root: Path | None,
    thresholds: Thresholds,
) -> dict[str, RenderedFrame]:
    """Frame 1 of each ref_guided story to render whose lora story is already in `lora_root`, rendered from this
    run's inputs (the same frame: the LoRA alone, the same prompt and seeds); stories lora renders in this run
    hand theirs over as they go."""
    if lora_root is None or "ref_guided" not in todo:
        return {}
    rendering = {plan.story_id for plan, _ in todo.get("lora", [])}
    inputs = StoryInputs(settings, "lora", models, lora_sha256, dataset_dir, thresholds=thresholds)
    found = {}
    for plan, _ in todo["ref_guided"]:
        story_dir = Path(lora_root) / plan.story_id
        if plan.story_id not in rendering and is_rendered(story_dir, inputs.of(plan)):
            found[plan.story_id] = read_first_frame(story_dir, plan)
    if found:
        logger.info("ref_guided: frame 1 of %d stories from %s (the lora mode's)", len(found), lora_root)
    return found


def _write_story(out_dir: Path, frames: list[RenderedFrame], metadata: dict, settings: Settings) -> None:
    title = f"{metadata['story_id']} | {metadata['mode']} | {metadata['story']}"
    sheet = contact_sheet(frames, title, settings.generate.contact_sheet_columns, metadata["notice"])
    write_story_outputs(out_dir, frames, metadata, sheet, settings.generate.gif_frame_ms)
    seconds = metadata["seconds_total"]
    logger.info(
        "%s/%s: %d frames in %.1f s -> %s", metadata["mode"], metadata["story_id"], len(frames), seconds, out_dir
    )


def remove_other_stories(out: Path, story_ids: Sequence[str]) -> None:
    """Delete what a persisted output folder holds besides these stories: dropped stories, a killed run's temp
    folders."""
    for path in Path(out).iterdir() if Path(out).is_dir() else ():
        if path.name not in story_ids:
            logger.info("removing %s (not a story of this run)", path)
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def render_to(
    settings: Settings,
    mode: Mode,
    plans: list[StoryPlan],
    out: Path,
    lora_dir: Path | None,
    dataset_dir: Path | None = None,
    first_from: Path | None = None,
    references_dir: Path | None = None,
) -> None:
    """Bring `out` up to date with the plans: render what is missing or changed, keep the rest, drop the others.
    `first_from`: the lora mode's output folder, where ref_guided finds its frames 1 (see render_plans);
    `references_dir`: multiref's reference sheet.

    Under `accelerate launch` every process goes through the same stories; each renders its share of a story's
    frame batches (sharing.py) and the main process writes the story folder (atomically) once they are gathered.
    """
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    group = Group.current()
    out = Path(out)
    if group.is_main:
        out.mkdir(parents=True, exist_ok=True)
    # Every process decides what to render from the same folder, before the main process writes to it.
    state.wait_for_everyone()
    if group.size > 1:
        logger.info("process %d of %d: rendering a share of every story's frame batches", group.rank, group.size)
    render_plans(settings, [mode], plans, {mode: out}, lora_dir, dataset_dir, group, first_from, references_dir)
    state.wait_for_everyone()
    if group.is_main:
        remove_other_stories(out, [plan.story_id for plan in plans])
