"""README.md stays short and its picture of the pipeline stays the one dvc draws from dvc.yaml."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_mermaid_is_dvc_dag():
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```mermaid\n(.*?)\n```", text, re.DOTALL)
    drawn = subprocess.run(
        [sys.executable, "-m", "dvc", "dag", "--mermaid"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip("\n")
    assert len(blocks) == 1, "README.md needs exactly one ```mermaid block (the pipeline); `make readme-dag` fills it"
    assert blocks[0] == drawn, "README.md's pipeline picture differs from `dvc dag --mermaid`: run `make readme-dag`"


def test_readme_is_short():
    words = len((REPO / "README.md").read_text().split())
    assert words <= 1500, f"README.md has {words} words (at most 1,500): move the detail to a page under docs/"


def test_readme_links_every_docs_page():
    """Every docs/ page is reachable from the README."""
    text = (REPO / "README.md").read_text()
    unlinked = [p.name for p in sorted((REPO / "docs").glob("*.md")) if f"docs/{p.name}" not in text]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"
