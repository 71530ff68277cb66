"""Deduplicated, deterministic, length-stratified train/val/test split of an SFT file.

Two streaming passes. Pass 1 validates every line and keeps only a small key per record (an
8-byte digest of the normalised question, its line number and lengths); duplicates and bad lines
go to the rejects file. Pass 2 streams the kept records into train, val and test. Deduplication
comes first, so no question (after normalisation) is in two splits.

Stratification: the kept records are ordered by length (ties broken by a seeded hash) and cut
into ``n_val`` consecutive bins of (near-)equal size -- quantile bins -- and one record of each
bin, chosen by the seeded RNG, goes to val. The test split is drawn the same way from the records
left (its own RNG stream), so val is the same set whatever ``test_ratio``, and both follow the
length distribution of the whole set as closely as their size allows. The same seed gives
byte-identical files.

Val chooses the checkpoint and stops training early, so scores on it are optimistic; test is
read by evaluation only (scripts/evaluate_model.py's default data), never by training.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import re
from array import array
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from r1_sft.cli import UserError, name_field
from r1_sft.data.conversion import iter_objects, kept_unique
from r1_sft.data.records import (
    WRITE_BUFFER,
    Tally,
    fix_hints,
    parse_object,
    print_tally,
    question_key,
    to_json_line,
    validate_sft,
)
from r1_sft.jsonl_io import atomic_open, atomic_write_text, iter_raw_lines
from r1_sft.paths import display_path, repo_path, tried_path
from r1_sft.run_info import run_info


@dataclass
class SplitConfig:
    """The settings both split stages share, written once; each script names its input and file names."""
    input: str = ""  # SFT records {"input", "output"}
    output_dir: str = "dataset"  # folder for the split files, stats and rejects
    train_file: str = name_field("")  # training split, inside output_dir
    val_file: str = name_field("")  # validation split (eval loss, best checkpoint, early stopping), inside output_dir
    test_file: str = name_field("")  # held-out test split (evaluation only, never training), inside output_dir
    stats_file: str = name_field("")  # counts and length percentiles, inside output_dir
    val_ratio: float = 0.1  # fraction of (deduplicated) records for validation; at least 1 record
    test_ratio: float = 0.1  # fraction for the held-out test split (at least 1 record); 0 = none (empty test file)
    seed: int = 42  # same seed and input -> byte-identical splits


def run_split(cfg: SplitConfig) -> dict:
    """A split stage's main: the config's paths resolved, the split written, its run info kept."""
    return split_jsonl(repo_path(cfg.input), repo_path(cfg.output_dir), cfg.train_file, cfg.val_file,
                       cfg.stats_file, cfg.val_ratio, cfg.seed, run=run_info(cfg), test_file=cfg.test_file,
                       test_ratio=cfg.test_ratio)


# What evaluation says about the file it scored, by the split its name declares: (label, meaning).
SPLIT_NOTES = {
    "test": ("held-out test split", "never trained on, never used to choose a checkpoint"),
    "val": ("validation split", "it chose the best checkpoint and stopped training early, so scores on it are "
                                "optimistic; the held-out split is the *test.jsonl beside it"),
    "train": ("training split", "the tuned model was trained on these questions"),
}


def split_of(path: str | Path) -> str:
    """"test", "val" or "train" for a file named as the split stages name them
    (``sft_r1_test.jsonl``, ``test.jsonl``, ``my-val.jsonl``); "" for any other file."""
    match = re.search(r"(?:^|[_.-])(train|val|test)$", Path(path).stem)
    return match.group(1) if match else ""


def _length_order(lengths: list[int] | array, keys: list[int] | array, seed: int) -> list[int]:
    """Record indices by length; ties ordered by a seeded hash of the key (not by input order)."""
    salt = seed.to_bytes(8, "big", signed=True)

    def tiebreak(i: int) -> int:
        digest = hashlib.blake2b(keys[i].to_bytes(8, "big"), digest_size=8, key=salt).digest()
        return int.from_bytes(digest, "big")

    return sorted(range(len(lengths)), key=lambda i: (lengths[i] << 64) | tiebreak(i))


def _one_per_bin(order: list[int], n_pick: int, rng: random.Random) -> set[int]:
    """One index from each of ``n_pick`` consecutive (near-)equal bins of ``order``."""
    n = len(order)
    return {order[rng.randrange(b * n // n_pick, (b + 1) * n // n_pick)] for b in range(n_pick)}


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
    return _one_per_bin(_length_order(lengths, keys, seed), n_val, random.Random(seed))


def choose_test(lengths: list[int] | array, keys: list[int] | array, val: set[int], test_ratio: float,
                seed: int) -> set[int]:
    """Indices of the test records, drawn like val's from the records val left (none for ratio 0).

    ``n_test = round(n * test_ratio)`` of all ``n`` records, at least 1, and at least one record
    stays for training. Its own RNG stream: val does not change with ``test_ratio``.
    """
    if test_ratio == 0:
        return set()
    n = len(lengths)
    if n - len(val) < 2:
        raise ValueError("a train/val/test split needs at least 3 records")
    n_test = min(n - len(val) - 1, max(1, round(n * test_ratio)))
    rest = [i for i in _length_order(lengths, keys, seed) if i not in val]
    return _one_per_bin(rest, n_test, random.Random(f"{seed}:test"))


def percentiles(values: list[int]) -> dict:
    """Nearest-rank p50 / p90 / p99 and max of character lengths (zeros for an empty list)."""
    if not values:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0}
    s = sorted(values)
    rank = lambda p: s[max(0, math.ceil(p / 100 * len(s)) - 1)]  # noqa: E731
    return {"p50": rank(50), "p90": rank(90), "p99": rank(99), "max": s[-1]}


_SKIP, _TRAIN, _VAL, _TEST = 0, 1, 2, 3
_NAMES = {_TRAIN: "train", _VAL: "val", _TEST: "test"}


def split_jsonl(input_path: Path, output_dir: Path, train_file: str, val_file: str, stats_file: str,
                val_ratio: float, seed: int, run: dict | None = None, test_file: str = "",
                test_ratio: float = 0.0) -> dict:
    """Split an SFT file into train/val/test (+ stats and rejects); returns the stats written.

    ``test_file`` "" = no test file (train/val only). With a test file and ``test_ratio`` 0 the
    test file is written empty, so no test file of an earlier, different split survives.
    """
    if not 0.0 < val_ratio < 1.0:
        raise UserError(f"--val_ratio {val_ratio}: must be between 0 and 1 (e.g. 0.1)")
    if not 0.0 <= test_ratio < 1.0:
        raise UserError(f"--test_ratio {test_ratio}: must be at least 0 and below 1 (e.g. 0.1; 0 = no test split)")
    if val_ratio + test_ratio >= 1.0:
        raise UserError(f"--val_ratio {val_ratio} + --test_ratio {test_ratio}: must leave records for training "
                        f"(sum below 1, e.g. 0.1 + 0.1)")
    test_ratio = test_ratio if test_file else 0.0
    if not input_path.is_file():
        raise UserError(f"{tried_path(input_path)}: input file not found (check --input, or run the "
                        f"earlier stage that writes it)")
    paths = {"train": output_dir / train_file, "val": output_dir / val_file}
    if test_file:
        paths["test"] = output_dir / test_file
    stats_path = output_dir / stats_file
    rejects = output_dir / f"{input_path.stem}.split.rejects.jsonl"

    # Pass 1: validate, dedupe; keep only line number, lengths and key per record.
    tally = Tally()
    rewrite_lines: set[int] = set()
    lines, in_chars, out_chars, keys = array("q"), array("q"), array("q"), array("Q")
    with atomic_open(rejects, buffering=WRITE_BUFFER) as rej_fh:
        for origin, obj, record, key in kept_unique(iter_objects(input_path, tally), tally, rej_fh,
                                                    lambda obj, _: validate_sft(obj),
                                                    lambda r: question_key(r["input"]), "question"):
            if len(obj) != len(record):  # extra keys: written back as exactly {"input", "output"}
                rewrite_lines.add(origin.line)
            lines.append(origin.line)
            in_chars.append(len(record["input"]))
            out_chars.append(len(record["output"]))
            keys.append(key)
            tally.kept += 1
    needed = 3 if test_ratio else 2
    if tally.kept < needed:
        what = "a train/val/test split needs at least 3 (--test_ratio 0: train/val only)" if test_ratio \
            else "a train/val split needs at least 2"
        raise UserError(f"{display_path(input_path)}: {tally.kept} usable record(s) after dedup "
                        f"({tally.read} read, {tally.n_rejected} rejected, see {display_path(rejects)}); "
                        f"{what}{''.join(f'; {h}' for h in fix_hints(tally))}")

    total = array("q", (a + b for a, b in zip(in_chars, out_chars)))
    val_idx = choose_val(total, keys, val_ratio, seed)
    test_idx = choose_test(total, keys, val_idx, test_ratio, seed)
    del total, keys
    where_of = bytearray([_TRAIN]) * len(lines)  # one byte per kept record
    for i in val_idx:
        where_of[i] = _VAL
    for i in test_idx:
        where_of[i] = _TEST
    # One byte per input line says where it goes: memory stays small for millions of lines.
    destination = bytearray(lines[-1] + 1)
    for i, lineno in enumerate(lines):
        destination[lineno] = where_of[i]

    # Pass 2: stream kept records to their split, in input order. A line that already is exactly
    # {"input", "output"} is copied as it was read (minus BOM / CRLF): no second JSON round trip.
    counts = Counter()
    with contextlib.ExitStack() as stack:
        handles = {name: stack.enter_context(atomic_open(path, "wb", buffering=WRITE_BUFFER))
                   for name, path in paths.items()}
        for lineno, raw in iter_raw_lines(input_path):
            where = destination[lineno] if lineno < len(destination) else _SKIP
            if where == _SKIP:
                continue
            line = raw.rstrip(b"\r\n").removeprefix(b"\xef\xbb\xbf") + b"\n"
            if lineno in rewrite_lines:
                line = to_json_line(validate_sft(parse_object(line.decode("utf-8")))).encode("utf-8")
            handles[_NAMES[where]].write(line)
            counts[_NAMES[where]] += 1

    by_split = {name: [] for name in paths}
    for i, where in enumerate(where_of):
        by_split[_NAMES[where]].append(i)
    stats = {
        "input": display_path(input_path), "seed": seed, "val_ratio": val_ratio,
        **({"test_ratio": test_ratio} if test_file else {}),
        **tally.as_dict(),
        "splits": {
            name: {"file": display_path(path), "records": counts[name],
                   "input_chars": percentiles([in_chars[i] for i in by_split[name]]),
                   "output_chars": percentiles([out_chars[i] for i in by_split[name]])}
            for name, path in paths.items()
        },
        "rejects": display_path(rejects),
    }
    if run is not None:
        stats["run"] = run
    atomic_write_text(stats_path, json.dumps(stats, ensure_ascii=False, indent=2) + "\n")

    print_tally(tally, [input_path], " + ".join(paths) + " (duplicates removed, no question in two splits)",
                rejects)
    for name in paths:
        s = stats["splits"][name]
        print(f"[{name}] {s['records']} -> {s['file']} (output chars p50={s['output_chars']['p50']} "
              f"p90={s['output_chars']['p90']} max={s['output_chars']['max']})")
    print(f"[stats] {display_path(stats_path)}", flush=True)
    return stats
