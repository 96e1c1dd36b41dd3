"""Write bench/rehearsal-wheels.txt: the wheels bench/rehearse.py carries to the lent GPU.

The list is the closure of the project's runtime dependencies (pyproject.toml) as this venv installed them, less
the packages the device image already holds (bench/device-image-packages.txt) and those a rehearsal never loads
(LEFT_OUT, each with its reason), plus CARRIED, pinned to this venv's versions. Run it after a dependency changes:

    .venv/bin/python bench/rehearsal_wheels.py > bench/rehearsal-wheels.txt

tests/test_rehearsal_wheels.py checks that every dependency in pyproject.toml is carried, in the image or left out.
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
IMAGE_LIST = REPO / "bench" / "device-image-packages.txt"
# The device's Python (KINDS.md): markers are read for it, not for this machine's.
TARGET = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}
LEFT_OUT = {
    "torch": "the image's CUDA build",
    "insightface": "an sdist; the rehearsal sets models.sdxl.face_backend: dlib",
    "face-recognition-models": "its 99 MB sdist; dlib's two model files travel instead (bench/README.md)",
    "dvc-s3": "the rehearsal has no remote; with it, botocore alone would pass the 64 MiB carry limit",
    "torchao": "generate.quantize is off by default (bench/_wheels carries it for the benchmarks)",
}
CARRIED = {
    "peft": "the image holds another release; LoRA loading is tested against this venv's",
    "open-clip-torch": "without its dependencies, for its file of CLIP's BPE merges (never imported)",
    "py-spy": "bench/rehearse.py --profile",
}
NO_DEPENDENCIES = {"open-clip-torch"}
NOT_INSTALLED = {"py-spy": "0.4.3"}  # carried, not in the venv: the release the profiles were taken with
SDISTS = {"antlr4-python3-runtime"}  # no wheel on PyPI: bench/README.md builds it with `pip wheel`


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_packages() -> set[str]:
    lines = (line for line in IMAGE_LIST.read_text().splitlines() if not line.startswith("#"))
    return {canonical(name) for line in lines for name in line.split()}


def project_dependencies() -> list[Requirement]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    return [Requirement(spec) for spec in pyproject["project"]["dependencies"]]


def _applies(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**TARGET, "extra": extra}) for extra in (extras or {""}))


def closure(roots: list[Requirement], stop: set[str]) -> dict[str, str]:
    """Installed name -> version for `roots` and everything they require, not walking into `stop`."""
    found: dict[str, str] = {}
    walked: set[tuple[str, frozenset[str]]] = set()  # a package asked for with extras is walked again for them
    todo = [(req, set()) for req in roots]
    while todo:
        req, parent_extras = todo.pop()
        name, key = canonical(req.name), (canonical(req.name), frozenset(req.extras))
        if name in stop or key in walked or not _applies(req, parent_extras):
            continue
        walked.add(key)
        if name in NOT_INSTALLED:
            found[name] = NOT_INSTALLED[name]
            continue
        dist = metadata.distribution(req.name)
        found[name] = dist.version
        if name not in NO_DEPENDENCIES:
            todo += [(Requirement(spec), set(req.extras)) for spec in dist.requires or ()]
    return found


def wheels() -> dict[str, str]:
    stop = (image_packages() | set(LEFT_OUT)) - set(CARRIED)
    return closure(project_dependencies() + [Requirement(name) for name in CARRIED], stop)


def main() -> None:
    print("# Written by bench/rehearsal_wheels.py (run it after a dependency changes); read by bench/README.md's")
    print("# `pip download -r`. Built there with `pip wheel --no-deps`, as they are sdists:")
    pins = sorted(wheels().items())
    for name, version in sorted(pins, key=lambda pin: pin[0] not in SDISTS):
        print(f"{'#   ' if name in SDISTS else ''}{name}=={version}")


if __name__ == "__main__":
    sys.exit(main())
