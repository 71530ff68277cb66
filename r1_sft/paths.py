"""Where paths resolve from.

A path typed on the command line resolves from the current folder: ``cli.parse_config`` makes it
absolute before a script sees it. What is left relative is a default from the constants, and it
resolves from the repository root (``repo_path``), so a stage does the same from any folder.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def repo_path(path: str | Path) -> Path:
    """An absolute path stays as it is; a relative one (a default) is taken from the repository root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


def display_path(path: str | Path) -> str:
    """Short form for messages and records: relative to the repository root when inside it."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(p)


def tried_path(path: str | Path) -> str:
    """The absolute form, for a message about a missing path: it shows exactly where we looked."""
    return os.path.abspath(Path(path).expanduser())
