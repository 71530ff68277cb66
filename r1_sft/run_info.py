"""Record how an output was made: resolved config, library versions, git commit."""
from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from .paths import REPO_ROOT

_LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "datasets", "accelerate",
              "tokenizers", "safetensors", "modelscope", "jieba", "rouge", "sacrebleu")


def library_versions() -> dict[str, str | None]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def run_info(cfg) -> dict:
    config = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    return {
        "config": config,
        "argv": sys.argv,
        "versions": library_versions(),
        "git_commit": git_commit(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def save_run_info(cfg, path: str | Path) -> Path:
    """Write the run record as JSON at ``path`` (atomically)."""
    from .jsonl_io import atomic_write_text

    path = Path(path)
    atomic_write_text(path, json.dumps(run_info(cfg), ensure_ascii=False, indent=2, default=str) + "\n")
    return path
