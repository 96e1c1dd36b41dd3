"""The rating web server: each invited rater opens their own link and rates every storyboard, blind.

Flask, served by Werkzeug's threaded server in a background thread: routing, the request-size limit (413) and
JSON errors come from the framework, and Flask renders the page from a Jinja2 template with autoescaping. Every
field a rater sends is validated by a pydantic model. Flask is the small, long-kept choice here: the standard
library's http.server left us parsing Content-Length, forms and query strings by hand.

Access: a rater's link is `http://HOST:PORT/#<invite token>`. The token sits in the URL fragment, so it never
reaches a server log or a Referer header; the page sends it as `Authorization: Bearer` on every API call, and
the server maps it (by hash, constant-time compare) to one rater. No request names a rater, so a rater can read
and write only their own ratings. Storyboards are served under random item ids; the mode never leaves the
server, and each rater sees the storyboards in an order shuffled by their name (a reload keeps it).

Binding: loopback by default. Any other address needs `allow_remote` (`--allow-remote`) and logs a warning:
plain HTTP carries the invite tokens in clear text, so share links only on a network you trust or put a TLS
proxy in front. Werkzeug's server is sized for a study of a few dozen raters, not for public traffic.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from flask import Flask, jsonify, render_template, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, make_server

from storyboard.evaluate.study.sheets import DEFAULT_MODES, StudyItem, collect_items, label_for, sheet_png
from storyboard.evaluate.study.store import RatingStore, StudyError

logger = logging.getLogger(__name__)


# A rating post is a few dozen bytes; anything far larger is not from our page.
MAX_BODY_BYTES = 16 * 1024
TOKEN_PATTERN = r"^[A-Za-z0-9_-]{20,100}$"


class RatingIn(BaseModel):
    """What the page posts to /api/rate. Strict: a JSON true is not a rating, "3" is not 3."""

    model_config = ConfigDict(extra="forbid", strict=True)

    item: str = Field(min_length=1, max_length=64)
    rating: int = Field(ge=1, le=5)
    same_character: Literal["yes", "no"]


class Invite(BaseModel):
    token: str = Field(pattern=TOKEN_PATTERN)


def bind_host(host: str, allow_remote: bool) -> str:
    """The address to bind: loopback always; anything else only with allow_remote, and with a warning."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise StudyError(
            f"study server host must be an IP address such as 127.0.0.1 or 0.0.0.0, got {host!r}"
        ) from None
    if address.is_loopback:
        return host
    if not allow_remote:
        raise StudyError(
            f"study server binds to loopback (127.0.0.1) unless told otherwise; to let raters on other machines "
            f"reach {host}, pass --allow-remote"
        )
    logger.warning(
        "study server listens on %s: anyone who can reach it sees the page, and invite links travel as plain "
        "HTTP; share them only on a network you trust, or put a TLS proxy in front",
        host,
    )
    return host


def _url_host(host: str) -> str:
    """The host as it appears in a URL and a Host header: IPv6 addresses in brackets."""
    return f"[{host}]" if ":" in host else host


def _error(status: int, message: str):
    response = jsonify(error=message)
    response.status_code = status
    return response


def create_app(study: StudyServer) -> Flask:
    """The Flask app serving `study`: its safeguards, the page, the rating API and the storyboard images.

    Args:
        study: the running study whose items, store and allowed Host headers the routes read.
    """
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    _add_safeguards(app, study)
    _add_page_routes(app, study)
    _add_api_routes(app, study)
    return app


def _add_safeguards(app: Flask, study: StudyServer) -> None:
    """JSON errors, the Host header check and the response headers every answer carries."""

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        return _error(e.code or 500, e.description or e.name)

    @app.before_request
    def check_host():
        # A page on another site could reach 127.0.0.1 through DNS rebinding; its Host header gives it away.
        if study.allowed_hosts and request.host not in study.allowed_hosts:
            return _error(403, "unexpected Host header")
        return None

    @app.after_request
    def headers(response):
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers["Referrer-Policy"] = "no-referrer"
        return response


def _add_page_routes(app: Flask, study: StudyServer) -> None:
    @app.get("/")
    def page():
        return render_template("rate.html", total=len(study.items))

    @app.get("/img/<item_id>")
    def image(item_id: str):
        png = study.image_bytes(item_id)
        if png is None:
            return _error(404, "no such storyboard")
        response = app.response_class(png, mimetype="image/png")
        response.headers["Cache-Control"] = "private, max-age=3600"  # item ids are fixed for the server's life
        return response


def _rater(study: StudyServer) -> str | None:
    """The rater whose invite token this request carries as a bearer token, or None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    try:
        invite = Invite(token=token.strip())
    except ValidationError:
        return None
    return study.store.rater_for(invite.token) if scheme.lower() == "bearer" else None


def _add_api_routes(app: Flask, study: StudyServer) -> None:
    @app.get("/api/items")
    def items():
        name = _rater(study)
        if name is None:
            return _error(401, "this invite link is not valid: ask the study's organiser for your link")
        return jsonify(study.items_for(name))

    @app.post("/api/rate")
    def rate():
        name = _rater(study)
        if name is None:
            return _error(401, "this invite link is not valid: ask the study's organiser for your link")
        try:
            posted = RatingIn.model_validate_json(request.get_data())
        except ValidationError as e:
            fields = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors())
            return _error(400, fields)
        item = study.by_item.get(posted.item)
        if item is None:
            return _error(400, "unknown storyboard (has the study changed? reload the page)")
        study.store.save(name, item.story_id, item.mode, posted.rating, posted.same_character == "yes")
        answers = study.store.answers(name)
        return jsonify(ok=True, rated=sum(1 for key in answers if key in study.by_key), total=len(study.items))


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
        allow_remote: bool = False,
    ) -> None:
        """`seed` makes the item ids reproducible and is mixed into every rater's order; without it the ids
        are random per start and the order depends on the rater name alone (stable across restarts)."""
        self.modes = tuple(modes)
        self.story_ids = tuple(story_ids)
        if not self.story_ids or not self.modes:
            raise StudyError("a study needs at least one story id and one mode")
        self.host = bind_host(host, allow_remote)
        self.port = port
        self.seed = seed
        self.items = collect_items(Path(outputs_root), self.story_ids, self.modes, seed)
        self.by_item = {item.item_id: item for item in self.items}
        self.by_key = {(item.story_id, item.mode): item for item in self.items}
        self.store = RatingStore(Path(db_path))
        self.allowed_hosts: frozenset[str] = frozenset()
        self._images: dict[str, bytes] = {}
        self._image_lock = threading.Lock()
        self._lifecycle_lock = threading.Lock()
        self._httpd: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise StudyError("study server is not running: call start() first")
        return f"http://{_url_host(self.host)}:{self._httpd.server_port}/"

    def start(self) -> str:
        with self._lifecycle_lock:
            if self._httpd is not None:
                return self.url
            logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request drowns the log
            httpd = make_server(self.host, self.port, create_app(self), threaded=True)
            port = httpd.server_port
            if ipaddress.ip_address(self.host).is_loopback:
                self.allowed_hosts = frozenset({f"{_url_host(self.host)}:{port}", f"localhost:{port}"})
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

    def invite_url(self, token: str) -> str:
        return f"{self.url}#{token}"

    # -- what the routes ask -------------------------------------------------------------------------------

    def order_for(self, rater: str) -> list[StudyItem]:
        """This rater's order: a shuffle seeded by the name (and the study seed), so reloads keep it."""
        key = rater if self.seed is None else f"{self.seed}\0{rater}"
        # random.Random(str) hashes the string with SHA-512: the same order in every process.
        return random.Random(key).sample(self.items, len(self.items))

    def items_for(self, rater: str) -> dict[str, Any]:
        """The page's view of one rater's study: labels, item ids, story text and their own earlier answers."""
        done = self.store.answers(rater)
        items = []
        for i, item in enumerate(self.order_for(rater)):
            rating, same = done.get((item.story_id, item.mode), (None, None))
            items.append(
                {
                    "item": item.item_id,
                    "label": f"Storyboard {label_for(i)}",
                    "story": item.story_text,
                    "image": f"/img/{item.item_id}",
                    "rating": rating,
                    "same_character": None if same is None else ("yes" if same else "no"),
                }
            )
        return {"rater": rater, "total": len(items), "items": items}

    def image_bytes(self, item_id: str) -> bytes | None:
        item = self.by_item.get(item_id)
        if item is None:
            return None
        with self._image_lock:
            if item_id not in self._images:
                self._images[item_id] = sheet_png(item)  # composed once, on first view
            return self._images[item_id]
