"""File I/O shared by every stage: atomic writes and JSONL."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8",
                buffering: int = -1) -> Iterator:
    """Write to a temp file beside ``path`` and rename it over ``path`` only on success.

    A stage killed half-way leaves the previous file (or none), never a half-written one.
    ``buffering`` as in ``open`` (streaming stages pass 1 MiB: fewer, larger writes).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        with os.fdopen(fd, mode, buffering=buffering, encoding=None if "b" in mode else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path) as fh:
        fh.write(text)


def write_jsonl(path: str | Path, records: Iterable[dict]) -> int:
    """Atomically write one JSON object per line (UTF-8, Chinese kept readable). Returns the count."""
    n = 0
    with atomic_open(path) as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: str | Path) -> Iterator[dict]:
    """Yield the objects of a JSONL file produced by this project (blank lines skipped).

    A missing file or a line that is not a JSON object is a UserError naming the file and line.
    """
    from r1_sft.cli import UserError
    from r1_sft.paths import display_path, tried_path

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{tried_path(path)}: file not found (run the earlier stage that writes it, "
                        f"or pass the right path)")
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{display_path(path)}:{lineno}: not UTF-8 text (GBK? convert it with "
                                f"`iconv -f GBK -t UTF-8 in.jsonl > out.jsonl`, or run it through the data "
                                f"stage, which rejects such lines)") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{display_path(path)}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise UserError(f"{display_path(path)}:{lineno}: expected a JSON object, got "
                                f"{type(obj).__name__} (write one object per line; convert a JSON array "
                                f"with `jq -c '.[]' in.json > out.jsonl`)")
            yield obj


def iter_raw_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """Yield ``(1-based physical line number, raw bytes with line ending)`` for every line.

    Read as bytes so the caller decodes each line itself: one undecodable line can be rejected
    while the rest of the file is kept. Streams (memory does not grow with the file).
    """
    with open(path, "rb") as fh:
        yield from enumerate(fh, 1)
