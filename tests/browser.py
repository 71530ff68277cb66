"""Chromium for the browser tests: Debian's ``chromium`` driven by Playwright (Python), offline.

Playwright's own browser download is never used: ``executable_path`` points at the system
chromium that ``make test`` installs (apt-get, as root). Every page runs in a fresh profile with
no network services, and any request that leaves 127.0.0.1 or ``file:`` is aborted and reported.
Where chromium is missing and cannot be installed (not root, no apt-get), the tests skip and say why;
where it could be installed (root with apt-get, as in CI), a missing browser is a failure.
"""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    found = os.environ.get("R1_SFT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    installable = hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get")
    message = "chromium is not installed: `make test` installs it (apt-get install -y chromium, as root)"
    if installable:
        pytest.fail(message)
    pytest.skip(message + "; this user cannot install it (not root or no apt-get)")


@contextmanager
def chromium(profile: Path):
    """A headless Debian chromium in a fresh profile folder (one persistent context) whose requests may not
    leave this machine: yields ``(context, outside)``, ``outside`` listing every request that tried."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: `make test` installs it (pip install -r requirements-browser.txt)")
    executable = chromium_path()
    outside: list[str] = []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=executable, headless=True, args=FLAGS, locale="zh-CN",
            viewport={"width": 1280, "height": 900})
        block_network(context, outside)
        try:
            yield context, outside
        finally:
            context.close()


def block_network(context, outside: list[str]) -> None:
    """Abort, and record in ``outside``, every request that is not to 127.0.0.1 or a ``file:`` URL."""
    def route(r):
        if r.request.url.startswith(("http://127.0.0.1:", "file:")):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()
    context.route("**/*", route)
