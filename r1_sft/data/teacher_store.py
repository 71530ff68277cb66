"""The files of teacher generation: the questions read, answers appended, resume, rejects.

Answers go to an append-only JSONL file, one whole line per answer written with a single
``os.write`` on an ``O_APPEND`` descriptor as soon as it arrives: the kernel holds it the moment
the call returns, so a run killed at any point (SIGKILL included) keeps every answer it wrote. The
one thing a kill can leave is a torn last line (killed inside a write), which the next run cuts
off before appending. An exclusive lock on the output stops two runs appending to one file.

Resume is by the data stage's question key (:func:`r1_sft.data.records.question_key`: NFKC,
case-folded, punctuation and spaces removed), so a question already in the output is never asked
again, and the merge stage would not have kept a second answer to it anyway.
"""
from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

from r1_sft.cli import UserError
from r1_sft.data.records import question_key, to_json_line
from r1_sft.jsonl_io import atomic_open, iter_raw_lines
from r1_sft.paths import display_path


@dataclass(frozen=True)
class Question:
    question: str
    instruction: str = ""
    id: str | None = None

    @property
    def key(self) -> int:
        return question_key(self.question)


def _text_field(obj: dict, name: str, where: str, required: bool) -> str:
    value = obj.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        got = "missing" if value is None else "empty" if isinstance(value, str) else type(value).__name__
        raise UserError(f"{where}: '{name}' must be a non-empty string, got {got} (fix or delete the line)")
    return value.strip()


def load_questions(path: Path) -> tuple[list[Question], int]:
    """Questions from a ``.txt`` file (one per line) or JSONL (``question``, optional ``instruction``
    and ``id``; a ModelScope-schema file works as is). Returns them in file order without repeats
    (same question key; the first is kept) and the number of repeats dropped."""
    if not path.is_file():
        raise UserError(f"{display_path(path)}: questions file not found (check --questions)")
    as_text = path.suffix.lower() == ".txt"
    questions, seen, repeats = [], set(), 0
    for lineno, raw in iter_raw_lines(path):
        where = f"{display_path(path)}:{lineno}"
        try:
            text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8").strip()
        except UnicodeDecodeError:
            raise UserError(f"{where}: not UTF-8 text (re-save the file as UTF-8)") from None
        if not text:
            continue
        if as_text:
            q = Question(text)
        else:
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise UserError(f"{where}: not valid JSON ({exc.msg}); a plain list of questions "
                                f"must be a .txt file") from None
            if not isinstance(obj, dict):
                raise UserError(f"{where}: expected a JSON object with a 'question'")
            qid = obj.get("id")
            q = Question(_text_field(obj, "question", where, True),
                         _text_field(obj, "instruction", where, False),
                         None if qid is None else str(qid))
        if q.key in seen:
            repeats += 1
            continue
        seen.add(q.key)
        questions.append(q)
    if not questions:
        raise UserError(f"{display_path(path)}: no question in the file (check --questions)")
    return questions, repeats


def answered_keys(path: Path, repair: bool) -> tuple[set[int], int, int]:
    """Question keys already in the output, the number of unreadable lines, and the bytes of a
    torn last line (cut off the file when ``repair``; only skipped otherwise)."""
    keys, unreadable, torn = set(), 0, 0
    if not path.exists():
        return keys, unreadable, torn
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size:
            fh.seek(size - 1)
            if fh.read(1) != b"\n":
                torn = size - _end_of_last_line(fh, size)
    if torn and repair:
        os.truncate(path, os.path.getsize(path) - torn)
    for _, raw in iter_raw_lines(path):
        if not raw.endswith(b"\n"):
            break  # the torn tail (not repaired in a dry run)
        if not raw.strip():
            continue
        try:
            keys.add(question_key(json.loads(raw)["question"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            unreadable += 1
    return keys, unreadable, torn


def _end_of_last_line(fh, size: int) -> int:
    """Offset just after the last newline (0 if none), reading backwards in blocks."""
    pos = size
    while pos > 0:
        start = max(0, pos - 65536)
        fh.seek(start)
        block = fh.read(pos - start)
        nl = block.rfind(b"\n")
        if nl >= 0:
            return start + nl + 1
        pos = start
    return 0


class AppendLog:
    """An append-only JSONL file: each :meth:`append` is one whole line, on disk when it returns."""

    def __init__(self, path: Path, lock: bool = False):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        if lock:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._fd)
                raise UserError(f"{display_path(path)}: another run is writing to this file (wait for "
                                f"it to finish, or pass another --output)") from None

    def append(self, obj: dict) -> None:
        data = to_json_line(obj).encode("utf-8")
        # One write call: O_APPEND puts it at the end whole. A regular file only writes short on a
        # full disk or a signal; finish the line then (a kill in between is what repair handles).
        while data:
            data = data[os.write(self._fd, data):]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def compact_rejects(path: Path, answered: set[int]) -> int:
    """Rewrite the rejects file (atomically) so it holds only questions still unanswered, each
    once with its latest reason. Appends of a killed run and the runs before it fold together
    here. Returns the number of entries kept; removes the file when none is left."""
    if not path.exists():
        return 0
    latest: dict[int, dict] = {}
    for _, raw in iter_raw_lines(path):
        try:
            entry = json.loads(raw)
            key = question_key(entry["question"])
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # a torn line from a killed run
        latest.pop(key, None)
        latest[key] = entry  # re-inserted: the file keeps the order of the latest attempts
    kept = [e for k, e in latest.items() if k not in answered]
    if not kept:
        path.unlink()
        return 0
    with atomic_open(path) as fh:
        for entry in kept:
            fh.write(to_json_line(entry))
    return len(kept)
