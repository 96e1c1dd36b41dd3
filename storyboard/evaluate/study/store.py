"""The study's SQLite file: invited raters (a hash of each invite token) and their ratings.

WAL mode with `synchronous=FULL`, and every rating committed in its own transaction as it arrives: a server
killed mid-study (kill -9, a pod going away) loses no rating it has answered "ok" to. Only a SHA-256 of each
invite token is stored, so a copy of the database (it is small and gets passed around) opens no one's page;
tokens are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from storyboard.errors import StoryboardError

MAX_RATER_CHARS = 100

SCHEMA = """
CREATE TABLE IF NOT EXISTS ratings (
    rater TEXT NOT NULL,
    story_id TEXT NOT NULL,
    mode TEXT NOT NULL,
    rating INTEGER NOT NULL,
    same_character INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (rater, story_id, mode)
);
CREATE TABLE IF NOT EXISTS raters (
    name TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL UNIQUE,
    invited_at TEXT NOT NULL
);
"""


class StudyError(StoryboardError):
    """The study can't start or summarise: missing frames, no database, an address it may not bind."""


class RatingRow(NamedTuple):
    rater: str
    story_id: str
    mode: str
    rating: int
    same_character: int  # 1 yes, 0 no


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class RatingStore:
    """One SQLite file; a connection per call, since the web server answers from several threads."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._connect() as con:
                con.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the file once set
                con.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise StudyError(f"{self.path}: not a usable ratings database ({e}); give another --db path") from None

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection whose `with` block is one transaction, committed on leaving it."""
        with closing(sqlite3.connect(self.path, timeout=10)) as con:
            con.execute("PRAGMA synchronous=FULL")  # per connection: the commit reaches the disk before "ok"
            with con:
                yield con

    # -- raters ----------------------------------------------------------------------------------------------

    def invite(self, names: Iterable[str]) -> dict[str, str]:
        """A fresh token per name (an earlier link of that name stops working; its ratings stay)."""
        tokens = {}
        for raw in names:
            name = " ".join(raw.split())
            if not name or len(name) > MAX_RATER_CHARS:
                raise StudyError(f"rater name {raw!r} must be 1-{MAX_RATER_CHARS} characters")
            tokens[name] = secrets.token_urlsafe(32)
        with self._connect() as con:
            con.executemany(
                "INSERT INTO raters (name, token_sha256, invited_at) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET token_sha256 = excluded.token_sha256, "
                "invited_at = excluded.invited_at",
                [(name, token_hash(token), _now()) for name, token in tokens.items()],
            )
        return tokens

    def rater_for(self, token: str) -> str | None:
        """The invited rater this token belongs to, or None. Every stored hash is compared, in constant time."""
        wanted = token_hash(token)
        with self._connect() as con:
            raters = con.execute("SELECT name, token_sha256 FROM raters").fetchall()
        found = None
        for name, stored in raters:
            if hmac.compare_digest(stored, wanted):
                found = name
        return found

    def raters(self) -> list[str]:
        with self._connect() as con:
            return [name for (name,) in con.execute("SELECT name FROM raters ORDER BY name")]

    # -- ratings ---------------------------------------------------------------------------------------------

    def save(self, rater: str, story_id: str, mode: str, rating: int, same_character: bool) -> None:
        """Store one rating (a re-rating replaces the old row), committed before this returns."""
        with self._connect() as con:
            con.execute(
                "INSERT OR REPLACE INTO ratings (rater, story_id, mode, rating, same_character, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (rater, story_id, mode, rating, int(same_character), _now()),
            )

    def answers(self, rater: str) -> dict[tuple[str, str], tuple[int, int]]:
        """(story_id, mode) -> (rating, same_character) of one rater."""
        with self._connect() as con:
            rows = con.execute(
                "SELECT story_id, mode, rating, same_character FROM ratings WHERE rater = ?", (rater,)
            ).fetchall()
        return {(story, mode): (rating, same) for story, mode, rating, same in rows}

    def counts(self) -> dict[str, int]:
        with self._connect() as con:
            ratings, raters = con.execute("SELECT COUNT(*), COUNT(DISTINCT rater) FROM ratings").fetchone()
        return {"ratings": ratings, "raters": raters}

    def rows(self) -> list[RatingRow]:
        with self._connect() as con:
            rows = con.execute("SELECT rater, story_id, mode, rating, same_character FROM ratings").fetchall()
        return [RatingRow(*row) for row in rows]
