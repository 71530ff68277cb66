"""SFT records -> token ids and labels, through ``r1_format.encode_example`` (the code inference uses).

Reads ``{"input", "output"}`` JSONL, tokenizes with ``datasets.map``, drops (or truncates) over-length
examples and reports what it kept; ``--dry_run`` renders the trained part of an example.
"""
from __future__ import annotations

import hashlib
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from r1_sft.cli import UserError
from r1_sft.jsonl_io import read_jsonl, write_jsonl
from r1_sft.paths import display_path, repo_path
from r1_sft.r1_format import IGNORE_INDEX, encode_example
from r1_sft.training.config import TrainConfig


@dataclass
class EncodedData:
    """A tokenized split: ``dataset`` has columns input_ids, labels, length (unpadded)."""

    dataset: Any  # datasets.Dataset
    records: int  # records read
    skipped: int  # over-length records left out (or truncated, with truncate_long)
    truncated: int  # records cut to max_length (truncate_long only)



def load_sft_records(path: str | Path) -> list[dict]:
    """Read ``{"input", "output"}`` records; a record missing either string is a UserError."""
    path = repo_path(path)
    records = []
    for index, rec in enumerate(read_jsonl(path), 1):
        for key in ("input", "output"):
            if not isinstance(rec.get(key), str) or not rec[key].strip():
                raise UserError(f"{display_path(path)}: record {index}: missing or empty string field {key!r} "
                                f"(expected {{\"input\": ..., \"output\": ...}} from the data stage)")
        records.append({"input": rec["input"], "output": rec["output"]})
    if not records:
        raise UserError(f"{display_path(path)}: no records (run the data stage, or pass the right file)")
    return records


def encode_dataset(records: Sequence[dict], tokenizer, max_length: int, truncate: bool = False,
                   desc: str = "tokenize"):
    """Tokenize records with ``datasets.map`` through ``r1_format.encode_example``; drop over-length ones."""
    from datasets import Dataset

    def encode(rec: dict) -> dict:
        enc = encode_example(tokenizer, rec["input"], rec["output"], max_length=max_length, truncate=truncate)
        if enc is None:
            return {"input_ids": [], "labels": [], "length": 0, "cut": False}
        # A truncated example lost its EOS label: count it so the user sees what they asked for.
        cut = enc["labels"][-1] != tokenizer.eos_token_id
        return {**enc, "length": len(enc["input_ids"]), "cut": cut}

    raw = Dataset.from_list(list(records))
    # The data live in memory (no cache file to reuse), so the fingerprint only has to name the inputs: left
    # to datasets, it pickles the whole tokenizer to hash ``encode`` (2-3 s per split for R1's vocabulary).
    inputs = [tokenizer.name_or_path, len(tokenizer), max_length, truncate, list(records)]
    fingerprint = hashlib.sha256(json.dumps(inputs, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]
    encoded = raw.map(encode, remove_columns=raw.column_names, desc=desc, new_fingerprint=fingerprint)
    kept = encoded.filter(lambda n: n > 0, input_columns="length", desc="drop over-length")
    truncated = sum(kept["cut"])
    return EncodedData(kept.remove_columns("cut"), len(records), len(records) - len(kept), truncated)


def load_split(path: str | Path, tokenizer, cfg: TrainConfig, name: str) -> EncodedData:
    """Read and tokenize one split; an empty result (everything too long) is a UserError."""
    records = load_sft_records(path)
    data = encode_dataset(records, tokenizer, cfg.max_length, cfg.truncate_long, desc=f"tokenize {name}")
    if len(data.dataset) == 0:
        raise UserError(f"{display_path(repo_path(path))}: all {data.records} examples are longer than "
                        f"max_length={cfg.max_length} tokens (raise --max_length)")
    return data


def length_summary(lengths: Sequence[int]) -> str:
    ordered = sorted(lengths)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return (f"min {ordered[0]}, mean {statistics.fmean(ordered):.0f}, median {statistics.median(ordered):.0f}, "
            f"p95 {p95}, max {ordered[-1]}")


def describe_split(name: str, path: str | Path, data: EncodedData, max_length: int) -> None:
    ds = data.dataset
    trained = [sum(1 for label in labels if label != IGNORE_INDEX) for labels in ds["labels"]]
    extra = f", {data.truncated} truncated to {max_length}" if data.truncated else ""
    print(f"[data] {name}: read {data.records} records from {display_path(repo_path(path))}; kept {len(ds)}, "
          f"skipped {data.skipped} longer than max_length={max_length}{extra}", flush=True)
    print(f"[data] {name} tokens per example: {length_summary(ds['length'])}; "
          f"trained tokens: {length_summary(trained)}", flush=True)


def render_trained_example(tokenizer, input_ids: Sequence[int], labels: Sequence[int]) -> str:
    """Decoded example with the trained (labelled) part between ⟦ and ⟧, special tokens shown."""
    first = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
    prompt = tokenizer.decode(list(input_ids[:first]), skip_special_tokens=False)
    trained = tokenizer.decode(list(input_ids[first:]), skip_special_tokens=False)
    return f"{prompt}⟦{trained}⟧"


def write_encoded_examples(path: Path, dataset, count: int = 5) -> int:
    rows = dataset.select(range(min(count, len(dataset))))
    return write_jsonl(path, ({"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows))

