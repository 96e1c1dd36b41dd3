"""The oldest diffusers / transformers / peft this code runs on, checked before the first model loads.

An older release does not fail where it is installed: it fails deep inside a pipeline call with an AttributeError,
or worse, silently (diffusers before 0.40 ignores `from_pretrained(dtype=...)` and loads everything in float32).
pyproject.toml declares the same floors; tests/models/test_loading_errors.py keeps the two equal.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from packaging.version import InvalidVersion, Version

# package -> (oldest release, what of it the code needs)
FLOORS: dict[str, tuple[str, str]] = {
    "diffusers": ("0.40", "from_pretrained(dtype=...); older releases ignore it and load float32"),
    "transformers": ("5.0", "CLIPTokenizer(vocab=..., merges=...), which the tiny profile builds its tokenizers with"),
    # 0.17 imports a class transformers 5 removed; 0.18 one that torchao >= 0.15 removed (LoRA injection fails)
    "peft": ("0.19", "LoRA with transformers 5 and current torchao"),
}


def outdated(package: str, installed: str | None) -> str | None:
    """Why `installed` (a version string; None: not installed) of `package` will not do, with the fix; None if fine."""
    floor, needed_for = FLOORS[package]
    fix = f"pip install -U '{package}>={floor}'"
    if installed is None:
        return f"{package} is not installed (storyboard needs >= {floor}): {fix}"
    try:
        if Version(installed) >= Version(floor):
            return None
    except InvalidVersion:
        return f"{package} reports a version storyboard cannot read ({installed!r}; it needs >= {floor}): {fix}"
    return f"{package} {installed} is older than storyboard needs (>= {floor}, for {needed_for}): {fix}"


def installed_version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def version_problems() -> list[str]:
    """What is wrong with the installed releases of FLOORS' packages, one message each."""
    found = (outdated(package, installed_version(package)) for package in FLOORS)
    return [problem for problem in found if problem]
