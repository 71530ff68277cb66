"""Saved conversations: the JSON files the chat's ``save`` writes and ``load`` reads.

A file (``conversations/<name>.json``, written atomically) holds ``{"model_path", "timestamp",
"settings", "conversation"}``, each turn ``{"role", "content", "reasoning"}``. The terminal chat and the
chat page save and load through this code; names stay inside the conversations folder; a damaged
file is refused with the reason, in one line.
"""
from __future__ import annotations

import dataclasses
import json
import re
from datetime import datetime
from pathlib import Path

from r1_sft.jsonl_io import atomic_write_text


class ConversationFileError(ValueError):
    """A conversation file that cannot be loaded; the message says why."""


def default_conversation_name(now: datetime | None = None) -> str:
    return f"conversation_{(now or datetime.now()).strftime('%Y%m%d_%H%M%S')}.json"


def safe_conversation_path(conversations_dir: Path, name: str = "") -> Path:
    """The file a save name may create: always directly inside ``conversations_dir``.

    Only the last path component survives (``../../x`` -> ``x.json``); characters other than
    letters, digits, CJK, ``-``, ``_`` and ``.`` become ``_``; leading dots go (no hidden files).
    """
    base = name.replace("\\", "/").strip().rstrip("/").rpartition("/")[2]
    base = re.sub(r"[^\w.\-]", "_", base).lstrip(".")
    if base.lower().endswith(".json"):
        base = base[:-5]
    return Path(conversations_dir) / (f"{base}.json" if base.strip("_") else default_conversation_name())


def conversation_record(model_path: str, settings, history: list[dict],
                        now: datetime | None = None) -> dict:
    """The saved file's content; ``settings`` is the chat's ChatSettings dataclass."""
    return {"model_path": model_path, "timestamp": (now or datetime.now()).isoformat(timespec="seconds"),
            "settings": dataclasses.asdict(settings),
            "conversation": [{"role": t["role"], "content": t["content"], "reasoning": t.get("reasoning", "")}
                             for t in history]}


def save_conversation(path: Path, record: dict) -> Path:
    atomic_write_text(path, json.dumps(record, ensure_ascii=False, indent=2) + "\n")
    return path


def load_conversation(path: Path) -> dict:
    """Read and check a saved conversation; ConversationFileError says what is wrong with it."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConversationFileError("file not found / 文件不存在") from None
    except UnicodeDecodeError:
        raise ConversationFileError("not UTF-8 text / 不是 UTF-8 文本") from None
    except OSError as exc:
        raise ConversationFileError(f"cannot read ({exc.strerror})") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConversationFileError(f"line {exc.lineno}: not valid JSON ({exc.msg}) / 不是有效的 JSON") from None
    return check_conversation(record)


def check_conversation(record) -> dict:
    """The record with its turns checked (alternating user/assistant, strings, every question
    answered); ConversationFileError says what is wrong. Files and the chat page's saves alike."""
    if not isinstance(record, dict) or not isinstance(record.get("conversation"), list):
        raise ConversationFileError('no "conversation" list / 缺少 conversation 列表')
    turns = []
    for i, turn in enumerate(record["conversation"], 1):
        expected = "user" if i % 2 else "assistant"
        if not isinstance(turn, dict) or turn.get("role") != expected:
            raise ConversationFileError(f"turn {i}: expected an object with role {expected!r} "
                                        f"(turns alternate user/assistant)")
        content, reasoning = turn.get("content"), turn.get("reasoning", "")
        if not isinstance(content, str) or not isinstance(reasoning, (str, type(None))):
            raise ConversationFileError(f"turn {i}: content and reasoning must be strings")
        turns.append({"role": expected, "content": content, "reasoning": reasoning or ""})
    if len(turns) % 2:
        raise ConversationFileError(f"turn {len(turns)}: the last user turn has no answer")
    return {**record, "conversation": turns}


def saved_conversations(conversations_dir: Path) -> list[Path]:
    """The saved files, newest first (the numbering ``load N`` uses)."""
    files = conversations_dir.glob("*.json") if conversations_dir.is_dir() else []
    return sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)


def find_conversation(conversations_dir: Path, arg: str, files: list[Path]) -> Path | None:
    """The file ``load ARG`` means: a number from ``files``, a name in the folder (``.json`` optional), or a path."""
    if arg.isdigit() and 1 <= int(arg) <= len(files) and not (conversations_dir / arg).exists():
        return files[int(arg) - 1]
    for candidate in (Path(arg).expanduser(), conversations_dir / arg, conversations_dir / f"{arg}.json"):
        if candidate.is_file():
            return candidate
    return None
