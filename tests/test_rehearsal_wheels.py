"""The rehearsal's wheel list (bench/rehearsal-wheels.txt) keeps up with pyproject.toml's dependencies.

A dependency added to the project and not to the list stops the next GPU rehearsal at an import, minutes into a
device call; this catches it at commit time.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bench_module():
    spec = importlib.util.spec_from_file_location("rehearsal_wheels", REPO / "bench" / "rehearsal_wheels.py")
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
