"""The CI workflow files pass actionlint (the binary from the dev extra; shellcheck off: CI lacks it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_workflows_pass_actionlint() -> None:
    beside = Path(sys.executable).parent / "actionlint"
    binary = str(beside) if beside.exists() else shutil.which("actionlint")
    assert binary, "no actionlint: pip install -e '.[dev]'"
    workflows = sorted((REPO / ".github/workflows").glob("*.yml"))
    assert workflows
    proc = subprocess.run([binary, "-shellcheck=", *map(str, workflows)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_pipeline_workflow_pulls_reproduces_pushes_and_comments() -> None:
    job = yaml.safe_load((REPO / ".github/workflows/pipeline.yml").read_text())["jobs"]["pipeline"]
    runs = [step.get("run", "") for step in job["steps"]]
    wanted = ["dvc pull", "dvc repro", "dvc push", "make compare", "gh pr comment"]
    positions = [next(i for i, run in enumerate(runs) if run.startswith(cmd)) for cmd in wanted]
    assert positions == sorted(positions), "pull, repro, push, compare, comment: in this order"
    assert "self-hosted" in job["runs-on"] and "secrets.AWS_SECRET_ACCESS_KEY" in job["env"]["AWS_SECRET_ACCESS_KEY"]
