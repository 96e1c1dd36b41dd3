"""The CI workflow files pass actionlint (the binary from the dev extra's wheel; it also runs shellcheck-free)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

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
    text = (REPO / ".github/workflows/pipeline.yml").read_text()
    steps = ["dvc pull", "dvc repro", "dvc push", "make compare", "gh pr comment"]
    positions = [text.index(step) for step in steps]
    assert positions == sorted(positions), "the steps run in this order"
    assert "self-hosted" in text and "secrets.AWS_SECRET_ACCESS_KEY" in text
