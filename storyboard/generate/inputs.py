"""What a rendered story depends on, as one hash: a story folder is reused only when all of it is unchanged.

The generate stage keeps its outputs between runs (a `persist` output in dvc.yaml), so a run killed at story 3
keeps stories 1 and 2, and an edited plan re-renders that story alone. For that to be safe, the hash covers
exactly what the mode reads, the same keys dvc.yaml lists for generate@<mode>: a knob that only ref_guided reads
must not invalidate baseline's stories the next time baseline reruns for another reason. Where dvc.yaml lists more
than a mode reads (one shared list: multiref is given SDXL's steps and sampler), the hash leaves the extra keys out,
so that rerun renders nothing.

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
from storyboard.generate.references import sheet_sha256
from storyboard.generate.samplers import SAMPLERS, sampler_of
from storyboard.settings import Mode, ModelSet, Settings
from storyboard.story.plan import StoryPlan

# Generate knobs that only some modes read; every other generate knob is read by all four.
# multiref has its own steps and guidance, and FLUX.2 klein is step-distilled already: no sampler LoRA
SDXL_KNOBS = frozenset({"steps", "guidance_scale", "negative_prompt", "sampler"})
MODE_KNOBS: dict[Mode, frozenset[str]] = {
    "baseline": SDXL_KNOBS,
    "lora": SDXL_KNOBS | {"lora_scale"},
    "ref_guided": SDXL_KNOBS | {"lora_scale", "ip_adapter_scale", "controlnet_scale", "reference", "face_min_score"},
    "multiref": frozenset({"multiref"}),
}
# The models each mode loads: ref_guided loads every SDXL model of the set (adapters, ControlNet, faces); multiref
# FLUX.2 klein and the face backend its reference rule reads; all of them the scorers of the checks.
RENDER_MODELS = ("base", "vae", "clip", "likeness")
FACE_MODELS = ("face_backend", "face_model", "face_model_root")
MODE_MODELS: dict[Mode, tuple[str, ...]] = {
    "baseline": RENDER_MODELS,
    "lora": RENDER_MODELS,
    "multiref": ("multiref", "clip", "likeness", *FACE_MODELS),
}
EVALUATE_MODELS = ("detector",)
LORA_MODES = ("lora", "ref_guided")
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
        references: Path | None = None,
    ):
        """`references`: the user's reference sheet folder (multiref: its images' hashes join the hash)."""
        others = (set().union(*MODE_KNOBS.values()) - MODE_KNOBS[mode]) | THRESHOLD_KNOBS
        # the few-step LoRAs: only the one generate.sampler fuses in, and never into multiref's FLUX.2 klein
        unused = {f"{s.lora_key}{end}" for s in SAMPLERS.values() for end in ("", "_weight")}
        sampler = sampler_of(settings.generate.sampler) if mode != "multiref" else None
        sampler_models = (sampler.lora_key, f"{sampler.lora_key}_weight") if sampler else ()
        all_models = models.model_dump(mode="json")
        if mode in MODE_MODELS:
            used_models = {k: all_models[k] for k in MODE_MODELS[mode] + sampler_models}
        else:
            dropped = {*EVALUATE_MODELS, "multiref", *(unused - set(sampler_models))}
            used_models = {k: v for k, v in all_models.items() if k not in dropped}
        self.common = {
            "mode": mode,
            "profile": settings.profile,
            "runtime": settings.runtime.model_dump(mode="json"),
            "character": settings.character.model_dump(mode="json"),
            "generate": settings.generate.model_dump(mode="json", exclude=others),
            "thresholds": thresholds.values(),
            "models": used_models,
            "lora_sha256": lora_sha256 if mode in LORA_MODES else None,
            # the likeness check compares with the training images: the manifest names each by content hash
            "dataset_sha256": file_sha256(Path(dataset) / "manifest.jsonl") if dataset is not None else None,
            "code_sha256": code_fingerprint(RENDER_CODE),
        }
        if mode == "multiref":
            self.common["reference_sheet"] = sheet_sha256(references)

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
