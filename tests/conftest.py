"""Shared fixtures: the repository's params.yaml, a local OpenAI-compatible server and a test API key."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from openai_server import OpenAIServer
from s3_server import S3Server

from storyboard.settings import Settings, load_settings

pytest_plugins = ["tiny_fixtures"]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per test process, inherited by the stages and torchrun processes the tests start: two workers on
    # two cores, instead of OpenMP threads of both spinning on the same cores.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]

# What `make test-fast` leaves out (docs/contributing.md), by node id prefix; tests/e2e marks itself `e2e`, and a
# test that takes the `s3_server` fixture is `server`. One list, so a slow test is named in one place.
MARKED = {
    "browser": (
        "tests/evaluate/test_html_report.py::test_report_renders_in_chromium",
        "tests/evaluate/test_study_server.py::test_two_raters_complete_the_study_through_their_invite_links",
    ),
    "multiprocess": (
        "tests/train/test_multiprocess.py::",
        "tests/test_launch_nodes.py::",
        "tests/train/test_lora.py::test_two_processes_train_with_ddp",
        "tests/generate/test_sharding.py::test_two_processes_write_the_bytes_of_one",
        "tests/evaluate/test_study_cli.py::test_a_killed_server_loses_no_acknowledged_rating",
    ),
    "slow": (
        "tests/test_dvc_contract.py::test_each_params_key_reruns_exactly_its_stages",
        # They render, train or score with the tiny models: seconds to minutes each on 2 cores.
        "tests/generate/",
        "tests/train/",
        "tests/select/",
        "tests/evaluate/test_scores.py",
        "tests/evaluate/test_independence.py",
    ),
}


# The files sharing tests/e2e's committed tiny run (the tiny_repo fixture): under pytest-xdist they are one work unit,
# so one worker builds it, once.
SHARES_TINY_RUN = ("tests/e2e/test_contract.py", "tests/e2e/test_queue.py", "tests/e2e/test_remote.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for marker, prefixes in MARKED.items():
            if item.nodeid.startswith(prefixes):
                item.add_marker(marker)
        fixtures = getattr(item, "fixturenames", ())
        if "s3_server" in fixtures:
            item.add_marker("server")
        if "tiny_repo" in fixtures and not item.nodeid.startswith(SHARES_TINY_RUN):
            fix = "list its file in SHARES_TINY_RUN (tests/conftest.py)"
            raise pytest.UsageError(f"{item.nodeid} uses tiny_repo: {fix}")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`--dist loadfile` (make test): each file in one worker, and the files of SHARES_TINY_RUN in the same one.

    (pytest-xdist's xdist_group marks do not reach its scheduler under pytest 9, which keeps node ids elsewhere.)
    """
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedTinyRunScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "tiny_repo" if path in SHARES_TINY_RUN else path

    return SharedTinyRunScheduling(config, log)


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
