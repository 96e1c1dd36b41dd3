"""models/steps: every saved step's LoRA and validation samples, the train stage's output and the select stage's input.

    models/steps/steps.json                   the index: prompts, saved steps (each its files), the training summary,
                                              what the kohya file of a step needs (alpha, UNet config, its metadata)
    models/steps/step-0000100/pytorch_lora_weights.safetensors
    models/steps/step-0000100/sample_0.png    one per validation prompt, in their order (none without prompts)

The two stages exchange this folder and nothing else: the index names every file, relative to the folder, so the
select stage reads no training code.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from storyboard.errors import StoryboardError
from storyboard.fsutil import write_json
from storyboard.train.export import LORA_WEIGHTS

INDEX = "steps.json"


@dataclass(frozen=True)
class SavedStep:
    step: int
    lora: Path  # the diffusers-layout safetensors file
    samples: list[Path] = field(default_factory=list)  # one per prompt; empty without validation prompts


@dataclass(frozen=True)
class KohyaExport:
    """What storyboard.train.kohya.export_kohya needs beside a step's diffusers file."""

    alpha: float
    unet_config: dict  # the trained UNet's config: the module names in kohya's layout follow its blocks
    metadata: dict[int, dict[str, str]]  # per saved step: kohya's `ss_*` and ModelSpec keys, the step among them


@dataclass(frozen=True)
class SavedSteps:
    prompts: list[str]
    steps: list[SavedStep]  # by step, the final one last
    training: dict  # the training run's summary (steps, images, final loss, ...)
    kohya: KohyaExport

    def at(self, step: int) -> SavedStep:
        for saved in self.steps:
            if saved.step == step:
                return saved
        raise StoryboardError(f"step {step} is not a saved step; saved: {[s.step for s in self.steps]}")


def write_steps(out_dir: Path, steps: list[SavedStep], prompts: list[str], training: dict, kohya: KohyaExport) -> None:
    """Copy each step's LoRA and samples into `out_dir` (a staged folder) and write the index."""
    entries = []
    for saved in sorted(steps, key=lambda s: s.step):
        folder = Path(out_dir) / f"step-{saved.step:07d}"
        folder.mkdir(parents=True)
        shutil.copyfile(saved.lora, folder / LORA_WEIGHTS)
        samples = []
        for i, sample in enumerate(saved.samples):
            shutil.copyfile(sample, folder / f"sample_{i}.png")
            samples.append(f"{folder.name}/sample_{i}.png")
        entries.append({"step": saved.step, "lora": f"{folder.name}/{LORA_WEIGHTS}", "samples": samples})
    kohya_entry = {
        "alpha": kohya.alpha,
        "unet_config": kohya.unet_config,
        "metadata": {str(step): metadata for step, metadata in sorted(kohya.metadata.items())},
    }
    index = {"prompts": list(prompts), "steps": entries, "training": training, "kohya": kohya_entry}
    write_json(Path(out_dir) / INDEX, index)


def read_steps(folder: Path) -> SavedSteps:
    """The saved steps of `folder`, their paths under it; a clear error when it is not the train stage's output."""
    index = Path(folder) / INDEX
    if not index.is_file():
        raise StoryboardError(f"{index} missing: {folder} is not the train stage's output (`dvc repro train`)")
    data = json.loads(index.read_text(encoding="utf-8"))
    steps = [
        SavedStep(e["step"], Path(folder) / e["lora"], [Path(folder) / s for s in e["samples"]]) for e in data["steps"]
    ]
    if not steps:
        raise StoryboardError(f"{index} lists no saved step: train again (`dvc repro -f train`)")
    if "kohya" not in data:
        raise StoryboardError(f"{index} has no kohya section: an older train stage wrote it; `dvc repro -f train`")
    k = data["kohya"]
    kohya = KohyaExport(float(k["alpha"]), dict(k["unet_config"]), {int(s): m for s, m in k["metadata"].items()})
    return SavedSteps(list(data["prompts"]), steps, dict(data["training"]), kohya)
