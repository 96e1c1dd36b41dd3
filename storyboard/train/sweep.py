"""Checkpoint sweep (train.select: best): which saved step's LoRA becomes models/lora.

Over-training is the usual way a character LoRA goes wrong: it copies its training images and stops obeying the
prompt. At every saved step the validation prompts are rendered (fixed seeds) and that step's LoRA is kept; when
training ends, each step's samples are scored for identity (evaluate's character-to-training-set figure: CLIP
features of the character crop, around the largest face, against the training images) and for text alignment
(CLIP cosine of each sample and its prompt). The chosen step has the highest identity among the steps whose text
alignment is within `train.select_tolerance` of the best step's: an over-fit step, which gains identity by
losing the prompt, is out.

Samples and scores are kept beside the checkpoints under names derived from the validation settings and from the
scoring models and thresholds, so a resumed run scores only the steps it had not, and neither changed validation
prompts nor another scoring model reuse what no longer applies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Protocol

from PIL import Image

from storyboard.fsutil import atomic_path, write_json
from storyboard.settings import ModelSet, Settings, Train, Validation
from storyboard.train.export import LORA_WEIGHTS
from storyboard.train.progress import FAST_PNG

logger = logging.getLogger(__name__)

SHOWN_STEPS = 3  # steps whose samples the report shows: the chosen one and two others


@dataclass(frozen=True)
class StepScore:
    step: int
    identity: float  # mean cosine of the samples' character crops with the training images (CLIP)
    text_alignment: float  # mean CLIP cosine of each sample with its prompt


class StepScorer(Protocol):
    key: str  # names the scoring (models, thresholds): scores kept under another key are not reused

    def __call__(self, step: int, images: list[Image.Image], prompts: list[str]) -> tuple[float, float]:
        """(identity, text alignment) of one step's validation samples."""
        ...


class ClipStepScorer:
    """The real scorer: evaluate's own locator (character box, CLIP ViT-L/14 crop features, its face backend) against
    the training images' crops, and CLIP text alignment; loaded on first use."""

    def __init__(self, settings: Settings, models: ModelSet, device, dataset_dir: Path):
        self.settings, self.models, self.device, self.dataset_dir = settings, models, device, dataset_dir
        from storyboard.evaluate.independence import evaluate_face_backend

        e, c = settings.evaluate, settings.character
        what = [models.clip, models.detector, evaluate_face_backend(settings), models.face_model]
        what += [models.face_model_root, e.face_min_score, e.detector_prompt, c.name, c.description]
        self.key = hashlib.sha256(json.dumps(what).encode()).hexdigest()[:12]

    @classmethod
    def from_parts(cls, locator, references) -> ClipStepScorer:
        """Wrap a locator built elsewhere (the GPU benchmark builds full-size CLIP from its config)."""
        scorer = cls.__new__(cls)
        scorer.key = f"{locator.scorer.source}-{locator.faces.name}"
        scorer.__dict__["_parts"] = (locator, references)
        return scorer

    @cached_property
    def _parts(self):
        from storyboard.dataset import load_training_images
        from storyboard.evaluate.scores import Locator

        locator = Locator.of_evaluate(self.settings, self.models, self.device)
        references = locator.references(load_training_images(self.dataset_dir), faces=False)
        if references is None:
            raise ValueError(f"{self.dataset_dir} has no training images to score identity against")
        return locator, references

    def __call__(self, step: int, images: list[Image.Image], prompts: list[str]) -> tuple[float, float]:
        locator, references = self._parts
        clip = locator.scorer
        crops = clip.image_features(locator.crops(images)[1])
        identity = float((crops @ references.clip.T).mean())
        texts = clip.text_scores(images, prompts, clip.image_features(images))
        return identity, sum(texts) / len(texts)


def choose(scores: list[StepScore], tolerance: float) -> StepScore:
    """The step of highest identity whose text alignment is within `tolerance` of the best; ties: the earlier."""
    if not scores:
        raise ValueError("no scored steps to choose from")
    floor = max(s.text_alignment for s in scores) - tolerance
    return max((s for s in scores if s.text_alignment >= floor), key=lambda s: (s.identity, -s.step))


class Sweep:
    """The per-step LoRAs, samples and scores of one training run (`run_dir`, the checkpoint folder)."""

    def __init__(self, run_dir: Path, validation: Validation):
        # What the samples depend on; not `every`, which only says how often dvclive gets samples.
        drawn = validation.model_dump(mode="json", include={"prompts", "steps", "seed"})
        key = hashlib.sha256(json.dumps(drawn, sort_keys=True).encode()).hexdigest()
        self.loras = Path(run_dir) / "loras"
        self.folder = Path(run_dir) / f"sweep-{key[:12]}"
        self.prompts = list(validation.prompts)

    def lora_dir(self, step: int) -> Path:
        return self.loras / f"step-{step:07d}"

    def saved_steps(self) -> list[int]:
        return sorted(int(p.name[5:]) for p in self.loras.glob("step-*") if (p / LORA_WEIGHTS).exists())

    def sample_paths(self, step: int) -> list[Path]:
        return [self.folder / f"step{step:07d}_{i}.png" for i in range(len(self.prompts))]

    def has_step(self, step: int) -> bool:
        return (self.lora_dir(step) / LORA_WEIGHTS).exists() and all(p.exists() for p in self.sample_paths(step))

    def save_step(self, step: int, layers: dict, images: list[Image.Image]) -> None:
        """Keep `step`'s LoRA and samples; the samples first, so a step with weights always has them."""
        from diffusers import StableDiffusionXLPipeline

        self.folder.mkdir(parents=True, exist_ok=True)
        for path, image in zip(self.sample_paths(step), images, strict=True):
            with atomic_path(path) as staged:
                image.save(staged, format="PNG", compress_level=FAST_PNG)
        with atomic_path(self.lora_dir(step)) as staged:
            StableDiffusionXLPipeline.save_lora_weights(staged, weight_name=LORA_WEIGHTS, **layers)

    def scores(self, scorer: StepScorer) -> list[StepScore]:
        """Every saved step's scores; only the steps not scored before call `scorer`."""
        path = self.folder / f"scores-{scorer.key}.json"
        known = {s["step"]: StepScore(**s) for s in json.loads(path.read_text())} if path.exists() else {}
        out = []
        for step in self.saved_steps():
            if step not in known:
                if not all(p.exists() for p in self.sample_paths(step)):
                    logger.warning("step %d has no samples for these validation prompts: not in the sweep", step)
                    continue
                images = [Image.open(p).convert("RGB") for p in self.sample_paths(step)]
                identity, text = scorer(step, images, self.prompts)
                known[step] = StepScore(step, round(identity, 5), round(text, 5))
                logger.info("step %d: identity %.4f, text alignment %.4f", step, identity, text)
                write_json(path, [asdict(s) for s in sorted(known.values(), key=lambda s: s.step)])
            out.append(known[step])
        return out

    def publish_samples(self, scores: list[StepScore], chosen: StepScore, live_dir: Path) -> dict[int, list[str]]:
        """Copy the samples of the chosen step and two others (the first and last when they differ, else the
        nearest) into the dvclive folder, a stage output: the report and `dvc plots show` read them there."""
        steps = [s.step for s in scores]
        ranked = dict.fromkeys([chosen.step, steps[-1], steps[0], *sorted(steps, key=lambda s: abs(s - chosen.step))])
        shown = sorted(list(ranked)[:SHOWN_STEPS])
        target = Path(live_dir) / "plots" / "images" / "sweep"
        target.mkdir(parents=True, exist_ok=True)
        published = {}
        for step in shown:
            published[step] = []
            for path in self.sample_paths(step):
                shutil.copyfile(path, target / path.name)
                published[step].append(str(target / path.name))
        return published

    def copy_lora(self, step: int, out_dir: Path) -> Path:
        """`step`'s LoRA weights into `out_dir` (the stage's staged output folder)."""
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        target = Path(out_dir) / LORA_WEIGHTS
        shutil.copyfile(self.lora_dir(step) / LORA_WEIGHTS, target)
        return target


def sweep_metrics(settings: Train, scores: list[StepScore], chosen: StepScore, samples: dict[int, list[str]]) -> dict:
    """metrics/train.json: the choice, every step's scores (the plot reads `steps`) and, for the steps the report
    shows, their sample files and prompts."""
    return {
        "select": settings.select,
        "chosen_step": chosen.step,
        "identity": chosen.identity,
        "text_alignment": chosen.text_alignment,
        "select_tolerance": settings.select_tolerance,
        "steps": [{**asdict(s), "chosen": int(s.step == chosen.step)} for s in scores],
        "prompts": list(settings.validation.prompts),
        "samples": {str(step): paths for step, paths in samples.items()},
    }
