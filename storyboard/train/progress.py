"""The record of a training run: per-step loss, step time and LR, and validation samples, logged to dvclive.

Both are also kept beside the checkpoints: DVC empties dvclive/ before a rerun, so a resumed run replays them and
the plots cover the whole run, not just the part after the kill.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

# zlib level 1: a drawn 1024 px sample saves in about half the default level's time (45 -> 24 ms here) in a file a
# quarter larger; the samples are saved at every checkpoint while the GPU waits, and only read back by the sweep and
# by a resumed run.
FAST_PNG = 1


class TrainLog:
    """Losses stay on the device until `flush`, the one host sync of the step loop."""

    def __init__(self, live_dir: Path, samples_dir: Path, history: list[dict[str, float]], start_step: int, main: bool):
        """`history`: the per-step log a resumed checkpoint carries; `main`: whether this process logs at all."""
        from dvclive import Live

        self.history, self.samples_dir = history, samples_dir
        self.live = Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None) if main else None
        for entry in history:
            self._log_step(entry)
        self.validated: set[int] = set()  # steps whose samples are logged
        if self.live is not None:
            for sample in sorted(samples_dir.glob("step*.png")):
                if (step := int(sample.name[4:10])) <= start_step:
                    self.live.log_image(f"validation/{sample.name}", Image.open(sample).convert("RGB"))
                    self.validated.add(step)
        self.pending: list[torch.Tensor] = []
        self.window_start = time.perf_counter()

    def add(self, loss: torch.Tensor) -> None:
        self.pending.append(loss)

    def flush(self, learning_rate: float, bar: tqdm) -> None:
        """Read back the window of losses at once."""
        if not self.pending:
            return
        values = torch.stack(self.pending).float().cpu().tolist()
        step_time = (time.perf_counter() - self.window_start) / len(values)
        for value in values:
            self.history.append({"loss": value, "step_time_s": step_time, "learning_rate": learning_rate})
            self._log_step(self.history[-1])
        self.pending, self.window_start = [], time.perf_counter()
        bar.set_postfix(loss=f"{values[-1]:.4f}", s_per_step=f"{step_time:.3f}")

    def add_samples(self, step: int, images: list[Image.Image]) -> None:
        self.samples_dir.mkdir(exist_ok=True)
        for i, image in enumerate(images):
            name = f"step{step:06d}_{i}.png"
            self.live.log_image(f"validation/{name}", image)
            image.save(self.samples_dir / name, compress_level=FAST_PNG)
        self.validated.add(step)

    def end(self) -> None:
        if self.live is not None:
            self.live.end()

    def _log_step(self, entry: dict[str, float]) -> None:
        if self.live is None:
            return
        for name, value in entry.items():
            self.live.log_metric(name, value)
        self.live.next_step()
