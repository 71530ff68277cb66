"""Multiple-choice data stage: one file in any shape ``benchmarks`` reads -> train / val / test, rejects kept.

Every record is validated on its own (``benchmarks.to_record``); a bad one becomes a line of the rejects
file with its place and a stable reason code, as in the SFT data stages: ``invalid_json``,
``not_object``, ``not_mcq`` (no shape recognised), ``no_answer``, ``bad_question`` (no question or
fewer than two options), ``answer_not_in_options``, ``duplicate_question``. Duplicates are found on
the normalised question text together with its set of option texts (``item_key``: width, case,
whitespace and punctuation ignored; option letters and order ignored, so a copy with shuffled options
is the same item), so no item reaches two splits, while distinct exam items that share a generic stem
("下列哪项正确？") are all kept; the test and validation records are drawn one per length-quantile bin
with ``splits.choose_val`` (same seed, same files).

Kept records are written in the project's own shape, which every MCQ reader takes::

    {"id", "question", "options": {"A": ...}, "answer": "B", "question_type"?, "subject"?, "source": {...}}

``question_type`` only where the source declared it (a type derived from the gold answer would tell
the model how many letters to give).
"""
from __future__ import annotations

import json
from array import array
from collections import Counter
from pathlib import Path
from typing import Iterator

from r1_sft.cli import UserError
from r1_sft.data.benchmarks import MULTI, NO_ANSWER, NOT_MCQ, SINGLE, detect_shape, read_raw, to_record
from r1_sft.data.conversion import iter_objects, kept_unique
from r1_sft.data.records import (
    WRITE_BUFFER,
    Origin,
    RecordError,
    Tally,
    dedup_key,
    print_tally,
    question_key,
    to_json_line,
)
from r1_sft.data.splits import choose_val
from r1_sft.jsonl_io import atomic_open, atomic_write_text
from r1_sft.paths import display_path, tried_path

SPLITS = ("train", "val", "test")


def iter_mcq_objects(path: Path, tally: Tally) -> Iterator[tuple[Origin, bytes, dict | RecordError]]:
    """``(origin, raw, object-or-error)`` per record: JSONL line by line (a bad line is one reject);
    a JSON array or a CMExam CSV through ``benchmarks.read_raw`` (its place is the record number)."""
    with open(path, "rb") as fh:
        head = fh.read(256).lstrip(b"\xef\xbb\xbf \t\r\n")
    if path.suffix.lower() != ".csv" and not head.startswith(b"["):
        yield from iter_objects(path, tally)
        return
    file, stem = display_path(path), path.stem
    for index, rec in enumerate(read_raw(path), 1):
        tally.read += 1
        yield Origin(file, stem, index), json.dumps(rec, ensure_ascii=False).encode("utf-8"), rec


def item_key(question: str, options: dict[str, str]) -> int:
    """The duplicate key of an MCQ item: its stem and its option texts as a set (letters and order ignored)."""
    return question_key("\n".join([question, *sorted(dedup_key(text) for text in options.values())]))


def project_record(obj: dict, origin: Origin) -> dict:
    """One validated record in the project's shape; RecordError (with its reason) when unusable."""
    shape = detect_shape(obj)
    if shape is None:
        raise RecordError(NOT_MCQ, f"not a multiple-choice record (fields: {', '.join(list(obj)[:8])})")
    rec = to_record(obj, shape, origin.line)
    if rec is None:
        raise RecordError(NO_ANSWER, "no answer (a question-only file, such as CMB-test, cannot be trained on)")
    out = {"id": str(obj["id"]) if obj.get("id") not in (None, "") else f"{origin.stem}-{origin.line}",
           "question": rec.question, "options": rec.options, "answer": rec.answer}
    declared = obj.get("question_type")
    if declared in (SINGLE, MULTI):
        out["question_type"] = declared
    for key in ("exam_type", "exam_class"):  # CMB's: they go into its task line, so the prompt stays the same
        if str(obj.get(key) or "").strip():
            out[key] = str(obj[key]).strip()
    if rec.group and "exam_class" not in out:
        out["subject"] = rec.group
    out["source"] = {"file": origin.file, "line": origin.line, "shape": shape}
    return out


def split_mcq(input_path: Path, output_dir: Path, files: dict[str, str], stats_file: str, val_ratio: float,
              test_ratio: float, seed: int, run: dict | None = None) -> dict:
    """Validate, deduplicate and split one MCQ file; writes the three splits, stats and rejects."""
    for name, ratio in (("--val_ratio", val_ratio), ("--test_ratio", test_ratio)):
        if not 0.0 < ratio < 1.0:
            raise UserError(f"{name} {ratio}: must be between 0 and 1 (e.g. 0.1)")
    if val_ratio + test_ratio >= 1.0:
        raise UserError(f"--val_ratio {val_ratio} + --test_ratio {test_ratio}: must leave records for training")
    if not input_path.is_file():
        raise UserError(f"{tried_path(input_path)}: input file not found (check --input)")
    rejects = output_dir / f"{input_path.stem}.mcq.rejects.jsonl"
    tally, kept = Tally(), []
    with atomic_open(rejects, buffering=WRITE_BUFFER) as rej_fh:
        for _, _, record, key in kept_unique(iter_mcq_objects(input_path, tally), tally, rej_fh, project_record,
                                             lambda r: item_key(r["question"], r["options"]),
                                             "question and options", unit="record"):
            kept.append((key, record))
            tally.kept += 1
    if tally.kept < 3:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(tally.rejected.items())) or "none"
        raise UserError(f"{display_path(input_path)}: {tally.kept} usable question(s) ({tally.read} read, "
                        f"{tally.n_rejected} rejected: {reasons}; see {display_path(rejects)}); train / val / test "
                        f"need at least 3")

    # Test first, then validation from the rest: each one record per length-quantile bin.
    lengths = array("q", (len(r["question"]) + sum(map(len, r["options"].values())) for _, r in kept))
    keys = array("Q", (k for k, _ in kept))
    test = choose_val(lengths, keys, test_ratio, seed)
    rest = [i for i in range(len(kept)) if i not in test]
    n_val = max(1, round(len(kept) * val_ratio))
    if len(rest) - n_val < 1:
        raise UserError(f"{display_path(input_path)}: {len(kept)} questions are too few for these ratios")
    val = {rest[j] for j in choose_val(array("q", (lengths[i] for i in rest)), array("Q", (keys[i] for i in rest)),
                                       n_val / len(rest), seed)}
    where = ["test" if i in test else "val" if i in val else "train" for i in range(len(kept))]

    paths = {name: output_dir / files[name] for name in SPLITS}
    counts: dict[str, Counter] = {name: Counter() for name in SPLITS}
    with atomic_open(paths["train"]) as train_fh, atomic_open(paths["val"]) as val_fh, \
            atomic_open(paths["test"]) as test_fh:
        handles = {"train": train_fh, "val": val_fh, "test": test_fh}
        for (_, record), name in zip(kept, where):
            handles[name].write(to_json_line(record))
            counts[name]["records"] += 1
            counts[name]["multi_answer"] += len(record["answer"]) > 1
    stats = {"input": display_path(input_path), "seed": seed, "val_ratio": val_ratio, "test_ratio": test_ratio,
             **tally.as_dict(),
             "splits": {name: {"file": display_path(paths[name]), **counts[name]} for name in SPLITS},
             "rejects": display_path(rejects)}
    if run is not None:
        stats["run"] = run
    atomic_write_text(output_dir / stats_file, json.dumps(stats, ensure_ascii=False, indent=2) + "\n")
    print_tally(tally, [input_path], "train + val + test (duplicates removed)", rejects)
    for name in SPLITS:
        print(f"[{name}] {counts[name]['records']} questions ({counts[name]['multi_answer']} multiple-answer) "
              f"-> {display_path(paths[name])}")
    print(f"[stats] {display_path(output_dir / stats_file)}", flush=True)
    return stats
