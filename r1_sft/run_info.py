"""Record how an output was made (resolved config, library versions, git commit), and read it back for an adapter."""
from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from r1_sft.paths import REPO_ROOT

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


def run_info(cfg, plan=None) -> dict:
    """The record: the resolved config, the run's plan (``RunPlan.record()``: what ran, decided once),
    the command line, library versions, the git commit and the time."""
    config = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    plans = plan if isinstance(plan, dict) else {"": plan} if plan is not None else {}
    recorded = {name: p.record() for name, p in plans.items()}
    return {
        "config": config,
        **({"plan": recorded[""]} if set(recorded) == {""} else {"plans": recorded} if recorded else {}),
        "argv": sys.argv,
        "versions": library_versions(),
        "git_commit": git_commit(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def save_run_info(cfg, path: str | Path, plan=None) -> Path:
    """Write the run record as JSON at ``path`` (atomically); ``plan``: the run's RunPlan (or {name: RunPlan})."""
    from r1_sft.jsonl_io import atomic_write_text

    path = Path(path)
    atomic_write_text(path, json.dumps(run_info(cfg, plan), ensure_ascii=False, indent=2, default=str) + "\n")
    return path


def recorded_config(folder: str | Path) -> dict | None:
    """The config a training run recorded for the adapter in ``folder``: its own run_info.json, or the
    run's ``training_logs/run_info.json`` one level up (a checkpoint-N folder); None when neither reads."""
    folder = Path(folder)
    for path in (folder / "run_info.json", folder.parent / "training_logs" / "run_info.json"):
        try:
            config = json.loads(path.read_text(encoding="utf-8")).get("config")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(config, dict):
            return config
    return None


def adapter_base_note(folder, use_4bit: bool, dtype, action: str = "runs on",
                      hint: str = "; --use_4bit runs it on the 4-bit base as trained") -> str | None:
    """One line saying on which base precision an adapter runs, when its training recorded ``use_4bit``.

    A QLoRA adapter is trained on the 4-bit NF4 base; evaluation, chat and serving run it on the
    unquantized base (``dtype``) unless ``--use_4bit``, and merging always folds it into unquantized
    weights: outputs then differ slightly from the model that was trained. ``folder`` is a
    ``r1_sft.model.folders.ModelFolder``; None for a base or merged folder, or when nothing was recorded.
    """
    from r1_sft.paths import display_path

    if folder.adapter_path is None:
        return None
    trained_4bit = (recorded_config(folder.adapter_path) or {}).get("use_4bit")
    if not isinstance(trained_4bit, bool):
        return None
    name, weights = display_path(folder.adapter_path), str(dtype).removeprefix("torch.")
    if trained_4bit and use_4bit:
        return f"[precision] {name}: QLoRA adapter trained on the 4-bit NF4 base; {action} the 4-bit NF4 base as trained"
    if trained_4bit:
        return (f"[precision] {name}: QLoRA adapter trained on the 4-bit NF4 base; {action} the unquantized {weights} "
                f"base, not the 4-bit one it was trained on (outputs differ slightly){hint}")
    if use_4bit:
        return (f"[precision] {name}: LoRA adapter trained on the unquantized base; {action} the 4-bit NF4 base "
                f"(--use_4bit), not the one it was trained on")
    return None
