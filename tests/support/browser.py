"""A real headless Chromium (the distribution's package) driven by Playwright, for page tests.

Playwright cannot download its own browser here, so it is pointed at the system's Chromium. When
none is installed the page tests are skipped with a loud reason, unless FLEXFORGE_REQUIRE_BROWSER
is set (as `.ci/run` does once it has installed one): then a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CANDIDATES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    explicit = os.environ.get("FLEXFORGE_CHROMIUM")
    if explicit:
        return explicit
    for name in CANDIDATES:
        found = name if os.path.isfile(name) and os.access(name, os.X_OK) else shutil.which(name)
        if found:
            return found
    return None


def artifacts_dir() -> Path:
    """Where screenshots go: $FLEXFORGE_TEST_ARTIFACTS, else test-artifacts/ in the checkout."""
    folder = Path(os.environ.get("FLEXFORGE_TEST_ARTIFACTS") or REPO / "test-artifacts") / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def unavailable(reason: str) -> None:
    message = f"NO BROWSER: {reason}; the page tests did not run (apt-get install chromium)"
    if os.environ.get("FLEXFORGE_REQUIRE_BROWSER"):
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class PageLog:
    """What a page complained about: console errors, uncaught exceptions, failed requests."""

    errors: list[str] = field(default_factory=list)

    def attach(self, page: Any) -> None:
        page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("requestfailed", lambda r: self.errors.append(f"requestfailed: {r.url} {r.failure}"))


@contextmanager
def chromium() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install -e '.[test]')")
    executable = chromium_path()
    if executable is None:
        unavailable("no Chromium executable found (set FLEXFORGE_CHROMIUM to one)")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield browser
        finally:
            browser.close()


def load_every_image(page: Any, timeout_ms: int = 10_000) -> list[dict[str, Any]]:
    """Open every <details>, bring every <img> into view (they load lazily) and wait until all
    have finished; returns each image's src and natural width."""
    page.evaluate("document.querySelectorAll('details').forEach((d) => { d.open = true; })")
    for img in page.query_selector_all("#cards img"):
        img.scroll_into_view_if_needed()
    page.wait_for_function(
        "Array.from(document.querySelectorAll('#cards img')).every((i) => i.complete)", timeout=timeout_ms
    )
    result: list[dict[str, Any]] = page.evaluate(
        "Array.from(document.querySelectorAll('#cards img'))"
        ".map((i) => ({src: i.getAttribute('src'), width: i.naturalWidth}))"
    )
    return result
