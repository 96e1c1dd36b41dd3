"""A local stand-in for the Hugging Face Hub's error answers, for tests that drive the real `huggingface_hub` client.

The server listens on 127.0.0.1 (a free port). Point a process at it with `HF_ENDPOINT=server.url` in that
process's environment (huggingface_hub reads it once, at import). It answers every route a model download takes
(`/api/models/<repo>...` and `/<repo>/resolve/<revision>/<file>`) with the status code and the `X-Error-Code` /
`X-Error-Message` headers the real hub sends for that repo's case, so the client raises its own exception classes
(`hf_raise_for_status` maps the headers to RepositoryNotFoundError, GatedRepoError, RemoteEntryNotFoundError):

  a repo id not in `repos`   404 RepoNotFound (what the hub says for a misspelt id, and for a private repo
                             to a token without access)
  PRIVATE                    401 RepoNotFound, "Invalid username or password." (a private repo, no token)
  GATED                      401 GatedRepo (a gated repo, no token)
  GATED_FORBIDDEN            403 GatedRepo (a gated repo, a token whose user has not accepted its licence)
  NO_SUCH_FILE               the repo exists; every file in it is 404 EntryNotFound
  DISABLED                   403 with the hub's "Access to this resource is disabled." message

Every request is recorded (method, path) so tests can check the client really asked this server.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class HubError:
    status: int
    code: str | None
    message: str


PRIVATE = HubError(401, "RepoNotFound", "Invalid username or password.")
GATED = HubError(
    401, "GatedRepo", "Access to model {repo} is restricted. You must have access to it and be authenticated."
)
GATED_FORBIDDEN = HubError(
    403, "GatedRepo", "Access to model {repo} is restricted and you are not in the authorized list."
)
NOT_FOUND = HubError(404, "RepoNotFound", "Repository not found")
DISABLED = HubError(403, None, "Access to this resource is disabled.")
NO_SUCH_FILE = "no-such-file"  # a case of its own: the repo answers, its files do not

# /api/models/<ns>/<name>[/...] and /<ns>/<name>/resolve/<revision>/<path>
_API = re.compile(r"^/api/models/([^/]+/[^/?]+)")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/([^?]+)")


class HubServer:
    """`with HubServer({"org/gated": GATED, ...}) as hub:` then run a client with HF_ENDPOINT=hub.url."""

    def __init__(self, repos: dict[str, HubError | str]) -> None:
        self.repos = dict(repos)
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def asked_for(self, repo: str) -> list[str]:
        """The paths of the requests that named `repo`."""
        with self._lock:
            return [path for _, path in self.requests if f"/{repo}/" in f"{path}/"]

    def _answer(self, path: str) -> tuple[int, dict[str, str], dict]:
        api, resolve = _API.match(path), _RESOLVE.match(path)
        repo = (api or resolve).group(1) if (api or resolve) else None
        if repo is None:
            return 404, {}, {"error": "Sorry, we can't find the page you are looking for."}
        case = self.repos.get(repo, NOT_FOUND)
        if case == NO_SUCH_FILE:
            if resolve:
                message = "Entry not found"
                return 404, {"X-Error-Code": "EntryNotFound", "X-Error-Message": message}, {"error": message}
            info = {"id": repo, "modelId": repo, "sha": "0" * 40, "private": False, "siblings": []}
            return 200, {}, info
        message = case.message.format(repo=repo)
        headers = {"X-Error-Message": message} | ({"X-Error-Code": case.code} if case.code else {})
        return case.status, headers, {"error": message}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _reply(self, with_body: bool) -> None:
                with server._lock:
                    server.requests.append((self.command, self.path))
                status, headers, body = server._answer(self.path)
                data = json.dumps(body).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data) if with_body else 0))
                self.end_headers()
                if with_body:
                    self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                self._reply(with_body=True)

            def do_HEAD(self) -> None:  # noqa: N802
                self._reply(with_body=False)

            def log_message(self, *args) -> None:  # keep test output clean
                pass

        return Handler
