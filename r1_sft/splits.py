"""Deduplicated, deterministic, length-stratified train/val split of an SFT file.

Two streaming passes. Pass 1 validates every line and keeps only a small key per record (an
8-byte digest of the normalised question, its line number and lengths); duplicates and bad lines
go to the rejects file. Pass 2 streams the kept records into train and val.

Stratification: the kept records are ordered by length (ties broken by a seeded hash) and cut
into ``n_val`` consecutive bins of (near-)equal size -- quantile bins -- and one record of each
bin, chosen by the seeded RNG, goes to val. So val follows the length distribution of the whole
set as closely as its size allows, and the same seed gives byte-identical files.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
from array import array
from collections import Counter
from pathlib import Path

from .cli import UserError
from .jsonl_io import atomic_open, atomic_write_text, iter_raw_lines
from .paths import display_path, tried_path
from .records import (DUPLICATE_QUESTION, WRITE_BUFFER, RecordError, Tally, fix_hints, iter_objects,
                      parse_object, print_tally, question_key, reject_entry, to_json_line, validate_sft)


def choose_val(lengths: list[int] | array, keys: list[int] | array, val_ratio: float,
               seed: int) -> set[int]:
    """Indices of the val records: one from each of ``n_val`` length-quantile bins.

    ``n_val = round(n * val_ratio)``, at least 1 and at most ``n - 1``. Ties in length are ordered
    by a seeded hash of the key, so the result does not depend on input order among equals.
    """
    n = len(lengths)
    if n < 2:
        raise ValueError("a split needs at least 2 records")
    n_val = min(n - 1, max(1, round(n * val_ratio)))
    salt = seed.to_bytes(8, "big", signed=True)

    def tiebreak(i: int) -> int:
        digest = hashlib.blake2b(keys[i].to_bytes(8, "big"), digest_size=8, key=salt).digest()
        return int.from_bytes(digest, "big")

    order = sorted(range(n), key=lambda i: (lengths[i] << 64) | tiebreak(i))
    rng = random.Random(seed)
    val = set()
    for b in range(n_val):
        start, end = b * n // n_val, (b + 1) * n // n_val
        val.add(order[rng.randrange(start, end)])
    return val


def percentiles(values: list[int]) -> dict:
    """Nearest-rank p50 / p90 / p99 and max of character lengths (zeros for an empty list)."""
    if not values:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0}
    s = sorted(values)
    rank = lambda p: s[max(0, math.ceil(p / 100 * len(s)) - 1)]  # noqa: E731
    return {"p50": rank(50), "p90": rank(90), "p99": rank(99), "max": s[-1]}


_SKIP, _TRAIN, _VAL = 0, 1, 2


def split_jsonl(input_path: Path, output_dir: Path, train_file: str, val_file: str, stats_file: str,
                val_ratio: float, seed: int, run: dict | None = None) -> dict:
    """Split an SFT file into train/val (+ stats and rejects); returns the stats written."""
    if not 0.0 < val_ratio < 1.0:
        raise UserError(f"--val_ratio {val_ratio}: must be between 0 and 1 (e.g. 0.1)")
    if not input_path.is_file():
        raise UserError(f"{tried_path(input_path)}: input file not found (check --input, or run the "
                        f"earlier stage that writes it)")
    train_path, val_path = output_dir / train_file, output_dir / val_file
    stats_path = output_dir / stats_file
    rejects = output_dir / f"{input_path.stem}.split.rejects.jsonl"

    # Pass 1: validate, dedupe; keep only line number, lengths and key per record.
    tally = Tally()
    first_line: dict[int, int] = {}
    rewrite_lines: set[int] = set()
    lines, in_chars, out_chars, keys = array("q"), array("q"), array("q"), array("Q")
    with atomic_open(rejects, buffering=WRITE_BUFFER) as rej_fh:
        for origin, raw, obj in iter_objects(input_path, tally):
            try:
                if isinstance(obj, RecordError):
                    raise obj
                record = validate_sft(obj)
                key = question_key(record["input"])
                if key in first_line:
                    raise RecordError(DUPLICATE_QUESTION,
                                      f"same question (after normalisation) as line {first_line[key]}")
            except RecordError as exc:
                tally.rejected[exc.reason] += 1
                rej_fh.write(to_json_line(reject_entry(origin, exc, raw)))
                continue
            first_line[key] = origin.line
            if len(obj) != len(record):  # extra keys: written back as exactly {"input", "output"}
                rewrite_lines.add(origin.line)
            lines.append(origin.line)
            in_chars.append(len(record["input"]))
            out_chars.append(len(record["output"]))
            keys.append(key)
            tally.kept += 1
    del first_line
    if tally.kept < 2:
        raise UserError(f"{display_path(input_path)}: {tally.kept} usable record(s) after dedup "
                        f"({tally.read} read, {tally.n_rejected} rejected, see {display_path(rejects)}); "
                        f"a train/val split needs at least 2{''.join(f'; {h}' for h in fix_hints(tally))}")

    total = array("q", (a + b for a, b in zip(in_chars, out_chars)))
    val_idx = choose_val(total, keys, val_ratio, seed)
    del total, keys
    # One byte per input line says where it goes: memory stays small for millions of lines.
    destination = bytearray(lines[-1] + 1)
    for i, lineno in enumerate(lines):
        destination[lineno] = _VAL if i in val_idx else _TRAIN

    # Pass 2: stream kept records to their split, in input order. A line that already is exactly
    # {"input", "output"} is copied as it was read (minus BOM / CRLF): no second JSON round trip.
    counts = Counter()
    with atomic_open(train_path, "wb", buffering=WRITE_BUFFER) as train_fh, \
            atomic_open(val_path, "wb", buffering=WRITE_BUFFER) as val_fh:
        for lineno, raw in iter_raw_lines(input_path):
            where = destination[lineno] if lineno < len(destination) else _SKIP
            if where == _SKIP:
                continue
            line = raw.rstrip(b"\r\n").removeprefix(b"\xef\xbb\xbf") + b"\n"
            if lineno in rewrite_lines:
                line = to_json_line(validate_sft(parse_object(line.decode("utf-8")))).encode("utf-8")
            (val_fh if where == _VAL else train_fh).write(line)
            counts["val" if where == _VAL else "train"] += 1

    by_split = {"train": [], "val": []}
    for i in range(len(lines)):
        by_split["val" if i in val_idx else "train"].append(i)
    stats = {
        "input": display_path(input_path), "seed": seed, "val_ratio": val_ratio,
        **tally.as_dict(),
        "splits": {
            name: {"file": display_path(path), "records": counts[name],
                   "input_chars": percentiles([in_chars[i] for i in by_split[name]]),
                   "output_chars": percentiles([out_chars[i] for i in by_split[name]])}
            for name, path in (("train", train_path), ("val", val_path))
        },
        "rejects": display_path(rejects),
    }
    if run is not None:
        stats["run"] = run
    atomic_write_text(stats_path, json.dumps(stats, ensure_ascii=False, indent=2) + "\n")

    print_tally(tally, [input_path], "train + val (duplicates removed)", rejects)
    for name in ("train", "val"):
        s = stats["splits"][name]
        print(f"[{name}] {s['records']} -> {s['file']} (output chars p50={s['output_chars']['p50']} "
              f"p90={s['output_chars']['p90']} max={s['output_chars']['max']})")
    print(f"[stats] {display_path(stats_path)}", flush=True)
    return stats
