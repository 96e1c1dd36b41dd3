"""What a rendered story depends on, as one hash: a story folder is reused only when all of it is unchanged.

The generate stage keeps its outputs between runs (a `persist` output in dvc.yaml), so a run killed at story 3
keeps stories 1 and 2, and an edited plan re-renders that story alone. For that to be safe, the hash covers
exactly what the mode reads, the same keys dvc.yaml lists for generate@<mode>: a knob that only ref_guided reads
must not invalidate baseline's stories the next time baseline reruns for another reason.

The frame checks' thresholds enter as the values this run applies (calibration.py), not as the settings that
produced them: a training set or percentile that yields the same values renders nothing again, a new training
picture that moves them re-renders.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from storyboard.closure import code_fingerprint
from storyboard.generate.calibration import Thresholds
from storyboard.generate.samplers import SAMPLERS, sampler_of
from storyboard.settings import Mode, ModelSet, Settings
from storyboard.story.plan import StoryPlan

# Generate knobs that only some modes read; every other generate knob is read by all three.
MODE_KNOBS: dict[Mode, frozenset[str]] = {
    "baseline": frozenset(),
    "lora": frozenset({"lora_scale"}),
    "ref_guided": frozenset({"lora_scale", "ip_adapter_scale", "controlnet_scale", "reference", "face_min_score"}),
}
# The models baseline and lora load; ref_guided loads every model of the set (adapters, ControlNet, faces) but
# evaluate's detector.
RENDER_MODELS = ("base", "vae", "clip", "likeness")
EVALUATE_MODELS = ("detector",)
RENDER_CODE = "storyboard.generate.run"  # its import closure is all the code a render runs through
# Generate knobs that reach the render only through the thresholds they yield (StoryInputs' `thresholds`).
THRESHOLD_KNOBS = frozenset({"clip_threshold", "likeness_threshold", "calibration"})


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path | None) -> str | None:
    return _sha256(Path(path).read_bytes()) if path is not None and Path(path).is_file() else None


class StoryInputs:
    """Hashes one mode's inputs once per run; `of(plan)` adds a story's plan."""

    def __init__(
        self,
        settings: Settings,
        mode: Mode,
        models: ModelSet,
        lora_sha256: str | None,
        dataset: Path | None,
        *,
        thresholds: Thresholds,
    ):
        others = (set().union(*MODE_KNOBS.values()) - MODE_KNOBS[mode]) | THRESHOLD_KNOBS
        # the few-step LoRAs: only the one generate.sampler fuses in
        unused = {f"{s.lora_key}{end}" for s in SAMPLERS.values() for end in ("", "_weight")}
        sampler = sampler_of(settings.generate.sampler)
        sampler_models = (sampler.lora_key, f"{sampler.lora_key}_weight") if sampler else ()
        used_models = models.model_dump(mode="json", exclude=set(EVALUATE_MODELS) | (unused - set(sampler_models)))
        if mode != "ref_guided":
            used_models = {k: used_models[k] for k in RENDER_MODELS + sampler_models}
        self.common = {
            "mode": mode,
            "profile": settings.profile,
            "runtime": settings.runtime.model_dump(mode="json"),
            "character": settings.character.model_dump(mode="json"),
            "generate": settings.generate.model_dump(mode="json", exclude=others),
            "thresholds": thresholds.values(),
            "models": used_models,
            "lora_sha256": lora_sha256 if mode != "baseline" else None,
            # the likeness check compares with the training images: the manifest names each by content hash
            "dataset_sha256": file_sha256(Path(dataset) / "manifest.jsonl") if dataset is not None else None,
            "code_sha256": code_fingerprint(RENDER_CODE),
        }

    def of(self, plan: StoryPlan) -> str:
        blob = json.dumps({**self.common, "plan": plan.model_dump(mode="json")}, sort_keys=True)
        return _sha256(blob.encode())


def is_rendered(story_dir: Path, inputs_sha256: str) -> bool:
    """True when `story_dir` holds a complete story made from these inputs (folders are written atomically)."""
    try:
        metadata = json.loads((Path(story_dir) / "metadata.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    files = [f["file"] for f in metadata.get("frames", [])] + ["contact_sheet.png", "story.gif"]
    return metadata.get("inputs_sha256") == inputs_sha256 and all((Path(story_dir) / f).is_file() for f in files)
