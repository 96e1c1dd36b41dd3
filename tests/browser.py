"""Headless Chromium for the browser tests: Debian's chromium and chromedriver, driven by Selenium.

Nothing is downloaded: with both paths given Selenium Manager never runs. Missing pieces skip the test on a
developer machine and fail it in CI, which must run it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, so the browser test must run", pytrace=False)
    pytest.skip(reason)


def require_browser() -> None:
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[dev]')")
    if missing:
        unavailable(f"browser test needs {', '.join(missing)} (Debian: apt-get install chromium chromium-driver)")


@contextmanager
def chromium(tmp_path: Path, window: tuple[int, int] = (1400, 900)) -> Iterator:
    """A fresh headless Chromium with its own profile folder; quits on exit."""
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # belt and braces: Selenium Manager must never reach out
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (*FLAGS, f"--window-size={window[0]},{window[1]}", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=options)
    try:
        driver.set_page_load_timeout(20)
        yield driver
    finally:
        driver.quit()


def keep_artifact(path: Path) -> None:
    """Copy a screenshot to $STORYBOARD_TEST_ARTIFACTS, when set, for a person to look at."""
    if target := os.environ.get("STORYBOARD_TEST_ARTIFACTS"):
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(target) / path.name)
