"""The step sweep: each saved step scored, one chosen, its LoRA exported as models/lora, the scores as metrics.

select.step best: the chosen step has the highest identity among the steps whose text alignment is within
`select.tolerance` of the best step's, so an over-fit step, which gains identity by losing the prompt, is out.
last: the final step; a number: that saved step (neither scores anything).

Scores are kept in a cache folder outside DVC under the scorer's key (models, thresholds, character) and the
fingerprint of the scoring code, per step by the bytes of its samples and prompts: a rerun for another tolerance,
or a run killed half-way, scores only what it had not; another scoring model or threshold, an edit to the scoring
code, or retrained weights (other samples) score again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from storyboard.closure import code_fingerprint
from storyboard.errors import StoryboardError
from storyboard.fsutil import atomic_path, write_json
from storyboard.select.scorer import StepScorer
from storyboard.settings import Select
from storyboard.train.export import KOHYA_WEIGHTS, LORA_WEIGHTS
from storyboard.train.kohya import export_kohya
from storyboard.train.steps import SavedStep, SavedSteps, read_steps

logger = logging.getLogger(__name__)

SHOWN_STEPS = 3  # steps whose samples the report shows: the chosen one and two others
SCORING_CODE = "storyboard.select.scorer"  # its import closure: evaluate's locator, CLIP, the face backends


class SelectError(StoryboardError):
    """No step can be chosen as asked; the message says which knob to change."""


@dataclass(frozen=True)
class StepScore:
    step: int
    identity: float  # mean cosine of the samples' character crops with the training images (CLIP)
    text_alignment: float  # mean CLIP cosine of each sample with its prompt


def choose(scores: list[StepScore], tolerance: float) -> StepScore:
    """The step of highest identity whose text alignment is within `tolerance` of the best; ties: the earlier."""
    if not scores:
        raise SelectError(
            "no saved step has validation samples to score: give train.validation.prompts, or set select.step: last"
        )
    floor = max(s.text_alignment for s in scores) - tolerance
    return max((s for s in scores if s.text_alignment >= floor), key=lambda s: (s.identity, -s.step))


def _samples_digest(saved: SavedStep, prompts: list[str]) -> str:
    digest = hashlib.sha256(json.dumps(prompts).encode())
    for path in saved.samples:
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def score_steps(saved: SavedSteps, scorer: StepScorer, cache_dir: Path) -> list[StepScore]:
    """Every saved step's scores; only steps whose samples were not scored before call `scorer`."""
    key = hashlib.sha256(f"{scorer.key}\0{code_fingerprint(SCORING_CODE)}".encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"scores-{key}.json"
    known = json.loads(path.read_text()) if path.exists() else {}
    out = []
    for step in saved.steps:
        if not step.samples:
            logger.warning("step %d has no validation samples: not in the sweep", step.step)
            continue
        digest = _samples_digest(step, saved.prompts)
        if digest not in known:
            images = [Image.open(p).convert("RGB") for p in step.samples]
            identity, text = scorer(step.step, images, saved.prompts)
            known[digest] = [round(identity, 5), round(text, 5)]
            logger.info("step %d: identity %.4f, text alignment %.4f", step.step, identity, text)
            write_json(path, known)
        out.append(StepScore(step.step, *known[digest]))
    return out


def shown_steps(scores: list[StepScore], chosen: StepScore) -> list[int]:
    """The chosen step and two others: the first and last when they differ, else the nearest."""
    steps = [s.step for s in scores]
    ranked = dict.fromkeys([chosen.step, steps[-1], steps[0], *sorted(steps, key=lambda s: abs(s - chosen.step))])
    return sorted(list(ranked)[:SHOWN_STEPS])


def sweep_metrics(settings: Select, saved: SavedSteps, scores: list[StepScore], chosen: StepScore) -> dict:
    """metrics/train.json of a sweep: the choice, every step's scores (the plot reads `steps`) and, for the steps
    the report shows, their sample files (under models/steps) and prompts."""
    return {
        "select": settings.step,
        "chosen_step": chosen.step,
        "identity": chosen.identity,
        "text_alignment": chosen.text_alignment,
        "select_tolerance": settings.tolerance,
        "steps": [{**asdict(s), "chosen": int(s.step == chosen.step)} for s in scores],
        "prompts": saved.prompts,
        "samples": {str(step): [str(p) for p in saved.at(step).samples] for step in shown_steps(scores, chosen)},
    }


def export_lora(saved: SavedSteps, step: int, out_dir: Path) -> None:
    """Saved step `step` as models/lora: the diffusers file, the same in kohya's layout with the metadata train
    recorded for that step, and the run's summary."""
    chosen, kohya = saved.at(step), saved.kohya
    if step not in kohya.metadata:
        raise SelectError(f"{chosen.lora.parent.parent}: steps.json has no kohya metadata of step {step}; retrain")
    with atomic_path(Path(out_dir)) as staged:
        staged.mkdir()
        shutil.copyfile(chosen.lora, staged / LORA_WEIGHTS)
        export_kohya(
            staged / LORA_WEIGHTS,
            staged / KOHYA_WEIGHTS,
            unet_config=kohya.unet_config,
            alpha=kohya.alpha,
            metadata=kohya.metadata[step],
        )
        write_json(staged / "training.json", {**saved.training, "chosen_step": step})


def select_lora(
    settings: Select, steps_dir: Path, out_dir: Path, metrics_path: Path, *, scorer: StepScorer | None, cache_dir: Path
) -> dict:
    """Choose a saved step of `steps_dir` (models/steps), export its LoRA to `out_dir` and write the metrics.

    Args:
        settings: params.yaml's select section.
        steps_dir: the train stage's output (storyboard/train/steps.py).
        out_dir: the LoRA folder to write (models/lora).
        metrics_path: the choice and every step's scores (metrics/train.json).
        scorer: scores a step's samples; only select.step best uses it (select.scorer.ClipStepScorer).
        cache_dir: where scores are kept between runs.
    Returns the metrics written."""
    saved = read_steps(steps_dir)
    if settings.step == "best":
        if scorer is None:
            raise ValueError("select.step best needs a step scorer")
        scores = score_steps(saved, scorer, cache_dir)
        chosen = choose(scores, settings.tolerance)
        logger.info("select.step best: step %d of %s", chosen.step, [s.step for s in scores])
        metrics = sweep_metrics(settings, saved, scores, chosen)
    else:
        step = saved.steps[-1].step if settings.step == "last" else settings.step
        if step not in [s.step for s in saved.steps]:
            raise SelectError(f"select.step {step} is no saved step; saved: {[s.step for s in saved.steps]}")
        metrics = {"select": settings.step, "chosen_step": step, "steps": []}
    export_lora(saved, metrics["chosen_step"], out_dir)
    metrics["final_loss"] = saved.training.get("final_loss")
    write_json(Path(metrics_path), metrics)
    return metrics
