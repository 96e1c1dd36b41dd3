"""Turn a folder of user images into the training dataset: normalised images, one caption each, a manifest.

Paid captions are cached per image (content hash + model + prompt) outside the stage's outputs, and each
is written the moment it arrives, so a rerun pays only for new images and a killed run loses nothing paid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
from PIL import Image
from tqdm import tqdm

from storyboard.caption.backends import CaptionBackend, CaptionError, CaptionResult, with_trigger
from storyboard.dataset import ManifestRecord
from storyboard.fsutil import atomic_path, write_json
from storyboard.images import BadImage, content_hash, list_images, load_rgb
from storyboard.remote import RemoteMirror
from storyboard.settings import Caption, Character

logger = logging.getLogger(__name__)


@dataclass
class CaptionStats:
    images_seen: int = 0
    captioned: int = 0
    cached: int = 0
    refused: int = 0
    failed: int = 0
    excluded: int = 0
    duplicates: int = 0
    requests: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    backend: str = ""


class CaptionCache:
    """One JSON file per (image, model, prompt): survives reruns and kills, read before paying again."""

    def __init__(self, folder: Path, backend: str, settings: Caption, mirror: RemoteMirror | None = None):
        self.folder = Path(folder)
        self.salt = json.dumps([backend, settings.openai.model, settings.prompt, settings.refusal_prompt])
        self.mirror = mirror  # the DVC remote, so paid captions outlive the pod (storyboard/remote.py)

    def _key(self, sha: str) -> str:
        return hashlib.sha256(f"{sha}\0{self.salt}".encode()).hexdigest()

    def _path(self, sha: str) -> Path:
        key = self._key(sha)
        return self.folder / key[:2] / f"{key}.json"

    def get(self, sha: str) -> CaptionResult | None:
        path = self._path(sha)
        if not path.exists() and not (self.mirror and self.mirror.get_file(f"captions/{self._key(sha)}.json", path)):
            return None
        try:
            return CaptionResult(**json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError):
            logger.warning("ignoring unreadable cache entry %s", path)
            return None

    def put(self, sha: str, result: CaptionResult) -> None:
        write_json(self._path(sha), asdict(result))
        if self.mirror:
            self.mirror.put_file(self._path(sha), f"captions/{self._key(sha)}.json")


def _fit(image: Image.Image, max_side: int) -> Image.Image:
    if max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)


def caption_images(
    input_dir: Path,
    out_dir: Path,
    backend: CaptionBackend,
    settings: Caption,
    character: Character,
) -> CaptionStats:
    """Build `out_dir` (images/, one .txt per image, manifest.jsonl) from the images in `input_dir`."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise CaptionError(f"{input_dir} does not exist: put your character's images there (png, jpg or webp)")
    sources = list_images(input_dir)
    if not sources:
        raise CaptionError(
            f"{input_dir} holds no images (png, jpg, webp): add 15-50 pictures of your character there, "
            "then `dvc add data/raw` and rerun"
        )
    stats = CaptionStats(backend=backend.name)
    cache = (
        CaptionCache(settings.cache_dir, backend.name, settings, RemoteMirror.from_project()) if backend.paid else None
    )
    records: list[ManifestRecord] = []
    todo: list[tuple[ManifestRecord, Image.Image, Path]] = []
    seen: dict[str, ManifestRecord] = {}

    for source in sources:
        stats.images_seen += 1
        rel = source.relative_to(input_dir).as_posix()
        sha = content_hash(source)
        record = ManifestRecord(source=rel, sha256=sha, status="excluded")
        records.append(record)
        if sha in seen:
            record.status, record.reason = "duplicate", f"same content as {seen[sha].source}; handled once, with it"
            stats.duplicates += 1
            continue
        seen[sha] = record
        try:
            image = load_rgb(source, background=settings.background)
        except BadImage as e:
            record.reason = str(e)
            logger.warning("excluded: %s", e)
            continue
        if min(image.size) < settings.min_side:
            record.reason = (
                f"{image.width}x{image.height} px is below caption.min_side={settings.min_side}; "
                "use a larger version of this picture"
            )
            logger.warning("excluded: %s: %s", source, record.reason)
            continue
        image = _fit(image, settings.max_side)
        record.width, record.height = image.size
        todo.append((record, image, source))

    failed = threading.Event()  # set by the first failure: images still queued are not sent after it

    def run_one(item: tuple[ManifestRecord, Image.Image, Path]) -> tuple[ManifestRecord, CaptionResult, bool]:
        record, image, source = item
        hit = cache.get(record.sha256) if cache is not None else None
        if hit is not None and not (hit.refused and settings.retry_refused):
            return record, hit, True
        if failed.is_set():
            # Never reported: this item was queued after the failing one, whose error is raised first.
            raise CaptionError(f"{source}: not sent, an earlier image failed")
        try:
            result = backend.caption(image, source)
        except BaseException:
            failed.set()
            raise
        if cache is not None and not result.failed:
            cache.put(record.sha256, result)
        return record, result, False

    with atomic_path(Path(out_dir)) as staged:
        (staged / "images").mkdir(parents=True)
        images_by_record = {id(r): im for r, im, _ in todo}
        with ThreadPoolExecutor(max_workers=settings.concurrency if backend.paid else 1) as pool:
            results = pool.map(run_one, todo)
            for record, result, cached in tqdm(results, total=len(todo), desc="caption", unit="img"):
                stats.cached += cached
                if not cached:
                    stats.requests += result.requests
                    stats.tokens_in += result.tokens_in
                    stats.tokens_out += result.tokens_out
                if result.failed:
                    stats.failed += 1
                    record.reason = result.reason
                    logger.warning("excluded: %s: %s", record.source, record.reason)
                    continue
                if result.refused or not result.text:
                    stats.refused += 1
                    record.reason = f"refused by the caption model: {result.reason}"
                    logger.warning("excluded: %s: %s", record.source, record.reason)
                    continue
                record.status = "ok"
                record.caption = with_trigger(result.text, character.trigger)
                record.image = f"{record.sha256[:16]}.png"
                images_by_record[id(record)].save(staged / "images" / record.image)
                (staged / "images" / f"{record.sha256[:16]}.txt").write_text(record.caption + "\n", encoding="utf-8")
                stats.captioned += 1
        stats.excluded = sum(r.status == "excluded" for r in records)
        if stats.captioned == 0:
            raise CaptionError(
                f"none of the {len(sources)} images in {input_dir} could be used (see the warnings above); "
                "nothing was written"
            )
        with open(staged / "manifest.jsonl", "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(asdict(record), ensure_ascii=False) + "\n")
        (staged / "REPORT.md").write_text(_report(records), encoding="utf-8")
    stats.cost_usd = round(
        stats.tokens_in / 1000 * settings.cost_per_1k_tokens_in
        + stats.tokens_out / 1000 * settings.cost_per_1k_tokens_out,
        4,
    )
    logger.info("caption summary (%s backend):\n%s", stats.backend, _summary_table(stats))
    return stats


def _summary_table(stats: CaptionStats) -> str:
    rows = {k: v for k, v in asdict(stats).items() if k != "backend"}
    return pd.Series(rows, name="value").to_markdown()


def _report(records: list[ManifestRecord]) -> str:
    """What a person reads to see which images did not make it into training, and why."""
    left_out = [r for r in records if r.status != "ok"]
    lines = [
        "# Caption report",
        "",
        f"{sum(r.status == 'ok' for r in records)} of {len(records)} images are in the dataset.",
        "",
    ]
    if left_out:
        lines += ["| image | status | reason |", "|---|---|---|"]
        lines += [f"| {r.source} | {r.status} | {r.reason.replace('|', '/')} |" for r in left_out]
    else:
        lines.append("Every image is in the dataset.")
    return "\n".join(lines) + "\n"
