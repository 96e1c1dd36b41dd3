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
    """Build `out_dir` (images/, one .txt per image, manifest.jsonl, REPORT.md) from the images in `input_dir`.

    Args:
        input_dir: the user's pictures of the character (png, jpg or webp, searched recursively).
        out_dir: the dataset folder; written whole or not at all (nothing is left when no image can be used).
        backend: what writes the captions; a paid one goes through the caption cache and runs concurrently.
        settings: the `caption` params (sizes, background, cache folder, concurrency, prices).
        character: whose trigger token starts every caption.
    """
    input_dir = Path(input_dir)
    sources = _list_sources(input_dir)
    stats = CaptionStats(backend=backend.name)
    cache = (
        CaptionCache(settings.cache_dir, backend.name, settings, RemoteMirror.from_project()) if backend.paid else None
    )
    records, todo = _prepare(input_dir, sources, settings, stats)
    with atomic_path(Path(out_dir)) as staged:
        _caption_into(staged, todo, _Captioner(backend, cache, settings), stats, character.trigger)
        stats.excluded = sum(r.status == "excluded" for r in records)
        if stats.captioned == 0:
            raise CaptionError(
                f"none of the {len(sources)} images in {input_dir} could be used (see the warnings above); "
                "nothing was written"
            )
        _write_manifest(staged, records)
    stats.cost_usd = round(
        stats.tokens_in / 1000 * settings.cost_per_1k_tokens_in
        + stats.tokens_out / 1000 * settings.cost_per_1k_tokens_out,
        4,
    )
    logger.info("caption summary (%s backend):\n%s", stats.backend, _summary_table(stats))
    return stats


def _list_sources(input_dir: Path) -> list[Path]:
    """The images in `input_dir`, or a CaptionError saying where to put them."""
    if not input_dir.is_dir():
        raise CaptionError(f"{input_dir} does not exist: put your character's images there (png, jpg or webp)")
    sources = list_images(input_dir)
    if not sources:
        raise CaptionError(
            f"{input_dir} holds no images (png, jpg, webp): add 15-50 pictures of your character there, "
            "then `dvc add data/raw` and rerun"
        )
    return sources


# One image on its way to the caption backend: its manifest record, the fitted image, the file it came from.
_Queued = tuple[ManifestRecord, Image.Image, Path]


def _prepare(
    input_dir: Path, sources: list[Path], settings: Caption, stats: CaptionStats
) -> tuple[list[ManifestRecord], list[_Queued]]:
    """One manifest record per source (excluded until captioned); the distinct, usable images are queued."""
    records: list[ManifestRecord] = []
    todo: list[_Queued] = []
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
        image = _load_for_training(source, record, settings)
        if image is not None:
            todo.append((record, image, source))
    return records, todo


def _load_for_training(source: Path, record: ManifestRecord, settings: Caption) -> Image.Image | None:
    """The image fitted to caption.max_side, or None with the reason in `record` when it cannot be used."""
    try:
        image = load_rgb(source, background=settings.background)
    except BadImage as e:
        record.reason = str(e)
        logger.warning("excluded: %s", e)
        return None
    if min(image.size) < settings.min_side:
        record.reason = (
            f"{image.width}x{image.height} px is below caption.min_side={settings.min_side}; "
            "use a larger version of this picture"
        )
        logger.warning("excluded: %s: %s", source, record.reason)
        return None
    image = _fit(image, settings.max_side)
    record.width, record.height = image.size
    return image


class _Captioner:
    """Captions one queued image (from the cache when it holds a usable answer) and caches what it paid for."""

    def __init__(self, backend: CaptionBackend, cache: CaptionCache | None, settings: Caption):
        self.backend = backend
        self.cache = cache
        self.retry_refused = settings.retry_refused
        self.workers = settings.concurrency if backend.paid else 1
        self.failed = threading.Event()  # set by the first failure: images still queued are not sent after it

    def __call__(self, item: _Queued) -> tuple[ManifestRecord, CaptionResult, bool]:
        record, image, source = item
        hit = self.cache.get(record.sha256) if self.cache is not None else None
        if hit is not None and not (hit.refused and self.retry_refused):
            return record, hit, True
        if self.failed.is_set():
            # Never reported: this item was queued after the failing one, whose error is raised first.
            raise CaptionError(f"{source}: not sent, an earlier image failed")
        try:
            result = self.backend.caption(image, source)
        except BaseException:
            self.failed.set()
            raise
        if self.cache is not None and not result.failed:
            self.cache.put(record.sha256, result)
        return record, result, False


def _caption_into(staged: Path, todo: list[_Queued], captioner: _Captioner, stats: CaptionStats, trigger: str) -> None:
    """Caption every queued image and write each usable one (image + .txt) under `staged`/images."""
    images = staged / "images"
    images.mkdir(parents=True)
    images_by_record = {id(r): im for r, im, _ in todo}
    with ThreadPoolExecutor(max_workers=captioner.workers) as pool:
        results = pool.map(captioner, todo)
        for record, result, cached in tqdm(results, total=len(todo), desc="caption", unit="img"):
            _count_usage(stats, result, cached)
            reason = _rejection(stats, result)
            if reason is not None:
                record.reason = reason
                logger.warning("excluded: %s: %s", record.source, record.reason)
                continue
            record.status = "ok"
            record.caption = with_trigger(result.text, trigger)
            record.image = f"{record.sha256[:16]}.png"
            images_by_record[id(record)].save(images / record.image)
            (images / f"{record.sha256[:16]}.txt").write_text(record.caption + "\n", encoding="utf-8")
            stats.captioned += 1


def _count_usage(stats: CaptionStats, result: CaptionResult, cached: bool) -> None:
    """Cache hits cost nothing: only fresh answers add requests and tokens."""
    stats.cached += cached
    if not cached:
        stats.requests += result.requests
        stats.tokens_in += result.tokens_in
        stats.tokens_out += result.tokens_out


def _rejection(stats: CaptionStats, result: CaptionResult) -> str | None:
    """Why this answer keeps its image out of the dataset (counted in `stats`), or None when it is usable."""
    if result.failed:
        stats.failed += 1
        return result.reason
    if result.refused or not result.text:
        stats.refused += 1
        return f"refused by the caption model: {result.reason}"
    return None


def _write_manifest(staged: Path, records: list[ManifestRecord]) -> None:
    with open(staged / "manifest.jsonl", "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(asdict(record), ensure_ascii=False) + "\n")
    (staged / "REPORT.md").write_text(_report(records), encoding="utf-8")


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
