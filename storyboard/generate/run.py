"""Render every planned story in one mode: what the generate stage and `storyboard generate` both call.

A story folder is written atomically and carries the hash of its inputs (see inputs.py); a rerun keeps every story
whose inputs are unchanged and renders the rest, so a crash loses at most the story it was rendering.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from storyboard import TINY_NOTICE
from storyboard.dataset import load_training_captions, load_training_images
from storyboard.generate.calibration import Thresholds, calibrate, needs_training_set
from storyboard.generate.frames import RenderedFrame, frame_prompt
from storyboard.generate.inputs import LORA_MODES, StoryInputs, file_sha256, is_rendered
from storyboard.generate.outputs import contact_sheet, read_first_frame, relayout, write_story_outputs
from storyboard.generate.pipelines import load_renderers
from storyboard.generate.references import Reference, load_references, sheet_files
from storyboard.generate.renderer import StoryRenderer
from storyboard.generate.sharing import SOLO, Group
from storyboard.models.clip import ClipScorer
from storyboard.models.faces import FaceBackend, load_face_backend
from storyboard.models.likeness import LikenessScorer
from storyboard.models.loading import Device, model_set
from storyboard.models.prompts import parse_ahead
from storyboard.settings import Mode, ModelSet, Settings
from storyboard.story.plan import StoryPlan

logger = logging.getLogger(__name__)


def render_plans(
    settings: Settings,
    modes: Sequence[Mode],
    plans: list[StoryPlan],
    out_roots: Mapping[Mode, Path],
    lora_dir: Path | None,
    *,
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
    run = _Run(settings, models, device, group, lora_sha256, dataset_dir, training_images, thresholds)
    written, todo = _kept_and_todo(run, modes, plans, out_roots, references_dir)
    if not todo:
        return written

    _parse_prompts_ahead(settings, todo)
    checks = checks or _CheckModels.load(models, device, training_images)
    run = _with_conditioning(run, todo, references_dir)
    renderers = _renderers(run, todo, checks, lora_dir)
    logger.info("%s: models ready in %.1f s", ", ".join(todo), time.perf_counter() - started)
    # story id -> frame 1 as the lora mode settled it: read from lora's folder now, or rendered below (lora first)
    lora_first = _lora_first_frames(run, todo, first_from or out_roots.get("lora"))
    _render_stories(run, renderers, todo, out_roots, lora_first)
    return written


# mode -> the stories to render in it, each with the hash of its inputs
_Todo = dict[Mode, list[tuple[StoryPlan, str]]]


@dataclass(frozen=True)
class _Run:
    """What every story of one render_plans call is rendered and recorded with."""

    settings: Settings
    models: ModelSet
    device: Device
    group: Group
    lora_sha256: str | None
    dataset_dir: Path | None
    training_images: list[Image.Image]
    thresholds: Thresholds
    faces: FaceBackend | None = None
    references: list[Reference] = field(default_factory=list)


def _kept_and_todo(
    run: _Run,
    modes: Sequence[Mode],
    plans: list[StoryPlan],
    out_roots: Mapping[Mode, Path],
    references_dir: Path | None,
) -> tuple[dict[Mode, list[Path]], _Todo]:
    """Every mode's story folders, and the stories to render: a story rendered there before from the same inputs is
    kept, its contact sheet and GIF redrawn when only the presentation knobs changed."""
    g = run.settings.generate
    written: dict[Mode, list[Path]] = {mode: [] for mode in modes}
    todo: _Todo = {}
    for mode in modes:
        inputs = StoryInputs(
            run.settings,
            mode,
            run.models,
            run.lora_sha256,
            run.dataset_dir,
            thresholds=run.thresholds,
            references=references_dir,
        )
        for plan in plans:
            story_dir = Path(out_roots[mode]) / plan.story_id
            written[mode].append(story_dir)
            key = inputs.of(plan)
            if not is_rendered(story_dir, key):
                todo.setdefault(mode, []).append((plan, key))
                continue
            logger.info("%s/%s: kept (rendered before from the same inputs)", mode, plan.story_id)
            if relayout(story_dir, plan, columns=g.contact_sheet_columns, gif_frame_ms=g.gif_frame_ms):
                logger.info("%s/%s: contact sheet and GIF redrawn (presentation knobs)", mode, plan.story_id)
    return written, todo


def _parse_prompts_ahead(settings: Settings, todo: _Todo) -> None:
    """Start compel's parse of every SDXL prompt to render: host work, done while the models load and the GPU
    renders. multiref's prompts go to FLUX.2 klein's Qwen3 tokenizer whole, unparsed."""
    sdxl_todo = [stories for mode, stories in todo.items() if mode != "multiref"]
    if not sdxl_todo:
        return
    g = settings.generate
    prompts = [
        frame_prompt(frame, settings.character, g.style)
        for stories in sdxl_todo
        for plan, _ in stories
        for frame in plan.frames
    ]
    parse_ahead([g.negative_prompt] + prompts)


def _with_conditioning(run: _Run, todo: _Todo, references_dir: Path | None) -> _Run:
    """The run with the face backend, when ref_guided's IP-Adapter or multiref's reference rule reads faces, and
    multiref's references."""
    g = run.settings.generate
    ip_faces = "ref_guided" in todo and g.reference in ("face", "faceid")
    reference_rule = "multiref" in todo and not sheet_files(references_dir)  # no sheet: the rule reads faces
    faces = load_face_backend(run.models, g.face_min_score) if ip_faces or reference_rule else None
    references: list[Reference] = []
    if "multiref" in todo:
        references = load_references(references_dir, run.dataset_dir, faces, count=g.multiref.references)
    return replace(run, faces=faces, references=references)


def _renderers(run: _Run, todo: _Todo, checks: _CheckModels, lora_dir: Path | None) -> Iterator[StoryRenderer]:
    """The renderers of the modes with stories to render, judging by the checks' models (see `load_renderers`)."""
    return load_renderers(
        list(todo),
        run.settings.generate,
        run.settings.character,
        run.models,
        run.device,
        checks.scorer,
        lora_dir,
        likeness_features=checks.likeness_features,
        faces=run.faces,
        training_images=run.training_images,
        likeness=checks.likeness,
        thresholds=run.thresholds,
        references=run.references,
    )


def _render_stories(
    run: _Run,
    renderers: Iterable[StoryRenderer],
    todo: _Todo,
    out_roots: Mapping[Mode, Path],
    lora_first: dict[str, RenderedFrame],
) -> None:
    """Render the stories to do, mode after mode, and write each story's folder (the main process); the lora mode
    hands each story's frame 1 to ref_guided through `lora_first`."""
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
                frames = renderer.render(plan, first=reused, group=run.group)
                seconds = time.perf_counter() - t0
                if mode == "lora":
                    lora_first[plan.story_id] = frames[0]
                if not run.group.is_main:
                    continue
                metadata = _story_metadata(run, renderer, plan, frames, key=key, reused=reused, seconds=seconds)
                out_dir = Path(out_roots[mode]) / plan.story_id
                pending.append(writer.submit(_write_story, out_dir, frames, metadata, run.settings))
        for write in pending:
            write.result()  # a failed write raises here


def _story_metadata(
    run: _Run,
    renderer: StoryRenderer,
    plan: StoryPlan,
    frames: list[RenderedFrame],
    *,
    key: str,
    reused: RenderedFrame | None,
    seconds: float,
) -> dict:
    """A rendered story's metadata.json, less its frames' records."""
    mode, device, settings = renderer.mode, run.device, run.settings
    return {
        "story_id": plan.story_id,
        "story": plan.story,
        "plan": plan.model_dump(mode="json"),
        "mode": mode,
        "profile": settings.profile,
        "notice": TINY_NOTICE if settings.is_tiny else None,
        "planner": plan.planner,
        "models": run.models.model_dump(mode="json"),
        "lora_sha256": run.lora_sha256 if mode in LORA_MODES else None,
        "generate": settings.generate.model_dump(mode="json"),
        # what the frames were sampled with: generate.sampler's steps and guidance replace the generate section's
        # when it is not standard
        "sampling": renderer.sampling(),
        "resolution": renderer.resolution,
        "device": str(device.device),
        "processes": run.group.size,
        "dtype": str(device.dtype).removeprefix("torch."),
        # frame 1 taken from the lora mode of the same run (its seconds are counted there)
        "frame_1_from": "lora" if reused is not None and frames[0] is reused else None,
        # generate.reference: faceid: whose face the identity embedding is (frame_1 | training_images)
        "identity_from": renderer.identity_from,
        # multiref: the reference images every frame was rendered from, and why each was chosen (sheet: the user's;
        # clearest_face / fullest_figure: references.py's rule over the training set)
        "references": [{"name": r.name, "why": r.why} for r in run.references] if mode == "multiref" else None,
        # training images the likeness check compared each frame with, besides frame 1
        "likeness_references": len(run.training_images),
        # the checks' thresholds this story was judged by: values, and how each was reached
        "thresholds": run.thresholds.record(),
        "selection": _selection(run, mode),
        # what this story was rendered from; a rerun with the same hash keeps the folder
        "inputs_sha256": key,
        "seconds_total": round(seconds, 3),
        "seconds_per_frame": round(seconds / len(frames), 3),
    }


def _selection(run: _Run, mode: Mode) -> dict:
    """What picked each frame's kept attempt: every attempt's clip_text_score and likeness are these models' scores,
    the selection's own, not evaluate's (which uses none of them for identity)."""
    faces = run.faces
    faceid = faces is not None and mode == "ref_guided" and run.settings.generate.reference == "faceid"
    # multiref's rule picked its clearest-face reference by this backend's detections
    clearest_face = mode == "multiref" and any(r.why == "clearest_face" for r in run.references)
    return {
        "text_model": run.models.clip,
        "likeness_model": run.models.likeness,
        "conditioning_face_backend": faces.name if faceid else None,
        "reference_face_backend": faces.name if clearest_face else None,
    }


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


def _lora_first_frames(run: _Run, todo: _Todo, lora_root: Path | None) -> dict[str, RenderedFrame]:
    """Frame 1 of each ref_guided story to render whose lora story is already in `lora_root`, rendered from this
    run's inputs (the same frame: the LoRA alone, the same prompt and seeds); stories lora renders in this run
    hand theirs over as they go."""
    if lora_root is None or "ref_guided" not in todo:
        return {}
    rendering = {plan.story_id for plan, _ in todo.get("lora", [])}
    inputs = StoryInputs(run.settings, "lora", run.models, run.lora_sha256, run.dataset_dir, thresholds=run.thresholds)
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
    render_plans(
        settings,
        [mode],
        plans,
        {mode: out},
        lora_dir,
        dataset_dir=dataset_dir,
        group=group,
        first_from=first_from,
        references_dir=references_dir,
    )
    state.wait_for_everyone()
    if group.is_main:
        remove_other_stories(out, [plan.story_id for plan in plans])
