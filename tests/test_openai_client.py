"""The shared OpenAI client (caption and plan): set-up from settings, the client's own retries, and one error of
the caller's kind per failure, through the real `openai` client against a local server."""

from __future__ import annotations

import time

import pytest
from openai_server import (
    Completion,
    Delay,
    HTTPError,
    Malformed,
    OpenAIServer,
    bad_key,
    closed_port_url,
    rate_limited,
    server_error,
    unknown_model,
)

from storyboard.errors import StoryboardError
from storyboard.openai_client import ChatEndpoint, Purpose, RequestRejected, is_local
from storyboard.settings import OpenAIClient

HELLO = [{"role": "user", "content": "hello"}]


class DemoError(StoryboardError):
    pass


PURPOSE = Purpose(section="demo", offline="use -S demo.backend=offline", later="rerun later", error=DemoError)


def endpoint(server: OpenAIServer | None = None, **client: object) -> ChatEndpoint:
    fields = {"model": "gpt-test", "timeout_s": 2, "max_retries": 2}
    if server is not None:
        fields["base_url"] = server.base_url
    fields.update(client)
    return ChatEndpoint(OpenAIClient(**fields), PURPOSE)


def test_request_carries_the_settings(openai_key: str, openai_server: OpenAIServer) -> None:
    reply = endpoint(openai_server, temperature=0.7, max_tokens=55).complete(HELLO, response_format={"type": "x"})

    assert reply.choices[0].message.content
    [request] = openai_server.requests
    assert request.headers["authorization"] == "Bearer test-key"
    assert (request.model, request.body["temperature"], request.body["max_tokens"]) == ("gpt-test", 0.7, 55)
    assert request.body["response_format"] == {"type": "x"} and request.messages == HELLO


def test_key_comes_from_the_configured_variable_and_base_url_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, openai_server: OpenAIServer
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("MY_GATEWAY_KEY", "gateway-secret")
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.base_url)

    endpoint(api_key_env="MY_GATEWAY_KEY").complete(HELLO)

    assert openai_server.requests[0].headers["authorization"] == "Bearer gateway-secret"
    monkeypatch.delenv("MY_GATEWAY_KEY")
    monkeypatch.setenv("OPENAI_BASE_URL", "https://gateway.example.invalid/v1")  # hosted: a key is needed
    with pytest.raises(DemoError, match=r"demo\.backend is openai but \$MY_GATEWAY_KEY is not set.*demo\.backend="):
        endpoint(api_key_env="MY_GATEWAY_KEY")


def test_a_local_server_needs_no_key(monkeypatch: pytest.MonkeyPatch, openai_server: OpenAIServer) -> None:
    """llama.cpp, Ollama and LM Studio take any key; with none set, a local server gets a placeholder."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)

    endpoint(openai_server).complete(HELLO)

    assert openai_server.requests[0].headers["authorization"] == "Bearer no-key"


def test_a_local_server_that_wants_a_key_says_which_variable(
    monkeypatch: pytest.MonkeyPatch, openai_server: OpenAIServer
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    openai_server.push(bad_key())

    with pytest.raises(DemoError, match=r"asks for a key: export it as \$OPENAI_API_KEY"):
        endpoint(openai_server).complete(HELLO)


@pytest.mark.parametrize(
    ("base_url", "local"),
    [
        ("http://127.0.0.1:8080/v1", True),
        ("http://localhost:11434/v1", True),
        ("http://[::1]:8000/v1", True),
        ("http://192.168.1.20:1234/v1", True),
        ("http://10.0.0.5:8000/v1", True),
        ("http://ollama:11434/v1", True),  # a container's service name
        ("http://gpu-box.local:8000/v1", True),
        ("http://host.docker.internal:11434/v1", True),
        ("http://vllm.default.svc.cluster.local:8000/v1", True),
        ("https://api.openai.com/v1", False),
        ("https://openrouter.ai/api/v1", False),
        ("http://8.8.8.8/v1", False),
        (None, False),  # the OpenAI API
    ],
)
def test_what_counts_as_a_local_server(base_url: str | None, local: bool) -> None:
    assert is_local(base_url) is local


# --- transient failures: retried by the client itself ---


def test_rate_limit_honours_retry_after_then_succeeds(openai_key: str, openai_server: OpenAIServer) -> None:
    openai_server.push(rate_limited(retry_after_s=0.3), Completion())

    endpoint(openai_server).complete(HELLO)

    first, second = openai_server.requests
    assert [r.headers["x-stainless-retry-count"] for r in (first, second)] == ["0", "1"]
    assert second.received_at - first.received_at >= 0.25  # waited as Retry-After said
    assert first.body == second.body


@pytest.mark.parametrize("first", [rate_limited(0), server_error()], ids=["retry-after-zero", "500"])
def test_transient_errors_are_retried(openai_key: str, openai_server: OpenAIServer, first: HTTPError) -> None:
    openai_server.push(first, Completion())

    assert endpoint(openai_server).complete(HELLO).choices
    assert len(openai_server.requests) == 2


def test_timeout_is_retried(openai_key: str, openai_server: OpenAIServer) -> None:
    openai_server.push(Delay(3.0), Completion())

    start = time.monotonic()
    assert endpoint(openai_server, timeout_s=0.8).complete(HELLO).choices
    assert len(openai_server.requests) == 2
    assert time.monotonic() - start < 2.9  # gave up on the 3 s reply instead of waiting for it


# --- what is left after the retries: one error of the caller's kind ---


def test_errors_that_outlast_the_retries(openai_key: str, openai_server: OpenAIServer) -> None:
    openai_server.script(default=lambda request: rate_limited(0.01))
    with pytest.raises(DemoError, match=r"answered 429 after 3 retries.*rerun later"):
        endpoint(openai_server, max_retries=3).complete(HELLO)
    assert len(openai_server.requests) == 4  # the first try and max_retries=3 retries

    with pytest.raises(DemoError, match=r"is unreachable or timed out.*rerun later"):
        endpoint(base_url=closed_port_url(), max_retries=0).complete(HELLO)


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (bad_key(), r"rejected the key in \$OPENAI_API_KEY: .*Incorrect API key"),
        (HTTPError(403, "Project does not have access", "invalid_request_error"), "rejected the key"),
        (unknown_model("gpt-test"), r"model 'gpt-test' not found.*set demo\.openai\.model"),
        (Malformed(), r"not JSON.*demo\.openai\.base_url an OpenAI-compatible API"),
        (Malformed(b"<html>502 Bad Gateway</html>", content_type="text/html"), "OpenAI-compatible"),
        (Malformed(b'{"object": "list", "data": []}'), r"without choices.*OpenAI-compatible"),
    ],
    ids=["401", "403", "404-model", "truncated-json", "html", "no-choices"],
)
def test_fatal_answers_stop_at_once_naming_the_fix(
    openai_key: str, openai_server: OpenAIServer, reply: HTTPError | Malformed, message: str
) -> None:
    openai_server.push(reply)

    with pytest.raises(DemoError, match=message):
        endpoint(openai_server, max_retries=4).complete(HELLO)

    assert len(openai_server.requests) == 1  # never retried


def test_an_invalid_request_is_left_to_the_caller(openai_key: str, openai_server: OpenAIServer) -> None:
    openai_server.push(HTTPError(400, "Invalid image.", "invalid_request_error", "invalid_image"))

    with pytest.raises(RequestRejected) as err:
        endpoint(openai_server).complete(HELLO)

    assert err.value.status_code == 400 and "Invalid image." in err.value.message
    assert len(openai_server.requests) == 1
