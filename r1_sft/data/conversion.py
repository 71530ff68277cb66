"""Streaming a data stage: raw lines -> records through a transform, bad lines to a rejects file.

One line in memory at a time; the output and its ``<stem>.rejects.jsonl`` are written atomically,
and ``<stem>.run.json`` records the resolved config and the counts (``records`` holds what a line
must be; this module moves lines through it).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Iterator

from r1_sft.cli import UserError
from r1_sft.data.records import (
    DUPLICATE_QUESTION,
    WRITE_BUFFER,
    Origin,
    RecordError,
    Tally,
    counts_text,
    decode_line,
    fix_hints,
    parse_object,
    print_tally,
    question_key,
    to_json_line,
)
from r1_sft.jsonl_io import atomic_open, atomic_write_text, iter_raw_lines
from r1_sft.paths import display_path, tried_path

Transform = Callable[[dict, Origin, Counter], dict]


def rejects_path(output: str | Path) -> Path:
    """``<output stem>.rejects.jsonl`` beside the output."""
    output = Path(output)
    return output.with_name(f"{output.stem}.rejects.jsonl")


def reject_entry(origin: Origin, error: RecordError, raw: bytes) -> dict:
    """One rejects-file line: where, why, and the raw line as text (nothing is lost)."""
    raw = raw[:-1] if raw.endswith(b"\n") else raw
    raw = raw[:-1] if raw.endswith(b"\r") else raw
    return {"file": origin.file, "line": origin.line, "reason": error.reason, "detail": error.detail,
            "raw": raw.decode("utf-8", errors="backslashreplace")}


def kept_unique(objects: Iterable[tuple[Origin, bytes, dict | RecordError]], tally: Tally, rejects_fh,
                validate: Callable[[dict, Origin], dict], key_of: Callable[[dict], object], what: str,
                unit: str = "line") -> Iterator[tuple[Origin, dict, dict, object]]:
    """``(origin, object, record, key)`` for each object that validates and is not a duplicate (same
    ``key_of(record)`` as an earlier one); every other line goes to ``rejects_fh`` with its reason."""
    first_seen: dict = {}
    for origin, raw, obj in objects:
        try:
            if isinstance(obj, RecordError):
                raise obj
            record = validate(obj, origin)
            key = key_of(record)
            if key in first_seen:
                raise RecordError(DUPLICATE_QUESTION, f"same {what} (after normalisation) as {unit} {first_seen[key]}")
        except RecordError as exc:
            tally.rejected[exc.reason] += 1
            rejects_fh.write(to_json_line(reject_entry(origin, exc, raw)))
            continue
        first_seen[key] = origin.line
        yield origin, obj, record, key


def iter_objects(path: Path, tally: Tally) -> Iterator[tuple[Origin, bytes, dict | RecordError]]:
    """Yield ``(origin, raw, object-or-error)`` for every non-blank line; counts read and blank."""
    file, stem = display_path(path), path.stem
    for lineno, raw in iter_raw_lines(path):
        origin = Origin(file, stem, lineno)
        try:
            text = decode_line(raw, tally.normalised)
            if text is None:
                tally.blank += 1
                continue
            obj = parse_object(text)
        except RecordError as exc:
            obj = exc
        tally.read += 1
        yield origin, raw, obj


class _NothingKept(Exception):
    pass


def convert_jsonl(inputs: Iterable[Path], transform: Transform, output: Path) -> Tally:
    """Stream ``inputs`` through ``transform`` into ``output``; bad lines go to the rejects file.

    One line in memory at a time: memory does not grow with the input. Both files are written
    atomically; the rejects file is written even when nothing was kept (then ``output`` is left
    untouched and a UserError names the input and the rejects file).
    """
    inputs = [Path(p) for p in inputs]
    for path in inputs:
        if not path.is_file():
            raise UserError(f"{tried_path(path)}: input file not found (check --input, or run the "
                            f"earlier stage that writes it)")
    tally = Tally()
    rejects = rejects_path(output)
    first_seen: dict[int, str] = {}  # question digest -> where it first appeared (8 bytes a record)
    with atomic_open(rejects, buffering=WRITE_BUFFER) as rej_fh:
        try:
            with atomic_open(output, buffering=WRITE_BUFFER) as out_fh:
                for path in inputs:
                    for origin, raw, obj in iter_objects(path, tally):
                        try:
                            if isinstance(obj, RecordError):
                                raise obj
                            record = transform(obj, origin, tally.normalised)
                            if "question" in record:  # unified records: a question once, whatever its instruction
                                key = question_key(record["question"])
                                if key in first_seen:
                                    raise RecordError(DUPLICATE_QUESTION, f"same question (after normalisation) "
                                                                          f"as {first_seen[key]}")
                                first_seen[key] = f"{origin.file}:{origin.line}"
                            line = to_json_line(record)
                        except RecordError as exc:
                            tally.rejected[exc.reason] += 1
                            rej_fh.write(to_json_line(reject_entry(origin, exc, raw)))
                            continue
                        out_fh.write(line)
                        tally.kept += 1
                if tally.kept == 0:
                    raise _NothingKept
        except _NothingKept:
            pass
    if tally.kept == 0:
        names = ", ".join(display_path(p) for p in inputs)
        hints = "".join(f"; {hint}" for hint in fix_hints(tally))
        raise UserError(f"{names}: no usable record ({tally.read} non-blank lines read, "
                        f"{tally.n_rejected} rejected: {counts_text(tally.rejected)}; "
                        f"see {display_path(rejects)} and fix the input{hints})")
    return tally


def run_conversion(cfg, inputs: Iterable[Path], transform: Transform, output: Path) -> Tally:
    """A whole conversion stage: stream, print the summary, save ``<output stem>.run.json``
    (resolved config, versions, git commit and the counts) beside the output."""
    from r1_sft.run_info import run_info

    inputs = list(inputs)
    tally = convert_jsonl(inputs, transform, output)
    print_tally(tally, inputs, display_path(output), rejects_path(output))
    info_path = output.with_name(f"{output.stem}.run.json")
    atomic_write_text(info_path, json.dumps({**run_info(cfg), "counts": tally.as_dict()},
                                            ensure_ascii=False, indent=2, default=str) + "\n")
    print(f"[wrote] {display_path(info_path)}", flush=True)
    return tally
