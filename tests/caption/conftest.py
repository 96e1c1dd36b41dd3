"""Caption fixtures: settings derived from params.yaml, pointed at tmp folders and the local server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from openai_server import OpenAIServer
from PIL import Image

from storyboard.settings import Caption, Settings

MakeCaption = Callable[..., Caption]
WriteImage = Callable[..., Path]


@pytest.fixture
def make_caption(params: Settings, tmp_path: Path) -> MakeCaption:
    """Caption settings from params.yaml with tmp folders; `server` points the openai client at it, fast."""

    def make(server: OpenAIServer | None = None, *, openai: dict | None = None, **updates: object) -> Caption:
        client = {"timeout_s": 2, "max_retries": 2}
        if server is not None:
            client["base_url"] = server.base_url
        client.update(openai or {})
        # params.yaml may carry another backend (`dvc exp run -S` edits it): tests name theirs.
        fields = {"backend": "openai", "input_dir": tmp_path / "raw", "cache_dir": tmp_path / "cache"}
        fields.update(updates)
        fields["openai"] = params.caption.openai.model_copy(update=client)
        return params.caption.model_copy(update=fields)

    return make


@pytest.fixture
def raw_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "raw"
    folder.mkdir()
    return folder


@pytest.fixture
def write_image(raw_dir: Path) -> WriteImage:
    """Write a solid-colour image into the raw folder (each colour is a distinct picture)."""

    def write(name: str, color: tuple[int, ...], size: tuple[int, int] = (320, 320), mode: str = "RGB") -> Path:
        path = raw_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new(mode, size, color).save(path)
        return path

    return write
