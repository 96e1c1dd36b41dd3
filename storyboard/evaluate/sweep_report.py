"""The report's checkpoint section: the select stage's chosen step beside two others, their samples and scores.

It reads metrics/train.json as the select stage writes it (select.step: best): the per-step scores, and for the
shown steps the sample files, which are copied into the report's assets so that the report stays one folder.
"""

from __future__ import annotations

import logging
import shutil
from html import escape
from pathlib import Path
from urllib.parse import quote

logger = logging.getLogger(__name__)


THUMB_PX = 160


def sweep_section(train_metrics: dict | None, assets: Path) -> str:
    """The section's HTML, with its samples copied into `assets`; "" when no sweep ran (select.step: last)."""
    if not train_metrics or not train_metrics.get("samples"):
        return ""
    scores = {int(s["step"]): s for s in train_metrics.get("steps", [])}
    chosen = int(train_metrics["chosen_step"])
    prompts = train_metrics.get("prompts", [])
    target = assets / "checkpoints"
    target.mkdir(parents=True, exist_ok=True)
    head, cells = [], []
    for step, paths in sorted(train_metrics["samples"].items(), key=lambda item: int(item[0])):
        step, score = int(step), scores.get(int(step), {})
        mark = " (chosen)" if step == chosen else ""
        head.append(
            f'<th class="{"chosen" if step == chosen else ""}">step {step}{mark}<br>identity '
            f"{score.get('identity', float('nan')):.3f} · text {score.get('text_alignment', float('nan')):.3f}</th>"
        )
        images = []
        for i, path in enumerate(paths):
            source = Path(path)
            if not source.is_file():
                logger.warning("HTML report: checkpoint sample %s missing", source)
                continue
            shutil.copyfile(source, target / source.name)
            src = "/".join(quote(part) for part in ("assets", "checkpoints", source.name))
            alt = f"step {step}: {prompts[i] if i < len(prompts) else ''}"
            images.append(f'<img src="{escape(src)}" alt="{escape(alt)}" width="{THUMB_PX}" class="px">')
        cells.append(f"<td>{''.join(images)}</td>")
    tolerance = train_metrics.get("select_tolerance")
    return (
        '<section id="checkpoints"><h2>Checkpoint choice</h2><p class="hint">The LoRA is the saved step of highest '
        f"identity (CLIP character crop vs the training images) whose text alignment is within {tolerance} of the "
        f"best step's. Validation prompts: {escape(' | '.join(prompts))}. Every step's scores: metrics/train.json "
        '(`dvc plots show`).</p><div class="scroll"><table class="frames"><thead><tr>'
        + "".join(head)
        + "</tr></thead><tbody><tr>"
        + "".join(cells)
        + "</tr></tbody></table></div></section>"
    )
