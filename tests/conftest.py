"""Shared fixtures: the repository's params.yaml, a local OpenAI-compatible server and a test API key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from openai_server import OpenAIServer
from s3_server import S3Server

from storyboard.settings import Settings, load_settings

pytest_plugins = ["tiny_fixtures"]

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def params() -> Settings:
    """The repository's own params.yaml, validated; tests derive their settings from it with model_copy."""
    return load_settings(REPO_ROOT / "params.yaml")


@pytest.fixture
def openai_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """OPENAI_API_KEY set to a test key; OPENAI_BASE_URL cleared so only the settings choose the endpoint."""
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    return "test-key"


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    """A scripted chat-completions server on 127.0.0.1; see tests/openai_server.py."""
    with OpenAIServer() as server:
        yield server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS's S3 API on 127.0.0.1 (free ports, its own key pair, bucket `storyboard`); see tests/s3_server.py."""
    server = S3Server(tmp_path_factory.mktemp("seaweedfs")).start()
    try:
        yield server
    finally:
        server.stop()
