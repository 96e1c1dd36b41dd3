"""Rewrite README.md's mermaid block with what `dvc dag --mermaid` prints for this repo's dvc.yaml.

`make readme-dag` runs it; tests/test_readme.py checks that the block is current.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```mermaid\n(.*?)\n```", re.DOTALL)


def mermaid(repo: Path = REPO) -> str:
    """The pipeline graph as dvc draws it, from the dvc of the running interpreter (the venv's)."""
    out = subprocess.run(
        [sys.executable, "-m", "dvc", "dag", "--mermaid"], cwd=repo, capture_output=True, text=True, check=True
    )
    return out.stdout.strip("\n")


def readme_block(text: str) -> str:
    """The README's mermaid block, without its fences."""
    found = BLOCK.search(text)
    if found is None:
        raise SystemExit("README.md has no ```mermaid block: add one under '## The pipeline'")
    return found.group(1)


def main() -> None:
    readme = REPO / "README.md"
    text = readme.read_text()
    readme_block(text)
    readme.write_text(BLOCK.sub(lambda _: f"```mermaid\n{mermaid()}\n```", text, count=1))


if __name__ == "__main__":
    main()
