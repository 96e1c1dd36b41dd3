"""Checkpoints: a folder per run fingerprint, saved atomically, the latest complete one resumed."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from storyboard.closure import code_fingerprint
from storyboard.fsutil import atomic_path
from storyboard.log import logger
from storyboard.settings import ModelSet, Train

if TYPE_CHECKING:
    from storyboard.train.trainer import LoraTrainer

CODE = "stages.train"  # its import closure is all the code a training run goes through
NOT_SHAPING = {"log_every", "validation", "checkpoint_every", "checkpoints_keep", "select", "select_tolerance"}


def fingerprint(settings: Train, models: ModelSet, dataset_dir: Path, resolution: int) -> str:
    """Everything that shapes the weights: the train params, the models the latents and the UNet come from, the
    data, and the code the train stage runs (a fixed bug must not resume from checkpoints the bug made)."""
    manifest = (Path(dataset_dir) / "manifest.jsonl").read_bytes()
    # What only changes how often we look or keep (logging, validation, checkpoints) or which step is chosen does
    # not change the weights.
    shaping = settings.model_dump(mode="json", exclude=NOT_SHAPING)
    blob = json.dumps(
        [shaping, models.base, models.vae, hashlib.sha256(manifest).hexdigest(), resolution, code_fingerprint(CODE)],
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_checkpoint(folder: Path, state: dict, keep: int) -> None:
    target = folder / f"step-{state['step']:07d}"
    with atomic_path(target) as staged:
        staged.mkdir()
        torch.save(state, staged / "state.pt")
        (staged / "COMPLETE").write_text(str(state["step"]))
    for old in sorted(folder.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(folder: Path) -> Path | None:
    # Only folders with the COMPLETE marker count: atomic renames make a half-written one impossible, the
    # marker guards against copies made by other tools.
    complete = [p for p in sorted(folder.glob("step-*")) if (p / "COMPLETE").exists()]
    return complete[-1] if complete else None


def resume(folder: Path, trainer: LoraTrainer, steps: int) -> tuple[int, list[dict[str, float]]]:
    """Restore the trainer from the latest complete checkpoint: the step reached and the per-step history up to
    it; (0, []) when there is none."""
    if (latest := latest_checkpoint(folder)) is None:
        return 0, []
    state = torch.load(latest / "state.pt", weights_only=False, map_location="cpu")
    start_step = trainer.load_state(state)
    logger.info("resuming from %s (step %d of %d)", latest, start_step, steps)
    return start_step, list(state.get("history", []))
