"""One tiny pipeline run, committed, shared by the team-workflow tests (remote, compare, queue)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from dvcrepo import copy_checkout, dvc, dvc_env, run, tiny_flags


@dataclass
class TinyRepo:
    root: Path
    commit: str  # holds the tiny run's dvc.lock and metrics
    env: dict[str, str]


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> TinyRepo:
    env = dvc_env()
    root = copy_checkout(tmp_path_factory.mktemp("team") / "repo", env)
    # A short training: these tests check what travels between pods and clones, not the LoRA.
    dvc("exp", "run", *tiny_flags(), "-S", "train.max_steps=10", cwd=root, env=env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "tiny run"], root, env)
    return TinyRepo(root, run(["git", "rev-parse", "HEAD"], root, env, stdout_only=True).strip(), env)
