"""The GPU rehearsal (bench/rehearse.py) keeps up with the project: its wheel list with pyproject.toml's
dependencies, its repo copy with the tracked files dvc.yaml reads.

A dependency or a stage input the rehearsal lacks stops it minutes into a device call; these catch it at commit time.
"""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bench_module(name: str = "rehearsal_wheels"):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_project_dependency_reaches_the_gpu():
    wheels = _bench_module()
    listed = {
        wheels.canonical(line.lstrip("# ").split("==")[0])
        for line in (REPO / "bench" / "rehearsal-wheels.txt").read_text().splitlines()
        if "==" in line
    }
    image = wheels.image_packages()
    missing = [
        req.name
        for req in wheels.project_dependencies()
        if wheels.canonical(req.name) not in listed | image | set(wheels.LEFT_OUT)
    ]
    assert not missing, (
        f"pyproject.toml dependencies neither in bench/rehearsal-wheels.txt, the device image nor LEFT_OUT: {missing}; "
        "run `.venv/bin/python bench/rehearsal_wheels.py > bench/rehearsal-wheels.txt`"
    )


def test_the_list_is_pinned_and_leaves_out_the_image():
    wheels = _bench_module()
    image = wheels.image_packages() - set(wheels.CARRIED)
    lines = [line for line in (REPO / "bench" / "rehearsal-wheels.txt").read_text().splitlines() if "==" in line]
    names = [wheels.canonical(line.lstrip("# ").split("==")[0]) for line in lines]
    assert all(line.split("==")[1] for line in lines)
    assert not set(names) & image, "packages the device image already holds are carried again"
    assert "torch" in image | set(wheels.LEFT_OUT) and "torch" not in names


def test_the_repo_copy_holds_every_tracked_file_a_stage_reads():
    """rehearse.py copies PROJECT_FILES, not a clone: a stage input tracked in git must be among them (the first
    CPU check with generate@multiref stopped at its data/references)."""
    from dvc.repo import Repo

    copied = _bench_module("rehearse").PROJECT_FILES
    tracked = set(
        subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    )
    with Repo(str(REPO)) as repo:
        inputs = {dep.def_path for stage in repo.index.stages for dep in stage.deps}
        inputs -= {out.def_path for stage in repo.index.stages for out in stage.outs}  # a run makes these
    read = {path for path in inputs if path in tracked or any(t.startswith(f"{path}/") for t in tracked)}
    missing = sorted(p for p in read if not any(p == c or p.startswith(f"{c}/") for c in copied))
    assert not missing, f"tracked stage inputs bench/rehearse.py does not copy (add them to PROJECT_FILES): {missing}"
