"""Browser fixtures: Playwright's sync API driving Debian's headless Chromium.

One browser per test session; a fresh context (cookies, storage) and page per test.
Screenshots and traces go to ``test-output/<test name>/`` at the repository root.

Playwright's sync API keeps its event loop marked as running in the test thread
for as long as Playwright is started, so Django would refuse ORM calls from the
test (``SynchronousOnlyOperation``). The ``_orm_beside_playwright`` fixture lifts
that check for exactly that time: the ORM calls are plain synchronous code, in a
thread that never awaits anything.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect, sync_playwright

from tests.conftest import ROOT

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
OUTPUT = ROOT / "test-output"

# Context options per screen: a desktop window and a phone (375 CSS px, honours <meta name=viewport>).
DESKTOP: dict[str, Any] = {"viewport": {"width": 1280, "height": 800}}
PHONE: dict[str, Any] = {"viewport": {"width": 375, "height": 740}, "is_mobile": True, "has_touch": True}

# Auto-waiting assertions give up after this long: pages here render in milliseconds.
expect.set_options(timeout=10_000)


@pytest.fixture(scope="session")
def _orm_beside_playwright() -> Iterator[None]:
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    yield
    if previous is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture(scope="session")
def playwright(_orm_beside_playwright: None) -> Iterator[Playwright]:
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"browser tests need Chromium at {CHROMIUM} (`make chromium`, or set CHROMIUM=/path/to/it)")
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture
def screen() -> dict[str, Any]:
    """Context options for the screen to test on; parametrize ``screen`` with ``PHONE`` to change it."""
    return DESKTOP


@pytest.fixture
def output_dir(request: pytest.FixtureRequest) -> Path:
    """``test-output/<test name>/``, emptied: screenshots from this run only."""
    path = OUTPUT / re.sub(r"[^\w.-]+", "-", request.node.name).strip("-")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@pytest.fixture
def context(
    browser: Browser, screen: dict[str, Any], output_dir: Path, request: pytest.FixtureRequest
) -> Iterator[BrowserContext]:
    context = browser.new_context(**screen, locale="en-GB", device_scale_factor=1)
    context.tracing.start(screenshots=True, snapshots=True)
    yield context
    # When the test failed, keep a trace: `.venv/bin/playwright show-trace test-output/<test>/trace.zip`.
    report = getattr(request.node, "rep_call", None)
    failed = report is not None and report.failed
    context.tracing.stop(path=output_dir / "trace.zip" if failed else None)
    context.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Let fixtures see at teardown whether the test itself failed (``item.rep_call``)."""
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report
