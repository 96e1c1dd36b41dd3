"""A small local user study: people rate storyboards without knowing which mode made them.

`StudyServer` serves one page on 127.0.0.1. A rater enters a name and sees every story x mode storyboard,
one at a time, in an order shuffled per rater (seeded by the name, so a reload keeps it) and labelled only
"Storyboard A, B, C...". The mode never leaves the server: images are served under random tokens and the
token -> (story, mode) map stays in memory. The rendered contact_sheet.png can't be shown as it is: its title
line names the mode and its captions carry CLIP scores and retry counts. So each storyboard is served as a
sheet composed here from its frame_XX.png files, numbered and nothing else, rebuilt from raw pixels so no
PNG text chunk can name the mode either.
Ratings go to SQLite (one row per rater, story and mode; a re-rating replaces the old row).

`summarise_study` turns the ratings into per-mode means with t-intervals, "same character" shares with
Wilson intervals and simple inter-rater agreement figures; `write_study_metrics` writes them as JSON.
"""

from __future__ import annotations

import argparse
import io
import ipaddress
import itertools
import json
import math
import random
import secrets
import sqlite3
import statistics
import string
import sys
import threading
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from PIL import Image, ImageDraw, ImageFont

from storyboard.errors import StoryboardError
from storyboard.fsutil import write_json
from storyboard.log import logger

DEFAULT_MODES: tuple[str, ...] = ("baseline", "lora", "ref_guided")
STUDY_COLUMNS = 3
# Frames are shown at this width: tiny-profile 64 px frames blown up, 1024 px SDXL frames shrunk to a page.
FRAME_MIN_PX, FRAME_MAX_PX = 256, 512
MAX_RATER_CHARS = 100
# A rating post is a few dozen bytes; anything far larger is not from our page.
MAX_BODY_BYTES = 16 * 1024
Z95 = statistics.NormalDist().inv_cdf(0.975)
# Two-sided 95% t quantiles t(0.975, df) for df = 1..30 (scipy.stats.t.ppf, 6 decimals). Beyond 30 the
# Cornish-Fisher expansion below is within 1e-7 of the exact value, so no scipy dependency is needed.
_T975 = (
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
    2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
    2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272,
)  # fmt: skip

SCHEMA = """
CREATE TABLE IF NOT EXISTS ratings (
    rater TEXT NOT NULL,
    story_id TEXT NOT NULL,
    mode TEXT NOT NULL,
    rating INTEGER NOT NULL,
    same_character INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (rater, story_id, mode)
)
"""


class StudyError(StoryboardError):
    """The study can't start or summarise: missing frames, no database, a non-local address."""


@dataclass(frozen=True)
class StudyItem:
    """One storyboard to rate. Only `token` and `story_text` ever reach the browser."""

    token: str
    story_id: str
    mode: str
    frames: tuple[Path, ...]
    story_text: str


class RatingError(ValueError):
    """A rating post the server refuses (answered with 400 and this message)."""


def t_quantile_975(df: int) -> float:
    """t(0.975, df): the two-sided 95% quantile of Student's t, from the table or Cornish-Fisher."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = Z95
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def mean_ci95(values: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    """(mean, low, high) with a t-interval; bounds are None below two values (no spread to estimate)."""
    if not values:
        return None, None, None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None, None
    half = t_quantile_975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    # Not clipped to the 1..5 scale: a bound past the scale says "too few ratings" more honestly.
    return mean, mean - half, mean + half


def wilson_ci95(successes: int, n: int) -> tuple[float | None, float | None, float | None]:
    """(share, low, high) with the Wilson score interval, which stays inside 0..1 and works at 0/n and n/n."""
    if n == 0:
        return None, None, None
    p = successes / n
    z2 = Z95**2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return p, max(0.0, centre - half), min(1.0, centre + half)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def label_for(index: int) -> str:
    """A, B, ..., Z, AA, AB, ...: spreadsheet-style labels, so a long study never runs out of letters."""
    letters = string.ascii_uppercase
    label = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        label = letters[rem] + label
    return label


def _connect(db_path: Path) -> sqlite3.Connection:
    # One connection per request: sqlite3 connections must not be shared across the handler threads.
    con = sqlite3.connect(db_path, timeout=10)
    con.execute(SCHEMA)
    return con


def _loopback_host(host: str) -> str:
    """The host to bind, refusing anything but a loopback address: ratings are not for the network."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        raise StudyError(
            f"study server host must be an IPv4 loopback address such as 127.0.0.1, got {host!r}"
        ) from None
    if not address.is_loopback:
        raise StudyError(f"study server binds to loopback only (127.0.0.1), not {host!r}")
    return host


def frame_files(story_dir: Path) -> list[Path]:
    """The story's frames in order: as metadata.json lists them, else every frame_*.png by name."""
    try:
        meta = json.loads((story_dir / "metadata.json").read_text(encoding="utf-8"))
        records = sorted(meta["frames"], key=lambda r: r["index"])
        # Bare names only: metadata must not point the server at files outside the story folder.
        names = [r["file"] for r in records if isinstance(r.get("file"), str) and Path(r["file"]).name == r["file"]]
    except (OSError, ValueError, KeyError, TypeError):
        names = []
    if names:
        return [story_dir / name for name in names]
    return sorted(story_dir.glob("frame_*.png"))


def blind_sheet(frames: Sequence[Path], columns: int = STUDY_COLUMNS) -> Image.Image:
    """A grid of the frames, each numbered and nothing else: no title, mode, score or retry count."""
    images = []
    for path in frames:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    size = min(max(images[0].width, FRAME_MIN_PX), FRAME_MAX_PX)
    font = ImageFont.load_default(size=max(14, size // 16))
    gap, label_h = 10, font.size + 8
    cols = min(columns, len(images))
    rows = math.ceil(len(images) / cols)
    frame_h = max(size * image.height // image.width for image in images)  # portrait frames keep their shape
    cell_h = frame_h + label_h
    sheet = Image.new("RGB", (cols * size + (cols + 1) * gap, rows * cell_h + (rows + 1) * gap), "white")
    draw = ImageDraw.Draw(sheet)
    for n, image in enumerate(images):
        # Nearest keeps small frames crisp when blown up; Lanczos for shrinking large ones.
        resample = Image.Resampling.NEAREST if image.width < size else Image.Resampling.LANCZOS
        x = gap + (n % cols) * (size + gap)
        y = gap + (n // cols) * (cell_h + gap)
        sheet.paste(image.resize((size, size * image.height // image.width), resample), (x, y))
        draw.text((x, y + frame_h + 4), str(n + 1), fill="black", font=font)
    return sheet


def _story_text(outputs_root: Path, modes: Sequence[str], story_id: str) -> str:
    """The one-line story from any mode's metadata.json (it is the same in every mode), else the id."""
    for mode in modes:
        try:
            meta = json.loads((outputs_root / mode / story_id / "metadata.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and isinstance(meta.get("story"), str) and meta["story"].strip():
            return meta["story"].strip()
    return story_id


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    server_version = "StoryboardStudy/1"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("study %s: %s", self.address_string(), format % args)

    # -- responses ---------------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str, cache: str = "no-store") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: Any) -> None:
        self._send(status, json.dumps(data).encode(), "application/json; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _host_ok(self) -> bool:
        # A page on another site could reach 127.0.0.1 through DNS rebinding; its Host header gives it away.
        if self.headers.get("Host") in self.server.study.allowed_hosts:
            return True
        self._error(HTTPStatus.FORBIDDEN, "unexpected Host header")
        return False

    # -- routes ------------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        if not self._host_ok():
            return
        study = self.server.study
        url = urlsplit(self.path)
        if url.path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")
        elif url.path == "/count":
            self._json(HTTPStatus.OK, study.count())
        elif url.path == "/items":
            rater = parse_qs(url.query).get("rater", [""])[0].strip()
            if not rater:
                self._error(HTTPStatus.BAD_REQUEST, "give your name (rater) to see your storyboards")
            elif len(rater) > MAX_RATER_CHARS:
                self._error(HTTPStatus.BAD_REQUEST, f"rater name longer than {MAX_RATER_CHARS} characters")
            else:
                self._json(HTTPStatus.OK, study.items_for(rater))
        elif url.path.startswith("/img/"):
            image = study.image_bytes(url.path.removeprefix("/img/"))
            if image is None:
                self._error(HTTPStatus.NOT_FOUND, "no such storyboard")
            else:
                # Tokens are fixed for the server's life, so the browser may keep the image.
                self._send(HTTPStatus.OK, image, "image/png", cache="private, max-age=3600")
        else:
            self._error(HTTPStatus.NOT_FOUND, "not found")

    def do_POST(self) -> None:
        if not self._host_ok():
            return
        if urlsplit(self.path).path != "/rate":
            self._error(HTTPStatus.NOT_FOUND, "not found")
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._error(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
            return
        if length < 0:
            self._error(HTTPStatus.BAD_REQUEST, "negative Content-Length")
            return
        if length > MAX_BODY_BYTES:
            self.close_connection = True  # the unread body would otherwise be parsed as the next request
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes")
            return
        body = self.rfile.read(length)
        try:
            fields = _parse_body(body, self.headers.get("Content-Type", ""))
            result = self.server.study.rate(fields)
        except RatingError as e:
            self._error(HTTPStatus.BAD_REQUEST, str(e))
            return
        self._json(HTTPStatus.OK, result)


def _parse_body(body: bytes, content_type: str) -> dict[str, Any]:
    """JSON (what the page sends) or an HTML form post, as one flat dict."""
    kind = content_type.split(";")[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RatingError("body is not UTF-8") from None
    if kind == "application/x-www-form-urlencoded":
        return {key: values[-1] for key, values in parse_qs(text).items()}
    try:
        data = json.loads(text)
    except ValueError:
        raise RatingError("body is not valid JSON (or send a form: application/x-www-form-urlencoded)") from None
    if not isinstance(data, dict):
        raise RatingError("body must be a JSON object")
    return data


def _parse_rating(value: Any) -> int:
    # bool is an int in Python; a JSON true is not a rating.
    if isinstance(value, bool):
        raise RatingError("rating must be a whole number from 1 to 5")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or not 1 <= value <= 5:
        raise RatingError("rating must be a whole number from 1 to 5")
    return value


def _parse_same_character(value: Any) -> int:
    if isinstance(value, str) and value.strip().lower() in ("yes", "no"):
        return int(value.strip().lower() == "yes")
    raise RatingError('same_character must be "yes" or "no"')


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck browser connection never blocks stop()

    def __init__(self, address: tuple[str, int], study: StudyServer) -> None:
        self.study = study
        super().__init__(address, _Handler)


class StudyServer:
    """The study's web server; `start()` returns its URL, `stop()` (or leaving a `with` block) ends it."""

    def __init__(
        self,
        outputs_root: Path,
        db_path: Path,
        modes: Sequence[str] = DEFAULT_MODES,
        story_ids: Sequence[str] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int | None = None,
    ) -> None:
        """`seed` makes the image tokens reproducible and is mixed into every rater's order; without it the
        tokens are random per start and the order depends on the rater name alone (stable across restarts)."""
        self.outputs_root = Path(outputs_root)
        self.db_path = Path(db_path)
        self.modes = tuple(modes)
        self.story_ids = tuple(story_ids)
        self.host = _loopback_host(host)
        self.port = port
        self.seed = seed
        if not self.story_ids or not self.modes:
            raise StudyError("a study needs at least one story id and one mode")
        self.items = self._collect_items()
        self._by_token = {item.token: item for item in self.items}
        self._by_key = {(item.story_id, item.mode): item for item in self.items}
        self._images: dict[str, bytes] = {}
        self._image_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._lifecycle_lock = threading.Lock()
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        with closing(_connect(self.db_path)) as con, con:
            pass  # creates the table now, so a bad db path fails at start, not at the first rating
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.allowed_hosts: frozenset[str] = frozenset()

    def _collect_items(self) -> list[StudyItem]:
        frames: dict[tuple[str, str], tuple[Path, ...]] = {}
        missing = []
        for story, mode in itertools.product(self.story_ids, self.modes):
            found = tuple(frame_files(self.outputs_root / mode / story))
            if not found or not all(path.is_file() for path in found):
                missing.append(str(self.outputs_root / mode / story))
            frames[story, mode] = found
        if missing:
            raise StudyError(
                f"{len(missing)} storyboard(s) without frames (frame_XX.png); render them first: {', '.join(missing)}"
            )
        # A seeded generator only when asked: default tokens must not be guessable from the item order.
        rng = random.Random(self.seed) if self.seed is not None else None
        tokens: set[str] = set()
        items = []
        for story in self.story_ids:
            text = _story_text(self.outputs_root, self.modes, story)
            for mode in self.modes:
                token = ""
                while not token or token in tokens:
                    token = f"{rng.getrandbits(96):024x}" if rng else secrets.token_hex(12)
                tokens.add(token)
                items.append(StudyItem(token, story, mode, frames[story, mode], text))
        return items

    # -- lifecycle ---------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise StudyError("study server is not running: call start() first")
        return f"http://{self.host}:{self._httpd.server_address[1]}/"

    def start(self) -> str:
        with self._lifecycle_lock:
            if self._httpd is not None:
                return self.url
            httpd = _HTTPServer((self.host, self.port), self)
            port = httpd.server_address[1]
            # Set before the first request can arrive: the handler checks Host against it.
            self.allowed_hosts = frozenset({f"{self.host}:{port}", f"localhost:{port}"})
            self._thread = threading.Thread(target=httpd.serve_forever, name="study-server", daemon=True)
            self._httpd = httpd
            self._thread.start()
        logger.info(
            "study: %d storyboards (%d stories x %d modes)", len(self.items), len(self.story_ids), len(self.modes)
        )
        return self.url

    def stop(self) -> None:
        # Taken under a lock: stop() may race itself (a `with` block ending while another thread calls stop()).
        with self._lifecycle_lock:
            httpd, thread = self._httpd, self._thread
            self._httpd = self._thread = None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def wait(self) -> None:
        """Block until stop() or Ctrl-C; a short join timeout keeps KeyboardInterrupt prompt."""
        thread = self._thread
        while thread is not None and thread.is_alive():
            thread.join(timeout=0.5)

    def __enter__(self) -> StudyServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the handler asks -----------------------------------------------------------------------------

    def order_for(self, rater: str) -> list[StudyItem]:
        """This rater's order: a shuffle seeded by the name (and the study seed), so reloads keep it."""
        key = rater if self.seed is None else f"{self.seed}\0{rater}"
        # random.Random(str) hashes the string with SHA-512: the same order in every process.
        return random.Random(key).sample(self.items, len(self.items))

    def items_for(self, rater: str) -> dict[str, Any]:
        """The page's view of one rater's study: labels, tokens, story text and their earlier answers."""
        with closing(_connect(self.db_path)) as con:
            rows = con.execute(
                "SELECT story_id, mode, rating, same_character FROM ratings WHERE rater = ?", (rater,)
            ).fetchall()
        done = {(story, mode): (rating, same) for story, mode, rating, same in rows}
        items = []
        for i, item in enumerate(self.order_for(rater)):
            rating, same = done.get((item.story_id, item.mode), (None, None))
            items.append(
                {
                    "token": item.token,
                    "label": f"Storyboard {label_for(i)}",
                    "story": item.story_text,
                    "image": f"/img/{item.token}",
                    "rating": rating,
                    "same_character": None if same is None else ("yes" if same else "no"),
                }
            )
        return {"rater": rater, "total": len(items), "items": items}

    def image_bytes(self, token: str) -> bytes | None:
        item = self._by_token.get(token)
        if item is None:
            return None
        with self._image_lock:
            if token not in self._images:
                # Composed once, on first view. Saved from a fresh image, so no `info` (PNG text, EXIF) of a
                # frame file can ride along into what the browser gets.
                buffer = io.BytesIO()
                blind_sheet(item.frames).save(buffer, format="PNG")
                self._images[token] = buffer.getvalue()
            return self._images[token]

    def rate(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Validate and store one rating; raise RatingError with a message for the rater otherwise."""
        rater = fields.get("rater")
        if not isinstance(rater, str) or not rater.strip():
            raise RatingError("rater name is required")
        rater = rater.strip()
        if len(rater) > MAX_RATER_CHARS:
            raise RatingError(f"rater name longer than {MAX_RATER_CHARS} characters")
        token = fields.get("token")
        item = self._by_token.get(token) if isinstance(token, str) else None
        if item is None:
            raise RatingError("unknown storyboard (has the study server restarted? reload the page)")
        rating = _parse_rating(fields.get("rating"))
        same = _parse_same_character(fields.get("same_character"))
        created = datetime.now(UTC).isoformat(timespec="seconds")
        with self._write_lock, closing(_connect(self.db_path)) as con, con:
            con.execute(
                "INSERT OR REPLACE INTO ratings (rater, story_id, mode, rating, same_character, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (rater, item.story_id, item.mode, rating, same, created),
            )
            rated = con.execute("SELECT story_id, mode FROM ratings WHERE rater = ?", (rater,)).fetchall()
        # Rows for stories or modes outside this study (an older study in the same db) don't count here.
        mine = sum(1 for key in rated if tuple(key) in self._by_key)
        return {"ok": True, "rated": mine, "total": len(self.items), **self.count()}

    def count(self) -> dict[str, int]:
        with closing(_connect(self.db_path)) as con:
            ratings, raters = con.execute("SELECT COUNT(*), COUNT(DISTINCT rater) FROM ratings").fetchone()
        return {"ratings": ratings, "raters": raters}


# -- summary -------------------------------------------------------------------------------------------------


def summarise_study(db_path: Path, modes: Sequence[str] = DEFAULT_MODES) -> dict[str, Any]:
    """Per-mode rating means (t-interval) and "same character" shares (Wilson), plus inter-rater agreement.

    Every mode in `modes` gets an entry (n = 0, nulls when unrated) so `dvc metrics diff` keys stay stable;
    modes found only in the database are added after them.
    """
    db_path = Path(db_path)
    if not db_path.is_file():
        raise StudyError(f"{db_path} not found: no ratings yet (run the study server first)")
    with closing(sqlite3.connect(db_path)) as con:
        rows = con.execute("SELECT rater, story_id, mode, rating, same_character FROM ratings").fetchall()
    all_modes = list(modes) + sorted({row[2] for row in rows} - set(modes))
    per_mode: dict[str, Any] = {}
    for mode in all_modes:
        mine = [row for row in rows if row[2] == mode]
        ratings = [row[3] for row in mine]
        yes = sum(1 for row in mine if row[4])
        mean, low, high = mean_ci95(ratings)
        share, s_low, s_high = wilson_ci95(yes, len(mine))
        per_mode[mode] = {
            "n": len(mine),
            "raters": len({row[0] for row in mine}),
            "rating_mean": _round(mean),
            "rating_ci95_low": _round(low),
            "rating_ci95_high": _round(high),
            "same_character_yes": yes,
            "same_character_share": _round(share),
            "same_character_ci95_low": _round(s_low),
            "same_character_ci95_high": _round(s_high),
        }
    return {
        "raters": len({row[0] for row in rows}),
        "ratings": len(rows),
        "modes": per_mode,
        "agreement": _agreement(rows),
    }


def _agreement(rows: list[tuple]) -> dict[str, Any]:
    """Over every pair of raters of the same item (story x mode): mean |rating difference| and yes/no agreement.

    Pooled over pairs, so an item with more raters weighs more; simple figures for a small study, not kappa.
    """
    by_item: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for _rater, story, mode, rating, same in rows:
        by_item.setdefault((story, mode), []).append((rating, same))
    shared = [answers for answers in by_item.values() if len(answers) >= 2]
    pairs = [pair for answers in shared for pair in itertools.combinations(answers, 2)]
    return {
        "items": len(shared),
        "pairs": len(pairs),
        "rating_mean_abs_diff": _round(statistics.fmean(abs(a[0] - b[0]) for a, b in pairs)) if pairs else None,
        "same_character_agreement": _round(sum(a[1] == b[1] for a, b in pairs) / len(pairs)) if pairs else None,
    }


def write_study_metrics(db_path: Path, out_json: Path, modes: Sequence[str] = DEFAULT_MODES) -> dict[str, Any]:
    summary = summarise_study(db_path, modes)
    write_json(Path(out_json), summary)
    logger.info("study: %d ratings from %d raters -> %s", summary["ratings"], summary["raters"], out_json)
    return summary


# -- CLI hooks (wired by storyboard/cli.py) ----------------------------------------------------------------


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments `serve_study` reads; `parser` is an argparse (sub)parser."""
    parser.add_argument("--outputs", default="outputs", help="rendered outputs root (default: %(default)s)")
    parser.add_argument("--db", default="study/ratings.sqlite", help="ratings database (default: %(default)s)")
    parser.add_argument(
        "--story", action="append", dest="stories", help="story id to include (repeat; default: params.yaml's)"
    )
    parser.add_argument("--mode", action="append", dest="modes", help="mode to include (repeat; default: all)")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8765, help="port, 0 for any free one (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=None, help="mixed into every rater's order (default: none)")


def add_summarise_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments `summarise_study_cmd` reads."""
    parser.add_argument("--db", default="study/ratings.sqlite", help="ratings database (default: %(default)s)")
    parser.add_argument("--out", default=None, help="write the summary JSON here too (default: stdout only)")


def serve_study(args: argparse.Namespace) -> None:
    """Serve the study until Ctrl-C. Reads args.outputs, db, stories, modes, host, port, seed (and params)."""
    stories = getattr(args, "stories", None)
    if not stories:
        from storyboard.settings import PARAMS_FILE, load_settings

        stories = [s.id for s in load_settings(getattr(args, "params", None) or PARAMS_FILE).stories]
    server = StudyServer(
        Path(args.outputs),
        Path(args.db),
        modes=tuple(getattr(args, "modes", None) or DEFAULT_MODES),
        story_ids=stories,
        host=getattr(args, "host", "127.0.0.1"),
        port=getattr(args, "port", 0),
        seed=getattr(args, "seed", None),
    )
    with server:
        logger.info("study server: %s (ratings -> %s); Ctrl-C to stop", server.url, args.db)
        try:
            server.wait()
        except KeyboardInterrupt:
            logger.info("study server stopped; %s", server.count())


def summarise_study_cmd(args: argparse.Namespace) -> None:
    """Print the summary of args.db as JSON; also write it to args.out when given."""
    out = getattr(args, "out", None)
    summary = write_study_metrics(Path(args.db), Path(out)) if out else summarise_study(Path(args.db))
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")


# -- the page ------------------------------------------------------------------------------------------------

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Storyboard study</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 1.5rem auto; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.5rem; margin-bottom: .25rem; }
  .muted { color: #666; }
  #sheet { max-width: 100%; border: 1px solid #ccc; display: block; margin: .75rem 0; }
  fieldset { border: 1px solid #ccc; border-radius: 6px; margin: .75rem 0; }
  fieldset label { margin-right: 1.25rem; white-space: nowrap; }
  #story { font-size: 1.1rem; background: #f5f5f0; padding: .5rem .75rem; border-radius: 6px; }
  #strip { display: flex; flex-wrap: wrap; gap: .3rem; list-style: none; padding: 0; }
  #strip button { font-size: .8rem; padding: .2rem .45rem; border: 1px solid #aaa; border-radius: 4px; }
  #strip button { background: #fff; }
  #strip button.rated { background: #dff0d8; }
  #strip button.current { outline: 2px solid #337ab7; }
  #error { color: #b00020; min-height: 1.2em; }
  button[type=submit] { font-size: 1rem; padding: .4rem 1.2rem; }
  #done { background: #dff0d8; padding: 1rem; border-radius: 6px; }
</style>
</head>
<body>
<h1>Storyboard study</h1>
<p class="muted">Each storyboard tries to tell a one-line story in a few frames. Rate each one on its own.</p>

<section id="start">
  <form id="name-form">
    <label>Your name <input id="rater" name="rater" required maxlength="100" autocomplete="name"></label>
    <button type="submit" id="start-button">Start</button>
  </form>
  <p id="start-error" class="muted" role="alert"></p>
</section>

<section id="study" hidden>
  <p><span id="who"></span> &middot; <strong id="progress"></strong></p>
  <ol id="strip" aria-label="storyboards"></ol>
  <article id="item" hidden>
    <h2 id="label"></h2>
    <p>Story: <span id="story"></span></p>
    <img id="sheet" alt="">
    <form id="rate-form">
      <fieldset>
        <legend>How well does this storyboard tell the story? (1 = not at all, 5 = very well)</legend>
        <label><input type="radio" name="rating" id="rating-1" value="1"> 1</label>
        <label><input type="radio" name="rating" id="rating-2" value="2"> 2</label>
        <label><input type="radio" name="rating" id="rating-3" value="3"> 3</label>
        <label><input type="radio" name="rating" id="rating-4" value="4"> 4</label>
        <label><input type="radio" name="rating" id="rating-5" value="5"> 5</label>
      </fieldset>
      <fieldset>
        <legend>Is it the same character in every frame?</legend>
        <label><input type="radio" name="same_character" id="same-yes" value="yes"> Yes</label>
        <label><input type="radio" name="same_character" id="same-no" value="no"> No</label>
      </fieldset>
      <p id="error" role="alert"></p>
      <button type="submit" id="submit">Submit rating</button>
    </form>
  </article>
  <div id="done" hidden>
    <h2>Thank you!</h2>
    <p>You have rated every storyboard. You can close this page, or pick one above to change its rating.</p>
  </div>
</section>
<p id="count" class="muted"></p>

<script>
"use strict";
const $ = (id) => document.getElementById(id);
let rater = "";
let items = [];
let current = null;  // index into items, or null for the thank-you state

async function getJSON(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function showCount(c) {
  $("count").textContent = `So far: ${c.ratings} rating${c.ratings === 1 ? "" : "s"} from ` +
    `${c.raters} rater${c.raters === 1 ? "" : "s"}.`;
  $("count").dataset.ratings = c.ratings;
}

async function refreshCount() {
  try { showCount(await getJSON("/count")); } catch (e) { /* the count is a courtesy; rating still works */ }
}

function firstUnrated(after) {
  for (let step = 1; step <= items.length; step++) {
    const i = (after + step) % items.length;
    if (items[i].rating === null) return i;
  }
  return null;
}

function render() {
  const rated = items.filter((it) => it.rating !== null).length;
  $("progress").textContent = `${rated} of ${items.length} rated`;
  $("progress").dataset.rated = rated;
  $("strip").replaceChildren(...items.map((it, i) => {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = it.label.replace("Storyboard ", "") + (it.rating !== null ? " \\u2713" : "");
    b.title = it.label;
    b.className = (it.rating !== null ? "rated" : "") + (i === current ? " current" : "");
    b.addEventListener("click", () => { current = i; render(); });
    li.appendChild(b);
    return li;
  }));
  $("done").hidden = current !== null;
  $("item").hidden = current === null;
  if (current === null) return;
  const it = items[current];
  $("label").textContent = it.label;
  $("story").textContent = it.story;
  $("sheet").src = it.image;
  $("sheet").alt = `${it.label}: contact sheet`;
  $("error").textContent = "";
  for (const input of document.querySelectorAll("#rate-form input[type=radio]")) {
    input.checked = (input.name === "rating" && Number(input.value) === it.rating) ||
      (input.name === "same_character" && input.value === it.same_character);
  }
}

$("name-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = $("rater").value.trim();
  if (!name) return;
  try {
    const data = await getJSON(`/items?rater=${encodeURIComponent(name)}`);
    rater = data.rater;
    items = data.items;
  } catch (e) {
    $("start-error").textContent = e.message;
    return;
  }
  try { localStorage.setItem("storyboard-study-rater", rater); } catch (e) { /* private mode */ }
  current = firstUnrated(items.length - 1);
  $("who").textContent = `Rating as ${rater}`;
  $("start").hidden = true;
  $("study").hidden = false;
  render();
  refreshCount();
});

$("rate-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const rating = document.querySelector("input[name=rating]:checked");
  const same = document.querySelector("input[name=same_character]:checked");
  if (!rating || !same) {
    $("error").textContent = "Please choose a rating from 1 to 5 and answer yes or no.";
    return;
  }
  const it = items[current];
  $("submit").disabled = true;
  try {
    const result = await getJSON("/rate", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({rater, token: it.token, rating: Number(rating.value), same_character: same.value}),
    });
    it.rating = Number(rating.value);
    it.same_character = same.value;
    showCount(result);
    current = firstUnrated(current);
    render();
  } catch (e) {
    $("error").textContent = e.message;
  } finally {
    $("submit").disabled = false;
  }
});

// A choice made after a "please choose" message answers it.
$("rate-form").addEventListener("change", () => { $("error").textContent = ""; });

try { $("rater").value = localStorage.getItem("storyboard-study-rater") || ""; } catch (e) { /* private mode */ }
refreshCount();
</script>
</body>
</html>
"""
