"""Chromium for the browser tests: Debian's ``chromium`` driven by Playwright (Python), offline.

Playwright's own browser download is never used: ``executable_path`` points at the system
chromium that ``make test`` installs (apt-get, as root). Every page runs in a fresh profile with
no network services, and ``block_network`` fails any request that leaves 127.0.0.1 or ``file:``.
Where chromium is missing and cannot be installed (not root, no apt-get), the tests skip and say why;
where it could be installed (root with apt-get, as in CI), a missing browser is a failure.
"""
from __future__ import annotations

import os
import shutil
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


def launch(playwright, profile: Path):
    """A headless Debian chromium in a fresh profile folder (a persistent context: one browser, one context)."""
    pytest.importorskip("playwright", reason="playwright is installed by `make test` (requirements-browser.txt)")
    return playwright.chromium.launch_persistent_context(
        str(profile), executable_path=chromium_path(), headless=True, args=FLAGS, locale="zh-CN",
        viewport={"width": 1280, "height": 900})


def block_network(context, outside: list[str]) -> None:
    """Record and abort every request that is not loopback, ``file:``, ``data:`` or ``blob:``."""
    def route(r):
        url = r.request.url
        if url.startswith(("http://127.0.0.1:", "file:", "data:", "blob:")):
            r.continue_() if not url.startswith(("data:", "blob:")) else r.fallback()
        else:
            outside.append(url)
            r.abort()
    context.route("**/*", route)
