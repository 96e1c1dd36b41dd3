"""Helpers for end-to-end tests: a temp git repo made from this checkout, and real `dvc` runs in it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODES = ("baseline", "lora", "ref_guided", "multiref")


def dvc_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="e2e",
        GIT_AUTHOR_EMAIL="e2e@storyboard.invalid",
        GIT_COMMITTER_NAME="e2e",
        GIT_COMMITTER_EMAIL="e2e@storyboard.invalid",
        HF_HUB_OFFLINE="1",  # the tiny run must not reach for the hub
    )
    env.pop("OPENAI_API_KEY", None)  # nor need a key
    for key in [k for k in env if k.startswith("AWS_")]:
        env.pop(key)  # credentials only from what a test gives
    return env


def run(args: list[str], cwd: Path, env: dict[str, str], stdout_only: bool = False) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{output[-6000:]}"
    return proc.stdout if stdout_only else output


def dvc(*args: str, cwd: Path, env: dict[str, str]) -> str:
    return run([sys.executable, "-m", "dvc", *args], cwd, env)


def dvc_json(*args: str, cwd: Path, env: dict[str, str]):
    return json.loads(run([sys.executable, "-m", "dvc", *args], cwd, env, stdout_only=True) or "{}")


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def copy_checkout(root: Path, env: dict[str, str]) -> Path:
    """A fresh git repo at `root` holding what this checkout tracks (and untracked files git doesn't ignore)."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in files:
        if (REPO / rel).is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, root / rel)
    run(["git", "init", "-q", "-b", "main"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "e2e"], root, env)
    return root


def tiny_flags() -> list[str]:
    """The README's tiny command takes its flags from the Makefile; test exactly those."""
    out = subprocess.run(["make", "-s", "print-tiny-flags"], cwd=REPO, capture_output=True, text=True, check=True)
    return out.stdout.split()


def experiments(shown: list[dict]) -> dict[str, dict]:
    """`dvc exp show --json` as {experiment name: its data (params, metrics)}, over all baselines."""
    found: dict[str, dict] = {}
    for baseline in shown:
        for group in baseline.get("experiments") or []:
            for exp in group.get("revs") or []:
                if exp.get("name") and exp.get("data"):
                    found[exp["name"]] = exp["data"]
    return found
