"""One tiny pipeline run, committed, shared by the team-workflow tests (remote, compare, queue)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from dvcrepo import copy_checkout, dvc, dvc_env, run, tiny_flags

STORY = '{id: greeting, text: "Aldar Kose greets the sunrise on the steppe."}'


@dataclass
class TinyRepo:
    root: Path
    commit: str  # holds the tiny run's dvc.lock and metrics
    env: dict[str, str]


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> TinyRepo:
    env = dvc_env()
    root = copy_checkout(tmp_path_factory.mktemp("team") / "repo", env)
    # Small: these tests check what travels between pods, clones and queued runs, not the LoRA or the frames.
    small = ["-S", "train.max_steps=10", "-S", f"stories=[{STORY}]", "-S", "generate.max_retries=0"]
    dvc("exp", "run", *tiny_flags(), *small, cwd=root, env=env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "tiny run"], root, env)
    return TinyRepo(root, run(["git", "rev-parse", "HEAD"], root, env, stdout_only=True).strip(), env)
