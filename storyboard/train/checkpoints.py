"""Checkpoints: a folder per run fingerprint, saved atomically, the latest complete one resumed.

With a DVC remote configured, each checkpoint is also mirrored there as it is written (storyboard/remote.py), so a
lost pod resumes on the next one from the last checkpoint instead of from step 0."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from storyboard.closure import code_fingerprint
from storyboard.fsutil import atomic_path
from storyboard.remote import RemoteMirror
from storyboard.settings import ModelSet, Train

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from storyboard.train.trainer import LoraTrainer

CODE = "stages.train"  # its import closure is all the code a training run goes through
# Modules of that closure that only log a run, mirror it or index its saved steps for the select stage: an edit to
# them must not send a run back to step 0 (what they import still counts).
NOT_SHAPING_CODE = ("storyboard/log.py", "storyboard/remote.py", "storyboard/train/steps.py")
NOT_SHAPING = {"log_every", "validation", "checkpoint_every", "checkpoints_keep"}


def fingerprint(settings: Train, models: ModelSet, dataset_dir: Path, resolution: int, processes: int = 1) -> str:
    """Everything that shapes the weights: the train params, the models the latents and the UNet come from, the
    data, the code the train stage runs but NOT_SHAPING_CODE (a fixed bug must not resume from checkpoints the bug
    made; choosing a saved step is the select stage's code, outside it), and the number of processes (one per
    GPU): it multiplies the effective batch, so a run on 2 GPUs never resumes on 1."""
    return fingerprints(settings, models, dataset_dir, resolution, [processes])[processes]


def fingerprints(
    settings: Train, models: ModelSet, dataset_dir: Path, resolution: int, process_counts: Iterable[int]
) -> dict[int, str]:
    """`fingerprint` at each of `process_counts`, the data and the code's import closure read once for all."""
    manifest = (Path(dataset_dir) / "manifest.jsonl").read_bytes()
    # What only changes how often we look or keep (logging, validation, checkpoints) does not change the weights.
    shaping = settings.model_dump(mode="json", exclude=NOT_SHAPING)
    common = [
        shaping,
        models.base,
        models.vae,
        hashlib.sha256(manifest).hexdigest(),
        resolution,
        code_fingerprint(CODE, leave_out=NOT_SHAPING_CODE),
    ]
    return {
        n: hashlib.sha256(json.dumps([*common, n], sort_keys=True).encode()).hexdigest()[:16] for n in process_counts
    }


MARKER = "COMPLETE"


def save_checkpoint(folder: Path, state: dict, keep: int, mirror: RemoteMirror | None = None) -> None:
    target = folder / f"step-{state['step']:07d}"
    with atomic_path(target) as staged:
        staged.mkdir()
        torch.save(state, staged / "state.pt")
        (staged / MARKER).write_text(str(state["step"]))
    if mirror is not None:
        # Hard links: the upload reads its own names, so rotating the checkpoint out below can't pull the files
        # from under it, and it costs no copy.
        snapshot = folder / f".mirror-{target.name}"
        shutil.copytree(target, snapshot, copy_function=os.link, dirs_exist_ok=True)
        mirror.in_background(_upload, mirror, folder, snapshot, target.name, keep)  # training goes on meanwhile
    for old in sorted(folder.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _upload(mirror: RemoteMirror, folder: Path, snapshot: Path, name: str, keep: int) -> None:
    """The checkpoint (marker last) and the validation samples so far; the remote keeps `keep` checkpoints too."""
    rel = f"checkpoints/{folder.name}"
    try:
        if not mirror.put_dir(snapshot, f"{rel}/{name}", MARKER):
            return
    finally:
        shutil.rmtree(snapshot, ignore_errors=True)
    for sample in sorted((folder / "validation").glob("*.png")):
        mirror.put_file(sample, f"{rel}/validation/{sample.name}")
    for old in mirror.complete_dirs(rel, MARKER)[:-keep]:
        mirror.remove(f"{rel}/{old}")


def fetch_latest(folder: Path, mirror: RemoteMirror) -> None:
    """Bring the remote's latest complete checkpoint (and validation samples) here when it is newer than ours."""
    rel = f"checkpoints/{folder.name}"
    remote = mirror.complete_dirs(rel, MARKER)
    local = latest_checkpoint(folder)
    if not remote or (local is not None and local.name >= remote[-1]):
        return
    if mirror.get_dir(f"{rel}/{remote[-1]}", folder / remote[-1], MARKER):
        mirror.get_missing(f"{rel}/validation", folder / "validation")
        logger.info("fetched checkpoint %s of this run from the remote %s", remote[-1], mirror.label)


def latest_checkpoint(folder: Path) -> Path | None:
    # Only folders with the COMPLETE marker count: atomic renames make a half-written one impossible, the
    # marker guards against copies made by other tools.
    complete = [p for p in sorted(folder.glob("step-*")) if (p / MARKER).exists()]
    return complete[-1] if complete else None


def resume(folder: Path, trainer: LoraTrainer, steps: int) -> tuple[int, list[dict[str, float]]]:
    """Restore the trainer from the latest complete checkpoint: the step reached and the per-step history up to
    it; (0, []) when there is none.

    The main process, the one that saves, reads it and sends it to the others: on several machines only machine 0
    holds the checkpoints (its disk, or what it fetched from the remote), and every process must resume alike."""
    accelerator = trainer.accelerator
    latest = latest_checkpoint(folder) if accelerator.is_main_process else None
    state = torch.load(latest / "state.pt", weights_only=False, map_location="cpu") if latest is not None else None
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        latest, state = broadcast_object_list([latest, state])
    if state is None:
        return 0, []
    start_step = trainer.load_state(state)
    logger.info("resuming from %s (step %d of %d)", latest, start_step, steps)
    return start_step, list(state.get("history", []))
