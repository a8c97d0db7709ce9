"""The system's Chromium driven by Playwright, for the tests that look at pages as people do.

CI installs Debian's `chromium` with apt-get (.ci/run) and Playwright comes with the dev extra;
Playwright's own browser download is never used.  Outside CI a missing browser skips the test;
under CI (CI=true) it fails it, so a browser test can never silently stop running there.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

# Chromium as a test harness: no sandbox (CI runs as root), no GPU, nothing fetched in the background.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def chromium() -> str:
    """The path of the system's Chromium, or skip (fail under CI) naming what to install."""
    path = next((found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))), None)
    missing = [
        what
        for what, found in (("chromium", path), ("playwright", importlib.util.find_spec("playwright")))
        if not found
    ]
    if missing:
        message = f"{' and '.join(missing)} not installed (apt-get install chromium; pip install -e '.[dev]')"
        if os.environ.get("CI") == "true":
            pytest.fail(f"the browser test must run in CI: {message}", pytrace=False)
        pytest.skip(message)
    return path


def collect_errors(page, errors: list[str]) -> None:
    """Record the page's JavaScript errors, console errors and failed requests into `errors`."""
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on("console", lambda msg: errors.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    # A request the browser aborted itself (the page navigated on before a favicon came) is no fault
    # of the page; any other failure is.
    page.on(
        "requestfailed",
        lambda request: (
            None
            if request.failure == "net::ERR_ABORTED"
            else errors.append(f"request failed: {request.url} ({request.failure})")
        ),
    )
