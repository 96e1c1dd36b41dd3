"""A local stand-in for the OpenAI chat-completions API, for tests that drive the real `openai` client.

The server listens on 127.0.0.1 (a free port), answers `POST /v1/chat/completions` from a scripted queue of
replies, falls back to a default responder when the queue is empty, and records every request it receives
so tests can assert how many requests were sent and what they carried.

Reply kinds (queue items, or what a responder returns):
  Completion  a normal chat completion (content, optional `refusal`, token usage)
  HTTPError   a status code with an OpenAI-style JSON error body and optional headers (e.g. Retry-After)
  Delay       wait, then send another reply: longer than the client's timeout, it makes the client time out
  Malformed   a 200 whose body is not the JSON the client expects

Responders for servers that don't do what was asked: `rejecting_formats` (a 400 for response formats it does
not implement) and `replying` (the same content whatever the request).
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image

CHAT_PATH = "/v1/chat/completions"
DATA_URL_PREFIX = "data:image/png;base64,"


@dataclass(frozen=True)
class Completion:
    content: str | None = "A man in a striped robe and a fur hat stands in a sunny market square."
    refusal: str | None = None
    prompt_tokens: int = 1000
    completion_tokens: int = 100
    finish_reason: str = "stop"


@dataclass(frozen=True)
class HTTPError:
    status: int
    message: str = "error"
    type: str = "server_error"
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Delay:
    seconds: float
    then: Reply = Completion()


@dataclass(frozen=True)
class Malformed:
    body: bytes = b'{"id": "chatcmpl-broken", "choices": [{"message": '
    status: int = 200
    content_type: str = "application/json"


Reply = Completion | HTTPError | Delay | Malformed


def rate_limited(retry_after_s: float = 0) -> HTTPError:
    """A 429 as OpenAI sends it; the client waits Retry-After (retry-after-ms when given, it is preferred)."""
    headers = {"Retry-After": f"{retry_after_s:g}"}
    if retry_after_s:
        headers["retry-after-ms"] = f"{retry_after_s * 1000:g}"
    return HTTPError(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded", headers)


def server_error() -> HTTPError:
    return HTTPError(500, "The server had an error while processing your request.", "server_error")


def bad_key() -> HTTPError:
    return HTTPError(401, "Incorrect API key provided: test-key.", "invalid_request_error", "invalid_api_key")


def unknown_model(model: str) -> HTTPError:
    return HTTPError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
    )


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, or None when the body was not JSON
    received_at: float  # time.monotonic()

    @property
    def model(self) -> str | None:
        return self.body.get("model") if isinstance(self.body, dict) else None

    @property
    def response_format(self) -> str | None:
        """The `response_format` type asked for (json_schema, json_object), None when the request set none."""
        fmt = self.body.get("response_format") if isinstance(self.body, dict) else None
        return fmt.get("type") if isinstance(fmt, dict) else None

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages", []) if isinstance(self.body, dict) else []

    def _parts(self) -> Iterable[dict[str, Any]]:
        for message in self.messages:
            content = message.get("content")
            if isinstance(content, str):
                yield {"type": "text", "text": content, "role": message.get("role")}
            elif isinstance(content, list):
                yield from content

    @property
    def texts(self) -> list[str]:
        """Every text part of every message, in order."""
        return [p["text"] for p in self._parts() if p.get("type") == "text"]

    @property
    def image_urls(self) -> list[str]:
        return [p["image_url"]["url"] for p in self._parts() if p.get("type") == "image_url"]

    @property
    def image_hashes(self) -> list[str]:
        """SHA-256 of each image URL sent: the same picture, encoded the same way, hashes the same."""
        return [hashlib.sha256(url.encode()).hexdigest() for url in self.image_urls]

    def images(self) -> list[Image.Image]:
        """The images sent as PNG data URLs, decoded."""
        out = []
        for url in self.image_urls:
            assert url.startswith(DATA_URL_PREFIX), url[:40]
            out.append(Image.open(io.BytesIO(base64.b64decode(url[len(DATA_URL_PREFIX) :]))).convert("RGB"))
        return out


Responder = Callable[[RecordedRequest], Reply]


def caption_everything(request: RecordedRequest) -> Reply:
    """Default responder: a distinct caption per image (so tests can tell captions apart)."""
    hashes = request.image_hashes
    tag = hashes[0][:8] if hashes else "no-image"
    return Completion(f"A cheerful man in a striped robe and a fur hat waves in a sunny market (frame {tag}).")


def rejecting_formats(*formats: str | None, then: Responder) -> Responder:
    """A server that answers 400 to the response formats it does not implement, as local servers do (LM Studio
    takes no `json_object`, some llama.cpp and vLLM builds no `json_schema`), and `then` to the rest."""

    def respond(request: RecordedRequest) -> Reply:
        if request.response_format in formats:
            return HTTPError(
                400, f"response_format type {request.response_format!r} is not supported", "invalid_request_error"
            )
        return then(request)

    return respond


def replying(content: str | None, *, finish_reason: str = "stop") -> Responder:
    """A responder that sends the same content to every request (a model that ignores what it is asked)."""
    return lambda request: Completion(content, finish_reason=finish_reason)


class OpenAIServer:
    """Scripted OpenAI-compatible server on 127.0.0.1; `base_url` is what the client's base_url should be."""

    def __init__(self, default: Responder = caption_everything):
        self.default = default
        self.requests: list[RecordedRequest] = []
        self._queue: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._ids = itertools.count(1)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="openai-test-server", daemon=True
        )

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> OpenAIServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in a Delay
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # scripting

    def push(self, *replies: Reply) -> None:
        """Queue replies after those already queued; each answers one request, in order."""
        with self._lock:
            self._queue.extend(replies)

    def script(self, *replies: Reply, default: Responder | None = None) -> None:
        """Replace the queue (and optionally the default responder)."""
        with self._lock:
            self._queue.clear()
            self._queue.extend(replies)
            if default is not None:
                self.default = default

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == CHAT_PATH]

    def clear_requests(self) -> None:
        """Start a new record; lists taken from `requests` before keep what they held."""
        with self._lock:
            self.requests = []

    def _next_reply(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self.requests.append(request)
            if request.method != "POST" or request.path != CHAT_PATH:
                return HTTPError(404, f"Unknown request URL: {request.method} {request.path}", "invalid_request_error")
            if self._queue:
                return self._queue.popleft()
            default = self.default
        return default(request)

    def _completion_body(self, reply: Completion, request: RecordedRequest) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-test{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model or "unknown",
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply.content, "refusal": reply.refusal},
                    "logprobs": None,
                    "finish_reason": reply.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens,
                "total_tokens": reply.prompt_tokens + reply.completion_tokens,
            },
        }


def _handler_for(server: OpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test output
            pass

        def do_GET(self) -> None:  # noqa: N802
            self._handle()

        def do_POST(self) -> None:  # noqa: N802
            self._handle()

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            request = RecordedRequest(
                method=self.command,
                path=self.path.split("?")[0],
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
                received_at=time.monotonic(),
            )
            reply = server._next_reply(request)
            while isinstance(reply, Delay):
                if server._stopping.wait(reply.seconds):
                    return
                reply = reply.then
            try:
                self._send(reply, request)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timed out) before the reply

        def _send(self, reply: Reply, request: RecordedRequest) -> None:
            headers: dict[str, str] = {}
            if isinstance(reply, Completion):
                status, payload = 200, json.dumps(server._completion_body(reply, request)).encode()
                content_type = "application/json"
            elif isinstance(reply, HTTPError):
                error = {"message": reply.message, "type": reply.type, "param": None, "code": reply.code}
                status, payload = reply.status, json.dumps({"error": error}).encode()
                content_type, headers = "application/json", reply.headers
            elif isinstance(reply, Malformed):
                status, payload, content_type = reply.status, reply.body, reply.content_type
            else:
                raise TypeError(f"not a reply: {reply!r}")
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Connection", "close")
            self.send_header("x-request-id", f"req_test_{len(server.requests)}")
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
            self.close_connection = True

    return Handler


def closed_port_url() -> str:
    """A base URL where nothing listens (a port just freed), for 'endpoint unreachable' tests."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
